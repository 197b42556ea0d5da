"""An honest GitHub (#20 item 8): comment lists lag a new comment, and content-creating requests meet the secondary
limits (tests/ghserver.py: list_lag, write_limits). On SQLite and PostgreSQL, real PyGithub over real HTTP:

    lagging lists      a comment whose POST answered 502 after it was made is found by its marker once the list
                       shows it (marker_settle_s past the lag): one comment; searched at once (no settling), the
                       lag hides it and it is posted twice — the server's lag is real
    secondary limit    a burst past the server's limit meets its 403 (message and Retry-After): the row waits,
                       then goes out once; nothing lost, nothing doubled
    the budget         write_per_minute spent: deliver() stops before GitHub says no (no 403 at all)

Run: .venv/bin/python -m pytest tests/test_outbox_limits.py -q
"""

from __future__ import annotations

import time

from agent.daemon.outbox import Outbox, Sender
from agent.state.tables import KeyValue, OutboxStore
from agent.trackers.github_tracker import GitHubTracker
from jobqueue.db import make_engine
from jobqueue.migrations import init_db
from tests.agent_support import TOKEN, gh, settings_for, wait_for  # noqa: F401 - gh is a fixture

LAG = 1.5


def _outbox(db_url, tmp_path, srv, **over):
    s = settings_for(db_url, tmp_path, srv, **over)
    engine = make_engine(db_url, s)
    init_db(engine)
    sender = Sender(s, GitHubTracker(s, KeyValue(engine), token=TOKEN), OutboxStore(engine), KeyValue(engine))
    return Outbox(s, OutboxStore(engine)), sender, OutboxStore(engine)


def _drain(sender: Sender, store: OutboxStore, timeout: float = 20.0) -> None:
    wait_for(lambda: sender.deliver().sent >= 0 and not store.counts()["pending"], timeout=timeout, step=0.2,
             what="the outbox to drain")


def test_the_marker_search_waits_out_the_lists_lag(db_url, tmp_path, gh):  # noqa: F811
    gh.list_lag = LAG
    ob, sender, store = _outbox(db_url, tmp_path, gh, marker_settle_s=LAG + 1.0)
    n = gh.create_issue("lagging", "x")
    gh.fail("POST", r"/issues/\d+/comments$", 502, after=True)  # made, then answered 502: ambiguous
    ob.comment(n, "note-lag", "a note")
    t0 = time.time()
    _drain(sender, store)
    assert len(gh.comments_of(n)) == 1 and len(gh.writes("POST", r"/comments$")) == 1
    assert time.time() - t0 >= LAG  # it looked only once the list could show the comment
    # the same with no settling: the search runs inside the lag, misses the comment and posts it again
    ob2, hasty, store2 = _outbox(db_url, tmp_path / "b", gh, marker_settle_s=0.0)
    m = gh.create_issue("lagging too", "y")
    gh.fail("POST", r"/issues/\d+/comments$", 502, after=True)
    ob2.comment(m, "note-hasty", "another note")
    _drain(hasty, store2)
    assert len(gh.comments_of(m)) == 2, "the lag did not hide a fresh comment from the list"


def test_a_secondary_limit_403_loses_and_doubles_nothing(db_url, tmp_path, gh):  # noqa: F811
    gh.write_limits = [(3, 2.0)]  # 3 writes in any 2 s (GitHub: 80 a minute, 500 an hour)
    ob, sender, store = _outbox(db_url, tmp_path, gh, max_rate_limit_wait_s=0.0)
    n = gh.create_issue("busy", "x")
    gh.write_times.clear()  # count the outbox's writes only
    for k in range(7):
        ob.comment(n, f"burst-{k}", f"burst {k}")
    first = sender.deliver()
    assert first.sent == 3 and first.blocked is not None and "secondary rate limit" in str(first.blocked)
    assert gh.secondary_hits == 1
    _drain(sender, store, timeout=40)
    bodies = [c["body"] for c in gh.comments_of(n)]
    assert len(bodies) == 7 and len({b.split("<!--")[0] for b in bodies}) == 7, bodies
    assert store.counts()["sent"] == 7


def test_the_write_budget_stops_before_github_does(db_url, tmp_path, gh):  # noqa: F811
    ob, sender, store = _outbox(db_url, tmp_path, gh, write_per_minute=4)
    n = gh.create_issue("budget", "x")
    for k in range(6):
        ob.comment(n, f"b-{k}", f"budget {k}")
    d = sender.deliver()
    assert d.sent == 4 and d.blocked is None and d.budget_until > time.time() + 50
    assert sender.deliver().sent == 0 and store.counts()["pending"] == 2  # waits; nothing dropped
    assert gh.secondary_hits == 0 and len(gh.comments_of(n)) == 4
    # the budget is the outbox's, in the database: another sender (another host) sees it spent too
    other = Sender(sender.settings.replace({"host_name": "host-b"}), sender.tracker, store, sender.kv)
    assert other.deliver().sent == 0
