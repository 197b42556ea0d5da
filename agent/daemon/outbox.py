"""The outbox: every comment, comment edit, status-label change and close goes to the database
first (agent/state/tables.py), then one serial sender delivers it.

- Idempotent puts: each write has a key (issue, job, stage, kind); putting it again is a no-op,
  so intake or a reporter that repeats a step after a crash never doubles a comment.
- Each comment carries a hidden marker `<!-- refinery:KEY -->`. The sender records the attempt
  in the database before the request leaves; an attempt that may have happened (a 502 after
  GitHub created the comment, a timeout, a kill -9 of the daemon) makes the next try search the
  issue's comments for the marker first, and post only if it is not there.
- At most one write per write_interval_s (GitHub advises a second between mutations), in order, and
  at most write_per_minute in any 60 s and write_per_hour in any hour (GitHub's secondary limits: 80
  content-creating requests a minute, 500 an hour), counted in the database for all hosts together
  (`outbox.write_times`); past the budget, deliver() stops and the rows wait. A secondary-limit 403
  (Retry-After) is a definite refusal: the row waits that long and is sent once, never twice.
- Bodies are redacted (tokens) before they are stored, and cut at comment_max_chars with a pointer
  to the full text, written to the run directory (or runs/outbox/).
- Rate limits and outages leave rows pending until the tracker's `until`; nothing is dropped.
  Rows the tracker refuses for good (404, 422) are retried a few times, then marked dead and shown
  by `refinery status`.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import config
from agent.redact import redact
from agent.state.tables import DEAD, ClaimLost, Item, KeyValue, OutboxStore, holder_gone, holder_of
from agent.trackers.interface import Tracker, TrackerError, TrackerUnavailable, marker
from jobqueue.proc import Owner

log = logging.getLogger("refinery.outbox")

STATUS_PREFIX = "refinery:"
# refinery's own labels: name -> (color, description). The only labels refinery ever changes.
STATUS_LABELS: dict[str, tuple[str, str]] = {
    "refinery:queued": ("c5def5", "refinery: waiting in the queue"),
    "refinery:running": ("fbca04", "refinery: a stage is running"),
    "refinery:passed": ("0e8a16", "refinery: the gate said PASS"),
    "refinery:killed": ("5319e7", "refinery: the gate said FAIL; the idea is in the graveyard"),
    "refinery:failed": ("b60205", "refinery: a job failed (error, not a verdict)"),
    "refinery:invalid": ("e99695", "refinery: the spec in the issue body has errors"),
    "refinery:cancelled": ("d4c5f9", "refinery: cancelled (issue closed or by hand)"),
    "refinery:waiting": ("fef2c0", "refinery: waits for a person: an edited spec or a writer's 👍 (not a verdict)"),
    "refinery:review": ("1d76db", "refinery: a coding agent's branch waits for a person's review"),
}
MAX_TRIES = 5  # refusals (4xx) before a write is marked dead


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:120]


class Outbox:
    """Puts writes into the database (what intake and the reporter call)."""

    def __init__(self, settings: config.Settings, store: OutboxStore):
        self.settings, self.store = settings, store

    def prepare(self, key: str, body: str, run_dir: str | Path | None = None) -> str:
        """Redact, mark, and cut to comment_max_chars with a pointer to the full text on disk."""
        body = redact(body).rstrip()
        tail = "\n\n" + marker(key)
        limit = self.settings.daemon.comment_max_chars
        if len(body) + len(tail) <= limit:
            return body + tail
        where = Path(run_dir) if run_dir else self.settings.runs_path / "outbox"
        where.mkdir(parents=True, exist_ok=True)
        path = where / f"comment-{_slug(key)}.md"
        path.write_text(body + "\n")
        pointer = f"\n\n… cut at {limit:,} characters; the full text is in `{_display(path)}`."
        return body[: limit - len(pointer) - len(tail)] + pointer + tail

    def comment(self, issue: int, key: str, body: str, run_dir: str | Path | None = None) -> bool:
        return self.store.put(issue, "comment", key, body=self.prepare(key, body, run_dir))

    def edit(self, issue: int, target_key: str, body: str, run_dir: str | Path | None = None) -> None:
        self.store.put_edit(issue, target_key, self.prepare(target_key, body, run_dir))

    def status(self, issue: int, key: str, status: str) -> bool:
        """Set refinery's status label (and drop its other refinery:* labels)."""
        label = status if status.startswith(STATUS_PREFIX) else STATUS_PREFIX + status
        assert label in STATUS_LABELS, label
        return self.store.put(issue, "status", key, label=label)

    def close(self, issue: int, key: str) -> bool:
        return self.store.put(issue, "close", key)


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(config.ROOT))
    except ValueError:
        return str(path)


@dataclass
class Delivery:
    sent: int = 0
    found: int = 0  # ambiguous earlier attempts whose marker was found (not re-posted)
    failed: int = 0
    blocked: TrackerUnavailable | None = None
    budget_until: float = 0.0  # the write budget (write_per_minute, write_per_hour) was spent until then
    errors: list[str] = field(default_factory=list)


class Sender:
    """A sender. `deliver` sends what is due, in order, spaced write_interval_s. Several senders (one per daemon,
    on every host) share one outbox: each row is claimed first (a lease of outbox_lease_s and a fencing token),
    so exactly one sender owns a send, and a sender whose claim was taken over writes nothing more."""

    def __init__(self, settings: config.Settings, tracker: Tracker, store: OutboxStore, kv: KeyValue):
        self.settings, self.tracker, self.store, self.kv = settings, tracker, store, kv
        self.last_write = float(kv.get("outbox.last_write", 0.0))
        self.owner = Owner.current(settings.host)
        self.holder = holder_of(self.owner)

    def _gone(self, holder: str | None) -> bool:
        """A claim's holder died on this host (a killed daemon): its rows are taken over at once."""
        return holder_gone(holder, self.owner.host)

    def deliver(self, deadline: float | None = None, max_items: int | None = None) -> Delivery:
        out = Delivery()
        interval = self.settings.daemon.write_interval_s
        while max_items is None or out.sent + out.found + out.failed < max_items:
            now = time.time()
            until = self.budget_until(now)
            if until > now:  # the minute's or the hour's writes are spent: the rows wait, the next round looks again
                out.budget_until = until
                break
            wait = self.last_write + interval - now
            if wait > 0:
                if deadline is not None and now + wait > deadline:
                    break
                if self.store.due(now) is None:
                    break
                time.sleep(wait)
            item = self.store.claim(self.holder, self.settings.daemon.outbox_lease_s, gone=self._gone)
            if item is None:
                break
            try:
                self._deliver_one(item, out)
            except ClaimLost as e:
                log.warning("outbox: %s", e)
            if out.blocked is not None:
                break
        return out

    def _deliver_one(self, item: Item, out: Delivery) -> None:
        tok = item.claim
        try:
            remote_id = self._send(item)
            self.store.sent(item.id, time.time(), remote_id, claim=tok)
            out.sent += 1
        except _Found as f:
            self.store.sent(item.id, time.time(), f.remote_id, claim=tok)
            out.found += 1
        except _Settling as w:
            self.store.later(item.id, str(w), w.until, claim=tok)
        except TrackerUnavailable as e:
            if e.status is not None:  # GitHub answered: the request cannot take effect later
                self.store.answered(item.id, claim=tok)
            self.store.later(item.id, str(e), e.until, claim=tok)
            out.blocked = e
        except TrackerError as e:
            self.store.answered(item.id, claim=tok)
            out.failed += 1
            out.errors.append(f"{item.key}: {e}")
            tries = item.attempts + 1
            if tries >= MAX_TRIES:
                self.store.dead(item.id, str(e), claim=tok)
                log.error("outbox: giving up on %s after %d tries: %s", item.key, tries, e)
            else:
                self.store.later(item.id, str(e), time.time() + 5 * 2 ** tries, claim=tok)
                if item.kind != "comment":
                    self.store.begin_attempt(item.id, claim=tok)  # count the refusal

    def _begin(self, item: Item) -> None:
        self.store.begin_attempt(item.id, claim=item.claim, in_flight_s=self.settings.daemon.github_timeout_s)

    def budget_until(self, now: float) -> float:
        """When the next write fits write_per_minute and write_per_hour (now, or earlier, when it fits now)."""
        d = self.settings.daemon
        times = sorted(t for t in self.kv.get("outbox.write_times", []) if t > now - 3600.0)
        until = now
        for limit, window in ((d.write_per_minute, 60.0), (d.write_per_hour, 3600.0)):
            recent = [t for t in times if t > now - window]
            if len(recent) >= limit:
                until = max(until, recent[len(recent) - limit] + window)
        return until

    def _wrote(self) -> None:
        self.last_write = now = time.time()
        self.kv.put("outbox.last_write", self.last_write)
        keep = self.settings.daemon.write_per_hour  # the hour's window needs no more than its limit
        times = [t for t in self.kv.get("outbox.write_times", []) if t > now - 3600.0][-keep:]
        self.kv.put("outbox.write_times", [*times, now][-keep:])

    def _send(self, item: Item) -> int | None:
        t, n = self.tracker, item.issue
        if item.kind == "comment":
            if item.attempts > 0:  # an earlier attempt may have landed: look before posting again
                settled = (item.lands_by or 0.0) + self.settings.daemon.marker_settle_s
                if time.time() < settled:  # ... once it can no longer land, and the issue's list shows it
                    raise _Settling(f"an earlier attempt may still take effect; its marker is looked for at "
                                    f"{time.strftime('%H:%M:%S', time.localtime(settled))}", settled)
                cid = t.find_marker(n, item.key)
                if cid is not None:
                    log.info("outbox: %s was already delivered (comment %s); not posting again", item.key, cid)
                    raise _Found(cid)
            self._begin(item)
            cid = t.post_comment(n, item.body or "")
            self._wrote()
            return cid
        if item.kind == "edit":
            target = self.store.get(item.target or "")
            cid = target.remote_id if target and target.remote_id else None
            if cid is None:
                if target is not None and target.state not in (DEAD, "sent"):
                    raise TrackerUnavailable(f"edit waits for comment {item.target}", time.time() + 1)
                cid = t.find_marker(n, item.target or "")
                if cid is None:
                    raise TrackerError(f"the comment {item.target} to edit is not on #{n}", 404)
            self._begin(item)
            t.edit_comment(n, cid, item.body or "")
            self._wrote()
            return cid
        if item.kind == "status":
            t.ensure_labels(STATUS_LABELS)
            have = t.get_issue(n).labels
            if item.label not in have:
                t.add_label(n, item.label or "")
                self._wrote()
            for old in have:
                if old.startswith(STATUS_PREFIX) and old != item.label and old in STATUS_LABELS:
                    t.remove_label(n, old)
                    self._wrote()
            return None
        if item.kind == "label":
            t.add_label(n, item.label or "")
        elif item.kind == "unlabel":
            t.remove_label(n, item.label or "")
        elif item.kind == "close":
            t.close(n)
        self._wrote()
        return None


class _Settling(Exception):
    def __init__(self, why: str, until: float):
        super().__init__(why)
        self.until = until


class _Found(Exception):
    def __init__(self, remote_id: int):
        self.remote_id = remote_id
