"""The idle daemon queues calibration units (kind `calibrate`, cpu lane) and publishes docs_dir/calibration/.

A real daemon and worker run one real unit at tiny settings (the quick CI version of the calibration: its figures
are not the calibration): it is queued only while the cpu lane is idle, runs as `python -m experiments.calibration
unit`, and the summary of the independent ablations decided so far lands under docs_dir/calibration/.

Run: .venv/bin/python -m pytest tests/test_calibration_daemon.py -q
"""

from __future__ import annotations

import json
import time

from agent.daemon.calibration_jobs import KIND
from experiments.gate import VERDICTS
from tests.agent_support import make_daemon, settings_for

TINY_SPEC = """
tasks = ["khop"]
control_task = "copy"
khop_k = 1
ablation_steps = 10
test_examples = 100
batch_size = 8
r_max = 2
r_mean = 2
init_std = 0.1
ablation_seeds = 2
stage_jobs = 1
stage_threads = 1
"""


def test_an_idle_daemon_builds_the_calibration_and_publishes_it(tmp_path, sqlite_url, monkeypatch):
    for k, v in (("EXTEND_SEEDS", "1"), ("BOOTSTRAP_RESAMPLES", "200"), ("PASS_MIN_TASKS", "1")):
        monkeypatch.setenv(f"REFINERY_{k}", v)  # gate settings: the operator's (a spec may not set them)
    spec = tmp_path / "calibration.toml"
    spec.write_text(TINY_SPEC)
    s = settings_for(sqlite_url, tmp_path, docs_dir=str(tmp_path / "docs"), calibrate_every_s=1.0,
                     calibrate_spec=str(spec), calibrate_per_grade=1, calibrate_grades=("aa", "e20"),
                     max_attempts=3)  # a unit that loses its lease on a loaded machine is retried
    d = make_daemon(s)
    d.store.hold_issue(7)
    busy = d.store.enqueue(7, "task", "cpu", {"argv": ["true"]}, key="an idea's stage")
    for _ in range(3):  # an idea's work on the cpu lane (here: on hold): no calibration is queued
        d.tick()
        d.pipeline.calibration._next = 0.0
    assert [j.kind for j in d.store.list()] == ["task"]
    d.store.cancel(busy.id, "the lane is idle again")
    end = time.time() + 240
    while time.time() < end:
        d.tick()
        d.pipeline.calibration._next = 0.0
        d.kv.put("calibrate.last", {"at": 0})  # calibrate_every_s elapsed
        jobs = [j for j in d.store.list() if j.kind == KIND]
        if len(jobs) == 2 and all(str(j.state) in ("succeeded", "failed") for j in jobs) and all(
                d.kv.get(f"calibrated:{j.id}") for j in jobs if str(j.state) == "succeeded"):
            break
        time.sleep(0.1)
    jobs = sorted((j for j in d.store.list() if j.kind == KIND), key=lambda j: j.id)
    assert [(str(j.state), j.lane.value, j.payload["calibrate"]["grade"]) for j in jobs] == [
        ("succeeded", "cpu", "aa"), ("succeeded", "cpu", "e20")], [(j.state, j.error) for j in jobs]
    assert jobs[0].result["grade"] == "aa" and jobs[0].result["verdict"] in VERDICTS  # the unit's gate verdict
    out = tmp_path / "docs" / "calibration"
    summ = json.loads((out / "summary.json").read_text())
    assert summ["figures"]["grades"]["aa"]["independent_ablations"] == 1
    assert summ["figures"]["grades"]["e20"]["independent_ablations"] == 1
    assert {"device", "versions", "targets"} <= set(summ) and (out / "power_curve.png").stat().st_size > 1000
    assert "| aa | 0 points | 1 |" in (out / "summary.md").read_text()
    # every wanted unit is decided: nothing more is queued
    for _ in range(3):
        d.tick()
        d.pipeline.calibration._next = 0.0
        d.kv.put("calibrate.last", {"at": 0})
    assert len([j for j in d.store.list() if j.kind == KIND]) == 2
    d.store.close()
