"""The queue's errors: each names the problem and the fix (the CLI prints them on one line).
`jobqueue.store` re-exports them, so callers import them from the store they talk to."""

from __future__ import annotations

import sqlalchemy

import config

__all__ = ["IllegalTransition", "LeaseLost", "QueueBusy", "QueueUnavailable", "UnknownJob", "unreachable"]


class UnknownJob(config.RefineryError, KeyError):
    """No job has this id. Fix: list the jobs with `refinery queue ls`."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class IllegalTransition(config.RefineryError):
    """The job's state does not allow this action (e.g. cancelling a finished job).
    Fix: check the state with `refinery queue show ID`; `queue retry` re-runs a failed or cancelled job."""


class LeaseLost(config.RefineryError):
    """This claim no longer holds the job: its lease expired and the job was requeued or taken over
    (the fencing token moved on). Fix: stop working on it; claim again for new work."""


class QueueBusy(config.RefineryError):
    """The queue database stayed locked longer than the busy timeout.
    Fix: find the process holding a long write transaction, or raise REFINERY_SQLITE_BUSY_TIMEOUT_MS."""


class QueueUnavailable(config.RefineryError):
    """The queue database cannot be opened (server down, wrong host or credentials, a path not writable, a full
    disk, a corrupt SQLite file).
    Fix: check REFINERY_DB_URL and that the server runs (or the directory is writable)."""


def unreachable(exc: BaseException) -> bool:
    """Whether exc means the queue database cannot be reached right now (server down or restarting, the connection
    terminated, SQLite's disk full): a condition to wait out, not a bug."""
    import psycopg

    if isinstance(exc, (QueueUnavailable, ConnectionError, psycopg.OperationalError)):
        return True
    if isinstance(exc, sqlalchemy.exc.OperationalError) and any(  # SQLite on a full or failing disk
            m in str(exc.orig) for m in ("database or disk is full", "disk I/O error", "unable to open database")):
        return True
    return isinstance(exc, sqlalchemy.exc.DBAPIError) and (
        exc.connection_invalidated or isinstance(exc.orig, psycopg.OperationalError))


def free_note(url: str) -> str:
    """For a SQLite file: the free space where it lives (a full disk reads as "disk I/O error" on opening)."""
    import shutil
    from pathlib import Path

    if not url.startswith("sqlite:///") or ":memory:" in url:
        return ""
    where = Path(url.split("sqlite:///", 1)[1].split("?", 1)[0]).parent
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return ""
    return f"; {free / 1e6:.1f} MB free on {where}" + (" (the disk is full: free space there)" if free == 0 else "")
