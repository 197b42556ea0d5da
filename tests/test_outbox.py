"""The outbox and the daemon's contact with GitHub: exactly-once comments through 502s, dropped
connections and kill -9; rate limits and outages that delay but never drop; `daemon --once`;
the local tracker end to end from the command line.

Run: .venv/bin/python -m pytest tests/test_outbox.py -q      (the subprocess tests are marked slow)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import config
from agent.daemon.outbox import Outbox, Sender
from agent.state.tables import KeyValue, OutboxStore
from jobqueue.db import make_engine
from jobqueue.migrations import init_db
from tests.agent_support import IDEA_BODY, TOKEN, env_for, gh, make_daemon, settings_for, wait_for  # noqa: F401


def _markers(srv, n):
    return [c["body"].rsplit("<!-- refinery:", 1)[-1] for c in srv.comments_of(n)]


def test_outbox_puts_are_idempotent(db_url, tmp_path):
    s = settings_for(db_url, tmp_path)
    engine = make_engine(db_url, s)
    init_db(engine)
    ob = Outbox(s, OutboxStore(engine))
    assert ob.comment(3, "i3/j1/smoke/result", "first") is True
    assert ob.comment(3, "i3/j1/smoke/result", "again") is False
    assert ob.status(3, "i3/j1/smoke/status", "running") is True
    items = ob.store.items()
    assert [i.kind for i in items] == ["comment", "status"] and items[0].body.startswith("first")
    ob.edit(3, "i3/j1/smoke/result", "v2")
    ob.edit(3, "i3/j1/smoke/result", "v3")
    edits = [i for i in ob.store.items() if i.kind == "edit"]
    assert len(edits) == 1 and edits[0].body.startswith("v3")
    engine.dispose()


def test_502_after_the_comment_was_created_yields_one_comment(gh, tmp_path, sqlite_url):  # noqa: F811
    n = gh.create_issue("loops", IDEA_BODY, labels=["ideas", "cpu"])
    d = make_daemon(settings_for(sqlite_url, tmp_path, gh))
    gh.fail("POST", r"/comments$", 502, after=True)
    d.poll()
    first = d.deliver()
    assert first.blocked is not None and len(gh.comments_of(n)) == 1  # created, then a 502
    d.deliver()
    assert len(gh.comments_of(n)) == 1 and len(gh.writes()) == 1  # found by its marker, not re-posted
    assert any(e[0] == "GET" and e[1].startswith(f"/api/v3/repos/acme/lab/issues/{n}/comments") for e in gh.log)
    assert "refinery:queued" in gh.issues[n]["labels"] and d.outbox_store.counts()["pending"] == 0
    gh.fail("POST", r"/comments$", reset=True, after=True)  # the connection drops after GitHub acted
    d.outbox.comment(n, f"i{n}/note", "a second note")
    d.deliver()
    d.deliver()
    assert _markers(gh, n).count(f"i{n}/note -->") == 1
    d.store.close()


def test_bodies_are_cut_with_a_pointer_and_writes_are_spaced(gh, tmp_path, sqlite_url):  # noqa: F811
    n = gh.create_issue("x")
    s = settings_for(sqlite_url, tmp_path, gh, comment_max_chars=2000, write_interval_s=0.4)
    d = make_daemon(s)
    run_dir = tmp_path / "runs" / "r1"
    d.outbox.comment(n, f"i{n}/long", "x" * 5000 + f" {TOKEN}", run_dir=run_dir)
    d.outbox.comment(n, f"i{n}/two", "two")
    d.outbox.comment(n, f"i{n}/three", "three")
    d.deliver()
    bodies = [c["body"] for c in gh.comments_of(n)]
    assert len(bodies) == 3 and len(bodies[0]) <= 2000 and "full text is in" in bodies[0]
    assert bodies[0].endswith(f"<!-- refinery:i{n}/long -->")
    full = (run_dir / f"comment-i{n}_long.md").read_text()
    assert full.startswith("x" * 5000) and TOKEN not in full and "[REDACTED]" in full
    times = [e[3] for e in gh.writes()]
    assert all(b - a >= 0.35 for a, b in zip(times, times[1:])), times
    d.store.close()


def test_rate_limited_delivery_waits_and_loses_nothing(gh, tmp_path, sqlite_url):  # noqa: F811
    n = gh.create_issue("loops", IDEA_BODY, labels=["ideas", "cpu"])
    d = make_daemon(settings_for(sqlite_url, tmp_path, gh, max_rate_limit_wait_s=0.5))
    d.poll()
    gh.exhaust(reset_in=1.0)  # longer than a request may sleep
    rep = d.deliver()
    assert rep.blocked is not None and d.outbox_store.counts()["pending"] >= 1
    assert "rate limit" in d.github_note and "waiting until" in d.github_note
    d.poll()  # still blocked: said once, not "(waiting until T); waiting until T"
    assert "rate limit" in d.github_note and d.github_note.count("waiting until") == 1, d.github_note
    time.sleep(2.5)
    d.deliver()
    assert d.outbox_store.counts()["pending"] == 0 and len(gh.comments_of(n)) == 1
    d.store.close()


def _run(args, env, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=config.ROOT)


@pytest.mark.slow
def test_kill_9_between_enqueue_and_delivery_then_restart(gh, tmp_path, sqlite_url):  # noqa: F811
    idea = gh.create_issue("loops", IDEA_BODY, labels=["ideas", "gpu"])
    bug = gh.create_issue("crash", "it crashes", labels=["bug"])
    s = settings_for(sqlite_url, tmp_path, gh, poll_interval=60.0)
    env = env_for(s, REFINERY_OUTBOX_LEASE_S="5", REFINERY_MARKER_SETTLE_S="0")  # the dead sender's claim lapses
    gh.fail("POST", r"/comments$", 201, after=True, delay=120)  # GitHub creates the comment, then hangs
    proc = subprocess.Popen([sys.executable, "-m", "agent", "daemon"], env=env, cwd=config.ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: sum(len(gh.comments_of(i)) for i in (idea, bug)) == 1, timeout=30, what="first comment")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = proc.stdout.read()
    assert TOKEN not in out
    time.sleep(5.5)  # until the dead sender's claim has lapsed (outbox_lease_s): its write is not lost, only held
    r = _run(["daemon", "--once"], env)
    assert r.returncode == 0, r.stdout + r.stderr
    for n, kind in ((idea, "smoke"), (bug, "agent")):
        ms = _markers(gh, n)
        assert len(ms) == 1 and f"/{kind}/queued -->" in ms[0], (n, ms, r.stdout, r.stderr, out)
        assert "refinery:queued" in gh.issues[n]["labels"]
    r = _run(["daemon", "--once"], env)  # and again: nothing new
    assert r.returncode == 0 and sum(len(gh.comments_of(i)) for i in (idea, bug)) == 2
    assert TOKEN not in r.stdout + r.stderr


@pytest.mark.slow
def test_once_when_github_is_rate_limited_or_down(gh, tmp_path, sqlite_url):  # noqa: F811
    n = gh.create_issue("loops", IDEA_BODY, labels=["ideas", "gpu"])
    s = settings_for(sqlite_url, tmp_path, gh)
    env = env_for(s)
    assert _run(["daemon", "--once"], env).returncode == 0  # intake + delivery
    assert len(gh.comments_of(n)) == 1
    from jobqueue.store import Store

    with Store(s) as store:
        store.enqueue(n, "smoke", "gpu", {"argv": ["true"]}, key="second")
        from agent.daemon.outbox import Outbox as Ob

        Ob(s, OutboxStore(store.engine)).comment(n, f"i{n}/later", "to deliver later")
    gh.exhaust(reset_in=3600)
    start = time.time()
    r = _run(["daemon", "--once"], env)
    assert r.returncode == 0 and time.time() - start < s.daemon.once_timeout_s + 10
    assert "primary rate limit" in r.stdout and "waiting until" in r.stdout and "outbox" in r.stdout
    assert len(gh.comments_of(n)) == 1
    gh.exhausted_until = 0
    KeyValue(make_engine(sqlite_url, s)).delete("github.blocked")  # as if the reset had passed
    r = _run(["daemon", "--once"], env)
    assert r.returncode == 0 and len(gh.comments_of(n)) == 2
    down = env_for(s, REFINERY_GITHUB_API_URL="http://127.0.0.1:9/api/v3", REFINERY_GITHUB_TIMEOUT_S="2")
    start = time.time()
    r = _run(["daemon", "--once"], down)
    assert r.returncode == 0 and time.time() - start < s.daemon.once_timeout_s + 10
    assert "unreachable" in r.stdout


@pytest.mark.slow
def test_local_tracker_end_to_end_from_the_command_line(tmp_path, sqlite_url):
    s = settings_for(sqlite_url, tmp_path, cpu_workers=1)
    env = env_for(s)
    spec = tmp_path / "idea.md"
    spec.write_text(IDEA_BODY)
    r = _run(["issue", "new", "loops", "--body-file", str(spec), "-l", "ideas", "-l", "gpu"], env)
    assert r.returncode == 0 and r.stdout.strip() == "#1"
    assert _run(["issue", "new", "--title", "stranger", "-l", "bug", "--as", "eve"], env).returncode == 0  # as gh
    r = _run(["issue", "new", "-l", "bug"], env)
    assert r.returncode == 2 and "give the issue one title" in r.stderr and not r.stdout
    r = _run(["daemon", "--once", "--json"], env)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.splitlines()[0])
    assert summary["decisions"] == {"enqueued": 1, "untrusted": 1} and summary["outbox_pending"] == 0
    shown = json.loads(_run(["issue", "show", "1", "--json"], env).stdout)
    assert "refinery:queued" in shown["labels"] and "r_max = 6" in shown["comments"][0]["body"]
    assert "write access" in json.loads(_run(["issue", "show", "2", "--json"], env).stdout)["comments"][0]["body"]
    st = json.loads(_run(["status", "--json"], env).stdout)
    assert st["lanes"]["gpu"]["queued"] == 1 and st["outbox"]["sent"] >= 3
    assert st["lanes"]["cpu"] == st["lanes"]["agent"] == {}  # every lane is listed, an idle one too
    table = _run(["status"], {**env, "COLUMNS": "80"}).stdout  # a default terminal: every header whole
    assert "succeeded" in table and "cancelled" in table and max(map(len, table.splitlines())) <= 80
    assert _run(["issue", "close", "1"], env).returncode == 0
    assert _run(["daemon", "--once"], env).returncode == 0
    shown = json.loads(_run(["issue", "show", "1", "--json"], env).stdout)
    assert "refinery:cancelled" in shown["labels"] and "cancelled its work" in shown["comments"][-1]["body"]
    assert _run(["status"], env).returncode == 0


@pytest.mark.slow
def test_long_running_daemon_starts_labeled_work_within_a_poll(gh, tmp_path, sqlite_url):  # noqa: F811
    """label applied → job started within poll_interval + 2 s; SIGTERM stops it warm (exit 0)."""
    s = settings_for(sqlite_url, tmp_path, gh, poll_interval=2.0)
    n = gh.create_issue("work", "")
    proc = subprocess.Popen([sys.executable, "-m", "agent", "daemon"], env=env_for(s), cwd=config.ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: any(e[1].startswith("/api/v3/repos/acme/lab/issues?") for e in gh.log), timeout=20,
                 what="first poll")
        from jobqueue.store import Store

        with Store(s) as store:
            labeled = time.time()
            gh.add_label(n, "documentation", actor="mona")
            job = wait_for(lambda: store.jobs_for_issue(n), timeout=15, what="agent job")[0]
            assert job.created_at - labeled <= s.daemon.poll_interval + 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert TOKEN not in proc.stdout.read()


def test_sender_does_not_touch_other_labels(gh, tmp_path, sqlite_url):  # noqa: F811
    n = gh.create_issue("x", labels=["ideas", "cpu", "help wanted", "refinery:running"])
    s = settings_for(sqlite_url, tmp_path, gh)
    d = make_daemon(s)
    d.outbox.status(n, f"i{n}/s", "passed")
    Sender(s, d.tracker, d.outbox_store, d.kv).deliver()
    assert sorted(gh.issues[n]["labels"]) == ["cpu", "help wanted", "ideas", "refinery:passed"]
    assert {"refinery:queued", "refinery:invalid"} <= set(gh.labels)  # created when missing
    d.store.close()
