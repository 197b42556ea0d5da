"""experiments/calibration.py: independent A/A and graded ablations, real tiny runs, resumable; the summary's
counts and exact intervals.  Run: .venv/bin/python -m pytest tests/test_calibration.py"""

from __future__ import annotations

import json

import pytest
from scipy import stats

import config
from experiments import calibration as cal

TINY = config.load({}).replace({
    "tasks": ("khop",), "control_task": "copy", "khop_k": 1, "ablation_steps": 10, "test_examples": 100,
    "batch_size": 8, "r_max": 2, "r_mean": 2, "init_std": 0.1, "ablation_seeds": 2, "extend_seeds": 1,
    "bootstrap_resamples": 200, "pass_min_tasks": 1, "stage_jobs": 1, "stage_threads": 1})


def test_unit_seeds_are_disjoint_across_units_and_grades():
    seen = set()
    for g in config.CALIBRATION_GRADES:
        for i in range(12):
            ss = [x for v in cal.unit_seeds(config.load({}), g, i).values() for x in v]
            assert len(ss) == 20 and not seen & set(ss) and min(ss) >= config.CALIBRATION_SEED_BASE
            seen |= set(ss)


def test_independent_units_resume_and_summarize(tmp_path):
    a0 = cal.run_unit(TINY, "aa", 0, tmp_path, jobs=1, log=lambda m: None)
    cal.run_unit(TINY, "e20", 0, tmp_path, jobs=1, log=lambda m: None)
    assert a0["verdict"] in config_verdicts() and a0["runs"] in (8, 12)  # 2 arms × 2 tasks × 2 seeds (+ extension)
    d = tmp_path / cal.series_key(TINY)
    runs = (d / "e20-0" / "runs.jsonl").read_text().splitlines()
    steps = {json.loads(x)["arm"] + "/" + json.loads(x)["task"]: json.loads(x)["steps"] for x in runs}
    assert steps["control/khop"] == 3 and steps["control/copy"] == 10 and steps["candidate/khop"] == 10
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
