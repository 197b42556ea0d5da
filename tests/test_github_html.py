"""An HTML error page is an outage, not a crash (issue #20, item 2).

GitHub's front end answers 502/503 with an HTML page. On every kind of call (list, events, permission, comment,
label, edit) such an answer, or one that is not JSON at all, must take the bounded outage path: TrackerUnavailable
with a one-line message and a back-off, nothing lost (the outbox keeps the write), never a JSONDecodeError.
`refinery daemon --once` against it exits 0 with one line and no traceback.

Run: .venv/bin/python -m pytest tests/test_github_html.py -q
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

import config
from agent.trackers.interface import AmbiguousWrite, TrackerUnavailable
from tests.agent_support import BAD_BODY, TOKEN, env_for, gh, make_daemon, settings_for  # noqa: F401
from tests.test_github_tracker import kv, tracker  # noqa: F401 - kv is a fixture

CALLS = {  # kind: (method, route, the call)
    "list": ("GET", r"/issues$", lambda t, n, cid: t.poll()),
    "events": ("GET", r"/issues/\d+/events$", lambda t, n, cid: t.label_actor(n, "ideas")),
    "permission": ("GET", r"/collaborators/", lambda t, n, cid: t.permission("alice")),
    "comment": ("POST", r"/issues/\d+/comments$", lambda t, n, cid: t.post_comment(n, "hello")),
    "label": ("POST", r"/issues/\d+/labels$", lambda t, n, cid: t.add_label(n, "refinery:queued")),
    "edit": ("PATCH", r"/issues/comments/\d+$", lambda t, n, cid: t.edit_comment(n, cid, "edited")),
}


@pytest.mark.parametrize("status", [502, 503])
@pytest.mark.parametrize("kind", list(CALLS))
def test_an_html_error_page_is_an_outage_on_every_call(gh, kv, tmp_path, kind, status):  # noqa: F811
    n = gh.create_issue("an idea", "body", labels=["ideas", "cpu"], author="alice")
    cid = tracker(gh, kv, tmp_path).post_comment(n, "first")
    method, route, call = CALLS[kind]
    t = tracker(gh, kv, tmp_path, github_backoff_s=30.0)
    fault = gh.fail(method, route, status, html=True, times=10)  # GETs are retried: every retry sees the page
    with pytest.raises(TrackerUnavailable) as e:
        call(t, n, cid)
    assert fault.hits >= 1
    msg = str(e.value)
    assert f"answered {status}" in msg and "not JSON" in msg and "\n" not in msg and "<html" not in msg.lower()
    assert e.value.until >= time.time() + 20  # the back-off, not a hammering retry
    if method != "GET":
        assert isinstance(e.value, AmbiguousWrite) and e.value.status == status  # answered: cannot land later
    hits = fault.hits
    with pytest.raises(TrackerUnavailable):  # until the back-off ends no request leaves
        call(t, n, cid)
    assert fault.hits == hits


def test_a_200_that_is_not_json_is_an_outage_too(gh, kv, tmp_path):  # noqa: F811
    gh.create_issue("an idea", "body", labels=["ideas", "cpu"], author="alice")
    gh.fail("GET", r"/issues$", 200, html=True, times=10)
    with pytest.raises(TrackerUnavailable, match="not JSON"):
        tracker(gh, kv, tmp_path).poll()


def test_the_outbox_keeps_a_write_met_by_an_html_page_and_sends_it_once(gh, tmp_path, sqlite_url):  # noqa: F811
    n = gh.create_issue("typo", BAD_BODY, labels=["ideas", "cpu"], author="alice")
    d = make_daemon(settings_for(sqlite_url, tmp_path, gh))
    d.poll()
    gh.fail("POST", r"/issues/\d+/comments$", 502, html=True, after=True)  # GitHub made it, then said 502
    rep = d.deliver()
    assert rep.blocked is not None and d.outbox_store.counts()["pending"] >= 1
    time.sleep(0.2)
    while d.outbox_store.counts()["pending"]:
        d.deliver()
    assert len(gh.comments_of(n)) == 1 and len(gh.writes("POST", r"/comments$")) == 1


def test_daemon_once_meets_an_html_page_with_one_line_and_exit_0(gh, tmp_path, sqlite_url):  # noqa: F811
    gh.create_issue("typo", BAD_BODY, labels=["ideas", "cpu"], author="alice")
    gh.fail("GET", r"/issues$", 502, html=True, times=50)
    s = settings_for(sqlite_url, tmp_path, gh, once_timeout_s=5.0)
    p = subprocess.run([sys.executable, "-m", "agent", "daemon", "--once"], env=env_for(s), cwd=config.ROOT,
                       capture_output=True, text=True, timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "Traceback" not in out and "JSONDecodeError" not in out and TOKEN not in out
    assert "answered 502" in out and "not JSON" in out
