"""The agent's own declarative base, and the one call that makes its tables.

The agent's tables live in the queue's database (one URL, one backup) but not in the queue's schema:
the queue knows nothing of comments or issues. Each class that reads or writes them calls
`ensure_tables(engine)` when it is built; the first call per engine creates what is missing, under the
queue's schema lock (`jobqueue.migrations.create_tables`), so two processes starting at once do not race.
"""

from __future__ import annotations

import threading

from sqlalchemy import Engine
from sqlalchemy.orm import DeclarativeBase

from jobqueue.migrations import create_tables


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
            _made[id(engine)] = names
