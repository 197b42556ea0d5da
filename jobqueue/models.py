"""The queue's tables, its states and lanes, and the frozen Job record built from a row.

    jobs            one row per job; a claim changes its state, nothing ever deletes it
    job_events      append-only history: one row per transition (from, to, attempt, why)
    schema_version  the schema's version number, one row (migrations.py upgrades older ones)
    job_offers      PostgreSQL only, UNLOGGED: idle workers' offers to take the next cpu job (wake.py)

Times are float seconds since the epoch (UTC), the same on SQLite and PostgreSQL, so the
store compares them with plain arithmetic and tests pass `now` in.

The state machine (the store's UPDATEs enforce it): a job is born queued (or blocked, when it waits on another job
or its issue is held); a claim moves queued → running and increments `attempt`, the fencing
token; running ends succeeded, failed, cancelled, or retrying (an attempt failed and another
is due after a back-off), which turns queued again when the back-off has passed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from jobqueue.db import Base
from jobqueue.states import FINAL, LIVE, Lane, State  # noqa: F401 - the queue's vocabulary, re-exported

SCHEMA_VERSION = 4  # bump with a step in migrations.py


CLAIMABLE = "state IN ('queued', 'retrying')"  # retrying rows wait for not_before


class JobRow(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    issue: Mapped[int | None] = mapped_column(Integer)                 # source issue (None: ad hoc)
    kind: Mapped[str] = mapped_column(String(32))                      # KINDS
    lane: Mapped[str] = mapped_column(String(16))                      # Lane
    state: Mapped[str] = mapped_column(String(16))                     # State
    priority: Mapped[int] = mapped_column(Integer, default=0)          # higher first, then oldest
    attempt: Mapped[int] = mapped_column(Integer, default=0)           # claims so far = fencing token
    attempt_base: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # ^ claims that do not count against max_attempts (warm stops, `queue retry`): tries = attempt - attempt_base
    resumes: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))  # exit-75 requeues
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    payload: Mapped[dict] = mapped_column(JSON, default=dict)          # argv, spec, title/body/labels, ...
    result: Mapped[dict | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    dedupe: Mapped[str | None] = mapped_column(String(255), unique=True)  # "issue:kind:key"; NULL = no dedupe
    depends_on: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    held: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))  # issue on hold
    run_dir: Mapped[str | None] = mapped_column(Text)
    not_before: Mapped[float] = mapped_column(Float, default=0.0)      # retry back-off
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    # the lease: who holds it and until when
    owner_host: Mapped[str | None] = mapped_column(String(255))
    owner_boot: Mapped[str | None] = mapped_column(String(64))
    owner_pid: Mapped[int | None] = mapped_column(Integer)
    owner_start: Mapped[str | None] = mapped_column(String(32))       # the owner process's start time
    device: Mapped[str | None] = mapped_column(String(32))            # gpu lane: the card it runs on
    child_pid: Mapped[int | None] = mapped_column(Integer)            # the runner's child (process group)
    child_start: Mapped[str | None] = mapped_column(String(32))
    lease_until: Mapped[float | None] = mapped_column(Float)
    heartbeat_at: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[float | None] = mapped_column(Float)           # time of the last transition
    note: Mapped[str | None] = mapped_column(Text)                    # why: copied into its event

    __table_args__ = (
        # the claim: best eligible job of a lane; partial, so it only holds claimable rows
        Index("ix_jobs_claim", "lane", text("priority DESC"), "id", sqlite_where=text(CLAIMABLE),
              postgresql_where=text(CLAIMABLE)),
        Index("ix_jobs_running", "lease_until", sqlite_where=text("state = 'running'"),
              postgresql_where=text("state = 'running'")),
        Index("ix_jobs_issue", "issue"),
        Index("ix_jobs_depends_on", "depends_on"),
        # one running gpu job per (host, device), enforced by the database on both backends
        Index("ux_jobs_gpu_running", "owner_host", "device", unique=True,
              sqlite_where=text("state = 'running' AND lane = 'gpu'"),
              postgresql_where=text("state = 'running' AND lane = 'gpu'")),
    )


class EventRow(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    at: Mapped[float] = mapped_column(Float)
    attempt: Mapped[int] = mapped_column(Integer)
    from_state: Mapped[str | None] = mapped_column(String(16))   # None: created
    to_state: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text, default="")
    owner: Mapped[str | None] = mapped_column(String(255))       # host:pid when a worker made it


class HeldIssueRow(Base):
    """Issues whose work is on hold (the `blocked` label): their jobs wait in state blocked."""

    __tablename__ = "held_issues"

    issue: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    held_at: Mapped[float] = mapped_column(Float)


class SchemaVersionRow(Base):
    __tablename__ = "schema_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)   # always 1
    version: Mapped[int] = mapped_column(Integer)
    upgraded_at: Mapped[float] = mapped_column(Float)


def _json(value: Any) -> Any:
    if value == "{}":  # most payloads and results of no-op jobs: skip the parser
        return {}
    return json.loads(value) if isinstance(value, str) else value


@dataclass(frozen=True)
class Job:
    """An immutable snapshot of one jobs row (what the store hands out)."""

    id: int
    issue: int | None
    kind: str
    lane: Lane
    state: State
    priority: int
    attempt: int
    attempt_base: int
    resumes: int
    max_attempts: int
    payload: dict
    result: dict | None
    error: str | None
    dedupe: str | None
    depends_on: int | None
    held: bool
    run_dir: str | None
    not_before: float
    cancel_requested: bool
    owner_host: str | None
    owner_boot: str | None
    owner_pid: int | None
    owner_start: str | None
    device: str | None
    child_pid: int | None
    child_start: str | None
    lease_until: float | None
    heartbeat_at: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float | None
    note: str | None

    @classmethod
    def from_row(cls, row: Any) -> Job:
        m = row._mapping if hasattr(row, "_mapping") else row  # a SQLAlchemy Row or a dict
        return cls.from_values([m[k] for k in JOB_COLUMNS])

    @classmethod
    def from_values(cls, values: Sequence) -> Job:
        """From the columns in JOB_COLUMNS order (the store's `RETURNING <JOB_COLUMNS>` on the hot path)."""
        d = dict(zip(JOB_COLUMNS, values))
        d["lane"], d["state"] = _LANES[d["lane"]], _STATES[d["state"]]
        d["payload"], d["result"] = _json(d["payload"]) or {}, _json(d["result"])
        d["held"], d["cancel_requested"] = bool(d["held"]), bool(d["cancel_requested"])
        return cls(**d)

    @property
    def tries(self) -> int:
        """Attempts that count against max_attempts."""
        return self.attempt - self.attempt_base

    @property
    def lease_id(self) -> str:
        """What an outside claimer (the agent lane) quotes back: job id and fencing token."""
        return f"{self.id}.{self.attempt}"

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in JOB_COLUMNS}
        d["lane"], d["state"] = self.lane.value, self.state.value
        return d


JOB_COLUMNS = tuple(c.name for c in JobRow.__table__.columns)
_LANES, _STATES = {x.value: x for x in Lane}, {x.value: x for x in State}


@dataclass(frozen=True)
class Event:
    id: int
    job_id: int
    at: float
    attempt: int
    from_state: str | None
    to_state: str
    message: str
    owner: str | None

    @classmethod
    def from_row(cls, row: Any) -> Event:
        m = row._mapping if hasattr(row, "_mapping") else row
        return cls(**{k: m[k] for k in ("id", "job_id", "at", "attempt", "from_state", "to_state", "message",
                                        "owner")})
