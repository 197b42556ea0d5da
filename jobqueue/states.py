"""The queue's vocabulary: job states and lanes. Its own module, free of SQLAlchemy, so the command line can
name them (argparse choices, status tables) without paying for the database layer at start-up."""

from __future__ import annotations

import enum


class State(enum.StrEnum):
    QUEUED = "queued"        # waiting for a worker of its lane
    BLOCKED = "blocked"      # waiting on another job (depends_on) or on its issue (held)
    RUNNING = "running"      # leased to one owner; `attempt` is the fencing token
    RETRYING = "retrying"    # an attempt failed; queued again once not_before has passed
    SUCCEEDED = "succeeded"  # done, result written
    FAILED = "failed"        # out of attempts, or failed for good
    CANCELLED = "cancelled"  # stopped by a person (or its dependency failed)


class Lane(enum.StrEnum):
    GPU = "gpu"      # one job per GPU device, serial; also under the GPU file lock
    CPU = "cpu"      # up to cpu_workers jobs at once
    AGENT = "agent"  # claimed from outside by a coding agent (`refinery queue claim`)


FINAL = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED})
LIVE = frozenset(State) - FINAL  # not finished: queued, blocked, running, retrying
