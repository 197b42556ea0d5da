"""The gate's error rates from genuinely independent ablations: the A/A false-PASS count and a graded power curve.

    python -m experiments.calibration unit --grade aa --index 3 [--spec S] [--run-dir DIR]   # one ablation
    python -m experiments.calibration run [--per-grade 10] [--grades aa,e10] [--quick]        # the missing ones
    python -m experiments.calibration summary [--json PATH]                                   # docs/calibration/

Every *unit* is one full ablation at the calibration setting (a spec, default experiments/specs/calibration.toml:
the demo's model and tasks at 600 steps, the quickest setting whose control task is healthy), decided by
gate.decide_ablation exactly as the stage does (EXTEND trains the extra seeds and re-decides at α/2). Unit index i
has seeds of its own: CALIBRATION_SEED_BASE + a block per index, disjoint from every other index's, so within a
grade no run is used twice and the units are independent. Grades (config.CALIBRATION_GRADES): "aa" — both arms
the spec's architecture with every step, so any PASS is a false PASS; "e5" … "e20" — the same runs with a known
effect injected into the control arm (its depth-task answers replaced by the trivial answer at the rate that
lowers each run's accuracy at r̄ by 5 … 20 points; seeded binomial draws, so the grade's effect carries the test
set's sampling noise on top of the seed-to-seed spread). The grades of one index share its runs: independent
within a grade, correlated across grades (the curve's points are not independent of each other).

Resumable: each run is appended to runs/calibration/<key>/aa-<index>/runs.jsonl as it finishes (every grade of the
index reads it), a decided unit writes <grade>-<index>.json; <key> hashes the calibration settings, so another
spec starts another series. As a
queue job (kind "calibrate", cpu lane), `unit --run-dir {run_dir}` writes result.json; an idle daemon queues the
missing units itself when calibrate_every_s is set (agent/daemon/calibration_jobs.py).
The summary reports per grade the ablations behind it, the verdicts, the PASS count with its exact (Clopper–
Pearson) 95% interval, the measured effect, and the effect at which detection reaches power_target (linear
interpolation between graded points; None when not reached); plots and JSON go to docs/calibration/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

import config
from config import CALIBRATION_GRADES, CALIBRATION_SEED_BASE, ROOT, Settings
from experiments import gate
from experiments.runs import versions, write_json_atomic

UNITS_DIR = ROOT / "runs" / "calibration"
DOCS_DIR = ROOT / "docs" / "calibration"
DEFAULT_SPEC = ROOT / "experiments" / "specs" / "calibration.toml"  # the demo's tasks at 600 steps (its comments)
BLOCK = 100_000  # calibration seeds: unit index i uses base + i·2(n + extend) … (every grade of i the same)


def series_key(s: Settings) -> str:
    keys = {k: s.get(k) for k in sorted(s.flat()) if config.FIELD_SECTION[k] in ("model", "train", "stages", "gate")
            and k not in ("stage_jobs", "stage_threads", "device")}
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:12]


def unit_seeds(s: Settings, index: int) -> dict[str, list[int]]:
    """Disjoint seeds of unit index `index` (every grade of it): candidate and control, first round and extension."""
    n, e = s.stages.ablation_seeds, s.gate.extend_seeds
    b = CALIBRATION_SEED_BASE + index * 2 * (n + e)
    if index * 2 * (n + e) + 2 * (n + e) > BLOCK:
        raise config.ConfigError([config.Problem("calibration", f"unit {index} runs past the calibration's seed "
                                                 "block", "use fewer units per grade")])
    return {"candidate": list(range(b, b + n)), "control": list(range(b + n, b + 2 * n)),
            "candidate_ext": list(range(b + 2 * n, b + 2 * n + e)), "control_ext": list(range(b + 2 * n + e,
                                                                                              b + 2 * (n + e)))}


def _run(s: Settings, task: str, seed: int, steps: int, arm: str) -> dict:
    from experiments.train import train_task

    res = train_task(s, task, seed, steps)
    return {"key": f"{arm}/{task}/s{seed}", "arm": arm, "task": task, "seed": seed, "steps": steps, **res["acc"],
            "floor": res["floor"], "train_s": res["train_s"]}


def _train(s: Settings, path: Path, seeds: dict[str, list[int]], which: tuple[str, str], jobs: int,
           log) -> dict[str, dict]:
    from experiments.train import run_many, stage_jobs

    have: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip().endswith("}"):
                rec = json.loads(line)
                have[rec["key"]] = rec
    steps = s.stages.ablation_steps
    tasks = list(s.stages.tasks) + [s.stages.control_task]
    todo = []
    for arm_key in which:
        arm = arm_key.split("_")[0]
        for seed in seeds[arm_key]:
            for t in tasks:
                if f"{arm}/{t}/s{seed}" not in have:
                    todo.append((s, t, seed, steps, arm))
    jobs = jobs or stage_jobs(s, len(todo))
    for _, rec in run_many(_run, todo, max(1, min(jobs, len(todo) or 1))):
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        have[rec["key"]] = rec
        log(f"{path.parent.name} {rec['key']}: r̄ {rec['rbar']:.1f} ({rec['train_s']:.1f} s)")
    return have


def inject(run: dict, effect: float, n: int, rng: np.random.Generator) -> dict[str, float]:
    """One control run's accuracies with `effect` points injected: each of its n test answers is replaced by the
    trivial answer (right with the task's floor probability) at the rate q that lowers its accuracy at r̄ by
    `effect` in expectation (q = effect / (r̄ − floor), at most 1: never below the trivial answer); each read
    depth is redrawn binomially (the kept right answers plus the replaced ones that happen to be right)."""
    floor = float(run["floor"])
    room = run["rbar"] - 100.0 * floor
    q = min(1.0, effect / room) if effect > 0 and room > 0 else 0.0
    out = {}
    for k in ("r1", "rbar", "r2bar"):
        right = int(round(run[k] * n / 100.0))
        out[k] = 100.0 * (rng.binomial(right, 1.0 - q) + rng.binomial(n, q * floor)) / n
    return out


def _evidence(s: Settings, runs: dict[str, dict], cand: list[int], ctrl: list[int], extended: bool,
              grade: str = "aa") -> dict:
    tasks = {t: "depth" for t in s.stages.tasks} | {s.stages.control_task: "control"}
    effect = CALIBRATION_GRADES[grade]
    ev: dict[str, Any] = {"tasks": {}, "extended": extended}
    for t, role in tasks.items():
        floor = next((r["floor"] for r in runs.values() if r["task"] == t), None)
        ev["tasks"][t] = {"role": role, "floor": None if floor is None else 100.0 * floor}
        for arm, seeds in (("candidate", cand), ("control", ctrl)):
            reads = []
            for sd in seeds:
                run = runs[f"{arm}/{t}/s{sd}"]
                if arm == "control" and role == "depth" and effect > 0:  # the control task stays intact
                    run = inject(run, effect, s.stages.test_examples,
                                 np.random.default_rng([sd, list(CALIBRATION_GRADES).index(grade), 0xCA1]))
                reads.append(run)
            ev["tasks"][t][arm] = {k: [r[k] for r in reads] for k in ("r1", "rbar", "r2bar")}
    return ev


def run_unit(s: Settings, grade: str, index: int, root: Path | None = None, jobs: int = 0, log=print) -> dict:
    """One independent ablation (resumable); returns its record (also written as <grade>-<index>.json)."""
    d = (root or UNITS_DIR) / series_key(s)
    out = d / f"{grade}-{index}.json"
    if out.is_file():
        return json.loads(out.read_text())
    (d / f"aa-{index}").mkdir(parents=True, exist_ok=True)
    runs_file = d / f"aa-{index}" / "runs.jsonl"  # the index's runs, every grade's
    seeds = unit_seeds(s, index)
    t0 = time.time()
    runs = _train(s, runs_file, seeds, ("candidate", "control"), jobs, log)
    v = gate.decide_ablation(_evidence(s, runs, seeds["candidate"], seeds["control"], False, grade), s)
    first = v.verdict
    if v.verdict == "EXTEND":
        runs = _train(s, runs_file, seeds, ("candidate_ext", "control_ext"), jobs, log)
        v = gate.decide_ablation(_evidence(s, runs, seeds["candidate"] + seeds["candidate_ext"],
                                           seeds["control"] + seeds["control_ext"], True, grade), s)
    depth = {t: v.evidence["tasks"][t]["delta"] for t in s.stages.tasks}
    rec = {"grade": grade, "index": index, "verdict": v.verdict, "first_round": first, "reason": v.reason,
           "delta": depth, "effect": float(np.mean(list(depth.values()))),
           "uninformative": v.evidence.get("uninformative", {}), "clearing": v.evidence.get("clearing_tasks", []),
           "checks": {t: v.evidence["tasks"][t].get("checks", {}) for t in s.stages.tasks},
           "seeds": seeds, "runs": len(runs),
           "wall_s": round(time.time() - t0, 1), "series": series_key(s),
           "injected_effect": CALIBRATION_GRADES[grade]}
    write_json_atomic(out, rec)
    return rec


def load_units(s: Settings, root: Path | None = None) -> list[dict]:
    d = (root or UNITS_DIR) / series_key(s)
    return [json.loads(p.read_text()) for p in sorted(d.glob("*-*.json"))] if d.is_dir() else []


def _ci(k: int, n: int) -> list[float] | None:
    if not n:
        return None
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return [float(ci.low), float(ci.high)]


def _held(unit: dict, task: str, *checks: str) -> bool:
    c = unit.get("checks", {}).get(task, {})
    return all(bool(c.get(k)) for k in checks)


def _rates(units: list[dict], holds) -> dict[str, float]:
    """Per depth task: the share of `units` for which holds(unit, task)."""
    return {t: float(np.mean([holds(u, t) for u in units])) for t in units[0]["delta"]}


def summarize(s: Settings, units: list[dict]) -> dict[str, Any]:
    """Per grade: independent ablations, verdicts, PASS count and its exact interval, measured effect; the power
    curve and the effect at which detection reaches power_target."""
    grades: dict[str, Any] = {}
    for g in CALIBRATION_GRADES:
        us = [u for u in units if u["grade"] == g]
        if not us:
            continue
        k = sum(u["verdict"] == "PASS" for u in us)
        verdicts = {v: sum(u["verdict"] == v for u in us) for v in gate.VERDICTS}
        grades[g] = {"independent_ablations": len(us), "verdicts": verdicts, "pass": k, "pass_rate": k / len(us),
                     "pass_rate_ci95": _ci(k, len(us)), "effect_mean": float(np.mean([u["effect"] for u in us])),
                     "effect_per_task": {t: float(np.mean([u["delta"][t] for u in us])) for t in us[0]["delta"]},
                     # which of a clearing task's checks held: the statistics (mean Δ ≥ the bar and complete
                     # separation) v. the candidate's own depth gain, so a zero PASS rate says which one stopped it
                     "task_clear_rate": _rates(us, lambda u, t: t in u.get("clearing", [])),
                     "task_statistics_rate": _rates(us, lambda u, t: _held(u, t, "delta", "separated")),
                     "task_depth_gain_rate": _rates(us, lambda u, t: _held(u, t, "depth_gain")),
                     "injected_effect": CALIBRATION_GRADES[g], "runs": sum(u["runs"] for u in us)}
    curve = sorted(((v["effect_mean"], v["pass_rate"], v["independent_ablations"]) for g, v in grades.items()
                    if g != "aa"), key=lambda x: x[0])
    at = None
    for (e0, p0, _), (e1, p1, _) in zip(curve, curve[1:]):
        if p0 < s.gate.power_target <= p1:
            at = e0 + (s.gate.power_target - p0) * (e1 - e0) / (p1 - p0)
            break
    if at is None and curve and curve[0][1] >= s.gate.power_target:
        at = curve[0][0]  # already at the smallest graded effect: an upper bound
    return {"grades": grades, "power_curve": [{"effect": e, "detection": p, "independent_ablations": n}
                                              for e, p, n in curve],
            "effect_at_power_target": at, "power_target": s.gate.power_target, "series": series_key(s)}


def plot(summary: dict, path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    pts = summary["power_curve"]
    if pts:
        ax.plot([p["effect"] for p in pts], [p["detection"] for p in pts], "o-",
                label="graded effect injected into the control")
        for p in pts:
            ax.annotate(f"n={p['independent_ablations']}", (p["effect"], p["detection"]), fontsize=7)
    aa = summary["grades"].get("aa")
    if aa:
        ax.errorbar([aa["effect_mean"]], [aa["pass_rate"]], yerr=[[0], [aa["pass_rate_ci95"][1] - aa["pass_rate"]]],
                    fmt="s", color="grey", label=f"A/A false PASS (n={aa['independent_ablations']})")
    ax.axhline(summary["power_target"], color="grey", ls=":", lw=1)
    ax.set_xlabel("measured effect: mean Δ at r̄ over depth tasks (points)")
    ax.set_ylabel("PASS rate (independent ablations)")
    ax.set_ylim(-0.05, 1.05)
    if ax.get_legend_handles_labels()[0]:  # nothing decided yet: an empty plot, no empty legend
        ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def report(s: Settings, units: list[dict], out_json: Path, docs: Path | None = None) -> dict:
    """The benchmark JSON (DESIGN.md contract) and docs/calibration/ (plot, summary.json)."""
    from refiner_model.precision import resolve_device

    summ = summarize(s, units)
    aa = summ["grades"].get("aa")
    targets = []
    if aa:
        targets.append({"name": "false_pass_rate_independent", "value": aa["pass_rate"], "target": 0.01,
                        "unit": f"fraction of {aa['independent_ablations']} independent A/A ablations ({aa['pass']} "
                                f"PASS; exact 95% CI {aa['pass_rate_ci95'][0]:.3f}–{aa['pass_rate_ci95'][1]:.3f})",
                        "met": aa["pass_rate_ci95"][1] <= 0.01 if aa["pass_rate_ci95"] else False})
    for g, v in summ["grades"].items():
        if g != "aa":
            targets.append({"name": f"detection_{g}", "value": v["pass_rate"], "target": s.gate.power_target,
                            "unit": f"fraction of {v['independent_ablations']} independent ablations at a measured "
                                    f"effect of {v['effect_mean']:+.1f} points ({v['injected_effect']:g} points "
                                    "injected into the control arm's depth tasks)",
                            "met": v["pass_rate"] >= s.gate.power_target})
    at = summ["effect_at_power_target"]
    targets.append({"name": "effect_at_80pct_detection", "value": at if at is not None else float("nan"),
                    "target": s.gate.pass_delta_points, "unit": "points (interpolated on the graded power curve; nan: "
                    "not reached)", "met": at is not None and at <= 2 * s.gate.pass_delta_points})
    out = {"device": str(resolve_device(s.train.device)), "versions": versions(), "figures": summ,
           "method": "independent ablations within a grade: disjoint seeds per unit index, each run used once per "
                     "grade, no resampling; graded effects injected into the A/A runs' control arm (shared across "
                     "grades)",
           "targets": targets}
    write_json_atomic(out_json, out)
    if docs:
        docs.mkdir(parents=True, exist_ok=True)
        out["plot"] = plot(summ, docs / "power_curve.png")
        write_json_atomic(docs / "summary.json", out)
    return out


def summary_markdown(out: dict, spec_name: str) -> str:
    """docs_dir/calibration/summary.md: the figures so far, each with the independent ablations behind it."""
    summ = out["figures"]
    lines = [f"# Calibration so far (series {summ['series']}, spec `{spec_name}`)", "",
             "Written after each `calibrate` unit (experiments/calibration.py). Within a grade every count is of "
             "independent ablations: each its own disjoint seeds, decided by the gate as a stage is; nothing is "
             "resampled. The graded units reuse the A/A units' runs with a known effect injected into the control "
             "arm, so the grades are correlated with each other.", "",
             "| grade | injected effect | independent ablations | PASS | PASS rate [exact 95% CI] | "
             "measured effect (points) | tasks clearing (share of units) | Δ ≥ bar and separated | candidate's depth "
             "gain | verdicts |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for g, v in summ["grades"].items():
        ci = v["pass_rate_ci95"] or [float("nan")] * 2
        verdicts = ", ".join(f"{k} {n}" for k, n in v["verdicts"].items() if n)
        lines.append(f"| {g} | {v['injected_effect']:g} points | {v['independent_ablations']} | {v['pass']} | "
                     f"{v['pass_rate']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}] | {v['effect_mean']:+.1f} | "
                     + " | ".join(", ".join(f"{t} {r:.0%}" for t, r in v.get(key, {}).items())
                                  for key in ("task_clear_rate", "task_statistics_rate", "task_depth_gain_rate"))
                     + f" | {verdicts} |")
    at = summ.get("effect_at_power_target")
    lines += ["", f"Effect at {summ['power_target']:.0%} detection: "
              + (f"{at:.1f} points" if at is not None else "not reached yet") + ".", "",
              "![power curve](power_curve.png)", ""]
    return "\n".join(lines)


def _settings(spec: str | None, quick: bool) -> Settings:
    from experiments.spec import spec_from_file

    s = spec_from_file(spec or DEFAULT_SPEC).settings
    if quick:  # the machinery in about a minute: tiny steps and test sets (its figures are not the calibration)
        s = s.replace({"ablation_steps": 40, "test_examples": 200, "ablation_seeds": 3, "extend_seeds": 2,
                       "bootstrap_resamples": 500})
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.calibration", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("unit", "run", "summary"))
    ap.add_argument("--spec", default=None, help="the calibration setting (default the demo spec)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--grade", default="aa", choices=tuple(CALIBRATION_GRADES))
    ap.add_argument("--grades", default=",".join(CALIBRATION_GRADES))
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--per-grade", type=int, default=10, help="run: independent ablations per grade")
    ap.add_argument("--jobs", type=int, default=0)
    ap.add_argument("--run-dir", help="unit as a queue job: result.json goes here")
    ap.add_argument("--units-dir", default=str(UNITS_DIR))
    ap.add_argument("--json", default=str(ROOT / "runs" / "bench" / "calibration.json"))
    ap.add_argument("--docs", default=str(DOCS_DIR), help="summary: where the plot and summary.json go ('' = none)")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    # SIGTERM (`kill`, a service manager) unwinds like Ctrl-C: run_many terminates its worker processes, which
    # would otherwise train on, orphaned, for a unit that is gone (the runs already appended are kept)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    s = _settings(a.spec, a.quick)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    root = Path(a.units_dir)
    if a.what == "unit":
        rec = run_unit(s, a.grade, a.index, root, a.jobs, log)
        if a.run_dir:
            Path(a.run_dir).mkdir(parents=True, exist_ok=True)
            write_json_atomic(Path(a.run_dir) / "result.json", {"verdict": "DONE", "reason": rec["reason"], **rec})
        print(json.dumps({k: rec[k] for k in ("grade", "index", "verdict", "effect")}))
        return 0
    if a.what == "run":
        for i in range(a.per_grade):  # index by index: the grades of an index share its runs
            for g in a.grades.split(","):
                rec = run_unit(s, g, i, root, a.jobs, log)
                log(f"unit {g}-{i}: {rec['verdict']} (effect {rec['effect']:+.1f})")
    out = report(s, load_units(s, root), Path(a.json), Path(a.docs) if a.docs else None)
    if a.docs:
        (Path(a.docs) / "summary.md").write_text(summary_markdown(out, Path(a.spec or DEFAULT_SPEC).name))
    for t in out["targets"]:
        met = "met" if t["met"] else "NOT met"
        print(f"{t['name']:32s} {t['value']:.4g}  (target {t['target']:g}; {t['unit']})  {met}")
    print(f"written {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
