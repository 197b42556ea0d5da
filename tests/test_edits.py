"""Edited issues (#20 item 6, agent/daemon/edits.py), on SQLite and PostgreSQL, the local tracker, a real worker:

    an idea's spec edited while its chain runs   the new spec's chain is queued; the old chain's running stage is
                                                 stopped warm (SIGTERM: it exits 75), its queued and blocked jobs
                                                 cancelled; one comment says so; the old chain queues nothing more
    an agent item's body edited                  while queued: that item is cancelled, a new one carries the new
                                                 text; after it ended: a new item (not deduplicated for ever)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from agent.daemon import edits
from agent.daemon.loop import Daemon
from agent.state.local_tables import LocalIssues
from agent.trackers.local_tracker import LocalTracker
from jobqueue.models import State
from jobqueue.store import Store
from jobqueue.worker import Worker
from tests.agent_support import IDEA_BODY, settings_for, wait_for

# a stage stand-in that stops warm on SIGTERM the way experiments.stage does (exit 75), leaving a mark
WARM = [sys.executable, "-c", "import os, signal, time\nd = os.environ['QUEUE_RUN_DIR']\n"
        "def stop(*a):\n    open(d + '/stopped-warm', 'w').close()\n    os._exit(75)\n"
        "signal.signal(signal.SIGTERM, stop)\nopen(d + '/started', 'w').close()\ntime.sleep(60)\n"]


@pytest.fixture
def local(tmp_path, db_url):
    s = settings_for(db_url, tmp_path, gpu_devices="0", cancel_grace_s=10.0)
    store = Store(s)
    db = LocalIssues(store.engine)
    db.grant("alice", "write")
    d = Daemon(s, store=store, tracker=LocalTracker(db))
    yield d, db
    store.close()


def cycle(d: Daemon, times: int = 1) -> None:
    for _ in range(times):
        d.poll()
        d.deliver()


def ours(db: LocalIssues, n: int) -> list[str]:
    return [c["body"] for c in db.comments(n) if c["author"] == "refinery"]


def test_an_edited_spec_replaces_its_running_chain(local):
    d, db = local
    n = db.create("loops", IDEA_BODY, [], "alice")
    for lab in ("ideas", "cpu"):
        db.add_label(n, lab, "alice")
    cycle(d)
    (smoke,) = d.store.jobs_for_issue(n)
    chain = edits.chain_of(smoke)
    # the old chain further on: a running stage (gpu lane, so the cpu-lane smoke jobs stay queued) and its follower
    payload = {"argv": WARM, "stage": "ablation", "spec_file": smoke.payload["spec_file"]}
    running = d.store.enqueue(n, "ablation", "gpu", payload, key=f"{chain}/ablation")
    follower = d.store.enqueue(n, "replication", "gpu", {"argv": WARM}, depends_on=running.id,
                               key=f"{chain}/replication")
    w = Worker(d.store, d.settings, lanes=("gpu",))
    try:
        wait_for(lambda: w.step(time.time()) is not None and d.store.get(running.id).run_dir
                 and (Path(d.store.get(running.id).run_dir) / "started").exists(), timeout=30, what="the stage")
        db.edit(n, body=IDEA_BODY.replace("r_max = 6", "r_max = 8"))
        cycle(d)
        wait_for(lambda: w.step(time.time()) is not None and d.store.get(running.id).state == State.CANCELLED,
                 timeout=30, what="the running stage cancelled")
    finally:
        w.cold_stop()
    assert (Path(d.store.get(running.id).run_dir) / "stopped-warm").exists()  # SIGTERM, not SIGKILL
    jobs = {j.id: j for j in d.store.jobs_for_issue(n)}
    assert jobs[smoke.id].state == State.CANCELLED and jobs[follower.id].state == State.CANCELLED
    (new,) = [j for j in jobs.values() if j.state == State.QUEUED]
    assert new.kind == "smoke" and new.payload["spec"]["r_max"] == 8 and edits.chain_of(new) != chain
    cycle(d, 2)
    notes = [c for c in ours(db, n) if "was edited" in c]
    assert len(notes) == 1 and f"job {running.id} (ablation" in notes[0] and "stopped warm" in notes[0], notes
    assert not edits.current(d.store.engine, jobs[running.id]) and edits.current(d.store.engine, new)
    assert d.pipeline._enqueue_next(jobs[running.id], "replication").startswith("The issue's spec was edited")


def test_an_agent_item_follows_its_body(local):
    d, db = local
    n = db.create("fix the docs", "the README is wrong", [], "alice")
    db.add_label(n, "documentation", "alice")
    cycle(d)
    (first,) = d.store.jobs_for_issue(n)
    db.edit(n, body="the README is wrong, and so is CLAUDE.md")  # while it waits
    cycle(d)
    jobs = d.store.jobs_for_issue(n)
    assert [str(j.state) for j in jobs] == ["cancelled", "queued"]
    second = jobs[1]
    assert second.payload["body"] == "the README is wrong, and so is CLAUDE.md"
    assert f"job {first.id}, which had not started, is cancelled" in ours(db, n)[-1]
    d.store.cancel(second.id, "done by hand")  # it ended
    cycle(d, 2)
    assert len(d.store.jobs_for_issue(n)) == 2  # an unchanged body: nothing new
    db.edit(n, body="now the CONTRIBUTING file too")  # after it ended: a new item
    cycle(d)
    third = d.store.jobs_for_issue(n)[-1]
    assert third.state == State.QUEUED and third.payload["body"] == "now the CONTRIBUTING file too"
    assert len(d.store.jobs_for_issue(n)) == 3
