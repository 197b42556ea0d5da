"""The local tracker: issues and comments in the queue's database, no network.

The embedded default (REFINERY_TRACKER=local), driven by `refinery issue new|ls|show|comment|
label|close`. It behaves like the GitHub tracker as far as intake can tell: polls return what
changed since the last poll (a version cursor), label events record who applied a label, and
permissions come from local_collaborators (whoever files issues from this machine's shell is
recorded as admin; `--as LOGIN` files as someone else, untrusted unless granted).
"""

from __future__ import annotations

from datetime import UTC, datetime

from agent.state.local_tables import LocalIssues
from agent.state.tables import KeyValue
from agent.trackers.interface import Comment, Issue, Poll, TrackerError, approvals_of, marker

CURSOR_KEY = "local.cursor"
BOT = "refinery"  # the author of refinery's own comments and label changes


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _issue(d: dict) -> Issue:
    return Issue(number=d["number"], title=d["title"], body=d["body"] or "", state=d["state"],
                 labels=tuple(d["labels"]), author=d["author"], author_is_bot=d["author"].endswith("[bot]"),
                 is_pr=False, updated_at=_iso(d["updated_at"]), url=f"local:#{d['number']}")


class LocalTracker:
    name = "local"

    def __init__(self, issues: LocalIssues):
        self.db = issues
        self.kv = KeyValue(issues.engine)

    def poll(self) -> Poll:
        cursor = int(self.kv.get(CURSOR_KEY, 0))
        rows = self.db.changed(cursor)
        state = {CURSOR_KEY: max(r["version"] for r in rows)} if rows else {}
        return Poll(issues=[_issue(r) for r in rows], state=state)

    def ack(self, poll: Poll) -> None:
        for k, v in poll.state.items():
            self.kv.put(k, v)

    def _get(self, number: int) -> dict:
        d = self.db.get(number)
        if d is None:
            raise TrackerError(f"local issue #{number} does not exist", 404)
        return d

    def get_issue(self, number: int) -> Issue:
        return _issue(self._get(number))

    def comments(self, number: int) -> list[Comment]:
        self._get(number)
        return [Comment(c["id"], c["body"], c["author"], _iso(c["created_at"])) for c in self.db.comments(number)]

    def find_marker(self, number: int, key: str) -> int | None:
        m = marker(key)
        return next((c.id for c in self.comments(number) if m in c.body), None)

    def post_comment(self, number: int, body: str) -> int:
        self._get(number)
        return self.db.add_comment(number, body, BOT)

    def edit_comment(self, number: int, comment_id: int, body: str) -> None:
        try:
            self.db.edit_comment(comment_id, body)
        except KeyError:
            raise TrackerError(f"local comment {comment_id} on #{number} does not exist", 404) from None

    def add_label(self, number: int, label: str) -> None:
        self._get(number)
        self.db.add_label(number, label, BOT)

    def remove_label(self, number: int, label: str) -> None:
        self._get(number)
        self.db.remove_label(number, label, BOT)

    def ensure_labels(self, labels: dict[str, tuple[str, str]]) -> None:
        """Local labels are free-form strings: nothing to create."""

    def permission(self, login: str) -> str:
        return self.db.permission(login)

    def label_actor(self, number: int, label: str) -> str | None:
        actors = [e["actor"] for e in self.db.events(number) if e["event"] == "labeled" and e["label"] == label]
        return actors[-1] if actors else None

    def close(self, number: int) -> None:
        if self._get(number)["state"] != "closed":
            self.db.set_state(number, "closed", BOT)

    def reactions(self, number: int, comment_id: int) -> list[tuple[str, str]]:
        return self.db.reactions(comment_id)

    def approvals(self, number: int, key: str) -> list[str]:
        return approvals_of(self, number, key)

    def state(self) -> dict:
        return {"tracker": "local", "available": True}
