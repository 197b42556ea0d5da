"""The hand-over (jobqueue/wake.py): a worker with nothing running offers to take the next cpu job, and on
PostgreSQL the enqueue leases the job to it in its own commit. SQLite has no hand-over: wait_for_job waits as
wait_for_work does and the worker claims. Real databases, real processes, real SIGKILL.

    .venv/bin/python -m pytest tests/test_queue_handoff.py -q
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from jobqueue.models import State
from jobqueue.proc import Owner
from jobqueue.store import Store
from tests.queue_support import ROOT, proc_env, queue_env, settings_for, wait_until


@pytest.fixture
def stores(db_url, tmp_path):
    """(the waiting worker's store, an enqueuer's store) on one queue."""
    settings = settings_for(queue_env(db_url, tmp_path))
    a, b = Store(settings), Store(settings)
    yield a, b
    a.close(), b.close()


def _offers(store: Store) -> list[tuple]:
    return store._conn()[2].execute("SELECT id, job_id FROM job_offers").fetchall()


def _wait_in_thread(store: Store, owner: Owner, timeout: float) -> tuple[threading.Thread, dict]:
    got: dict = {}

    def run():
        t0 = time.monotonic()
        got["job"] = store.wait_for_job("cpu", owner, timeout)
        got["after"] = time.monotonic() - t0

    t = threading.Thread(target=run)
    t.start()
    return t, got


def test_an_idle_worker_is_handed_the_next_job(stores):
    waiting, enqueuer = stores
    owner = Owner.current("testhost")
    t, got = _wait_in_thread(waiting, owner, 10.0)
    if not waiting.sqlite:
        wait_until(lambda: _offers(enqueuer), 10, "the offer")
    else:
        time.sleep(0.3)
    job = enqueuer.enqueue(None, "task", "cpu", {"n": 1})
    t.join()
    assert got["after"] < 5.0, "the waiting worker was not woken by the enqueue"
    if waiting.sqlite:  # no hand-over: the worker was woken and claims it
        assert got["job"] is None and enqueuer.get(job.id).state == State.QUEUED
        assert waiting.claim("cpu", owner).id == job.id
        return
    handed = got["job"]
    assert handed is not None and handed.id == job.id
    assert (handed.state, handed.attempt, handed.owner_pid, handed.owner_host) == (State.RUNNING, 1, owner.pid,
                                                                                   "testhost")
    assert handed.lease_until > time.time()
    assert enqueuer.get(job.id).state == State.RUNNING
    assert [(e.from_state, e.to_state) for e in enqueuer.events(job.id)] == [(None, "queued"), ("queued", "running")]
    assert "handed over" in enqueuer.events(job.id)[-1].message
    assert _offers(enqueuer) == [(_offers(enqueuer)[0][0], job.id)]  # taken; the worker's next offer clears it
    assert waiting.wait_for_job("cpu", owner, 0.05) is None and _offers(enqueuer) == []
    waiting.finish(handed.id, handed.attempt, {"ok": True})  # fenced like any claim: attempt 1 holds it
    assert enqueuer.get(job.id).state == State.SUCCEEDED


@pytest.mark.postgres
def test_an_offer_is_withdrawn_when_the_wait_times_out(pg_url, tmp_path):
    settings = settings_for(queue_env(pg_url, tmp_path))
    with Store(settings) as waiting, Store(settings) as enqueuer:
        owner = Owner.current("testhost")
        assert waiting.wait_for_job("cpu", owner, 0.2) is None
        assert _offers(enqueuer) == []
        job = enqueuer.enqueue(None, "task", "cpu", {})
        assert enqueuer.get(job.id).state == State.QUEUED  # nobody offered: it waits for a claim
        assert waiting.claim("cpu", owner).id == job.id


@pytest.mark.postgres
def test_no_hand_over_past_jobs_already_waiting(pg_url, tmp_path):
    """Only an enqueue into a lane with nothing claimable is handed over: jobs keep their priority-then-age order."""
    settings = settings_for(queue_env(pg_url, tmp_path))
    with Store(settings) as waiting, Store(settings) as enqueuer:
        owner = Owner.current("testhost")
        older = enqueuer.enqueue(None, "task", "cpu", {"n": 0})
        t, got = _wait_in_thread(waiting, owner, 10.0)
        wait_until(lambda: _offers(enqueuer), 10, "the offer")
        newer = enqueuer.enqueue(None, "task", "cpu", {"n": 1})
        t.join()
        assert got["job"] is None and got["after"] < 5.0  # woken by the enqueue, handed nothing
        assert [enqueuer.get(j.id).state for j in (older, newer)] == [State.QUEUED, State.QUEUED]
        assert waiting.claim("cpu", owner).id == older.id
        assert _offers(enqueuer) == []


@pytest.mark.postgres
def test_gpu_and_blocked_jobs_are_never_handed_over(pg_url, tmp_path):
    settings = settings_for(queue_env(pg_url, tmp_path))
    with Store(settings) as waiting, Store(settings) as enqueuer:
        owner = Owner.current("testhost")
        first = enqueuer.enqueue(7, "smoke", "cpu", {}, key="a")
        enqueuer.claim("cpu", owner)  # running: its dependent below is blocked
        t, got = _wait_in_thread(waiting, owner, 10.0)
        wait_until(lambda: _offers(enqueuer), 10, "the offer")
        blocked = enqueuer.enqueue(7, "ablation", "cpu", {}, depends_on=first.id, key="b")  # born blocked: no wake
        enqueuer.hold_issue(9)  # an issue labelled blocked: its jobs are born blocked too
        held = enqueuer.enqueue(9, "smoke", "cpu", {}, key="c")
        assert len(_offers(enqueuer)) == 1 and _offers(enqueuer)[0][1] is None  # still open, nothing taken
        gpu = enqueuer.enqueue(None, "task", "gpu", {})  # notifies: the waiter wakes
        t.join()
        assert got["job"] is None
        assert enqueuer.get(gpu.id).state == State.QUEUED
        assert enqueuer.get(blocked.id).state == State.BLOCKED and enqueuer.get(held.id).state == State.BLOCKED
        assert _offers(enqueuer) == []  # withdrawn, not taken


@pytest.mark.postgres
def test_a_duplicate_enqueue_hands_over_nothing(pg_url, tmp_path):
    """ON CONFLICT skips the insert after the offer was taken for it: the worker is woken, finds no job, and the
    job already there is returned, unchanged."""
    settings = settings_for(queue_env(pg_url, tmp_path))
    with Store(settings) as waiting, Store(settings) as enqueuer:
        owner = Owner.current("testhost")
        done = enqueuer.enqueue(3, "smoke", "cpu", {}, key="k")
        j = enqueuer.claim("cpu", owner)
        enqueuer.finish(j.id, j.attempt, {})
        t, got = _wait_in_thread(waiting, owner, 10.0)
        wait_until(lambda: _offers(enqueuer), 10, "the offer")
        again = enqueuer.enqueue(3, "smoke", "cpu", {}, key="k")
        t.join()
        assert again.id == done.id and again.state == State.SUCCEEDED
        assert got["job"] is None
        assert len(enqueuer.list()) == 1 and _offers(enqueuer) == []
        later = enqueuer.enqueue(None, "task", "cpu", {})  # the lane works on as usual
        assert enqueuer.get(later.id).state == State.QUEUED


@pytest.mark.postgres
def test_the_offer_of_a_killed_worker_is_never_taken(pg_url, tmp_path):
    """A worker SIGKILLed while it waits leaves its offer behind; an enqueue must not lease a job to it."""
    env = queue_env(pg_url, tmp_path)
    code = ("import config; from jobqueue.store import Store; from jobqueue.proc import Owner; "
            "s = Store(config.load()); s.wait_for_job('cpu', Owner.current('testhost'), 600)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=proc_env(env), start_new_session=True)
    with Store(settings_for(env)) as enqueuer:
        try:
            wait_until(lambda: _offers(enqueuer), 30, "the child's offer")
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        (backend,), = enqueuer._conn()[2].execute("SELECT backend_pid FROM job_offers").fetchall()
        wait_until(lambda: not enqueuer._conn()[2].execute(
            "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (backend,)).fetchall(), 30, "its session to end")
        job = enqueuer.enqueue(None, "task", "cpu", {})
        assert enqueuer.get(job.id).state == State.QUEUED
        assert enqueuer.wait_for_job("cpu", Owner.current("testhost"), 0.05) is None  # its offer clears the dead one
        assert _offers(enqueuer) == []


def test_idle_workers_and_a_trickle_of_jobs_run_each_exactly_once(db_url, tmp_path):
    """Worker processes waiting with short timeouts (so withdrawals race the hand-overs) and jobs enqueued one at a
    time: every job runs once, none is lost, and on PostgreSQL most starts are hand-overs."""
    env = queue_env(db_url, tmp_path)
    outs = [tmp_path / f"w{i}.json" for i in range(3)]
    stop = tmp_path / "stop"
    procs = [subprocess.Popen([sys.executable, "-m", "tests.queue_support", "waiter", "--out", str(o), "--stop",
                               str(stop), "--timeout", str(t)], cwd=ROOT, env=proc_env(env))
             for o, t in zip(outs, (0.003, 0.02, 0.5))]
    n = 150
    with Store(settings_for(env)) as store:
        try:
            wait_until(lambda: all(o.with_suffix(".json.ready").exists() for o in outs), 60, "the workers")
            ids = []
            for i in range(n):
                ids.append(store.enqueue(None, "task", "cpu", {"n": i}).id)
                time.sleep(0.002 * (i % 5))
        finally:
            stop.touch()
            for p in procs:
                assert p.wait(120) == 0
        runs = [r for o in outs for r in json.loads(o.read_text())]
        counts = Counter(r["id"] for r in runs)
        assert sorted(counts) == sorted(ids), "lost jobs"
        assert max(counts.values()) == 1, f"run twice: {[j for j, c in counts.items() if c > 1]}"
        assert store.counts()["cpu"] == {State.SUCCEEDED.value: n}
        handed = sum(1 for r in runs if r["how"] == "handoff")
        if store.sqlite:
            assert handed == 0
        else:
            assert handed > n // 3, f"only {handed} of {n} starts were hand-overs"


@pytest.mark.postgres
def test_an_idle_daemon_is_handed_a_job_enqueued_elsewhere(pg_url, tmp_path):
    """`refinery daemon` on PostgreSQL waits in the queue between turns, not on its own 0.5 s tick: a job enqueued
    by another process is handed to it at the enqueue (its events say so), and SIGTERM still stops it at once."""
    from tests.agent_support import env_for
    from tests.agent_support import settings_for as agent_settings
    from tests.signals_support import DaemonProc

    settings = agent_settings(pg_url, tmp_path, heartbeat_s=2.0)
    daemon = DaemonProc(env_for(settings), tmp_path / "daemon.log")
    try:
        with Store(settings) as store:
            wait_until(lambda: daemon.check(_offers(store)), 60, "the idle daemon's offer")
            job = store.enqueue(None, "task", "cpu", {"argv": [sys.executable, "-c", "pass"]})
            wait_until(lambda: daemon.check(store.get(job.id).state == State.SUCCEEDED), 30, "the job to run")
            assert "handed over" in store.events(job.id)[1].message, daemon.text()
        t = daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
        assert time.monotonic() - t < 10, daemon.text()
    finally:
        daemon.kill()
