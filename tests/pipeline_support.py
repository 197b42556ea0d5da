"""A scripted stand-in for `python -m experiments.stage`, for the pipeline tests (stdlib only, starts fast).

    python -m tests.pipeline_support STAGE --spec SPEC.json --run-dir DIR [--job-id N] [--extend-from DIR]

It writes what a real stage writes — config.json, log.txt, progress.json, metrics.jsonl, plots/*.png,
ckpt/ (full), and result.json last — with evidence shaped like experiments/gate.py's. The verdicts come
from the issue title stored in SPEC.json, as words `stage=VERDICT` (default PASS):

    "gate idea smoke=PASS ablation=FAIL"   → ablation FAILs
    "crash=ablation"                       → the ablation child exits 3 without a result (a crash)
    "sleep=2"                              → each stage takes 2 s, writing progress as it goes
    "loss=2.5"                             → the full stage's candidate validation loss

Tests point agent.daemon.intake.STAGE_MODULE here (monkeypatch), so the real daemon, worker, runner and
outbox run unchanged around it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# the smallest valid PNG (1×1, transparent)
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000")
PNG += bytes.fromhex("1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


def words(title: str) -> dict[str, str]:
    return dict(w.split("=", 1) for w in title.split() if "=" in w)


def _write(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def evidence(stage: str, verdict: str, offset: float) -> dict:
    good = verdict == "PASS"
    cand = [80.0 + offset, 82.0 + offset, 85.0 + offset] if good else [50.0, 52.0, 49.0]
    ctrl = [60.0, 61.0, 58.0] if good else [51.0, 50.0, 52.0]
    d = sum(cand) / 3 - sum(ctrl) / 3
    task = {"role": "depth", "candidate": cand, "control": ctrl, "delta": d, "delta_ci": [d - 3, d + 3],
            "mannwhitney_p": 0.05 if good else 0.6, "holm_p": 0.05 if good else 0.6, "p_superiority": 1.0 if good
            else 0.4, "clears": good}
    copy = {"candidate": [99.0, 100.0, 99.0], "control": [99.0, 99.0, 100.0], "delta": 0.0, "delta_ci": [-1.0, 1.0],
            "mannwhitney_p": 0.5, "p_superiority": 0.5}
    return {"tasks": {"khop": task, "copy": copy}, "clearing_tasks": ["khop"] if good else [], "u": 1,
            "rank_u_p": 0.05 if good else 0.6, "alpha": 0.5, "control_ok": True, "extended": stage == "extend"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("stage")
    ap.add_argument("--spec", required=True)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--job-id", type=int)
    ap.add_argument("--extend-from")
    args = ap.parse_args(argv)
    doc = json.loads(Path(args.spec).read_text())
    w = words(doc.get("title", ""))
    stage = "extend" if args.extend_from else args.stage
    run = Path(args.run_dir)
    (run / "plots").mkdir(parents=True, exist_ok=True)
    _write(run / "config.json", {"stage": stage, "spec": doc.get("spec"), "job_id": args.job_id})
    with open(run / "log.txt", "a") as f:
        f.write(f"== fake {stage} ==\n")
    t0, total, sleep = time.time(), 10, float(w.get("sleep", 0))
    for i in range(total + 1):
        _write(run / "progress.json", {"done": i, "total": total, "what": f"candidate/khop/s{i % 3}",
                                       "elapsed_s": round(time.time() - t0, 2),
                                       "eta_s": round((time.time() - t0) / max(i, 1) * (total - i), 2)})
        with open(run / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"run": f"candidate/khop/s{i % 3}", "step": i, "loss": 2.0 / (i + 1)}) + "\n")
        time.sleep(sleep / total)
    if w.get("crash") == stage:
        print(f"fake {stage}: crashing on purpose", file=sys.stderr)
        return 3
    verdict = w.get(stage, "PASS")
    if doc.get("ladder") and "rerun" in w:  # a re-run one level along the difficulty ladder (experiments/ladder.py)
        verdict = w["rerun"]
    (run / "plots" / "depth.png").write_bytes(PNG)
    result = {"verdict": verdict, "reason": f"fake {stage} says {verdict}", "stage": stage, "figures": {},
              "run": {"git_sha": "0123456789abcdef0123", "dirty": False, "evaluation_fingerprint": "fp-test"}}
    if stage == "smoke":
        result["evidence"] = {"overfit": {"ok": verdict == "PASS", "detail": "one batch reached loss 0.01"},
                              "finite": {"ok": True, "detail": "0 of 10 steps skipped"}}
    elif stage == "full":
        loss = float(w.get("loss", 3.0))
        result["evidence"] = {"val_loss_candidate": [loss], "val_loss_control": [loss + 0.01], "mean_candidate": loss,
                              "mean_control": loss + 0.01, "loss_gap": -0.01, "depth_curve_r": [1, 2],
                              "depth_curve_mean": [10.0, 20.0], "checks": {"loss_gap": True, "depth_rising": True}}
        ck = run / "ckpt" / "candidate-s0"
        ck.mkdir(parents=True, exist_ok=True)
        (ck / "state.pt").write_bytes(b"fake weights")
        (ck / "meta.json").write_text("{}")
    else:
        result["evidence"] = evidence(stage, verdict, 1.0 if stage == "replication" else 0.0)
        if verdict == "INCONCLUSIVE":  # k-hop at the ceiling in both arms, as gate.decide_ablation reports it
            result["evidence"]["tasks"]["khop"].update(mean_candidate=99.5, mean_control=100.0, floor=13.5,
                                                       informative="ceiling")
            result["evidence"]["uninformative"] = {"khop": "ceiling"}
        if stage == "replication":
            result["replicates"] = verdict == "PASS"
    result["wall_s"] = round(time.time() - t0, 3)
    _write(run / "result.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
