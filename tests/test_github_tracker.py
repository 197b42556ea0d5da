"""The GitHub tracker against a local GitHub-speaking server, through the real PyGithub over real HTTP.

Run: .venv/bin/python -m pytest tests/test_github_tracker.py -q
"""

from __future__ import annotations

import logging
import time

import pytest

from agent.state.tables import KeyValue
from agent.trackers.github_tracker import GitHubTracker
from agent.trackers.interface import AmbiguousWrite, TrackerError, TrackerUnavailable
from jobqueue.db import make_engine
from jobqueue.migrations import init_db
from tests.agent_support import REPO, TOKEN, gh, settings_for  # noqa: F401 - gh is a fixture


@pytest.fixture
def kv(sqlite_url, tmp_path):
    engine = make_engine(sqlite_url, settings_for(sqlite_url, tmp_path))
    init_db(engine)
    return KeyValue(engine)


def tracker(gh, kv, tmp_path, **over) -> GitHubTracker:  # noqa: F811
    return GitHubTracker(settings_for("sqlite://", tmp_path, gh, **over), kv, token=TOKEN)


def polled(t: GitHubTracker):
    """poll + ack, as the daemon does once intake has handled the issues."""
    p = t.poll()
    t.ack(p)
    return p


def test_pagination_prs_and_free_idle_polls(gh, kv, tmp_path):  # noqa: F811
    t0 = time.time() - 10 * 86400
    for i in range(230):
        gh.create_issue(f"issue {i}", "body", labels=["bug"] if i % 3 == 0 else [], at=t0 + i * 60)
    pr = gh.create_issue("a pull request", "", labels=["ideas", "cpu"], pr=True, at=t0 + 231 * 60)
    t = tracker(gh, kv, tmp_path)
    p = polled(t)
    assert len(p.issues) == 230 and p.skipped_prs == 1 and pr not in [i.number for i in p.issues]
    assert p.requests == 3  # 231 open items, 100 a page, pages followed through Link under /api/v3
    assert all("/api/v3/repos/" in e[1] and "per_page=100" in e[1] for e in gh.log)
    p = polled(t)  # the cursor's own URL, once
    p = polled(t)
    assert (p.issues, p.requests, p.not_modified) == ([], 0, 1)
    before = gh.counted
    fresh = tracker(gh, kv, tmp_path)  # a new process: ETag and cursor come from the database
    for _ in range(5):
        assert polled(fresh).issues == []
    assert gh.counted == before, "idle polls must be 304s"
    gh.add_label(7, "ideas", actor="mona")
    p = polled(fresh)
    assert [i.number for i in p.issues] == [7] and "ideas" in p.issues[0].labels and p.requests == 1
    gh.close_issue(9)
    assert [(i.number, i.state) for i in fresh.poll().issues] == [(9, "closed")]  # not acknowledged (a crash)
    assert [(i.number, i.state) for i in polled(fresh).issues] == [(9, "closed")]  # so read again
    assert polled(fresh).issues == []


def test_reads_and_writes(gh, kv, tmp_path):  # noqa: F811
    n = gh.create_issue("idea", "b", labels=["ideas"], author="alice", label_actor="mallory")
    t = tracker(gh, kv, tmp_path)
    assert t.label_actor(n, "ideas") == "mallory" and t.label_actor(n, "gpu") is None
    assert t.permission("mona") == "admin" and t.permission("alice") == "write" and t.permission("eve") == "none"
    gh.add_collaborator("maya", "maintain")
    assert t.permission("maya") == "maintain"
    cid = t.post_comment(n, "hello\n\n<!-- refinery:k/1 -->")
    assert t.find_marker(n, "k/1") == cid and t.find_marker(n, "k/2") is None
    t.edit_comment(n, cid, "edited <!-- refinery:k/1 -->")
    assert gh.comments_of(n)[0]["body"].startswith("edited")
    t.ensure_labels({"refinery:queued": ("c5def5", "waiting")})
    assert gh.labels["refinery:queued"]["color"] == "c5def5"
    t.add_label(n, "refinery:queued")
    t.remove_label(n, "refinery:queued")
    t.remove_label(n, "not-there")  # not an error
    assert gh.issues[n]["labels"] == ["ideas"]
    gh.add_reaction(cid, "mona", "+1")
    assert t.reactions(n, cid) == [("mona", "+1")]
    t.close(n)
    assert t.get_issue(n).state == "closed"
    with pytest.raises(TrackerError) as e:
        t.get_issue(999)
    assert e.value.status == 404


def test_primary_rate_limit_is_not_slept_through(gh, kv, tmp_path):  # noqa: F811
    gh.create_issue("x")
    t = tracker(gh, kv, tmp_path)
    gh.exhaust(reset_in=3600)
    start = time.time()
    with pytest.raises(TrackerUnavailable) as e:
        polled(t)
    assert time.time() - start < 2 and e.value.until > time.time() + 3000
    assert "primary rate limit" in str(e.value)
    n = len(gh.log)
    with pytest.raises(TrackerUnavailable):  # fails fast, no request until the reset
        t.get_issue(1)
    assert len(gh.log) == n
    assert kv.get("github.blocked")["until"] == pytest.approx(e.value.until)
    again = tracker(gh, kv, tmp_path)  # a restarted daemon also waits
    with pytest.raises(TrackerUnavailable):
        polled(again)
    assert len(gh.log) == n and not again.state()["available"]
    other = tracker(gh, kv, tmp_path, github_repo="acme/other")  # restarted for another repository (or server):
    assert other.state()["available"]                              # that wait was not about it, so it asks at once
    with pytest.raises(TrackerError):
        polled(other)
    assert len(gh.log) == n + 1


def test_short_primary_wait_is_slept_within_the_cap(gh, kv, tmp_path):  # noqa: F811
    gh.create_issue("x")
    t = tracker(gh, kv, tmp_path, max_rate_limit_wait_s=4.0)
    gh.exhaust(reset_in=1.0)
    assert len(polled(t).issues) == 1


def test_secondary_rate_limits(gh, kv, tmp_path):  # noqa: F811
    gh.create_issue("x")
    t = tracker(gh, kv, tmp_path)
    gh.fail("GET", r"/issues$", 429, headers={"Retry-After": "1"})
    start = time.time()
    assert len(polled(t).issues) == 1 and time.time() - start >= 0.9  # waited Retry-After, then went on
    gh.fail("POST", r"/comments$", 403, headers={"Retry-After": "120"})
    with pytest.raises(TrackerUnavailable) as e:
        t.post_comment(1, "hi")
    assert 100 < e.value.until - time.time() <= 121 and not isinstance(e.value, AmbiguousWrite)
    assert gh.comments_of(1) == []


def test_secondary_limit_without_retry_after_waits_a_minute(gh, kv, tmp_path):  # noqa: F811
    gh.create_issue("x")
    t = tracker(gh, kv, tmp_path)
    gh.fail("GET", r"/issues/1$", 403)  # the secondary-limit message, no headers
    with pytest.raises(TrackerUnavailable) as e:
        t.get_issue(1)
    assert 55 < e.value.until - time.time() <= 61


def test_5xx_and_dropped_connections(gh, kv, tmp_path):  # noqa: F811
    gh.create_issue("x")
    t = tracker(gh, kv, tmp_path)
    gh.fail("GET", r"/issues/1$", 502)
    assert t.get_issue(1).number == 1  # a GET is retried by our urllib3 Retry
    gh.fail("GET", r"/issues/1$", reset=True)
    assert t.get_issue(1).number == 1
    gh.fail("GET", r"/issues/1$", 503, times=10)
    with pytest.raises(TrackerUnavailable) as e:
        t.get_issue(1)
    assert "503" in str(e.value)
    t2 = tracker(gh, kv, tmp_path)
    gh.faults.clear()
    kv.delete("github.blocked")
    gh.fail("POST", r"/comments$", 502, after=True)
    with pytest.raises(AmbiguousWrite):  # never re-sent blindly
        t2.post_comment(1, "once")
    assert len(gh.comments_of(1)) == 1 and len(gh.writes()) == 1


def test_unreachable_github(tmp_path, kv):
    from agent.trackers.interface import TrackerUnavailable

    s = settings_for("sqlite://", tmp_path, None, tracker="github", github_repo=REPO,
                     github_api_url="http://127.0.0.1:9/api/v3")
    t = GitHubTracker(s, kv, token=TOKEN)
    start = time.time()
    with pytest.raises(TrackerUnavailable) as e:
        polled(t)
    assert "unreachable" in str(e.value) and time.time() - start < 10


def test_token_never_leaks(gh, kv, tmp_path, caplog):  # noqa: F811
    """A token planted in what GitHub answers, in a log line and in a comment body comes out masked."""
    from agent.cli import format_error
    from agent.daemon.outbox import Outbox
    from agent.redact import RedactingFilter, redact
    from agent.state.tables import OutboxStore

    gh.create_issue("x")
    t = tracker(gh, kv, tmp_path)
    gh.fail("POST", r"/comments$", 422, message=f"Validation Failed: token {TOKEN} and ghs_{'a' * 36}")
    with pytest.raises(TrackerError) as e:
        t.post_comment(1, "x")
    text = format_error(e.value)
    assert TOKEN not in text and "ghs_" not in text and "[REDACTED]" in text
    logger = logging.getLogger("refinery.test")
    handler = logging.StreamHandler()
    handler.addFilter(RedactingFilter())
    caplog.handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    try:
        logger.error("oops %s", RuntimeError(f"Authorization: token {TOKEN}"))
    finally:
        logger.removeHandler(handler)
    assert TOKEN not in caplog.text and "[REDACTED]" in caplog.text
    ob = Outbox(settings_for("sqlite://", tmp_path), OutboxStore(kv.engine))
    assert TOKEN not in ob.prepare("k", f"the env had GITHUB_TOKEN={TOKEN}")
    plain = "github_pat_" + "x" * 30
    assert redact(f"a {plain} b") == "a [REDACTED] b"
