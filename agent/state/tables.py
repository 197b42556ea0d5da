"""The agent's durable state (AgentBase, in the queue's database): the outbox, intake memory, and a small
key-value table (the GitHub tracker's ETag and `since` cursor, rate-limit state).

    outbox        every comment, comment edit, status-label change and close, written here first;
                  one serial sender (agent/daemon/outbox.py) delivers them. `key` is unique: putting the
                  same (issue, job, stage, kind) twice is a no-op, so a crash that repeats a step
                  never doubles a comment. `attempts` is raised and committed BEFORE a send, so
                  after a crash the sender knows the write may have happened and looks for its marker.
    agent_issues  what intake last decided per issue (body hash, trust note sent, blockers, hold)
    agent_kv      JSON values by key

The SQL lives here (the trackers and the agent know nothing of SQL); agent/ calls these classes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, Boolean, Float, Index, Integer, String, Text, delete, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, mapped_column

from agent.state.base import AgentBase, ensure_tables
from config import RefineryError
from jobqueue.db import is_sqlite, read_tx, write_tx
from jobqueue.proc import Owner, same_process

PENDING, SENT, DEAD = "pending", "sent", "dead"
KINDS = ("comment", "edit", "status", "label", "unlabel", "close")


class OutboxRow(AgentBase):
    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    issue: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))            # KINDS
    key: Mapped[str] = mapped_column(String(255), unique=True)  # marker key; dedupes puts
    body: Mapped[str | None] = mapped_column(Text)           # comment / edit text (already redacted, cut)
    label: Mapped[str | None] = mapped_column(String(255))   # status / label / unlabel
    target: Mapped[str | None] = mapped_column(String(255))  # edit: the key of the comment to edit
    state: Mapped[str] = mapped_column(String(16), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # sends started (committed before sending)
    next_at: Mapped[float] = mapped_column(Float, default=0.0)
    last_error: Mapped[str | None] = mapped_column(Text)
    remote_id: Mapped[int | None] = mapped_column(Integer)   # the comment's id once known
    created_at: Mapped[float] = mapped_column(Float)
    sent_at: Mapped[float | None] = mapped_column(Float)
    # the sender's claim (several hosts share one outbox): who holds the row, until when, and the fencing
    # token (raised by every claim and by a re-armed edit; a write whose token is stale changes nothing)
    claim: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    claimed_by: Mapped[str | None] = mapped_column(String(255))
    lease_until: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    lands_by: Mapped[float | None] = mapped_column(Float)  # the last send may still take effect until then

    __table_args__ = (Index("ix_outbox_due", "state", "next_at", "id"),)


class AgentIssueRow(AgentBase):
    __tablename__ = "agent_issues"

    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(32), default="new")  # see agent/daemon/intake.py
    body_hash: Mapped[str | None] = mapped_column(String(64))       # the body intake last acted on
    spec_key: Mapped[str | None] = mapped_column(String(64))
    noted_untrusted: Mapped[bool] = mapped_column(Boolean, default=False)
    blockers: Mapped[list] = mapped_column(JSON, default=list)     # open issues named by `blocked by #N`
    held: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(16), default="open")
    labels: Mapped[list] = mapped_column(JSON, default=list)
    updated_at: Mapped[float] = mapped_column(Float, default=0.0)


class LeaseRow(AgentBase):
    """A named lease one process holds at a time (the document writer, say), judged by the database's clock."""

    __tablename__ = "agent_leases"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    until: Mapped[float] = mapped_column(Float)
    token: Mapped[int] = mapped_column(Integer, default=1)  # raised whenever the lease changes hands


class KVRow(AgentBase):
    __tablename__ = "agent_kv"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    updated_at: Mapped[float] = mapped_column(Float)


def _insert(engine):
    return sqlite.insert if is_sqlite(engine) else postgresql.insert


class KeyValue:
    """JSON values by key (the GitHub tracker's cursor and ETag cache live here)."""

    def __init__(self, engine):
        self.engine = engine
        ensure_tables(engine)

    def get(self, key: str, default: Any = None) -> Any:
        with read_tx(self.engine) as c:
            v = c.execute(select(KVRow.value).where(KVRow.key == key)).scalar_one_or_none()
        return default if v is None else v

    def put(self, key: str, value: Any) -> None:
        ins = _insert(self.engine)(KVRow).values(key=key, value=value, updated_at=time.time())
        with write_tx(self.engine) as c:
            c.execute(ins.on_conflict_do_update(index_elements=[KVRow.key],
                                                set_={"value": value, "updated_at": time.time()}))

    def delete(self, key: str) -> None:
        with write_tx(self.engine) as c:
            c.execute(delete(KVRow).where(KVRow.key == key))

    def keys(self, prefix: str = "") -> list[str]:
        with read_tx(self.engine) as c:
            return list(c.execute(select(KVRow.key).where(KVRow.key.startswith(prefix, autoescape=True))
                                  .order_by(KVRow.key)).scalars())


@dataclass(frozen=True)
class Item:
    """A frozen outbox row."""

    id: int
    issue: int
    kind: str
    key: str
    body: str | None
    label: str | None
    target: str | None
    state: str
    attempts: int
    next_at: float
    last_error: str | None
    remote_id: int | None
    created_at: float
    sent_at: float | None
    claim: int = 0
    claimed_by: str | None = None
    lease_until: float = 0.0
    lands_by: float | None = None


class ClaimLost(RefineryError):
    """This sender's claim on an outbox row was taken over (its lease expired, or the edit was re-armed).

    Fix: nothing to do; the row's new holder delivers it. If it happens often, raise outbox_lease_s above the
    longest GitHub request (github_timeout_s plus max_rate_limit_wait_s).
    """


def holder_of(owner: Owner) -> str:
    """The claim holder's name: host, boot, pid and start time (so a dead holder on this host is recognised)."""
    return f"{owner.host}|{owner.boot}|{owner.pid}|{owner.start}"


def holder_gone(holder: str | None, host: str) -> bool:
    """`holder` ran on `host` (this one) and that process is gone: what it held is taken over at once."""
    h, boot, pid, start = ((holder or "").split("|") + ["", "", "", ""])[:4]
    return h == host and pid.isdigit() and not same_process(int(pid), start, boot)


class Leases:
    """Named leases (agent_leases): `hold` takes or renews one; several hosts agree on who holds it."""

    def __init__(self, engine):
        self.engine = engine
        ensure_tables(engine)

    def hold(self, name: str, holder: str, lease_s: float, gone=lambda holder: False) -> int | None:
        """Take or renew lease `name` for `holder`; its token (raised when it changes hands), or None when a
        live other holder has it."""
        with write_tx(self.engine) as c:
            now = db_now(c)
            row = c.execute(select(LeaseRow).where(LeaseRow.name == name)).first()
            if row is None:
                ins = _insert(self.engine)(LeaseRow).values(name=name, holder=holder, until=now + lease_s, token=1)
                done = c.execute(ins.on_conflict_do_nothing(index_elements=[LeaseRow.name])
                                 .returning(LeaseRow.token)).first()
                return 1 if done is not None else None
            if row.holder != holder and row.until > now and not gone(row.holder):
                return None
            token = row.token if row.holder == holder else row.token + 1
            res = c.execute(update(LeaseRow).where(LeaseRow.name == name, LeaseRow.token == row.token,
                                                   LeaseRow.holder == row.holder)
                            .values(holder=holder, until=now + lease_s, token=token))
            return token if res.rowcount else None

    def get(self, name: str) -> dict | None:
        with read_tx(self.engine) as c:
            row = c.execute(select(LeaseRow).where(LeaseRow.name == name)).first()
        return None if row is None else {"holder": row.holder, "until": row.until, "token": row.token}


def db_now(conn, fallback: float | None = None) -> float:
    """The time leases are judged by: the database server's clock on PostgreSQL (one clock for every host),
    this host's on SQLite (one host)."""
    if conn.dialect.name == "postgresql":
        return float(conn.execute(text("SELECT extract(epoch from clock_timestamp())")).scalar_one())
    return time.time() if fallback is None else fallback


def _item(row) -> Item:
    return Item(**{k: getattr(row, k) for k in Item.__dataclass_fields__})


class OutboxStore:
    def __init__(self, engine):
        self.engine = engine
        ensure_tables(engine)

    def put(self, issue: int, kind: str, key: str, *, body: str | None = None, label: str | None = None,
            target: str | None = None, now: float | None = None) -> bool:
        """Add one write; False when `key` is already there (the call is idempotent)."""
        assert kind in KINDS, kind
        now = time.time() if now is None else now
        ins = _insert(self.engine)(OutboxRow).values(issue=issue, kind=kind, key=key, body=body, label=label,
                                                     target=target, state=PENDING, attempts=0, next_at=0.0,
                                                     created_at=now)
        with write_tx(self.engine) as c:
            res = c.execute(ins.on_conflict_do_nothing(index_elements=[OutboxRow.key]).returning(OutboxRow.id))
            return res.first() is not None

    def put_edit(self, issue: int, target: str, body: str, now: float | None = None) -> None:
        """Replace the text of comment `target` (latest wins): one edit row per target, re-armed."""
        key = f"{target}@edit"
        if not self.put(issue, "edit", key, body=body, target=target, now=now):
            with write_tx(self.engine) as c:  # a new token: a sender still holding the old text writes nothing
                c.execute(update(OutboxRow).where(OutboxRow.key == key)
                          .values(body=body, state=PENDING, next_at=0.0, last_error=None, claim=OutboxRow.claim + 1,
                                  lease_until=0.0, claimed_by=None))

    def due(self, now: float) -> Item | None:
        """The oldest pending write whose time has come (writes go out in the order they were made)."""
        with read_tx(self.engine) as c:
            row = c.execute(select(OutboxRow).where(OutboxRow.state == PENDING)
                            .order_by(OutboxRow.id).limit(1)).first()
        if row is None or row.next_at > now:
            return None
        return _item(row)

    def get(self, key: str) -> Item | None:
        with read_tx(self.engine) as c:
            row = c.execute(select(OutboxRow).where(OutboxRow.key == key)).first()
        return _item(row) if row else None

    def claim(self, holder: str, lease_s: float, now: float | None = None, gone=lambda holder: False) -> Item | None:
        """Claim the oldest pending write for `holder` when its time has come and no live sender holds it (writes
        go out in order, so a held head row makes every other sender wait). The claim raises the row's fencing
        token; every later change of this send names it (`claim=`) and is refused once another sender took the
        row. A lease ends at lease_until, or at once when `gone(claimed_by)` says its holder died (on this host).
        On PostgreSQL the lease is judged by the database's clock, so hosts whose clocks disagree agree on it."""
        wall = time.time() if now is None else now  # next_at is this host's (a back-off it chose)
        with write_tx(self.engine) as c:
            now = db_now(c, now)
            row = c.execute(select(OutboxRow.id, OutboxRow.next_at, OutboxRow.lease_until, OutboxRow.claimed_by,
                                   OutboxRow.claim).where(OutboxRow.state == PENDING)
                            .order_by(OutboxRow.id).limit(1)).first()
            if row is None or row.next_at > wall:
                return None
            held = (row.lease_until or 0) > now and row.claimed_by not in (None, holder)
            if held and not gone(row.claimed_by):
                return None
            res = c.execute(update(OutboxRow).where(OutboxRow.id == row.id, OutboxRow.claim == row.claim,
                                                    OutboxRow.state == PENDING)
                            .values(claim=row.claim + 1, claimed_by=holder, lease_until=now + lease_s)
                            .returning(*OutboxRow.__table__.columns)).first()
        return _item(res) if res is not None else None

    def _fenced(self, item_id: int, claim: int | None, **values) -> None:
        q = update(OutboxRow).where(OutboxRow.id == item_id)
        if claim is not None:
            q = q.where(OutboxRow.claim == claim)
        with write_tx(self.engine) as c:
            if c.execute(q.values(**values)).rowcount == 0 and claim is not None:
                raise ClaimLost(f"outbox row {item_id}: claim {claim} was taken over; this sender writes nothing")

    def begin_attempt(self, item_id: int, claim: int | None = None, in_flight_s: float = 0.0) -> None:
        """Committed before the request leaves: a crash after this means 'maybe sent', and the request may still
        take effect for in_flight_s (its timeout), which the marker search waits for."""
        self._fenced(item_id, claim, attempts=OutboxRow.attempts + 1, lands_by=time.time() + in_flight_s)

    def answered(self, item_id: int, claim: int | None = None) -> None:
        """The last send was answered (an error, but an answer): it can no longer take effect later."""
        self._fenced(item_id, claim, lands_by=time.time())

    def sent(self, item_id: int, now: float, remote_id: int | None = None, claim: int | None = None) -> None:
        self._fenced(item_id, claim, state=SENT, sent_at=now, remote_id=remote_id, last_error=None, lease_until=0.0)

    def later(self, item_id: int, error: str, next_at: float, claim: int | None = None) -> None:
        self._fenced(item_id, claim, last_error=error, next_at=next_at, lease_until=0.0)

    def dead(self, item_id: int, error: str, claim: int | None = None) -> None:
        self._fenced(item_id, claim, state=DEAD, last_error=error, lease_until=0.0)

    def counts(self) -> dict[str, int]:
        with read_tx(self.engine) as c:
            rows = c.execute(select(OutboxRow.state, func.count()).group_by(OutboxRow.state)).all()
        return {PENDING: 0, SENT: 0, DEAD: 0, **{s: n for s, n in rows}}

    def items(self, issue: int | None = None, state: str | None = None, limit: int = 1000) -> list[Item]:
        q = select(OutboxRow).order_by(OutboxRow.id).limit(limit)
        if issue is not None:
            q = q.where(OutboxRow.issue == issue)
        if state is not None:
            q = q.where(OutboxRow.state == state)
        with read_tx(self.engine) as c:
            return [_item(r) for r in c.execute(q).all()]


class IntakeMemory:
    """Per-issue intake decisions (agent_issues)."""

    FIELDS = ("status", "body_hash", "spec_key", "noted_untrusted", "blockers", "held", "state", "labels")

    def __init__(self, engine):
        self.engine = engine
        ensure_tables(engine)

    def get(self, number: int) -> dict | None:
        with read_tx(self.engine) as c:
            row = c.execute(select(AgentIssueRow).where(AgentIssueRow.number == number)).first()
        if row is None:
            return None
        return {"number": number, **{f: getattr(row, f) for f in self.FIELDS}}

    def put(self, number: int, **fields) -> None:
        bad = set(fields) - set(self.FIELDS)
        assert not bad, bad
        values = {**fields, "updated_at": time.time()}
        ins = _insert(self.engine)(AgentIssueRow).values(number=number, **values)
        with write_tx(self.engine) as c:
            c.execute(ins.on_conflict_do_update(index_elements=[AgentIssueRow.number], set_=values))

    def waiting_on(self, number: int) -> list[int]:
        """Issues whose `blocked by #N` names `number` (JSON lists are scanned here: they are short)."""
        with read_tx(self.engine) as c:
            rows = c.execute(select(AgentIssueRow.number, AgentIssueRow.blockers)
                             .where(AgentIssueRow.state == "open")).all()
        return [n for n, b in rows if b and number in b]
