"""A stage whose training is synthetic and everything else real, for `refinery verify`'s tests.

    python -m tests.verify_support STAGE --spec SPEC.json --run-dir DIR [--job-id N]

This is experiments.stage itself (config.json, the log's preamble with the evaluation fingerprint, done.jsonl,
the real gate, plots, result.json last) with one thing replaced: experiments.train.train_task, so a run
"trains" in microseconds. Its accuracies are a fixed function of (task, arm, seed) and the word `effect=D` in the
issue title (the candidate's lead on the depth tasks, points; default 0): the gate then decides on them as on a
trained model's. The smoke stage reports its checks healthy without training.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BASE = {"khop": 55.0, "listops": 45.0, "s5": 50.0}
FLOOR = {"khop": 0.125, "listops": 0.10, "s5": 0.0083, "copy": 0.0625}


def accuracy(task: str, arm: str, seed: int, effect: float) -> dict[str, float]:
    """r = 1, r̄ and 2r̄ accuracy (points) of one synthetic run."""
    jitter = ((seed * 31 + len(task) * 7 + (3 if arm == "candidate" else 0)) % 5) * 0.5 - 1.0
    if task not in BASE:  # the control task: both arms near the ceiling
        rbar = 99.5 + 0.3 * jitter
        return {"r1": rbar, "rbar": rbar, "r2bar": rbar}
    rbar = BASE[task] + (effect if arm == "candidate" else 0.0) + jitter
    return {"r1": rbar - (20.0 if arm == "candidate" else 15.0), "rbar": rbar, "r2bar": rbar - 1.0}


def install(effect: float) -> None:
    from experiments import stages_impl

    def train_task(settings, task, seed, steps, arch=None, log_every=10, on_step=None):
        arm = "control" if arch == "reasoner" else "candidate"
        acc = accuracy(task, arm, seed, effect)
        curve = [acc["r1"]] + [acc["rbar"]] * (2 * settings.r_eval - 2) + [acc["r2bar"]]
        return {"curve": curve, "acc": acc, "train_s": 0.01, "tokens_per_s": 1e6, "floor": FLOOR.get(task, 0.0),
                "gate_mean": [0.7], "skipped": 0, "calibration_skips": 0, "settled_skips": 0, "grad_scale": None,
                "history": [{"step": 0, "loss": 2.0}, {"step": steps, "loss": 1.0}]}

    def smoke(ctx):
        ctx.total_units = 1.0
        return {"verdict": "PASS", "reason": "healthy: overfit 0.010, no NaN (synthetic)",
                "evidence": {"overfit": {"ok": True, "detail": "one batch reached loss 0.010 (must be ≤ 0.05)"},
                             "finite": {"ok": True, "detail": "0 of 20 steps skipped for non-finite loss/grads"}},
                "figures": {"overfit_loss": 0.01}}

    stages_impl.train_task = train_task
    stages_impl.stage_jobs = lambda settings, n: 1  # in this process, where train_task is the synthetic one
    stages_impl.smoke = smoke


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = Path(argv[argv.index("--spec") + 1])
    words = dict(w.split("=", 1) for w in json.loads(spec.read_text()).get("title", "").split() if "=" in w)
    install(float(words.get("effect", 0)))
    from experiments.stage import main as stage_main

    return stage_main(argv)


if __name__ == "__main__":
    sys.exit(main())
