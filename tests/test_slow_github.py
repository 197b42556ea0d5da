"""A slow GitHub never stops the queue (issue #20, item 1): the acceptance run done as a new user would.

`refinery daemon` (a real subprocess) with REFINERY_LEASE_S=8 and REFINERY_HEARTBEAT_S=2, a 30 s cpu task, three
issues whose spec is invalid, and the GitHub-speaking server answering every write after 12 s (each write outlasts
the lease). The task must run once, to the end, on attempt 1 (the heartbeats never wait on GitHub); SIGTERM
while a write is in flight must stop the daemon within its warm-stop budget; after a restart every comment is
on its issue exactly once (the write that was in flight is found by its marker, not posted again).

Run: .venv/bin/python -m pytest tests/test_slow_github.py -q -s      (slow: about a minute and a half)
"""

from __future__ import annotations

import re
import signal
import sys
import time

import pytest

from agent.daemon.outbox import STATUS_LABELS
from agent.state.tables import OutboxStore
from jobqueue.store import Store
from tests.agent_support import BAD_BODY, env_for, gh, settings_for, wait_for  # noqa: F401
from tests.signals_support import DaemonProc, kill_leftovers

MARKER = re.compile(r"<!-- refinery:(\S+?) -->")
TASK_S = 30
WRITE_DELAY_S = 12.0
STOP_BUDGET_S = 30.0  # REFINERY_STOP_TIMEOUT_S (its lowest allowed value)


def _task(starts) -> list[str]:
    code = (f"import os, time; open({str(starts)!r}, 'a').write('start\\n'); time.sleep({TASK_S}); "
            "open(os.environ['QUEUE_RUN_DIR'] + '/result.json', 'w').write('{}')")
    return [sys.executable, "-c", code]


@pytest.mark.slow
def test_a_github_slower_than_the_lease_never_delays_heartbeats_or_the_stop(tmp_path, db_url, gh):  # noqa: F811
    for name in STATUS_LABELS:  # the repository has refinery's labels already (fewer slow writes to wait for)
        gh._ensure_label(name)
    issues = [gh.create_issue(f"typo {i}", BAD_BODY, labels=["ideas", "cpu"], author="alice") for i in range(3)]
    gh.write_delay = WRITE_DELAY_S
    s = settings_for(db_url, tmp_path, gh, lease_s=8.0, heartbeat_s=2.0, github_timeout_s=15.0, poll_interval=2.0)
    env = env_for(s, REFINERY_STOP_TIMEOUT_S=str(STOP_BUDGET_S), REFINERY_DOCS_DIR=str(tmp_path / "docs"))
    store = Store(s)
    starts = tmp_path / "starts.txt"
    job = store.enqueue(None, "task", "cpu", {"argv": _task(starts)}, key="slow-github-task")
    d1 = DaemonProc(env, tmp_path / "daemon1.log")
    try:
        done = wait_for(lambda: d1.check(store.get(job.id).state in ("succeeded", "failed")), timeout=150, step=0.5,
                        what="the 30 s task to finish")
        assert done
        wait_for(lambda: d1.check(gh.writes("POST", r".*") and True), timeout=30, what="a write in flight")
        inflight = len(gh.writes("POST", r".*")) + len(gh.writes("DELETE", r".*"))
        t0 = d1.signal(signal.SIGTERM)
        rc = d1.wait(STOP_BUDGET_S + 15)
        stop_s = time.monotonic() - t0
    finally:
        d1.kill()
    print(f"\nSIGTERM with GitHub answering writes after {WRITE_DELAY_S:g} s: the daemon exited in {stop_s:.2f} s "
          f"({inflight} writes answered before it)")
    out1 = d1.text()
    assert rc == 0, out1[-3000:]
    assert stop_s < STOP_BUDGET_S, out1[-3000:]
    j = store.get(job.id)
    history = [e.message or "" for e in store.events(job.id)]
    assert j.state == "succeeded" and j.attempt == 1 and j.tries == 1, (j, history)
    assert not any("expired" in h for h in history), history
    assert starts.read_text().count("start") == 1

    d2 = DaemonProc(env, tmp_path / "daemon2.log")  # the rest of the writes, still slow
    try:
        ob = OutboxStore(store.engine)
        wait_for(lambda: d2.check(ob.counts()["pending"] == 0 and ob.counts()["sent"] >= 6), timeout=150, step=0.5,
                 what="every write delivered")
        d2.signal(signal.SIGTERM)
        assert d2.wait(STOP_BUDGET_S + 15) == 0, d2.text()[-3000:]
    finally:
        d2.kill()
        kill_leftovers(tmp_path / "runs")
    per_issue = {n: [MARKER.search(c["body"]).group(1) for c in gh.comments_of(n)] for n in issues}
    counts = {n: len(m) for n, m in per_issue.items()}
    print(f"comments per issue (each must be 1): {counts}; job {job.id}: attempt {j.attempt}, {j.tries} tr(y/ies)")
    for n, markers in per_issue.items():
        assert len(markers) == 1 and len(set(markers)) == 1, (n, markers)
        assert "refinery:invalid" in gh.issues[n]["labels"]
