"""experiments/ladder.py: an INCONCLUSIVE ablation's next step along config.DIFFICULTY_LADDERS.

Run: .venv/bin/python -m pytest tests/test_ladder.py"""

from __future__ import annotations

import json

import pytest

import config
from experiments import ladder
from experiments.gate import decide_ablation

S = config.load({})


def arm(x, r1):
    return {"rbar": list(x), "r1": list(r1), "r2bar": list(x)}


def demo_inconclusive():
    """The demo's ablation as it ran from a fresh clone: k-hop (primary) at 100 in both arms."""
    tasks = {"khop": {"role": "depth", "floor": 37.5, "candidate": arm([100, 100, 97.3, 100, 100], [13] * 5),
                      "control": arm([100.0] * 5, [14] * 5)},
             "listops": {"role": "depth", "floor": 20.0, "candidate": arm([60, 61, 59, 62, 60], [40] * 5),
                         "control": arm([59, 62, 60, 61, 58], [41] * 5)},
             "copy": {"role": "control", "candidate": arm([99] * 5, [99] * 5), "control": arm([99] * 5, [99] * 5)}}
    v = decide_ablation({"tasks": tasks, "primary": "khop"}, S)
    assert v.verdict == "INCONCLUSIVE"
    return v.evidence


def spec(**over):
    from experiments.spec import parse_spec

    flat = parse_spec((config.ROOT / "experiments" / "specs" / "demo.toml").read_text(), base=S).spec
    return {**flat, **over}


def test_the_demo_at_the_ceiling_moves_one_level_up_with_the_levels_steps():
    p = ladder.plan(demo_inconclusive(), spec(), 0, S)
    assert p["action"] == "rerun" and p["overrides"] == {"khop_k": 3, "ablation_steps": 2000}
    assert p["moves"] == {"khop": [2, 3, "ceiling"]} and "khop_k 2 → 3" in p["text"]


def test_steps_never_drop_and_a_floor_moves_down():
    assert ladder.step("khop", spec(khop_k=4, ablation_steps=9000), "ceiling") == {"khop_k": 6, "ablation_steps": 9000}
    assert ladder.step("listops", spec(listops_depth=3), "floor") == {"listops_depth": 2, "ablation_steps": 1500}
    assert ladder.step("s5", spec(s5_len=7), "floor") == {"s5_len": 6, "ablation_steps": 1500}  # between levels
    assert ladder.step("s5", spec(s5_len=7), "ceiling")["s5_len"] == 8


def test_an_exhausted_ladder_or_a_spent_rerun_waits_for_a_person():
    ev = demo_inconclusive()
    top = ladder.plan(ev, spec(khop_k=8), 0, S)
    assert top["action"] == "wait" and "exhausted" in top["text"] and "edit the issue body" in top["text"]
    spent = ladder.plan(ev, spec(), S.gate.inconclusive_reruns, S)
    assert spent["action"] == "wait" and "khop: both arms at the ceiling" in spent["text"]
    assert ladder.plan(ev, spec(), 0, S.replace({"inconclusive_reruns": 0}))["action"] == "wait"


def test_write_spec_copies_the_spec_file_with_the_overrides(tmp_path):
    src = tmp_path / "i7-abc.json"
    src.write_text(json.dumps({"issue": 7, "spec": {"khop_k": 2, "lr": 0.003}, "prereg": {"primary_task": "khop"}}))
    out = ladder.write_spec(src, {"khop_k": 3}, 1)
    doc = json.loads(out.read_text())
    assert out.name == "i7-abc-L1.json" and doc["spec"] == {"khop_k": 3, "lr": 0.003} and doc["issue"] == 7
    assert ladder.write_spec(out, {"khop_k": 4}, 2).name == "i7-abc-L2.json"
    with pytest.raises(ladder.LadderError, match="edit the issue body"):
        ladder.write_spec(tmp_path / "missing.json", {}, 1)


def test_every_ladder_names_spec_fields_that_parse():
    for task, levels in config.DIFFICULTY_LADDERS.items():
        knob = ladder.knob_of(task)
        values = [lv[knob] for lv in levels]
        assert values == sorted(values) and len(set(values)) == len(values), task
        for lv in levels:
            S.replace(lv)  # in range, or ConfigError
