"""The noise floor: re-run the control (reasoner) on fresh seeds and measure its seed-to-seed spread.

    python -m experiments.noise --spec SPEC.json --run-dir DIR --seeds N --round K

The pipeline queues this on an idle lane every noise_floor_every_s (agent/daemon/pipeline.py). SPEC.json is
{"spec": {flat config keys}} (the operator's effective settings, so the child's environment cannot change
what runs). For every depth task it trains the reasoner on N fresh seeds (NOISE_SEED_BASE + K·N …, never
an ablation's or a replication's), reads accuracy at r̄, and writes DIR/result.json =
{"verdict": "DONE", "tasks": {task: {"values": [...], "mean", "std"}}, "seeds": [...]}, with
progress.json and metrics.jsonl like a stage. The pipeline pools the per-task standard deviations into
`noise-floor`; each verdict then shows Δ in units of that measured spread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

NOISE_SEED_BASE = 500_000  # far from the ablation (0 …) and the replication (10,000 …) seeds


def noise_argv(spec_file: str, seeds: int, rnd: int) -> list[str]:
    """The child's command line as the queue stores it (the runner fills in {python} and {run_dir})."""
    return ["{python}", "-m", "experiments.noise", "--spec", str(spec_file), "--run-dir", "{run_dir}",
            "--seeds", str(seeds), "--round", str(rnd)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.noise", description=__doc__.splitlines()[0])
    ap.add_argument("--spec", required=True)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--round", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    import config
    from experiments.noisefloor import fingerprint
    from experiments.runs import Run
    from experiments.train import train_task

    doc = json.loads(open(args.spec).read())
    flat = {k: tuple(v) if isinstance(v, list) else v for k, v in doc.get("spec", doc).items()
            if k in config.FIELD_SECTION}
    settings = config.load({}).replace(flat, source="noise spec")
    torch.set_num_threads(settings.stages.stage_threads or 1)
    run = Run(args.run_dir, echo=True)
    seeds = [NOISE_SEED_BASE + args.round * args.seeds + i for i in range(args.seeds)]
    tasks = list(settings.stages.tasks)
    steps = settings.stages.ablation_steps
    total, done = len(tasks) * len(seeds) * steps, 0
    t0 = time.time()
    out: dict[str, dict] = {}
    for t in tasks:
        values = []
        for seed in seeds:
            def tick(step: int, rec: dict, base=done, what=f"reasoner/{t}/s{seed}") -> None:
                if step % 25 == 0:
                    run.progress(base + step, total, what)
            res = train_task(settings, t, seed, steps, arch="reasoner", on_step=tick)
            values.append(res["acc"]["rbar"])
            done += steps
            run.metric({"run": f"reasoner/{t}/s{seed}", **res["acc"]})
            run.log(f"noise floor: reasoner/{t}/s{seed}: acc at r̄ {res['acc']['rbar']:.1f}")
        out[t] = {"values": values, "mean": statistics.fmean(values), "std": statistics.stdev(values),
                  "fingerprint": fingerprint(settings, t)}  # experiments/noisefloor.py: what shaped these runs
    run.progress(total, total, "done", force=True)
    run.write_result({"verdict": "DONE", "reason": "; ".join(f"{t} σ {v['std']:.2f} points" for t, v in out.items()),
                      "tasks": out, "seeds": seeds, "steps": steps, "wall_s": round(time.time() - t0, 2)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
