"""experiments/calibration.py: independent A/A and graded ablations, real tiny runs, resumable; the summary's
counts and exact intervals.  Run: .venv/bin/python -m pytest tests/test_calibration.py"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import config
from experiments import calibration as cal

TINY = config.load({}).replace({
    "tasks": ("khop",), "control_task": "copy", "khop_k": 1, "ablation_steps": 10, "test_examples": 100,
    "batch_size": 8, "r_max": 2, "r_mean": 2, "init_std": 0.1, "ablation_seeds": 2, "extend_seeds": 1,
    "bootstrap_resamples": 200, "pass_min_tasks": 1, "stage_jobs": 1, "stage_threads": 1})


def test_unit_seeds_are_disjoint_across_units_and_shared_by_the_grades_of_one():
    seen = set()
    for i in range(12):
        ss = [x for v in cal.unit_seeds(config.load({}), i).values() for x in v]
        assert len(ss) == 20 and not seen & set(ss) and min(ss) >= config.CALIBRATION_SEED_BASE
        seen |= set(ss)


def test_an_injected_effect_lowers_the_control_by_that_much_and_never_below_the_trivial_answer():
    rng = np.random.default_rng(0)
    run = {"r1": 40.0, "rbar": 60.0, "r2bar": 58.0, "floor": 0.1}
    draws = [cal.inject(run, 10.0, 500, rng) for _ in range(4000)]
    assert np.mean([d["rbar"] for d in draws]) == pytest.approx(50.0, abs=0.15)  # 60 − 10
    assert np.mean([d["r1"] for d in draws]) == pytest.approx(40.0 - 10.0 * 30 / 50, abs=0.15)  # the same rate q
    assert np.std([d["rbar"] for d in draws]) > 1.0  # the test set's sampling noise, not a constant shift
    floored = [cal.inject(run, 80.0, 500, rng)["rbar"] for _ in range(2000)]
    assert np.mean(floored) == pytest.approx(10.0, abs=0.2)  # all answers replaced: the trivial answer's accuracy
    assert cal.inject({**run, "rbar": 9.0, "r1": 9.0, "r2bar": 9.0}, 10.0, 500, rng)["rbar"] == 9.0  # no room


def test_independent_units_resume_and_summarize(tmp_path):
    a0 = cal.run_unit(TINY, "aa", 0, tmp_path, jobs=1, log=lambda m: None)
    assert a0["verdict"] in config_verdicts() and a0["runs"] in (8, 12)  # 2 arms × 2 tasks × 2 seeds (+ 1 seed each)
    d = tmp_path / cal.series_key(TINY)
    trained = (d / "aa-0" / "runs.jsonl").read_text().splitlines()
    # the graded unit of the same index trains nothing new for its first round: it reads aa-0's runs
    e20 = cal.run_unit(TINY, "e20", 0, tmp_path, jobs=1,
                       log=lambda m: None if a0["first_round"] != "EXTEND" else pytest.fail("trained: " + m))
    after = (d / "aa-0" / "runs.jsonl").read_text().splitlines()
    assert after[:len(trained)] == trained and len(after) in (len(trained), 12)  # at most the extension is added
    assert e20["injected_effect"] == 20.0 and e20["seeds"] == a0["seeds"]
    # resumable: the decided unit is read back; with only its runs kept it decides again without training
    (d / "aa-0.json").unlink()
    again = cal.run_unit(TINY, "aa", 0, tmp_path, jobs=1, log=lambda m: pytest.fail("trained again: " + m))
    assert again["verdict"] == a0["verdict"] and again["delta"] == pytest.approx(a0["delta"])
    summ = cal.summarize(TINY, cal.load_units(TINY, tmp_path))
    aa = summ["grades"]["aa"]
    k = aa["pass"]
    ci = stats.binomtest(k, 1).proportion_ci(method="exact")
    assert aa["independent_ablations"] == 1 and aa["pass_rate_ci95"] == pytest.approx([ci.low, ci.high])
    assert summ["grades"]["e20"]["independent_ablations"] == 1 and summ["power_curve"][0]["independent_ablations"] == 1
    out = cal.report(TINY, cal.load_units(TINY, tmp_path), tmp_path / "cal.json", tmp_path / "docs")
    assert {"device", "versions", "targets", "figures"} <= set(out)
    assert (tmp_path / "docs" / "power_curve.png").is_file()
    fp = out["targets"][0]
    assert fp["name"] == "false_pass_rate_independent" and "1 independent A/A ablations" in fp["unit"]


def config_verdicts():
    from experiments.gate import VERDICTS

    return VERDICTS


def test_the_power_curve_interpolates_the_effect_at_the_target():
    units = [{"grade": g, "verdict": v, "effect": eff, "delta": {"khop": eff}, "runs": 8}
             for g, eff, vs in (("e5", 5.0, ["FAIL"] * 8 + ["PASS"] * 2), ("e10", 10.0, ["PASS"] * 6 + ["FAIL"] * 4),
                                ("e15", 15.0, ["PASS"] * 10)) for v in vs]
    summ = cal.summarize(TINY, units)
    assert [p["detection"] for p in summ["power_curve"]] == [0.2, 0.6, 1.0]
    assert summ["effect_at_power_target"] == pytest.approx(10.0 + (0.8 - 0.6) * 5.0 / 0.4)


def test_the_summary_says_which_clearing_check_stopped_a_task():
    checks = [{"delta": True, "separated": True, "depth_gain": False}] * 3 + [{"delta": True, "separated": False,
                                                                                "depth_gain": True}]
    units = [{"grade": "e20", "verdict": "FAIL", "effect": 20.0, "delta": {"khop": 20.0}, "runs": 8,
              "clearing": [], "checks": {"khop": c}} for c in checks]
    g = cal.summarize(TINY, units)["grades"]["e20"]
    assert g["task_clear_rate"] == {"khop": 0.0} and g["task_statistics_rate"] == {"khop": 0.75}
    assert g["task_depth_gain_rate"] == {"khop": 0.25}


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for t in Path(f"/proc/{pid}/task").iterdir():
        out |= {int(x) for x in (t / "children").read_text().split()}
    return out


def test_a_sigterm_to_a_unit_stops_its_worker_processes_too(tmp_path):
    """`kill` of a unit run by hand: its two training workers must not train on, orphaned, for a unit that is gone."""
    spec = tmp_path / "slow.toml"
    spec.write_text('arch = "refiner"\n[model]\ninit_std = 0.1\n[stages]\ntasks = ["khop", "listops"]\n'
                    'control_task = "copy"\nablation_steps = 100000\nablation_seeds = 2\ntest_examples = 100\n')
    p = subprocess.Popen([sys.executable, "-m", "experiments.calibration", "unit", "--spec", str(spec), "--jobs", "2",
                          "--units-dir", str(tmp_path / "units"), "--docs", ""], cwd=config.ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.5)
            workers = {c for c in _children(p.pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()}
        assert len(workers) >= 2, f"no training workers started: {p.stderr.read() if p.poll() is not None else ''}"
        time.sleep(2.0)  # the workers are training (100,000 steps: minutes, so nothing finishes on its own)
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{w}").exists() and "Z" not in Path(f"/proc/{w}/stat").read_text().split()[2]
                  for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        alive = [w for w in workers if Path(f"/proc/{w}").exists()
                 and "Z" not in Path(f"/proc/{w}/stat").read_text().split()[2]]
        assert not alive, f"worker processes {alive} train on after the unit was stopped"
        workers = set()  # gone: nothing to clean up (and their pids may be reused)
    finally:
        if p.poll() is None:
            p.kill()
        for w in workers:  # a failed run must not leave them training for minutes
            with contextlib.suppress(ProcessLookupError):
                os.kill(w, signal.SIGKILL)
