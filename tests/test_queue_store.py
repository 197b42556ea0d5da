"""The store's contract, on SQLite and PostgreSQL alike (db_url runs each test on both).

    .venv/bin/python -m pytest tests/test_queue_store.py -q
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import threading
import time

import pytest
from sqlalchemy import text

from jobqueue.db import make_engine
from jobqueue.migrations import v1_statements
from jobqueue.models import SCHEMA_VERSION, State
from jobqueue.proc import Owner, start_time
from jobqueue.store import IllegalTransition, LeaseLost, QueueBusy, Store, UnknownJob
from tests.queue_support import queue_env, settings_for


@pytest.fixture
def store(db_url, tmp_path):
    s = Store(settings_for(queue_env(db_url, tmp_path)))
    yield s
    s.close()


def owner(pid_offset: int = 0) -> Owner:
    return Owner.current("testhost")


def test_enqueue_is_idempotent_by_unique_key(store):
    a = store.enqueue(5, "smoke", "gpu", {"argv": ["true"]})
    b = store.enqueue(5, "smoke", "gpu", {"argv": ["other"]})  # a re-poll: the job already there
    c = store.enqueue(5, "smoke", "gpu", {"argv": ["true"]}, key="spec-2")  # a new spec is a new job
    d, e = store.enqueue(None, "task", "cpu", {}), store.enqueue(None, "task", "cpu", {})  # ad hoc: never deduped
    assert a.id == b.id and b.payload == {"argv": ["true"]}
    assert len({a.id, c.id, d.id, e.id}) == 4
    assert [ev.to_state for ev in store.events(a.id)] == ["queued"]


def test_claim_order_priority_then_age_and_lanes(store):
    low = store.enqueue(None, "task", "cpu", {}, priority=0)
    high = store.enqueue(None, "task", "cpu", {}, priority=5)
    low2 = store.enqueue(None, "task", "cpu", {}, priority=0)
    store.enqueue(None, "task", "gpu", {})
    got = [store.claim("cpu", owner()).id for _ in range(3)]
    assert got == [high.id, low.id, low2.id]
    assert store.claim("cpu", owner()) is None


def test_state_machine_and_events(store):
    job = store.enqueue(1, "smoke", "cpu", {})
    c = store.claim("cpu", owner())
    assert c.state == State.RUNNING and c.attempt == 1 and c.lease_until > time.time()
    store.fail(c.id, c.attempt, "boom")  # attempt 1 of 3, back-off 0 → retrying, claimable again
    assert store.get(job.id).state == State.RETRYING
    c2 = store.claim("cpu", owner())
    assert c2.id == job.id and c2.attempt == 2
    store.finish(c2.id, c2.attempt, {"verdict": "PASS"})
    done = store.get(job.id)
    assert done.state == State.SUCCEEDED and done.result == {"verdict": "PASS"} and done.finished_at
    assert [(e.from_state, e.to_state) for e in store.events(job.id)] == [
        (None, "queued"), ("queued", "running"), ("running", "retrying"), ("retrying", "running"),
        ("running", "succeeded")]
    with pytest.raises(IllegalTransition):
        store.cancel(job.id)
    with pytest.raises(IllegalTransition):
        store.retry(job.id)
    with pytest.raises(UnknownJob):
        store.get(9999)


def test_events_are_append_only(store):
    job = store.enqueue(None, "task", "cpu", {})
    with pytest.raises(Exception, match="append-only"), store.engine.begin() as conn:
        conn.execute(text("UPDATE job_events SET message = 'x' WHERE job_id = :j"), {"j": job.id})


def test_last_attempt_fails_for_good(store):
    job = store.enqueue(None, "task", "cpu", {}, max_attempts=2)
    for _ in range(2):
        c = store.claim("cpu", owner())
        store.fail(c.id, c.attempt, "boom")
    j = store.get(job.id)
    assert j.state == State.FAILED and j.error == "boom" and "attempt 2 of 2" in j.note
    assert store.retry(job.id).state == State.QUEUED  # by hand: a fresh set of attempts
    c = store.claim("cpu", owner())
    assert store.fail(c.id, c.attempt, "again").state == State.RETRYING


def test_fencing_stale_attempt_cannot_finish(store):
    job = store.enqueue(None, "task", "cpu", {})
    first = store.claim("cpu", owner())
    # the first worker stalls past its lease; recovery requeues, a second worker claims
    assert [a for _, a in store.recover(now=first.lease_until + 1)] == ["requeued"]
    second = store.claim("cpu", owner())
    assert second.attempt == first.attempt + 1
    assert store.heartbeat(first.id, first.attempt) is False
    with pytest.raises(LeaseLost):
        store.finish(first.id, first.attempt, {"stale": True})
    with pytest.raises(LeaseLost):
        store.fail(first.id, first.attempt, "stale")
    assert store.heartbeat(second.id, second.attempt) is True
    store.finish(second.id, second.attempt, {"fresh": True})
    assert store.get(job.id).result == {"fresh": True}


def test_finish_and_claim_is_one_fenced_step(store):
    a, b = store.enqueue(None, "task", "cpu", {}), store.enqueue(None, "task", "cpu", {})
    dep = store.enqueue(None, "task", "agent", {}, depends_on=a.id)
    first = store.claim("cpu", owner())
    nxt = store.finish_and_claim(first.id, first.attempt, {"n": 1}, "cpu", owner())
    assert (first.id, nxt.id, nxt.state, nxt.attempt) == (a.id, b.id, State.RUNNING, 1)
    assert store.get(a.id).result == {"n": 1} and store.get(dep.id).state == State.QUEUED  # dependent released
    assert [e.to_state for e in store.events(a.id)] == ["queued", "running", "succeeded"]
    c = store.enqueue(None, "task", "cpu", {})
    store.recover(now=nxt.lease_until + 1)  # b's worker stalls past its lease; another takes b over
    assert store.claim("cpu", owner()).attempt == 2
    with pytest.raises(LeaseLost):  # the stale worker can neither finish b nor take more work
        store.finish_and_claim(nxt.id, nxt.attempt, {"stale": True}, "cpu", owner())
    assert store.get(b.id).result is None and store.get(c.id).state == State.QUEUED
    assert store.finish_and_claim(b.id, 2, {}, "cpu", owner()).id == c.id
    assert store.finish_and_claim(c.id, 1, {}, "cpu", owner()) is None  # nothing left


def test_lease_expiry_requeues_then_fails_after_last_attempt(store):
    job = store.enqueue(None, "task", "cpu", {}, max_attempts=2)
    c = store.claim("cpu", owner())
    assert store.recover(now=c.lease_until - 0.5) == []  # lease still good
    store.recover(now=c.lease_until + 0.1)
    c = store.claim("cpu", owner())
    (j, action), = store.recover(now=c.lease_until + 0.1)
    assert action == "failed" and store.get(job.id).state == State.FAILED
    assert "no attempts left" in store.get(job.id).error


def test_dead_local_owner_is_requeued_at_once(store):
    dead = subprocess.Popen(["true"])
    dead_start = start_time(dead.pid)
    dead.wait()
    gone = Owner(host="testhost", boot=Owner.current("x").boot, pid=dead.pid, start=dead_start or "1")
    reused = Owner(host="testhost", boot=gone.boot, pid=Owner.current("x").pid, start="not-my-start-time")
    alive = Owner.current("testhost")
    elsewhere = Owner(host="otherhost", pid=dead.pid, start=dead_start)
    for o in (gone, reused, alive, elsewhere):
        store.enqueue(None, "task", "cpu", {})
        store.claim("cpu", o)
    out = store.recover()  # leases all valid: only provably-gone owners on this host
    assert sorted(j.owner_pid for j, a in out if a == "requeued") == sorted([gone.pid, reused.pid])
    assert len(store.list(state="running")) == 2


def test_dependencies_and_holds(store):
    smoke = store.enqueue(7, "smoke", "cpu", {})
    abl = store.enqueue(7, "ablation", "cpu", {}, depends_on=smoke.id)
    assert abl.state == State.BLOCKED
    c = store.claim("cpu", owner())
    assert c.id == smoke.id and store.claim("cpu", owner()) is None
    store.finish(c.id, c.attempt, {})
    assert store.get(abl.id).state == State.QUEUED
    assert store.hold_issue(7) == 1 and store.get(abl.id).state == State.BLOCKED
    assert store.enqueue(7, "full", "cpu", {}).state == State.BLOCKED  # new work of a held issue waits too
    assert store.claim("cpu", owner()) is None
    assert store.release_issue(7) == 2
    assert store.claim("cpu", owner()).id == abl.id
    assert store.claim("cpu", owner()).kind == "full"
    # a failed dependency cancels what waits on it
    s2 = store.enqueue(8, "smoke", "cpu", {}, max_attempts=1)
    a2 = store.enqueue(8, "ablation", "cpu", {}, depends_on=s2.id)
    c = store.claim("cpu", owner())
    store.fail(c.id, c.attempt, "boom")
    assert store.get(a2.id).state == State.CANCELLED and "dependency" in store.get(a2.id).error


def test_cancel_waiting_and_running(store):
    waiting = store.enqueue(None, "task", "cpu", {})
    assert store.cancel(waiting.id, "no longer needed").state == State.CANCELLED
    running = store.enqueue(None, "task", "cpu", {})
    c = store.claim("cpu", owner())
    j = store.cancel(running.id)  # a worker's child: the worker stops it
    assert j.state == State.RUNNING and j.cancel_requested and store.cancel_requests([c.id]) == {c.id}
    store.mark_cancelled(c.id, c.attempt, "stopped")
    assert store.get(c.id).state == State.CANCELLED
    agent = store.enqueue(3, "agent", "agent", {"title": "t"})
    store.claim("agent", Owner.agent("testhost"))
    assert store.cancel(agent.id).state == State.CANCELLED  # an outside claim: at once


def test_warm_stop_resume_does_not_count_an_attempt(store):
    job = store.enqueue(None, "full", "cpu", {}, max_attempts=1)
    for _ in range(3):
        c = store.claim("cpu", owner())
        store.requeue(c.id, c.attempt, "stopped warm (exit 75)")
    j = store.get(job.id)
    assert j.state == State.QUEUED and j.attempt == 3 and j.tries == 0 and j.resumes == 3


def test_one_running_gpu_job_per_host_and_device(store):
    for _ in range(3):
        store.enqueue(None, "task", "gpu", {})
    a = store.claim("gpu", Owner.current("testhost"), device="0")
    assert a is not None
    assert store.claim("gpu", Owner.current("testhost"), device="0") is None  # the database refuses
    assert store.claim("gpu", Owner.current("testhost"), device="1") is not None  # another card
    assert store.claim("gpu", Owner.current("otherhost"), device="0") is not None  # another host's card
    store.finish(a.id, a.attempt, {})
    assert store.claim("gpu", Owner.current("testhost"), device="0") is None  # nothing left
    assert len(store.list(state="running", lane="gpu")) == 2


def test_schema_upgrade_keeps_jobs(db_url, tmp_path):
    settings = settings_for(queue_env(db_url, tmp_path))
    engine = make_engine(db_url, settings)
    with engine.begin() as conn:  # a database made by the previous release (schema v1)
        for ddl in v1_statements(engine):
            conn.exec_driver_sql(ddl)
        for i, state in enumerate(("queued", "succeeded", "running")):
            conn.execute(text(
                "INSERT INTO jobs (issue, kind, lane, state, priority, attempt, max_attempts, payload, result, dedupe,"
                " held, not_before, created_at, owner_host, lease_until) VALUES (:i, 'smoke', 'cpu', :s, 0, :a, 3,"
                " :p, :r, :d, false, 0, :t, :h, :lu)"),
                {"i": 40 + i, "s": state, "a": 0 if state == "queued" else 1, "p": json.dumps({"argv": ["true"]}),
                 "r": json.dumps({"verdict": "PASS"}) if state == "succeeded" else None, "d": f"{40 + i}:smoke:",
                 "t": time.time(), "h": "oldhost" if state == "running" else None, "lu": 1.0})
    engine.dispose()
    with Store(settings) as store:
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT version FROM schema_version")).scalar() == SCHEMA_VERSION
        jobs = {j.issue: j for j in store.list()}
        assert {j.state for j in jobs.values()} == {State.QUEUED, State.SUCCEEDED, State.RUNNING}
        assert jobs[41].result == {"verdict": "PASS"} and jobs[41].attempt_base == 0
        assert store.enqueue(40, "smoke", "cpu", {}).id == jobs[40].id  # the dedupe key survived
        assert [a for _, a in store.recover()] == ["requeued"]  # the old running job's lease is long gone
        c = store.claim("cpu", owner())
        store.finish(c.id, c.attempt, {"ok": 1})
        assert [e.to_state for e in store.events(c.id)][-2:] == ["running", "succeeded"]  # triggers now on
        x = store.enqueue(None, "task", "gpu", {})
        y = store.enqueue(None, "task", "cpu", {}, depends_on=x.id)
        cx = store.claim("gpu", owner(), device="0")
        assert (y.state, cx.id) == (State.BLOCKED, x.id)
        store.finish(cx.id, cx.attempt, {})
        assert store.get(y.id).state == State.QUEUED  # released by the v3 trigger
    with Store(settings) as store:  # a second start changes nothing
        assert len(store.list()) == 5


def test_sqlite_checkpoint_moves_the_wal_into_the_database(sqlite_url, tmp_path):
    """Commits sit in the WAL (synchronous=NORMAL does not fsync them) until a checkpoint copies them into the
    database file; the worker's maintenance pass calls Store.checkpoint, so that window stays one heartbeat."""
    store = Store(settings_for(queue_env(sqlite_url, tmp_path)))
    path = sqlite_url.split("sqlite:///", 1)[1]
    store.enqueue_many("task", "cpu", [{"i": i} for i in range(300)])
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000  # SQLite's default, per connection
    assert store._conn()[2].execute("PRAGMA wal_autocheckpoint").fetchone()[0] == \
        store.settings.queue.sqlite_checkpoint_pages
    size_before = os.path.getsize(path)
    store.checkpoint()
    assert os.path.getsize(path) > size_before  # the jobs are in the database file now
    busy, wal_frames, done = raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()  # nothing left to copy
    assert busy == 0 and wal_frames == done
    raw.close()
    store.close()


def test_locked_sqlite_database_is_waited_on(sqlite_url, tmp_path):
    settings = settings_for(queue_env(sqlite_url, tmp_path))
    store = Store(settings)
    path = sqlite_url.split("sqlite:///", 1)[1]
    held, release = threading.Event(), threading.Event()

    def hold_write_lock():
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE schema_version SET upgraded_at = upgraded_at")
        held.set()
        release.wait(5)
        conn.execute("COMMIT")
        conn.close()

    t = threading.Thread(target=hold_write_lock)
    t.start()
    held.wait(5)
    threading.Timer(1.0, release.set).start()
    t0 = time.monotonic()
    job = store.enqueue(None, "task", "cpu", {})  # waits on the busy timeout, then goes through
    waited = time.monotonic() - t0
    t.join()
    assert job.state == State.QUEUED and waited >= 0.8
    # a lock held beyond the busy timeout: a clear error, not a crash
    short = Store(settings.replace({"sqlite_busy_timeout_ms": 200}))
    held.clear(), release.clear()
    t = threading.Thread(target=hold_write_lock)
    t.start()
    held.wait(5)
    with pytest.raises(QueueBusy, match="locked"):
        short.enqueue(None, "task", "cpu", {})
    release.set()
    t.join()
    short.close()
    store.close()


def test_wait_for_work_wakes_on_enqueue(store):
    got = {}

    def waiter():
        t0 = time.monotonic()
        got["woken"] = store.wait_for_work(5.0)
        got["after"] = time.monotonic() - t0

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.3)
    other = Store(store.settings)
    other.enqueue(None, "task", "cpu", {})
    t.join()
    other.close()
    assert got["woken"] and got["after"] < 2.0


@pytest.mark.postgres
def test_pg_queues_in_other_schemas_do_not_wake_each_other(pg_url, tmp_path):
    import uuid

    from tests.conftest import _pg_connect

    other = "t_" + uuid.uuid4().hex[:12]
    with _pg_connect() as conn:
        conn.execute(f'CREATE SCHEMA "{other}"')
    mine = Store(settings_for(queue_env(pg_url, tmp_path)))
    theirs = Store(settings_for(queue_env(pg_url.rsplit("%3D", 1)[0] + "%3D" + other, tmp_path)))
    try:
        mine.wait_for_work(0.01)  # LISTENing from here on
        theirs.enqueue(None, "task", "cpu", {})
        assert mine.wait_for_work(0.5) is False  # another queue's work is not ours
        with Store(mine.settings) as same_queue:
            same_queue.enqueue(None, "task", "cpu", {})
        assert mine.wait_for_work(5.0) is True
    finally:
        mine.close(), theirs.close()
        with _pg_connect() as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{other}" CASCADE')


def test_unreachable_tells_an_outage_from_a_bug(tmp_path):
    """The daemon waits out an unreachable queue database with one log line; a real error keeps its traceback."""
    import sqlalchemy

    from jobqueue.errors import unreachable

    gone = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/no/such/dir/q.db")
    with pytest.raises(sqlalchemy.exc.OperationalError) as e:
        gone.connect()
    assert unreachable(e.value)  # "unable to open database file"
    ok = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/q.db")
    with ok.connect() as c, pytest.raises(sqlalchemy.exc.OperationalError) as e:
        c.execute(sqlalchemy.text("SELEC 1"))
    assert not unreachable(e.value)  # a syntax error is a bug, not an outage
