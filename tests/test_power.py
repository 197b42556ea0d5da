"""experiments/power.py: can a spec PASS, and how many seeds does its pre-registered effect need?

Run: .venv/bin/python -m pytest tests/test_power.py"""

from __future__ import annotations

import math

import pytest

import config
from experiments import power

S = config.load({})  # 3 depth tasks, u = 2: Holm's rank-u factor 2
DEMO = S.replace({"tasks": ("khop", "listops")})  # 2 depth tasks: factor 1


def test_best_p_is_complete_separation_times_holms_rank_u_factor():
    assert power.best_p(5, S) == pytest.approx(2 / 252) and power.best_p(3, DEMO) == pytest.approx(1 / 20)
    assert power.min_seeds_for_p(S) == 5 and power.min_seeds_for_p(DEMO) == 5  # 4 v 4: 1/70 = 0.014 > 0.01


def test_three_v_three_seeds_make_a_first_round_pass_impossible():
    why = power.impossible(DEMO.replace({"ablation_seeds": 3}), None)
    assert len(why) == 1 and "3 v 3 seeds cannot reach p ≤ α = 0.01" in why[0] and "p = 0.05" in why[0]
    assert "ablation_seeds ≥ 5" in why[0] and "only the extension to 8 v 8" in why[0]
    assert power.impossible(DEMO, {"expected_delta": 15}) == []


def test_too_few_tasks_or_a_small_expected_effect_make_pass_impossible():
    one = S.replace({"tasks": ("khop",)})
    assert any("PASS needs 2 depth tasks" in w for w in power.impossible(one, None))
    assert any("expected_delta = 5" in w for w in power.impossible(S, {"expected_delta": 5}))


def test_the_separation_integral_is_exact_under_the_null_and_agrees_with_the_simulation():
    assert power.separation_exact(0.0, 5) == pytest.approx(1 / math.comb(10, 5), rel=1e-6)
    only_sep = DEMO.replace({"pass_delta_points": 0.0, "power_sims": 40000})
    for d in (1.0, 2.0, 3.0):
        assert power.power(1.0, d, 5, only_sep) == pytest.approx(power.separation_exact(d, 5), abs=0.01)


def test_power_grows_with_seeds_and_effect_and_falls_with_noise():
    p5, p8 = power.power(2.0, 12.0, 5, DEMO), power.power(2.0, 12.0, 8, DEMO)
    assert 0 < p5 < p8 <= 1 and power.power(2.0, 15.0, 5, DEMO) > p5 and power.power(4.0, 12.0, 5, DEMO) < p5
    # every-seed-beats-every-seed gets harder with more seeds: at σ = 4 a +12 effect loses power from 5 to 10 seeds
    assert power.power(4.0, 12.0, 10, DEMO) < power.power(4.0, 12.0, 5, DEMO) - 0.1
    assert power.power(1.0, 30.0, 3, DEMO) == 0.0  # 3 v 3 cannot reach α at all
    assert power.seeds_needed(2.0, 15.0, DEMO) == 5 and power.seeds_needed(6.0, 15.0, DEMO) is None
    strict = DEMO.replace({"power_target": 0.95})  # σ = 2, +12: the mean check gains from a sixth seed
    need = power.seeds_needed(2.0, 12.0, strict)
    assert need == 6 and power.power(2.0, 12.0, need, strict) >= 0.95 > power.power(2.0, 12.0, need - 1, strict)
    assert power.seeds_needed(1.0, 10.0, DEMO) is None  # Δ at the bar: the mean check alone caps power near 50%


def test_check_numbers_and_comment():
    quiet = power.check(DEMO, {"primary_task": "khop", "expected_delta": 20}, {"sigma": 2.0, "values": [1] * 5,
                                                                              "s_per_run": 30.0})
    assert quiet["ok"] and quiet["seeds_needed"] <= 10 and quiet["device_s_spec"] == 2 * 3 * 5 * 30.0
    loud = power.check(DEMO, {"primary_task": "khop", "expected_delta": 12}, {"sigma": 9.0, "values": [1] * 10,
                                                                             "s_per_run": 30.0})
    assert not loud["ok"] and loud["power_at_allowed"] < 0.8
    assert "σ = 9.00 points on khop, 10 control runs" in loud["text"] and "👍" in loud["text"]
    unmeasured = power.check(DEMO, {"primary_task": "khop", "expected_delta": 12}, None)
    assert unmeasured["ok"] and "no noise floor" in unmeasured["unmeasured"]
    assert not power.check(DEMO.replace({"ablation_seeds": 3}), None, None)["ok"]


def test_the_demo_spec_is_not_held_by_power_fresh_or_once_its_noise_floor_is_measured():
    """experiments/specs/demo.toml: nothing holds it on a fresh clone (no floor yet), nor once a floor like the ones
    measured on its tasks is in; its expected_delta on the +10 bar would be held as soon as any floor is measured."""
    from experiments.spec import spec_from_file

    res = spec_from_file(config.ROOT / "experiments" / "specs" / "demo.toml")
    fresh = power.check(res.settings, res.prereg, None)
    assert fresh["ok"] and fresh["unmeasured"] == "no noise floor measured for this spec yet"
    floor = {"sigma": 2.0, "values": [1.0] * 10, "s_per_run": 30.0}
    measured = power.check(res.settings, res.prereg, floor)
    assert measured["ok"] and measured["power_at_seeds"] > 0.99, measured["problems"]
    on_the_bar = power.check(res.settings, {**res.prereg, "expected_delta": 10}, floor)
    assert not on_the_bar["ok"] and "out of reach" in on_the_bar["text"]
