"""Memory per stage: every stage checks its estimated peak before it starts, and refuses with the numbers.

    stage_estimates(settings, "smoke")  -> {part: {"total": bytes, ...parts}}: train and eval of the smoke task
    check_stage(settings, "ablation")   -> the same, or MemoryBudgetError naming the part, its numbers, the fix
    python -m experiments.stage_memory [--profile rtx2060] [--json]   # the estimated peak of every stage

The parts (refiner_model/memory.py has the formulas, each checked within 10% of a measured CPU peak in float32
and float16 by tests/test_fp16_cpu.py, and against the GPU by `make gpu-check`):
    smoke        a toy training step, the depth-curve evaluation of the smoke task
    ablation     the same for every task and arm (the stack arm has more weights)
    full         a language-modelling step (candidate and control), a validation pass, the depth probe (a copy of
                 the model and a fresh optimiser trained on a toy task in r50k ids, then its depth curve: logits
                 [eval_r_max, eval_chunk, 50,304] float32 held and stacked)
"""

from __future__ import annotations

import argparse
import json
import sys

from config import Settings
from experiments.tasks import make_task
from experiments.train import eval_r_max
from refiner_model.memory import (
    MIB,
    budget_of,
    compute_dtype_name,
    estimate,
    estimate_eval,
    estimate_probe,
    eval_act_bytes_per_token,
    refuse,
)
from refiner_model.precision import resolve_device

HINTS = {
    "train": "lower batch_size, r_max or the preset, or set backprop_window",
    "eval": "lower eval_chunk (examples per evaluation forward) or eval_r_max",
    "lm_train": "lower batch_size, seq_len, r_max or loss_chunk_tokens, or set backprop_window",
    "validation": "lower batch_size, seq_len or loss_chunk_tokens",
    "probe": "lower eval_chunk or eval_r_max (the probe's logits span the whole vocabulary), or full_probe_steps = 0",
}


def toy_shape(settings: Settings, task_name: str) -> tuple[int, int]:
    """(compact vocabulary, tokens per row of the fixed test set) of a toy task."""
    task = make_task(task_name, settings)
    return task.vocab_size, int(task.test_set().idx.shape[1])


def _arms(settings: Settings) -> list[str]:
    arms = [settings.model.arch, "reasoner"]
    return arms + (["stack"] if settings.stages.ablation_stack_arm else [])


def _worst(cands: list[dict]) -> dict:
    return max(cands, key=lambda e: e["total"])


def stage_estimates(settings: Settings, stage: str, device_type: str | None = None) -> dict[str, dict]:
    """The estimated peak of each part of a stage, in bytes, for the settings' device and dtype."""
    device_type = device_type or resolve_device(settings.train.device).type
    dtype = compute_dtype_name(settings, device_type)
    st, b = settings.stages, settings.train.batch_size
    chunk = min(st.eval_chunk, st.test_examples)
    r_eval = eval_r_max(settings)
    if stage in ("smoke", "ablation", "replication"):
        tasks = [st.tasks[0]] if stage == "smoke" else list(st.tasks) + [st.control_task]
        arms = [settings.model.arch] if stage == "smoke" else _arms(settings)
        train, ev = [], []
        for t in tasks:
            vocab, seq = toy_shape(settings, t)
            for arch in arms:
                s = settings.replace({"arch": arch}, source="run")
                train.append({"task": t, "arch": arch, **estimate(s, b, seq, vocab, lm_loss=False, dtype=dtype)})
                ev.append({"task": t, "arch": arch,
                           **estimate_eval(s, chunk, seq, vocab, 1 if arch == "stack" else r_eval, dtype)})
        return {"train": _worst(train), "eval": _worst(ev)}
    if stage == "full":
        seq, vocab = settings.model.seq_len, settings.model.vocab_size
        lm = [estimate(settings.replace({"arch": a}, source="run"), b, seq, vocab, dtype=dtype)
              for a in (settings.model.arch, "reasoner")]
        w = _worst(lm)
        n_tok = b * seq
        val = {"weights": w["weights"], "optimizer": w["optimizer"],
               "activations": int(n_tok * eval_act_bytes_per_token(settings, dtype != "float32")),
               "loss": min(n_tok, settings.model.loss_chunk_tokens) * vocab * 4 * 3}
        val["total"] = sum(val.values())
        out = {"lm_train": w, "validation": val}
        if st.full_probe_steps:
            _, pseq = toy_shape(settings, st.full_probe_task)
            out["probe"] = estimate_probe(settings, b, pseq, chunk, vocab, r_eval, dtype)
        return out
    raise ValueError(f"unknown stage {stage!r}")


def check_stage(settings: Settings, stage: str, device_type: str | None = None) -> dict[str, dict]:
    """stage_estimates, or MemoryBudgetError for the first part over the device's budget (with its numbers)."""
    device_type = device_type or resolve_device(settings.train.device).type
    ests = stage_estimates(settings, stage, device_type)
    budget = budget_of(settings, device_type)
    for part, e in ests.items():
        if e["total"] > budget:
            parts = {k: v for k, v in e.items() if isinstance(v, int)}
            where = f" ({e['arch']} on {e['task']})" if "task" in e else ""
            refuse(f"{stage} {part}{where}", e["total"], parts, budget, device_type, HINTS[part])
    return ests


def summary(ests: dict[str, dict]) -> str:
    return ", ".join(f"{k} {e['total'] / MIB:.0f} MiB" for k, e in ests.items())


def main(argv: list[str] | None = None) -> int:
    import os

    from config import load

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default=None, help="hardware profile (default: REFINERY_PROFILE)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    env = dict(os.environ, **({"REFINERY_PROFILE": args.profile} if args.profile else {}))
    settings = load(env)
    device_type = "cuda" if settings.hardware.profile == "rtx2060" else "cpu"
    budget = budget_of(settings, device_type)
    rows = {stage: {k: e["total"] for k, e in stage_estimates(settings, stage, device_type).items()}
            for stage in ("smoke", "ablation", "full")}
    if args.json:
        print(json.dumps({"profile": settings.hardware.profile, "device_type": device_type, "budget": budget,
                          "dtype": compute_dtype_name(settings, device_type), "estimates": rows}, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"estimated peak per stage — profile {settings.hardware.profile}, "
                    f"{compute_dtype_name(settings, device_type)}, budget {budget / MIB:,.0f} MiB")
    for c in ("stage", "part", "MiB", "of budget"):
        t.add_column(c, justify="right" if c != "part" else "left")
    for stage, parts in rows.items():
        for part, v in parts.items():
            t.add_row(stage, part, f"{v / MIB:,.0f}", f"{v / budget:.0%}")
    Console().print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
