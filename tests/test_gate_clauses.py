"""The gate's clauses one by one, in the order gate.CLAUSES applies them, and CLAUDE.md's text of them.

Run: .venv/bin/python -m pytest tests/test_gate_clauses.py"""

from __future__ import annotations

import re

import pytest

import config
from experiments import gate
from experiments.gate import decide_ablation, decide_full

S = config.load({})
G = S.gate


def arm(rbar, r1=None, r2=None):
    return {"rbar": list(rbar), "r1": list(r1) if r1 is not None else [x - 20 for x in rbar],
            "r2bar": list(r2) if r2 is not None else list(rbar)}


HEALTHY = (arm([99, 98, 99, 99, 98]), arm([99, 99, 98, 98, 99]))
BROKEN = (arm([13, 15, 18, 14, 16]), arm([14, 17, 13, 15, 18]))  # copy at 13-18% in both arms (short steps)
GOOD = (arm([80, 82, 85, 79, 81]), arm([50, 52, 48, 55, 51]))
NULL = (arm([50, 52, 48, 55, 51], r1=[30, 32, 28, 35, 31]), arm([51, 50, 49, 53, 52]))
# the demo's k-hop: 100.0 in every seed but one (97.3), both arms
CEILING = (arm([100, 100, 97.3, 100, 100], r1=[13, 12, 14, 13, 12]), arm([100.0] * 5, r1=[14, 13, 12, 13, 14]))
FLOOR = (arm([14, 13, 15, 13, 14], r1=[13, 13, 14, 13, 14]), arm([13, 14, 13, 15, 13], r1=[13, 14, 13, 14, 13]))
OVERLAP = (arm([80, 82, 85, 79, 50]), arm([50, 52, 48, 55, 51]))


def evidence(depth: dict, control=HEALTHY, extended=False, primary=None, floor=13.5):
    tasks = {t: {"role": "depth", "floor": floor, "candidate": c, "control": k} for t, (c, k) in depth.items()}
    tasks["copy"] = {"role": "control", "candidate": control[0], "control": control[1]}
    return {"tasks": tasks, "extended": extended, "primary": primary}


def test_clause_order_is_the_documented_one():
    assert gate.CLAUSES == ("ERROR", "INCONCLUSIVE", "PASS", "FAIL", "INCONCLUSIVE", "EXTEND")


# ---- ERROR, before anything else
def test_broken_control_is_error_even_when_every_ci_is_low():
    """Was FAIL (refinery:killed) in an acceptance run: the FAIL tests ran before the broken-control test."""
    v = decide_ablation(evidence({"khop": NULL, "listops": NULL}, control=BROKEN), S)
    assert v.verdict == "ERROR" and "control task broken" in v.reason and "retried" in v.reason
    assert all(v.evidence["tasks"][t]["delta_ci"][1] < G.fail_ci_upper for t in ("khop", "listops"))


def test_broken_control_is_error_after_the_extension_too():
    v = decide_ablation(evidence({"khop": OVERLAP, "listops": GOOD}, control=BROKEN, extended=True), S)
    assert v.verdict == "ERROR"


def test_control_effect_is_error_and_blocks_a_pass():
    weak = (arm([99, 99, 99, 99, 99]), arm([90, 91, 92, 90, 91]))  # both ≥ 95? no: |Δ| > 3 and one arm < 95
    v = decide_ablation(evidence({"khop": GOOD, "listops": GOOD}, control=weak), S)
    assert v.verdict == "ERROR" and not v.evidence["control_ok"]


# ---- INCONCLUSIVE: nothing measured
def test_primary_task_at_the_ceiling_is_inconclusive_not_fail():
    """The demo from a fresh clone: k-hop (primary) at 100 in both arms; listops showed nothing either."""
    v = decide_ablation(evidence({"khop": CEILING, "listops": NULL}, primary="khop"), S)
    assert v.verdict == "INCONCLUSIVE" and "khop" in v.reason and "100" in v.reason
    assert v.evidence["uninformative"] == {"khop": "ceiling"} and v.evidence["informative_tasks"] == ["listops"]


def test_every_depth_task_at_the_floor_is_inconclusive():
    v = decide_ablation(evidence({"khop": FLOOR, "listops": FLOOR}), S)
    assert v.verdict == "INCONCLUSIVE" and v.evidence["uninformative"] == {"khop": "floor", "listops": "floor"}
    assert "trivial answer" in v.reason


def test_the_margin_comes_from_config():
    near = (arm([95, 96, 95, 96, 95]), arm([96, 95, 96, 95, 96]))
    assert decide_ablation(evidence({"khop": near, "listops": near}), S).verdict == "FAIL"
    wide = S.replace({"uninformative_margin": 6.0})
    assert decide_ablation(evidence({"khop": near, "listops": near}), wide).verdict == "INCONCLUSIVE"


def test_an_uninformative_task_counts_neither_for_nor_against():
    # against: without the ceiling task, two informative tasks decide; the ceiling one cannot drag a FAIL
    v = decide_ablation(evidence({"khop": GOOD, "s5": GOOD, "listops": CEILING}, primary="khop"), S)
    assert v.verdict == "PASS", v.reason
    assert v.evidence["clearing_tasks"] == ["khop", "s5"] and v.evidence["m"] == 3  # Holm over all 3 registered
    # for: a ceiling task never clears, so it cannot help reach u
    v = decide_ablation(evidence({"khop": GOOD, "s5": NULL, "listops": CEILING}, primary="khop"), S)
    assert v.verdict != "PASS" and not v.evidence["tasks"]["listops"]["clears"]
    # FAIL is judged on the informative tasks: both show nothing
    v = decide_ablation(evidence({"khop": NULL, "s5": NULL, "listops": CEILING}, primary="khop"), S)
    assert v.verdict == "FAIL" and "every informative depth task" in v.reason


def test_too_few_informative_tasks_for_a_pass_is_inconclusive():
    v = decide_ablation(evidence({"khop": GOOD, "listops": CEILING}, primary="khop"), S)
    assert v.verdict == "INCONCLUSIVE" and "PASS needs 2" in v.reason


# ---- PASS, FAIL, EXTEND
def test_pass_fail_extend_as_before():
    assert decide_ablation(evidence({"khop": GOOD, "listops": GOOD}), S).verdict == "PASS"
    assert decide_ablation(evidence({"khop": NULL, "listops": NULL}), S).verdict == "FAIL"
    assert decide_ablation(evidence({"khop": OVERLAP, "listops": GOOD}), S).verdict == "EXTEND"


def test_after_the_extension_short_of_pass_is_fail_unless_error_or_inconclusive():
    assert decide_ablation(evidence({"khop": OVERLAP, "listops": GOOD}, extended=True), S).verdict == "FAIL"
    v = decide_ablation(evidence({"khop": CEILING, "listops": GOOD}, extended=True, primary="khop"), S)
    assert v.verdict == "INCONCLUSIVE"


# ---- every verdict carries its statistics
KEYS = ("candidate", "control", "mean_candidate", "mean_control", "std_candidate", "std_control", "delta",
        "delta_ci", "mannwhitney_p", "p_superiority")


@pytest.mark.parametrize("case,want", [
    (dict(depth={"khop": GOOD, "listops": GOOD}), "PASS"),
    (dict(depth={"khop": NULL, "listops": NULL}), "FAIL"),
    (dict(depth={"khop": OVERLAP, "listops": GOOD}), "EXTEND"),
    (dict(depth={"khop": CEILING, "listops": NULL}, primary="khop"), "INCONCLUSIVE"),
    (dict(depth={"khop": NULL, "listops": NULL}, control=BROKEN), "ERROR"),
])
def test_every_ablation_verdict_carries_per_seed_values_delta_ci_and_superiority(case, want):
    v = decide_ablation(evidence(**case), S)
    assert v.verdict == want
    for t in ("khop", "listops", "copy"):
        ev = v.evidence["tasks"][t]
        assert all(k in ev for k in KEYS), (t, set(KEYS) - set(ev))
        assert len(ev["candidate"]) == 5 and ev["delta_ci"][0] <= ev["delta"] <= ev["delta_ci"][1]
        assert 0.0 <= ev["p_superiority"] <= 1.0


# ---- full
CURVE = {"r": [1, 2, 4, 8], "candidate": [[30, 40, 50, 51], [31, 41, 52, 52], [29, 39, 49, 50]]}


def test_full_verdict_carries_gap_ci_and_superiority():
    v = decide_full({"val_loss": {"candidate": [3.28, 3.29, 3.27], "control": [3.30, 3.31, 3.30]},
                     "depth_curve": CURVE, "r_bar": 4}, S)
    ev = v.evidence
    assert v.verdict == "PASS" and ev["val_loss_candidate"] == [3.28, 3.29, 3.27]
    assert ev["loss_gap_ci"][0] <= ev["loss_gap"] <= ev["loss_gap_ci"][1] < 0
    assert ev["p_superiority"] == 1.0 and ev["depth_gain_per_seed"] == [20, 21, 20]


def test_full_depth_curve_must_rise_by_the_configured_points_not_any_amount():
    barely = {"r": [1, 2, 4, 8], "candidate": [[50, 50.5, 51, 51]] * 3}  # r̄ one point above r = 1
    ev = {"val_loss": {"candidate": [3.3] * 3, "control": [3.3] * 3}, "depth_curve": barely, "r_bar": 4}
    v = decide_full(ev, S)
    assert v.verdict == "FAIL" and not v.evidence["checks"]["depth_rising"] and "not rising" in v.reason
    assert decide_full(ev, S.replace({"full_depth_gain_points": 0.5})).verdict == "PASS"


# ---- the text
def _gate_text() -> str:
    text = (config.ROOT / "CLAUDE.md").read_text()
    return text.split("### The gate", 1)[1].split("\n## ", 1)[0]


def test_claude_md_states_the_clauses_in_the_code_order():
    text = _gate_text()
    ablation = text.split("**Full", 1)[0]
    named = re.findall(r"^\d\. \*\*(ERROR|INCONCLUSIVE|PASS|FAIL|EXTEND)\*\*", ablation, re.M)
    assert tuple(named) == gate.CLAUSES


def test_claude_md_quotes_the_configured_thresholds():
    text = _gate_text()
    for field in ("pass_delta_points", "uninformative_margin", "control_min_acc", "control_max_delta", "fail_ci_upper",
                  "fail_depth_gain", "extend_seeds", "full_max_loss_gap", "full_depth_gain_points", "alpha"):
        value = getattr(G, field)
        assert f"{value:g}" in text and f"`{field}`" in text, field
