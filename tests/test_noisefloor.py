"""experiments/noisefloor.py: the noise floor filed under a fingerprint of what shapes the control arm.

Run: .venv/bin/python -m pytest tests/test_noisefloor.py"""

from __future__ import annotations

import pytest

import config
from experiments import noisefloor as nf
from experiments.spec import effective

S = config.load({})


def test_the_fingerprint_moves_with_what_shapes_the_control_and_only_that():
    fp = nf.fingerprint(S, "khop")
    for over in ({"khop_k": 2}, {"ablation_steps": 300}, {"preset": "small"}, {"r_mean": 2, "r_max": 3},
                 {"lr": 0.001}, {"khop_n": 12}):
        assert nf.fingerprint(S.replace(over), "khop") != fp, over
    for over in ({"arch": "reasoner"}, {"gate_init_bias": 1.0}, {"s5_len": 4}, {"ablation_seeds": 8},
                 {"stage_jobs": 1}, {"tasks": ("khop",)}):
        assert nf.fingerprint(S.replace(over), "khop") == fp, over
    assert nf.fingerprint(S, "s5") != fp


def test_the_daemon_and_the_noise_child_compute_the_same_fingerprint():
    spec = S.replace({"khop_k": 2, "ablation_steps": 700})
    flat = {k: v for k, v in effective(spec).items() if k in config.FIELD_SECTION}  # what the child is given
    child = config.load({}).replace({k: tuple(v) if isinstance(v, list) else v for k, v in flat.items()})
    assert nf.fingerprint(child, "khop") == nf.fingerprint(nf.settings_of(effective(spec), S), "khop")


def test_rounds_pool_per_fingerprint_and_units_only_where_the_floor_matches():
    s2 = S.replace({"khop_k": 2, "tasks": ("khop",)})
    res = {"tasks": {"khop": {"values": [10.0, 12.0, 14.0], "fingerprint": nf.fingerprint(s2, "khop")}},
           "wall_s": 30.0}
    floors = nf.add({}, res, when=1.0)
    floors = nf.add(floors, {"tasks": {"khop": {"values": [20.0, 20.0, 26.0], "fingerprint":
                                                 nf.fingerprint(s2, "khop")}}}, when=2.0)
    rec = nf.floor_for(floors, s2, "khop")
    assert rec["sigma"] == pytest.approx(((4.0 + 12.0) / 2) ** 0.5) and len(rec["values"]) == 6
    assert rec["s_per_run"] == pytest.approx(10.0) and len(rec["rounds"]) == 2
    assert nf.units({"khop": 10.0}, floors, s2) == {"khop": pytest.approx(10.0 / rec["sigma"])}
    assert nf.units({"khop": 10.0}, floors, S) is None  # k = 4 was never measured: no units shown
    assert nf.wanted(floors, [s2, S]) is S and nf.wanted(floors, [s2]) is None
    assert nf.wanted(floors, [s2.replace({"tasks": ("khop", "s5")})]) is not None  # s5 at k = 2's spec: unmeasured
