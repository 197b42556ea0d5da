"""The agent's own declarative base, and the one call that makes its tables.

The agent's tables live in the queue's database (one URL, one backup) but not in the queue's schema:
the queue knows nothing of comments or issues. Each class that reads or writes them calls
`ensure_tables(engine)` when it is built; the first call per engine creates what is missing, under the
queue's schema lock (`jobqueue.migrations.create_tables`), so two processes starting at once do not race.
"""

from __future__ import annotations

import threading

from sqlalchemy import Engine, inspect, text
from sqlalchemy.orm import DeclarativeBase

from jobqueue.db import is_sqlite, write_tx
from jobqueue.migrations import _LOCK_KEY, create_tables


class AgentBase(DeclarativeBase):
    """Every agent-side table (outbox, intake memory, key-value, the local tracker's) derives from this."""


_made: dict[int, frozenset[str]] = {}  # id(engine) → the agent tables already made there
_lock = threading.Lock()


def ensure_tables(engine: Engine) -> None:
    """Create the agent tables known so far (every module imported that defines one) on `engine`. Idempotent,
    cheap after the first call."""
    names = frozenset(AgentBase.metadata.tables)
    if _made.get(id(engine)) == names:
        return
    with _lock:
        if _made.get(id(engine)) != names:
            create_tables(engine, AgentBase.metadata)
            add_missing_columns(engine)
            _made[id(engine)] = names


def add_missing_columns(engine: Engine) -> list[str]:
    """The upgrade of an agent table made by an older refinery: every column the model has and the table lacks
    is added (nullable, or with its server default), under the queue's schema lock. Idempotent; returns what
    it added ("table.column")."""
    have = {t: {c["name"] for c in inspect(engine).get_columns(t)} for t in AgentBase.metadata.tables
            if inspect(engine).has_table(t)}
    todo = [(t, c) for t, table in AgentBase.metadata.tables.items() if t in have
            for c in table.columns if c.name not in have[t]]
    if not todo:
        return []
    added = []
    with write_tx(engine) as conn:
        if not is_sqlite(engine):
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
        now = {t: {c["name"] for c in inspect(conn).get_columns(t)} for t in {t for t, _ in todo}}
        for t, col in todo:
            if col.name in now[t]:  # another process added it while we waited for the lock
                continue
            kind = col.type.compile(dialect=conn.dialect)
            default = f" DEFAULT {col.server_default.arg.text}" if col.server_default is not None else ""
            conn.execute(text(f'ALTER TABLE "{t}" ADD COLUMN "{col.name}" {kind}{default}'))
            added.append(f"{t}.{col.name}")
    return added
