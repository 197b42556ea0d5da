"""The gate's decision rule on constructed per-seed values.  Run: .venv/bin/python -m pytest tests/test_gate.py"""

from __future__ import annotations

import json

import pytest

import config
from experiments.gate import compare, decide_ablation, decide_full, holm

S = config.load({})


def arm(rbar, r1=None, r2=None):
    return {"rbar": rbar, "r1": r1 if r1 is not None else [x - 20 for x in rbar],
            "r2bar": r2 if r2 is not None else list(rbar)}


def evidence(depth: dict, control=(arm([99, 98, 99, 99, 98]), arm([99, 99, 98, 98, 99])), extended=False):
    tasks = {t: {"role": "depth", "candidate": c, "control": k} for t, (c, k) in depth.items()}
    tasks["summod"] = {"role": "control", "candidate": control[0], "control": control[1]}
    return {"tasks": tasks, "extended": extended}


GOOD = (arm([80, 82, 85, 79, 81]), arm([50, 52, 48, 55, 51]))
NULL = (arm([50, 52, 48, 55, 51], r1=[50, 52, 48, 55, 51]), arm([51, 50, 49, 53, 52]))


def test_an_arm_with_every_seed_equal_is_compared_without_a_warning():
    """A solved task (every seed 100.0) against one that varies: Welch's t uses the varying arm alone, and
    the user sees no scipy "catastrophic cancellation" warning in the middle of a stage's output."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = compare([100.0, 100.0, 100.0], [98.5, 100.0, 99.5], S)
    assert c["delta"] == pytest.approx(2 / 3) and 0 < c["welch_p"] < 0.5


def test_clear_pass_with_all_evidence():
    v = decide_ablation(evidence({"khop": GOOD, "s5": GOOD, "listops": NULL}), S)
    assert v.verdict == "PASS", v.reason
    ev = v.evidence["tasks"]["khop"]
    assert ev["mannwhitney_p"] == pytest.approx(1 / 252) and ev["separated"] and ev["p_superiority"] == 1.0
    assert ev["delta"] == pytest.approx(81.4 - 51.2) and ev["delta_ci"][0] > 20
    assert ev["candidate"] == [80, 82, 85, 79, 81] and ev["std_candidate"] > 0
    assert v.evidence["rank_u_p"] == pytest.approx(2 / 252) and v.evidence["clearing_tasks"] == ["khop", "s5"]
    assert v.evidence["holm_p"]["khop"] == pytest.approx(3 / 252)
    json.dumps(v.to_dict())  # the evidence is JSON-ready


def test_clear_fail_when_ci_below_five_everywhere():
    v = decide_ablation(evidence({"khop": NULL, "s5": NULL, "listops": NULL}), S)
    assert v.verdict == "FAIL" and "CI of Δ" in v.reason


def test_fail_when_depth_does_no_work():
    flat = (arm([80, 82, 85, 79, 81], r1=[80, 82, 85, 79, 81]), arm([50, 52, 48, 55, 51]))
    v = decide_ablation(evidence({"khop": flat, "s5": flat, "listops": flat}), S)
    assert v.verdict == "FAIL" and "depth does no work" in v.reason
    assert not v.evidence["tasks"]["khop"]["checks"]["depth_gain"]


def test_extend_when_one_seed_overlaps_then_fail_after_extension():
    overlap = (arm([80, 82, 85, 79, 50]), arm([50, 52, 48, 55, 51]))  # one candidate seed loses
    v = decide_ablation(evidence({"khop": overlap, "s5": GOOD, "listops": NULL}), S)
    assert v.verdict == "EXTEND", v.reason
    assert not v.evidence["tasks"]["khop"]["separated"]
    v2 = decide_ablation(evidence({"khop": overlap, "s5": GOOD, "listops": NULL}, extended=True), S)
    assert v2.verdict == "FAIL" and v2.evidence["alpha"] == S.gate.alpha / 2


def test_extended_ten_seeds_pass_at_half_alpha():
    c10 = arm([80, 82, 85, 79, 81, 83, 84, 80, 78, 86])
    k10 = arm([50, 52, 48, 55, 51, 49, 47, 53, 50, 54])
    v = decide_ablation(evidence({"khop": (c10, k10), "s5": (c10, k10), "listops": (c10, k10)}, extended=True), S)
    assert v.verdict == "PASS" and v.evidence["tasks"]["khop"]["depth_gain_seeds_needed"] == 8


def test_control_broken_is_error_not_pass():
    weak = (arm([80, 81, 79, 82, 80]), arm([60, 61, 59, 62, 60]))  # refiner helps where it must not
    v = decide_ablation(evidence({"khop": GOOD, "s5": GOOD, "listops": NULL}, control=weak), S)
    assert v.verdict == "ERROR" and "control task broken" in v.reason and not v.evidence["control_ok"]


def test_overthinking_blocks_a_task():
    over = (arm([80, 82, 85, 79, 81], r2=[60, 62, 65, 59, 61]), arm([50, 52, 48, 55, 51]))
    v = decide_ablation(evidence({"khop": over, "s5": GOOD, "listops": NULL}), S)
    assert v.verdict == "EXTEND" and not v.evidence["tasks"]["khop"]["checks"]["overthink"]


def test_thresholds_come_from_config():
    v = decide_ablation(evidence({"khop": GOOD, "s5": GOOD, "listops": NULL}),
                        S.replace({"pass_delta_points": 40.0}))
    assert v.verdict != "PASS"


def test_compare_handles_ties_and_holm():
    c = compare([50, 50, 60, 60, 70], [50, 40, 40, 30, 50], S)
    assert c["mannwhitney_method"].startswith("exact permutation") and 0 < c["mannwhitney_p"] < 0.1
    assert not c["separated"] and 0.5 < c["p_superiority"] < 1
    same = compare([50.0] * 5, [50.0] * 5, S)
    assert same["delta_ci"] == [0.0, 0.0] and same["mannwhitney_p"] > 0.5
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})


def test_decide_full():
    curve = {"r": [1, 2, 4, 8], "candidate": [[30, 40, 50, 51], [31, 41, 52, 52], [29, 39, 49, 50]]}
    ok = decide_full({"val_loss": {"candidate": [3.30, 3.31, 3.29], "control": [3.30, 3.30, 3.31]},
                      "depth_curve": curve, "r_bar": 4}, S)
    assert ok.verdict == "PASS" and ok.evidence["checks"] == {"loss_gap": True, "depth_rising": True}
    worse = decide_full({"val_loss": {"candidate": [3.40, 3.41, 3.39], "control": [3.30, 3.30, 3.31]},
                         "depth_curve": curve, "r_bar": 4}, S)
    assert worse.verdict == "FAIL" and worse.evidence["loss_gap"] > 0.02
    flat = {"r": [1, 2, 4, 8], "candidate": [[50, 50, 50, 50]] * 3}
    assert decide_full({"val_loss": {"candidate": [3.3] * 3, "control": [3.3] * 3}, "depth_curve": flat,
                        "r_bar": 4}, S).verdict == "FAIL"


def _pool(rng, means: dict, n=8, sd=2.0):
    return {t: {v: [{"r1": m - 15, "rbar": m, "r2bar": m} for m in rng.normal(mu, sd, n)] for v, mu in vs.items()}
            for t, vs in means.items()}


def test_calibration_simulation_counts_false_passes_and_detections():
    import numpy as np

    from experiments.calibrate import simulate

    s = S.replace({"tasks": ("khop", "s5", "listops"), "control_task": "copy", "bootstrap_resamples": 500})
    rng = np.random.default_rng(0)
    same = {"normal": 60.0, "crippled": 60.0}
    pool = _pool(rng, {"khop": same, "s5": same, "listops": same, "copy": {"normal": 99.0}})
    for t in pool["copy"]["normal"]:
        t["r1"] = t["rbar"]  # a control task: no depth gain needed
    aa = simulate(pool, s, 60, "normal", "normal", seed=1)
    assert aa["verdicts"]["PASS"] == 0 and aa["pass_rate_ci95"][1] < 0.07
    strong = {"normal": 80.0, "crippled": 50.0}
    pool2 = _pool(rng, {"khop": strong, "s5": strong, "listops": same, "copy": {"normal": 99.0}})
    det = simulate(pool2, s, 40, "normal", "crippled", seed=2)
    assert det["pass_rate"] > 0.9


def test_calibration_depth_positive_control():
    """Mode "depth": the same runs read at r̄ (candidate) against r = 1 (control), through the real rule."""
    import numpy as np

    from experiments.calibrate import _draw_depth, depth_effect, simulate

    s = S.replace({"tasks": ("listops",), "control_task": "copy", "pass_min_tasks": 1, "bootstrap_resamples": 500})
    rng = np.random.default_rng(0)

    def pool(gain, copy_gain=0.0):
        deep = [{"seed": i, "r1": m - gain, "rbar": m, "r2bar": m} for i, m in enumerate(rng.normal(62, 1.5, 5))]
        copy = [{"seed": i, "r1": 99.5 - copy_gain, "rbar": 99.5, "r2bar": 99.5} for i in range(5)]
        return {"listops": {"normal": deep}, "copy": {"normal": copy}}

    strong = pool(gain=15.0)
    cand, ctrl = _draw_depth(strong["listops"]["normal"], 5, rng)
    assert ctrl["rbar"] == cand["r1"] and ctrl["r2bar"] == cand["r1"]  # the same runs, read at r = 1
    eff = depth_effect(strong, s)
    assert eff["listops"]["mean"] == pytest.approx(15.0) and eff["copy"]["mean"] == 0.0
    det = simulate(strong, s, 30, "normal", "normal", seed=1, mode="depth")
    assert det["mode"] == "depth" and det["pass_rate"] == 1.0 and det["failed_checks"] == {}
    weak = simulate(pool(gain=2.0), s, 30, "normal", "normal", seed=2, mode="depth")  # depth does no work
    assert weak["verdicts"]["PASS"] == 0 and weak["verdicts"]["FAIL"] == 30
    assert weak["failed_checks"]["listops.delta"] == 30 and weak["failed_checks"]["listops.depth_gain"] == 30
    # depth that changes the constant-depth control task: the instrument is broken, never a PASS
    broken = simulate(pool(gain=15.0, copy_gain=8.0), s, 10, "normal", "normal", seed=3, mode="depth")
    assert broken["verdicts"]["PASS"] == 0 and broken["failed_checks"]["control_task"] == 10


def test_real_aa_uses_each_run_once():
    """Disjoint A/A ablations from the pool: 23 seeds of 5 + 5 make 2 ablations (3 seeds left over); a pool
    with a real difference between its seed halves is PASSed, so the check can fail."""
    import numpy as np

    from experiments.calibrate import real_aa

    s = S.replace({"tasks": ("listops",), "control_task": "copy", "pass_min_tasks": 1, "bootstrap_resamples": 500})
    rng = np.random.default_rng(0)

    def pool(means):
        deep = [{"seed": i, "r1": m - 15, "rbar": m, "r2bar": m} for i, m in enumerate(means)]
        copy = [{"seed": i, "r1": 99.5, "rbar": 99.5, "r2bar": 99.5} for i in range(len(means))]
        return {"listops": {"normal": deep}, "copy": {"normal": copy}}

    aa = real_aa(pool(rng.normal(62, 1.5, 23)), s)
    assert aa["ablations"] == 2 and aa["runs_used"] == 20 and aa["false_pass"] == 0
    assert aa["verdicts"] == ["FAIL", "FAIL"] and aa["false_pass_ci95"][1] < 0.85
    shifted = np.concatenate([rng.normal(80, 1.0, 5), rng.normal(60, 1.0, 5)])  # candidate seeds first
    assert real_aa(pool(shifted), s)["verdicts"] == ["PASS"]


def test_pool_cache_keeps_crippled_runs_per_cripple_mode(tmp_path, monkeypatch):
    """Normal runs are reused whatever the crippled arm; crippled runs only by the same cripple mode."""
    import json

    from experiments import calibrate

    monkeypatch.setattr(calibrate, "POOL_DIR", tmp_path)
    s = S.replace({"tasks": ("khop",), "control_task": "copy"})
    key = calibrate._pool_key(s, 100)

    def rec(task, variant, acc):
        return json.dumps({"task": task, "variant": variant, "seed": 1000, "r1": acc, "rbar": acc, "r2bar": acc,
                           "curve": [acc], "train_s": 0.0})

    (tmp_path / f"pool-{key}-quarter.jsonl").write_text(
        "\n".join([rec("khop", "normal", 90.0), rec("copy", "normal", 99.0), rec("khop", "crippled", 50.0)]) + "\n")
    (tmp_path / f"pool-{key}-tenth.jsonl").write_text(rec("khop", "crippled", 20.0) + "\n")
    pool = calibrate.build_pool(s, 1, 100, cripple="tenth", log=lambda m: None)  # all cached: nothing trains
    assert pool["khop"]["normal"][0]["rbar"] == 90.0 and pool["khop"]["crippled"][0]["rbar"] == 20.0
    assert calibrate.build_pool(s, 1, 100, cripple="quarter", log=lambda m: None)["khop"]["crippled"][0]["rbar"] == 50
