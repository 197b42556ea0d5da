"""Throughput benchmark: training tokens/s, step time and achieved FLOP/s of refiner, reasoner and stack at
the same FLOPs per token (refiner/reasoner at r = r_mean with full backprop, stack of depth n_prelude + r_mean),
side by side in one run; on CUDA also MFU against hardware.peak_flops_fp16; and the memory estimate's error.

    python -m refiner_model.bench [--quick] [--json runs/bench/refiner_model.json] [--preset tiny]

The three arms run round-robin (a few steps each, several rounds; the best round per arm is reported, the
median is kept in the JSON), so load from other processes on a shared CPU hits all three alike.
CPU: one thread, a compact vocabulary (the r50k head would dominate a d = 64 model), float32.
CUDA: the r50k vocabulary, float16 autocast with GradScaler.
Targets (DESIGN.md "Benchmarks"): refiner_vs_stack_tokens_ratio >= 0.9, mfu_small >= 0.35 (CUDA only),
memory_estimate_error <= 0.10.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import config
from refiner_model.memory import compare
from refiner_model.model import build_model, configure_optimizer, flops_per_token, num_params
from refiner_model.precision import Precision

ARMS = ("refiner", "reasoner", "stack")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_arms(base: config.Settings, batch: int, seq: int, vocab: int, rounds: int, steps: int,
               warmup: int) -> tuple[dict, Precision]:
    prec = Precision.from_settings(base)
    r = base.model.r_mean
    arms = {}
    for arch in ARMS:
        st = base.replace({"arch": arch, "r_sampler": "fixed", "backprop_window": 0, "seq_len": seq})
        model = build_model(st, vocab).to(prec.device)
        model.track_stats = False
        opt = configure_optimizer(model, st)
        gen = torch.Generator().manual_seed(0)
        idx = torch.randint(0, vocab, (batch, seq + 1), generator=gen).to(prec.device)
        arms[arch] = {"model": model, "opt": opt, "x": idx[:, :-1], "y": idx[:, 1:], "times": [],
                      "fpt": flops_per_token(model, r, seq_len=seq), "params": num_params(model)}

    def step(a):
        with prec.autocast():
            _, loss = a["model"](a["x"], r=r, targets=a["y"])
        prec.step(loss, a["model"], a["opt"], base.train.grad_clip)

    for a in arms.values():
        for _ in range(warmup):
            step(a)
    for _ in range(rounds):
        for a in arms.values():
            _sync(prec.device)
            t0 = time.perf_counter()
            for _ in range(steps):
                step(a)
            _sync(prec.device)
            a["times"].append((time.perf_counter() - t0) / steps)
    out = {}
    for arch, a in arms.items():
        st = min(a["times"])  # best round: the least disturbed by other processes on a shared machine
        tps = batch * seq / st
        out[arch] = {"step_s": st, "step_s_median": statistics.median(a["times"]), "tokens_per_s": tps,
                     "flops_per_token": a["fpt"], "achieved_flops": tps * a["fpt"],
                     "params": a["params"], "step_s_all": a["times"], "skipped": prec.skipped}
        if prec.device.type == "cuda":
            out[arch]["mfu"] = tps * a["fpt"] / base.hardware.peak_flops_fp16
    return out, prec


def target(name, value, goal, unit, higher=True):
    met = None if value is None else (value >= goal if higher else value <= goal)
    return {"name": name, "value": value, "target": goal, "unit": unit, "met": met}


def run(args) -> dict:
    cuda = torch.cuda.is_available() and args.device != "cpu"
    preset = args.preset or ("small" if cuda else "tiny")
    base = config.load().replace({"preset": preset, "device": "cuda" if cuda else "cpu", "r_mean": args.r,
                                  "r_max": max(args.r, 4), "n_prelude": 1, "seed": 0})
    if not cuda:
        torch.set_num_threads(args.threads)
    vocab = args.vocab or (base.model.vocab_size if cuda else 512)
    batch = args.batch or (32 if cuda else 32)
    seq = args.seq or (256 if cuda else 64)
    rounds, steps, warmup = (4, 3, 2) if args.quick else (10, 5, 3)
    t0 = time.perf_counter()
    arms, prec = bench_arms(base, batch, seq, vocab, rounds, steps, warmup)

    # the memory estimate against a real step, on a configuration its constants were not fitted on
    mem_st = base.replace({"arch": "refiner", "d_model": 96, "n_heads": 3, "d_mlp": 384, "r_max": 3,
                           "r_mean": 2, "seq_len": 96, "device": "cpu", "preset": "tiny"})
    mem_cpu = compare(mem_st, 24, 96, 1024)
    mem_cuda = None
    if cuda:
        mem_cuda = compare(base.replace({"arch": "refiner"}), batch, seq, vocab, device_type="cuda")
    mem_err = max(mem_cpu["error"], mem_cuda["error"] if mem_cuda else 0.0)

    ratio = arms["refiner"]["tokens_per_s"] / arms["stack"]["tokens_per_s"]
    mfu_small = arms["refiner"].get("mfu") if (cuda and preset == "small") else None
    device = (torch.cuda.get_device_name(prec.device) if cuda
              else f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s) "
                   f"of {__import__('os').cpu_count()} cores")
    return {
        "device": device,
        "versions": {"torch": torch.__version__, "python": platform.python_version(), "numpy": np.__version__,
                     "cuda": torch.version.cuda},
        "precision": prec.describe(),
        "setup": {"preset": preset, "dims": base.dims, "n_prelude": 1, "r": args.r, "batch": batch, "seq": seq,
                  "vocab": vocab, "loss": "chunked LM loss over all tokens", "rounds": rounds,
                  "steps_per_round": steps, "quick": args.quick},
        "figures": {"arms": arms, "refiner_vs_stack_tokens_ratio": ratio,
                    "reasoner_vs_stack_tokens_ratio": arms["reasoner"]["tokens_per_s"] / arms["stack"]["tokens_per_s"],
                    "memory_cpu": {k: mem_cpu[k] for k in ("estimate", "measured", "error")},
                    "memory_cuda": {k: mem_cuda[k] for k in ("estimate", "measured", "error")} if mem_cuda else None,
                    "wall_s": time.perf_counter() - t0},
        "targets": [
            target("refiner_vs_stack_tokens_ratio", ratio, 0.9, "x"),
            target("mfu_small", mfu_small, 0.35, "fraction of peak fp16"),
            target("memory_estimate_error", mem_err, 0.10, "relative", higher=False),
        ],
    }


def print_table(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=max(Console().width, 110))
    t = Table(title=f"refiner_model.bench — {res['device']}")
    for c in ("arm", "params", "FLOPs/token", "step ms", "tokens/s", "achieved FLOP/s", "MFU"):
        t.add_column(c, justify="right")
    for arch, a in res["figures"]["arms"].items():
        mfu = f"{a['mfu']:.1%}" if "mfu" in a else "n/a (CPU)"
        t.add_row(arch, f"{a['params']:,}", f"{a['flops_per_token'] / 1e6:.2f} M", f"{a['step_s'] * 1e3:.1f}",
                  f"{a['tokens_per_s']:,.0f}", f"{a['achieved_flops'] / 1e9:.2f} G", mfu)
    con.print(t)
    tt = Table(title="targets")
    for c in ("name", "value", "target", "unit", "met"):
        tt.add_column(c)
    for x in res["targets"]:
        v = "null" if x["value"] is None else f"{x['value']:.3f}"
        op = "<=" if x["name"] == "memory_estimate_error" else ">="
        tt.add_row(x["name"], v, f"{op} {x['target']}", x["unit"], {True: "yes", False: "NO", None: "null"}[x["met"]])
    con.print(tt)
    con.print(f"{res['precision']}; setup {res['setup']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds: under a minute on 2 CPU cores")
    ap.add_argument("--json", default=str(config.ROOT / "runs" / "bench" / "refiner_model.json"))
    ap.add_argument("--preset", choices=tuple(config.SIZE_PRESETS), default=None,
                    help="size preset (default: small on CUDA, tiny on CPU)")
    ap.add_argument("--device", choices=("auto", "cpu"), default="auto")
    ap.add_argument("--r", type=int, default=4, help="loop depth r = r_mean (the stack has n_prelude + r blocks)")
    ap.add_argument("--batch", type=int, default=0)
    ap.add_argument("--seq", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=0, help="0: 512 on CPU, the r50k vocabulary on CUDA")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads")
    args = ap.parse_args(argv)
    res = run(args)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1, default=str))
    print_table(res)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
