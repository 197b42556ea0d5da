"""The local issue tracker's tables (the embedded default: no network) and their SQL.

    local_issues         issues: title, body, open/closed, labels, author; `version` orders changes
    local_comments       comments on them
    local_events         labeled / unlabeled / closed / reopened, with who did it
    local_collaborators  logins with a permission (the person at the keyboard is admin)
    local_seq            one counter row: each change takes the next version under a row lock, so
                         changes commit in version order on both backends and a poll that reads
                         "version > cursor" never skips one

agent/trackers/local_tracker.py wraps this in the tracker interface; `refinery issue ...` drives it.
"""

from __future__ import annotations

import time

from sqlalchemy import JSON, Float, Integer, String, Text, select, text, update
from sqlalchemy.orm import Mapped, mapped_column

from agent.state.base import AgentBase, ensure_tables
from jobqueue.db import read_tx, write_tx


class LocalIssueRow(AgentBase):
    __tablename__ = "local_issues"

    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(16), default="open")
    author: Mapped[str] = mapped_column(String(255))
    labels: Mapped[list] = mapped_column(JSON, default=list)
    version: Mapped[int] = mapped_column(Integer, index=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    closed_at: Mapped[float | None] = mapped_column(Float)


class LocalCommentRow(AgentBase):
    __tablename__ = "local_comments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    issue: Mapped[int] = mapped_column(Integer, index=True)
    author: Mapped[str] = mapped_column(String(255))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class LocalEventRow(AgentBase):
    __tablename__ = "local_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    issue: Mapped[int] = mapped_column(Integer, index=True)
    event: Mapped[str] = mapped_column(String(32))
    label: Mapped[str | None] = mapped_column(String(255))
    actor: Mapped[str] = mapped_column(String(255))
    at: Mapped[float] = mapped_column(Float)


class LocalCollaboratorRow(AgentBase):
    __tablename__ = "local_collaborators"

    login: Mapped[str] = mapped_column(String(255), primary_key=True)
    permission: Mapped[str] = mapped_column(String(16))


class LocalSeqRow(AgentBase):
    __tablename__ = "local_seq"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(Integer)


def _issue_dict(r: LocalIssueRow) -> dict:
    return {"number": r.number, "title": r.title, "body": r.body, "state": r.state, "author": r.author,
            "labels": list(r.labels or []), "version": r.version, "created_at": r.created_at,
            "updated_at": r.updated_at, "closed_at": r.closed_at}


class LocalIssues:
    """All SQL of the local tracker. Every mutation bumps the issue's version."""

    def __init__(self, engine):
        self.engine = engine
        ensure_tables(engine)

    # ------------------------------------------------------------------ helpers
    def _next_version(self, c) -> int:
        row = c.execute(text("UPDATE local_seq SET value = value + 1 WHERE id = 1 RETURNING value")).first()
        if row is None:
            c.execute(LocalSeqRow.__table__.insert().values(id=1, value=1))
            return 1
        return int(row[0])

    def _touch(self, c, number: int, now: float, **values) -> None:
        res = c.execute(update(LocalIssueRow).where(LocalIssueRow.number == number)
                        .values(version=self._next_version(c), updated_at=now, **values))
        if res.rowcount != 1:
            raise KeyError(number)

    def _event(self, c, number: int, event: str, actor: str, label: str | None, now: float) -> None:
        c.execute(LocalEventRow.__table__.insert().values(issue=number, event=event, label=label, actor=actor, at=now))

    # ------------------------------------------------------------------ issues
    def create(self, title: str, body: str, labels: list[str], author: str, now: float | None = None) -> int:
        now = time.time() if now is None else now
        with write_tx(self.engine) as c:
            v = self._next_version(c)
            res = c.execute(LocalIssueRow.__table__.insert().values(
                title=title, body=body, state="open", author=author, labels=[], version=v,
                created_at=now, updated_at=now))
            number = res.inserted_primary_key[0]
        for lab in labels:
            self.add_label(number, lab, author, now)
        return number

    def get(self, number: int) -> dict | None:
        with read_tx(self.engine) as c:
            row = c.execute(select(LocalIssueRow).where(LocalIssueRow.number == number)).first()
        return _issue_dict(row) if row else None

    def changed(self, after_version: int) -> list[dict]:
        with read_tx(self.engine) as c:
            rows = c.execute(select(LocalIssueRow).where(LocalIssueRow.version > after_version)
                             .order_by(LocalIssueRow.version)).all()
        return [_issue_dict(r) for r in rows]

    def list(self, state: str = "open", label: str | None = None) -> list[dict]:
        q = select(LocalIssueRow).order_by(LocalIssueRow.number)
        if state != "all":
            q = q.where(LocalIssueRow.state == state)
        with read_tx(self.engine) as c:
            out = [_issue_dict(r) for r in c.execute(q).all()]
        return [i for i in out if label is None or label in i["labels"]]

    def edit(self, number: int, title: str | None = None, body: str | None = None, now: float | None = None) -> None:
        values = {k: v for k, v in (("title", title), ("body", body)) if v is not None}
        with write_tx(self.engine) as c:
            self._touch(c, number, time.time() if now is None else now, **values)

    def add_label(self, number: int, label: str, actor: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with write_tx(self.engine) as c:
            labels = c.execute(select(LocalIssueRow.labels).where(LocalIssueRow.number == number)).scalar_one()
            if label in labels:
                return
            self._touch(c, number, now, labels=[*labels, label])
            self._event(c, number, "labeled", actor, label, now)

    def remove_label(self, number: int, label: str, actor: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with write_tx(self.engine) as c:
            labels = c.execute(select(LocalIssueRow.labels).where(LocalIssueRow.number == number)).scalar_one()
            if label not in labels:
                return
            self._touch(c, number, now, labels=[x for x in labels if x != label])
            self._event(c, number, "unlabeled", actor, label, now)

    def set_state(self, number: int, state: str, actor: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with write_tx(self.engine) as c:
            self._touch(c, number, now, state=state, closed_at=now if state == "closed" else None)
            self._event(c, number, "closed" if state == "closed" else "reopened", actor, None, now)

    def events(self, number: int) -> list[dict]:
        with read_tx(self.engine) as c:
            rows = c.execute(select(LocalEventRow).where(LocalEventRow.issue == number)
                             .order_by(LocalEventRow.id)).all()
        return [{"event": r.event, "label": r.label, "actor": r.actor, "at": r.at} for r in rows]

    # ------------------------------------------------------------------ comments
    def add_comment(self, number: int, body: str, author: str, now: float | None = None) -> int:
        now = time.time() if now is None else now
        with write_tx(self.engine) as c:
            self._touch(c, number, now)
            res = c.execute(LocalCommentRow.__table__.insert().values(
                issue=number, author=author, body=body, created_at=now, updated_at=now))
            return res.inserted_primary_key[0]

    def edit_comment(self, comment_id: int, body: str, now: float | None = None) -> None:
        with write_tx(self.engine) as c:
            res = c.execute(update(LocalCommentRow).where(LocalCommentRow.id == comment_id)
                            .values(body=body, updated_at=time.time() if now is None else now))
            if res.rowcount != 1:
                raise KeyError(comment_id)

    def comments(self, number: int) -> list[dict]:
        with read_tx(self.engine) as c:
            rows = c.execute(select(LocalCommentRow).where(LocalCommentRow.issue == number)
                             .order_by(LocalCommentRow.id)).all()
        return [{"id": r.id, "body": r.body, "author": r.author, "created_at": r.created_at}
                for r in rows]

    def react(self, comment_id: int, content: str, actor: str, now: float | None = None) -> None:
        """A reaction on a comment (kept as an event of the comment's issue)."""
        with write_tx(self.engine) as c:
            issue = c.execute(select(LocalCommentRow.issue).where(LocalCommentRow.id == comment_id)).scalar_one()
            self._event(c, issue, "reaction", actor, f"{comment_id}:{content}", time.time() if now is None else now)

    def reactions(self, comment_id: int) -> list[tuple[str, str]]:
        with read_tx(self.engine) as c:
            rows = c.execute(select(LocalEventRow.actor, LocalEventRow.label)
                             .where(LocalEventRow.event == "reaction", LocalEventRow.label.like(f"{comment_id}:%"))
                             .order_by(LocalEventRow.id)).all()
        return [(actor, label.split(":", 1)[1]) for actor, label in rows]

    # ------------------------------------------------------------------ people
    def grant(self, login: str, permission: str) -> None:
        with write_tx(self.engine) as c:
            c.execute(LocalCollaboratorRow.__table__.delete().where(LocalCollaboratorRow.login == login))
            c.execute(LocalCollaboratorRow.__table__.insert().values(login=login, permission=permission))

    def permission(self, login: str) -> str:
        with read_tx(self.engine) as c:
            p = c.execute(select(LocalCollaboratorRow.permission)
                          .where(LocalCollaboratorRow.login == login)).scalar_one_or_none()
        return p or "none"
