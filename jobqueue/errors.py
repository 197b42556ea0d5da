"""The queue's errors: each names the problem and the fix (the CLI prints them on one line).
`jobqueue.store` re-exports them, so callers import them from the store they talk to."""

from __future__ import annotations

import config

__all__ = ["IllegalTransition", "LeaseLost", "QueueBusy", "QueueUnavailable", "UnknownJob"]


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
