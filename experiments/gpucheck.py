"""`make gpu-check`: one command that proves a CUDA box ready for refinery, in under 5 minutes.

    python -m experiments.gpucheck [--json runs/bench/gpu-check.json]      # needs a CUDA GPU
    python -m experiments.gpucheck --cpu-twin                              # the same checks on a CPU (tests)

On the GPU, with the process limited to 6 GB (torch.cuda.set_per_process_memory_fraction, the RTX 2060's memory
whatever the card):
  1. the float16 smoke stage on the `rtx2060` profile (autocast float16 + GradScaler): it must PASS;
  2. the memory estimate of every stage part (toy step, toy evaluation, language-modelling step, depth probe)
     against torch.cuda.max_memory_allocated: error ≤ 10% each;
  3. training tokens/s and MFU of the `small` preset (refiner_model.bench): MFU ≥ 35%;
  4. the SDPA backend: a fast kernel (memory-efficient on sm_75), never the math fallback.
It prints a table and writes the benchmark JSON (`device`, `versions`, raw figures, `targets`). Exit 0 when every
target is met, 1 when one is not, 2 when there is no CUDA GPU (with the reason, no traceback).
--cpu-twin runs the same code on the CPU in float16 with the tiny preset (`cpu-fp16` profile) and small budgets:
no MFU and no SDPA kernel there (null targets), the memory measured as the CPU's peak RSS in a child process.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import config
from config import RefineryError

CARD_BYTES = 6 * 1024**3  # the RTX 2060's memory: the process is held to it on any card
MEM_LIMIT = 0.10  # the memory estimate's error target (DESIGN.md "Benchmarks")
MFU_TARGET = 0.35
# the CPU twin's budgets: the same checks, small enough for a test on 2 cores
TWIN = {"smoke_steps": 20, "smoke_overfit_steps": 40, "test_examples": 200, "batch_size": 16, "r_max": 2,
        "r_mean": 2, "stage_threads": 1, "stage_jobs": 1, "init_std": 0.1}
# ... and of its memory check: large enough that the estimate, not the allocator's few MiB of overhead, is what a
# peak RSS measures (at d_model 64 and batch 16 the whole step is 5 MiB)
MEM_TWIN = {"d_model": 96, "n_heads": 3, "d_mlp": 384, "batch_size": 64, "eval_chunk": 500, "test_examples": 500,
            "seq_len": 48}
CPU_LM_VOCAB = 2048  # the CPU twin's language-modelling vocabulary (the r50k head would dominate d_model 96)


class GpuCheckError(RefineryError):
    """`make gpu-check` needs a CUDA GPU and found none.

    Fix: run it on the GPU box (nvidia-smi must list the card and torch.cuda.is_available() be True: the CUDA
    build of torch, see README "Set-up on a CUDA box"); `--cpu-twin` runs the same checks on a CPU.
    """


def target(name: str, value, goal, unit: str, higher: bool = True) -> dict:
    met = None if value is None else bool(value >= goal if higher else value <= goal)
    return {"name": name, "value": value, "target": goal, "unit": unit, "met": met}


def settings_for(twin: bool) -> config.Settings:
    if twin:
        return config.load({"REFINERY_PROFILE": "cpu-fp16"}).replace(TWIN, source="gpu-check")
    return config.load({"REFINERY_PROFILE": "rtx2060"}).replace({"device": "cuda"}, source="gpu-check")


def memory_checks(settings: config.Settings, device_type: str) -> dict[str, dict]:
    """Estimate against measurement for each part a stage checks (toy step and evaluation of the first task,
    a language-modelling step, the depth probe), in the settings' dtype."""
    from experiments.stage_memory import toy_shape
    from experiments.train import eval_r_max
    from refiner_model.memory import compare_parts

    st, b = settings.stages, settings.train.batch_size
    chunk, r_eval = min(st.eval_chunk, st.test_examples), eval_r_max(settings)
    vocab, seq = toy_shape(settings, st.tasks[0])
    lm_vocab = settings.model.vocab_size if device_type == "cuda" else CPU_LM_VOCAB
    _, pseq = toy_shape(settings, st.full_probe_task)
    parts = {"toy_train": dict(batch=b, seq=seq, vocab_size=vocab, lm_loss=False, kind="train"),
             "toy_eval": dict(batch=b, seq=seq, vocab_size=vocab, kind="eval", chunk=chunk, r=r_eval),
             "lm_train": dict(batch=b, seq=settings.model.seq_len, vocab_size=lm_vocab, lm_loss=True, kind="train"),
             "probe": dict(batch=b, seq=pseq, vocab_size=lm_vocab, kind="probe", chunk=chunk, r=r_eval)}
    res = compare_parts(settings, parts, device_type)
    return {name: {k: r[k] for k in ("estimate", "measured", "error", "dtype")} for name, r in res.items()}


PARTS = ("smoke", "memory", "throughput", "sdpa")


def run(twin: bool, run_root: Path, parts: tuple[str, ...] = PARTS) -> dict[str, Any]:
    import torch

    from experiments.stage import execute
    from refiner_model.bench import bench_arms
    from refiner_model.precision import Precision

    if not twin and not torch.cuda.is_available():
        raise GpuCheckError("no CUDA GPU: torch.cuda.is_available() is False "
                            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
    t0 = time.perf_counter()
    s = settings_for(twin)
    prec = Precision.from_settings(s)
    device_type = prec.device.type
    if device_type == "cuda":
        total = torch.cuda.get_device_properties(prec.device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, CARD_BYTES / total), prec.device)
        cap = torch.cuda.get_device_capability(prec.device)
        device = f"{torch.cuda.get_device_name(prec.device)} (sm_{cap[0]}{cap[1]}), held to 6 GiB"
    else:
        device = f"cpu: {platform.processor() or platform.machine()} (twin: float16 on the CPU)"
    code, smoke, mem, arms, sdpa = None, {}, {}, {}, None
    if "smoke" in parts:  # 1. smoke in float16
        code, smoke = execute("smoke", s, {}, run_root / f"smoke-{time.strftime('%Y%m%d-%H%M%S')}")
    sf = smoke.get("figures", {})
    if "memory" in parts:  # 2. memory, every part
        mem = memory_checks(s if device_type == "cuda" else s.replace(MEM_TWIN, source="gpu-check"), device_type)
    worst = max((m["error"] for m in mem.values()), default=None)
    if "throughput" in parts:  # 3. tokens/s and MFU of `small` (CPU twin: tiny, one thread, a compact vocabulary)
        bs = s.replace({"preset": "small" if device_type == "cuda" else "tiny", "r_mean": 4, "r_max": 4,
                        "n_prelude": 1, "seed": 0}, source="gpu-check")
        cuda = device_type == "cuda"
        arms, _ = bench_arms(bs, 32 if cuda else 8, 256 if cuda else 32, bs.model.vocab_size if cuda else 512,
                             *((3, 3, 2) if cuda else (1, 2, 1)))  # rounds, steps per round, warm-up
    mfu = arms.get("refiner", {}).get("mfu")
    if "sdpa" in parts and device_type == "cuda":  # 4. the attention kernel
        sdpa = prec.check_attention(s.dims["d_model"] // s.dims["n_heads"])
    fast = None if sdpa is None else sdpa in ("SDPA efficient_attention", "SDPA flash_attention",
                                              "SDPA cudnn_attention")
    return {
        "device": device,
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
                     "cudnn": torch.backends.cudnn.version() if device_type == "cuda" else None},
        "precision": prec.describe(),
        "figures": {
            "smoke": {"verdict": smoke.get("verdict"), "reason": smoke.get("reason"), "exit": code,
                      **{k: sf.get(k) for k in ("skipped_steps", "calibration_skips", "settled_skips", "grad_scale",
                                                "tokens_per_s", "train_s", "memory_estimate", "syncs")}},
            "memory": mem, "memory_limit_bytes": CARD_BYTES if device_type == "cuda" else None,
            "throughput": {a: {k: v[k] for k in ("tokens_per_s", "step_s", "flops_per_token", "achieved_flops")
                               if k in v} | ({"mfu": v["mfu"]} if "mfu" in v else {}) for a, v in arms.items()},
            "sdpa_backend": sdpa, "wall_s": time.perf_counter() - t0},
        "targets": [
            target("smoke_float16_pass", smoke.get("verdict") == "PASS" if smoke else None, True, "bool"),
            target("memory_estimate_error_max", worst, MEM_LIMIT, "relative", higher=False),
            target("mfu_small", mfu, MFU_TARGET, "fraction of peak fp16"),
            target("sdpa_fast_kernel", fast, True, "bool"),
            target("wall_s", time.perf_counter() - t0, 300.0, "s", higher=False),
        ],
    }


def print_table(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=max(Console().width, 110))
    t = Table(title=f"gpu-check — {res['device']}")
    for c in ("name", "value", "target", "unit", "met"):
        t.add_column(c)
    for x in res["targets"]:
        v = x["value"]
        t.add_row(x["name"], "null" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v)),
                  str(x["target"]), x["unit"], {True: "yes", False: "NO", None: "null"}[x["met"]])
    con.print(t)
    mt = Table(title="memory: estimate against measured peak")
    for c in ("part", "dtype", "estimate MiB", "measured MiB", "error"):
        mt.add_column(c)
    for part, m in res["figures"]["memory"].items():
        mt.add_row(part, m["dtype"], f"{m['estimate'] / 2**20:,.1f}", f"{m['measured'] / 2**20:,.1f}",
                   f"{m['error']:.1%}")
    con.print(mt)
    sm = res["figures"]["smoke"]
    con.print(f"{res['precision']}; smoke {sm['verdict']}: {sm['reason']}; wall {res['figures']['wall_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.gpucheck", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-twin", action="store_true", help="the same checks on the CPU in float16 (tests)")
    ap.add_argument("--json", default=None, help="default runs/bench/gpu-check.json (twin: gpu-check-cpu-twin.json)")
    ap.add_argument("--run-dir", default=None, help="where the smoke run goes (default runs/gpu-check/)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"a comma-separated subset of {', '.join(PARTS)}")
    args = ap.parse_args(argv)
    name = "gpu-check-cpu-twin.json" if args.cpu_twin else "gpu-check.json"
    path = Path(args.json or config.ROOT / "runs" / "bench" / name)
    run_root = Path(args.run_dir) if args.run_dir else (config.ROOT / "runs" / "gpu-check")
    try:
        res = run(args.cpu_twin, run_root, tuple(p.strip() for p in args.parts.split(",") if p.strip()))
    except GpuCheckError as e:
        print(f"gpu-check: {e}. It needs a CUDA GPU: run it on the GPU box (see README \"Set-up on a CUDA box\"); "
              "`python -m experiments.gpucheck --cpu-twin` runs the same checks on this CPU.", file=sys.stderr)
        return 2
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1, default=str))
    print_table(res)
    print(f"wrote {path}")
    return 0 if all(x["met"] is not False for x in res["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
