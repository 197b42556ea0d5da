"""The one small interface both issue trackers implement, and the records they return.

`github` (agent/trackers/github_tracker.py) talks to GitHub through PyGithub; `local`
(agent/trackers/local_tracker.py) keeps issues in the queue database. Intake, the outbox and the
daemon only ever see this interface, so both behave the same. The trackers know nothing of
SQL: their durable state (ETags, the `since` cursor, local issues) goes through small store
objects from agent/state/ handed in by `make_tracker` (agent/trackers/factory.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

from config import RefineryError

MARKER_RE = re.compile(r"<!-- refinery:([^ >]+) -->")


def marker(key: str) -> str:
    """The hidden marker carried by each of refinery's comments (one per issue, job, stage, kind)."""
    assert " " not in key and ">" not in key, key
    return f"<!-- refinery:{key} -->"


class TrackerError(RefineryError):
    """The issue tracker refused a request (not found, validation failed, bad credentials).

    Fix: read the status and message; check REFINERY_GITHUB_REPO, the token's scopes (issues:
    read and write) and that the issue still exists.
    """

    def __init__(self, message: str, status: int | None = None):
        self.status = status
        super().__init__(message)


class TrackerUnavailable(TrackerError):
    """GitHub is rate-limited or unreachable; nothing is lost, the work waits.

    Fix: usually none — refinery keeps serving the local queue and retries at `until`. If it
    persists, check the network, githubstatus.com and the token's rate limit (`refinery status`).
    """

    def __init__(self, message: str, until: float, status: int | None = None):
        self.until = until  # epoch seconds: do not call GitHub again before this
        super().__init__(message, status)


class AmbiguousWrite(TrackerUnavailable):
    """A write may or may not have taken effect (5xx or a dropped connection after sending).

    Fix: none needed; the outbox looks for the comment's marker before it tries again.
    """


@dataclass(frozen=True)
class Issue:
    number: int
    title: str
    body: str
    state: str  # open | closed
    labels: tuple[str, ...]
    author: str
    author_is_bot: bool = False
    is_pr: bool = False
    updated_at: str = ""  # ISO 8601, the tracker's own clock
    url: str = ""


@dataclass(frozen=True)
class Comment:
    id: int
    body: str
    author: str
    created_at: str = ""

    @property
    def markers(self) -> list[str]:
        return MARKER_RE.findall(self.body or "")


@dataclass
class Poll:
    """What one poll read: changed issues (pull requests already dropped) and its cost."""

    issues: list[Issue] = field(default_factory=list)
    requests: int = 0  # requests that cost rate-limit quota
    not_modified: int = 0  # 304s (free)
    skipped_prs: int = 0
    state: dict = field(default_factory=dict)  # cursor/ETag to persist with ack(), after intake handled `issues`


class Tracker(Protocol):
    name: str

    def poll(self) -> Poll:
        """Issues changed since the last acknowledged poll (all open ones the first time), oldest first."""

    def ack(self, poll: Poll) -> None:
        """Persist the poll's cursor once its issues are handled: a crash before this re-reads them."""

    def get_issue(self, number: int) -> Issue: ...

    def comments(self, number: int) -> list[Comment]: ...

    def find_marker(self, number: int, key: str) -> int | None:
        """The id of the comment on `number` carrying marker(key), or None."""

    def post_comment(self, number: int, body: str) -> int:
        """Create a comment, return its id. Never retried here: a failure after sending raises
        AmbiguousWrite and the caller decides (the outbox searches for the marker first)."""

    def edit_comment(self, number: int, comment_id: int, body: str) -> None: ...

    def add_label(self, number: int, label: str) -> None: ...

    def remove_label(self, number: int, label: str) -> None:
        """Remove `label`; a label that is not there is not an error."""

    def ensure_labels(self, labels: dict[str, tuple[str, str]]) -> None:
        """Create the repository labels {name: (color, description)} that are missing."""

    def permission(self, login: str) -> str:
        """admin | maintain | write | triage | read | none."""

    def label_actor(self, number: int, label: str) -> str | None:
        """Who applied `label` most recently (from the issue's events); None if unknown."""

    def close(self, number: int) -> None: ...

    def reactions(self, number: int, comment_id: int) -> list[tuple[str, str]]:
        """[(login, content)] on a comment, e.g. ('alice', '+1')."""

    def approvals(self, number: int, key: str) -> list[str]:
        """Logins with write access (or allowlisted) who reacted 👍 to refinery's comment marked `key`."""

    def state(self) -> dict:
        """Rate-limit and availability state for `refinery status` (JSON-able)."""


TRUSTED_PERMISSIONS = frozenset({"admin", "maintain", "write"})


def approvals_of(tracker: Tracker, number: int, key: str, allowlist: tuple = ()) -> list[str]:
    """The shared body of Tracker.approvals: 👍 reactions on the marked comment, from trusted people."""
    cid = tracker.find_marker(number, key)
    if cid is None:
        return []
    out = []
    for login, content in tracker.reactions(number, cid):
        if content != "+1" or login in out:
            continue
        if login in allowlist or (not login.endswith("[bot]") and tracker.permission(login) in TRUSTED_PERMISSIONS):
            out.append(login)
    return out

