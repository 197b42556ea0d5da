"""Several hosts, one outbox (issue #20, item 3), on SQLite and PostgreSQL: each row is claimed by one sender
(a lease and a fencing token, like jobs), so two senders delivering at once post every comment exactly once; a
sender whose claim was taken over writes nothing; an outbox table made by an older refinery gets the new columns;
the `writer` lease (who advances the pipeline and writes documents) is held by one daemon at a time.

Run: .venv/bin/python -m pytest tests/test_outbox_hosts.py -q
"""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import inspect, text

from agent.daemon.outbox import Outbox, Sender
from agent.state import base
from agent.state.tables import ClaimLost, KeyValue, Leases, OutboxStore
from agent.trackers.github_tracker import GitHubTracker
from jobqueue.db import make_engine
from jobqueue.migrations import init_db
from tests.agent_support import TOKEN, gh, settings_for  # noqa: F401 - gh is a fixture


def _sender(engine, settings, host: str) -> Sender:
    s = settings.replace({"host_name": host})
    return Sender(s, GitHubTracker(s, KeyValue(engine), token=TOKEN), OutboxStore(engine), KeyValue(engine))


def test_two_senders_post_every_comment_once(db_url, tmp_path, gh):  # noqa: F811
    s = settings_for(db_url, tmp_path, gh)
    engine = make_engine(db_url, s)
    init_db(engine)
    ob = Outbox(s, OutboxStore(engine))
    issues = [gh.create_issue(f"i{k}", "x") for k in range(3)]
    for k in range(24):
        ob.comment(issues[k % 3], f"note-{k}", f"note {k}")
    senders = [_sender(engine, s, h) for h in ("host-a", "host-b")]
    done = {h.owner.host: 0 for h in senders}

    def run(sender: Sender) -> None:
        end = time.time() + 60
        while time.time() < end and OutboxStore(engine).counts()["pending"]:
            done[sender.owner.host] += sender.deliver(max_items=1).sent

    threads = [threading.Thread(target=run, args=(x,)) for x in senders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    bodies = [c["body"] for n in issues for c in gh.comments_of(n)]
    assert OutboxStore(engine).counts()["sent"] == 24 and len(bodies) == 24
    assert len(set(bodies)) == 24 and len(gh.writes("POST", r"/comments$")) == 24
    print(f"\nsent per host: {done}")


def test_a_taken_over_claim_writes_nothing(db_url, tmp_path):
    s = settings_for(db_url, tmp_path)
    engine = make_engine(db_url, s)
    init_db(engine)
    store = OutboxStore(engine)
    store.put(1, "comment", "k1", body="hello")
    a = store.claim("a|boot|1|x", lease_s=0.5)
    assert a is not None and store.claim("b|boot|2|y", lease_s=30) is None  # held: b waits
    time.sleep(1.0)  # a stalls past its lease (judged by the database's clock on PostgreSQL)
    b = store.claim("b|boot|2|y", lease_s=30)
    assert b is not None and b.id == a.id and b.claim == a.claim + 1
    with pytest.raises(ClaimLost):
        store.begin_attempt(a.id, claim=a.claim)
    with pytest.raises(ClaimLost):
        store.sent(a.id, time.time(), 7, claim=a.claim)
    store.begin_attempt(b.id, claim=b.claim)
    store.sent(b.id, time.time(), 8, claim=b.claim)
    item = store.get("k1")
    assert (item.state, item.remote_id, item.attempts) == ("sent", 8, 1)
    store.put_edit(1, "k1", "v1")  # an edit re-armed while a sender holds it: the old text is fenced out
    e1 = store.claim("a|boot|1|x", lease_s=30)
    store.put_edit(1, "k1", "v2")
    with pytest.raises(ClaimLost):
        store.sent(e1.id, time.time(), 8, claim=e1.claim)
    e2 = store.claim("a|boot|1|x", lease_s=30)
    assert e2.body == "v2" and e2.claim > e1.claim


def test_the_writer_lease_has_one_holder(db_url, tmp_path):
    s = settings_for(db_url, tmp_path)
    engine = make_engine(db_url, s)
    init_db(engine)
    leases = Leases(engine)
    assert leases.hold("writer", "a|b|1|x", 0.5) == 1
    assert leases.hold("writer", "b|b|2|y", 0.5) is None
    assert leases.hold("writer", "a|b|1|x", 0.5) == 1  # renewed, same token
    time.sleep(1.0)
    assert leases.hold("writer", "b|b|2|y", 30) == 2  # a's lease ran out: b takes over, a new token
    assert leases.hold("writer", "a|b|1|x", 30) is None
    assert leases.hold("writer", "a|b|1|x", 30, gone=lambda h: h.startswith("b|")) == 3  # b died on this host


def test_an_old_outbox_table_gets_the_new_columns(db_url, tmp_path):
    s = settings_for(db_url, tmp_path)
    engine = make_engine(db_url, s)
    init_db(engine)
    with engine.begin() as conn:  # the outbox as the previous release made it
        conn.exec_driver_sql(
            "CREATE TABLE outbox (id INTEGER PRIMARY KEY, issue INTEGER, kind VARCHAR(16), key VARCHAR(255) UNIQUE,"
            " body TEXT, label VARCHAR(255), target VARCHAR(255), state VARCHAR(16), attempts INTEGER,"
            " next_at FLOAT, last_error TEXT, remote_id INTEGER, created_at FLOAT, sent_at FLOAT)")
        conn.execute(text("INSERT INTO outbox (id, issue, kind, key, body, state, attempts, next_at, created_at) "
                          "VALUES (1, 5, 'comment', 'old-key', 'old body', 'pending', 1, 0, 1.0)"))
    base._made.pop(id(engine), None)
    store = OutboxStore(engine)  # ensure_tables: the upgrade
    cols = {c["name"] for c in inspect(engine).get_columns("outbox")}
    assert {"claim", "claimed_by", "lease_until", "lands_by"} <= cols
    assert base.add_missing_columns(engine) == []  # idempotent
    item = store.claim("a|b|1|x", lease_s=30)
    assert (item.key, item.attempts, item.claim) == ("old-key", 1, 1)
