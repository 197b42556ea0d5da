"""The store: the only module with job SQL. Every method is one transaction.

The claim is a single UPDATE ... WHERE id = (best eligible row) RETURNING <the job's columns>, inside
BEGIN IMMEDIATE on SQLite (writers queue on the busy timeout) and with FOR UPDATE SKIP LOCKED on
PostgreSQL (claimers skip each other's rows; in autocommit, so one round trip). It increments
`attempt`, the fencing token: every later write by the claimer carries WHERE id = ? AND attempt = ?
AND state = 'running', so a worker whose lease was taken over writes nothing (LeaseLost) and stops.

Statements run on the DBAPI cursor of a pooled SQLAlchemy connection (one per thread), with
`:name` parameters (rewritten to `%(name)s` for psycopg): SQLAlchemy's per-statement result
machinery cost ~70 µs on this machine, half the budget of a claim. The schema, pool, pragmas
and migrations stay SQLAlchemy's (db.py, models.py, migrations.py).

Events are written by database triggers (migrations.py) from the `note` and `updated_at`
columns each transition sets, so no state change can skip its event.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy

import config
from jobqueue.db import Cursor as _Cursor
from jobqueue.db import DbClock, is_sqlite, make_engine, normalise_url
from jobqueue.db import unique_violation as _unique_violation
from jobqueue.errors import IllegalTransition, LeaseLost, QueueBusy, QueueUnavailable, UnknownJob
from jobqueue.errors import free_note as _free_note
from jobqueue.migrations import init_db
from jobqueue.models import CLAIMABLE, FINAL, JOB_COLUMNS, Event, Job, Lane, State
from jobqueue.proc import Owner, same_process
from jobqueue.wake import Waiter, wait_offering


class Store:
    """The queue's one door. `Store(url)`, `Store(settings)` or `Store()` (settings.queue_url)."""

    def __init__(self, url_or_settings: str | config.Settings | None = None, settings: config.Settings | None = None):
        if isinstance(url_or_settings, config.Settings):
            settings, url = url_or_settings, url_or_settings.queue_url
        else:
            settings = settings or config.load()
            url = url_or_settings or settings.queue_url
        self.settings = settings
        self.url = normalise_url(url)
        self.sqlite = is_sqlite(self.url)
        self.host = settings.host
        try:
            self.engine = make_engine(self.url, settings)
            init_db(self.engine)
        except (OSError, sqlalchemy.exc.DatabaseError) as e:  # DatabaseError: a corrupt file too (malformed)
            why = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
            shown = config.hide_url_password(self.url)
            raise QueueUnavailable(f"cannot open the queue database {shown}: {why}{_free_note(self.url)} "
                                   "(REFINERY_DB_URL)") from None
        self._local = threading.local()
        self._all: list = []
        self._lock = threading.Lock()
        self._sql_cache: dict[str, str] = {}
        self._params: dict[tuple, dict] = {}  # claim parameters fixed per (lane, owner, device, n)
        skip = "" if self.sqlite else " FOR UPDATE SKIP LOCKED"
        self._claim_sql = self._sql(self._CLAIM.format(guard="", skip=skip))
        # PostgreSQL's finish_and_claim: one statement (data-modifying CTEs), the claim only if the finish held
        nxt = self._CLAIM.format(guard="EXISTS (SELECT 1 FROM fin) AND ", skip=skip)
        self._finish_claim_sql = self._sql(
            f"WITH fin AS ({self._FINISH}), nxt AS ({nxt})"
            " SELECT (SELECT COUNT(*) FROM fin) AS finished, nxt.* FROM (SELECT 1) AS one LEFT JOIN nxt ON true")
        self._waiter = Waiter(self.url, self.engine, settings.queue.idle_poll_s)
        self.clock = DbClock(self.engine, settings.queue.clock_check_s)  # PostgreSQL: leases on the server's clock

    # ------------------------------------------------------------------ plumbing
    def close(self) -> None:
        with self._lock:
            for raw in self._all:
                try:
                    raw.close()
                except Exception:  # noqa: BLE001 - closing a broken connection
                    pass
            self._all.clear()
            self._waiter.close()
        self._local = threading.local()
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _conn(self):
        """(pooled connection, its DBAPI connection, one reused DBAPI cursor) of this thread."""
        c = getattr(self._local, "c", None)
        if c is None:
            raw = self.engine.raw_connection()
            if not self.sqlite:  # PostgreSQL: our own autocommit connection, out of the pool (see _tx)
                raw.detach()
                raw.dbapi_connection.autocommit = True
                # the store's statements are a fixed set: prepare each at its first run, not its sixth (psycopg's
                # default), so a connection that has been idle since a few uses skips parsing and planning too
                raw.dbapi_connection.prepare_threshold = 0
                # and plan them (and the triggers' statements) once: custom plans, PostgreSQL's choice for the first
                # five runs of each, replan every time and doubled a hand-over's server time (0.26 against 0.51 ms)
                raw.dbapi_connection.execute("SET plan_cache_mode = force_generic_plan")
            c = self._local.c = (raw, raw.dbapi_connection, raw.dbapi_connection.cursor())
            with self._lock:
                self._all.append(raw)
        return c

    def _sql(self, sql: str) -> str:
        out = self._sql_cache.get(sql)
        if out is None:
            out = sql if self.sqlite else re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", sql)
            self._sql_cache[sql] = out
        return out

    @contextmanager
    def _tx(self, write: bool = True, single: bool = False) -> Iterator[_Cursor]:
        """One transaction. SQLite: BEGIN IMMEDIATE for writes. PostgreSQL: the connection is in
        autocommit, so with `single` (the block's one write is one statement; any other statement only
        reads) each statement commits on its own: one round trip instead of three for a claim, a
        heartbeat or an ad hoc enqueue. Otherwise BEGIN ... COMMIT."""
        raw, dbapi, cur = self._conn()
        try:
            if self.sqlite:
                cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                yield _Cursor(self, cur)
                dbapi.commit()
            elif single:
                yield _Cursor(self, cur)
            else:
                with dbapi.transaction():
                    yield _Cursor(self, cur)
        except BaseException as e:
            try:
                if self.sqlite:
                    dbapi.rollback()
                elif dbapi.broken or dbapi.closed:
                    raise ConnectionError("connection lost")
            except Exception:  # noqa: BLE001 - a broken connection: drop it, the pool makes a new one
                self._local.c = None
                raw.invalidate()
            if self.sqlite and "database is locked" in str(e):
                raise QueueBusy(f"queue database locked for over {self.settings.queue.sqlite_busy_timeout_ms} ms"
                                ) from e
            raise

    def _json(self, value: Any) -> str | None:
        if not value:  # None stays NULL; an empty result is the common case of the hot path
            return None if value is None else json.dumps(value)
        return json.dumps(value, sort_keys=True, default=str)

    def _lease_s(self, lane: str) -> float:
        q = self.settings.queue
        return q.agent_lease_s if lane == Lane.AGENT else q.lease_s

    # ------------------------------------------------------------------ enqueue
    def enqueue(self, issue: int | None, kind: str, lane: str | Lane, payload: dict, priority: int = 0,
                depends_on: int | None = None, key: str | None = None, max_attempts: int | None = None,
                now: float | None = None) -> Job:
        """Add a job, or return the one already there for (issue, kind, key). A job with neither an
        issue nor a key is never deduplicated. It starts blocked while its dependency is unfinished
        or its issue is held, cancelled if the dependency already failed."""
        lane, now = Lane(lane), self.clock.now(now)
        dedupe = f"{'' if issue is None else issue}:{kind}:{key or ''}" if issue is not None or key else None
        with self._tx(single=issue is None and depends_on is None) as cur:
            held = issue is not None and cur.one("SELECT issue FROM held_issues WHERE issue = :i", {"i": issue})
            state, note = State.QUEUED, "enqueued"
            if depends_on is not None:
                dep = cur.one("SELECT state FROM jobs WHERE id = :d", {"d": depends_on})
                if dep is None:
                    raise UnknownJob(f"job {depends_on} (named in depends_on) does not exist")
                if dep["state"] in (State.FAILED, State.CANCELLED):
                    state, note = State.CANCELLED, f"dependency #{depends_on} {dep['state']}"
                elif dep["state"] != State.SUCCEEDED:
                    state, note = State.BLOCKED, f"waiting on #{depends_on}"
            if held and state != State.CANCELLED:
                state, note = State.BLOCKED, f"issue #{issue} is on hold"
            rows = cur.tuples(
                "INSERT INTO jobs (issue, kind, lane, state, priority, attempt, attempt_base, max_attempts, payload,"
                " dedupe, depends_on, held, not_before, cancel_requested, created_at, updated_at, note, finished_at)"
                " VALUES (:issue, :kind, :lane, :state, :priority, 0, 0, :max_attempts, :payload, :dedupe,"
                " :depends_on, :held, 0, :false, :now, :now, :note, :finished)"
                " ON CONFLICT (dedupe) DO NOTHING RETURNING " + ", ".join(JOB_COLUMNS),
                {"issue": issue, "kind": kind, "lane": lane.value, "state": state.value, "priority": priority,
                 "max_attempts": max_attempts or self.settings.queue.max_attempts, "payload": self._json(payload),
                 "dedupe": dedupe, "depends_on": depends_on, "held": bool(held), "false": False, "now": now,
                 "note": note, "finished": now if state == State.CANCELLED else None})
            if not rows:  # the same stage of the same issue is already there
                return Job.from_row(cur.one("SELECT * FROM jobs WHERE dedupe = :d", {"d": dedupe}))
            return Job.from_values(rows[0])

    def enqueue_many(self, kind: str, lane: str | Lane, payloads: list[dict], priority: int = 0,
                     now: float | None = None) -> int:
        """Bulk enqueue in one transaction (ad hoc jobs: no issue, no dedupe, no dependency)."""
        lane, now = Lane(lane), self.clock.now(now)
        with self._tx() as cur:
            cur.cur.executemany(self._sql(
                "INSERT INTO jobs (issue, kind, lane, state, priority, attempt, attempt_base, max_attempts, payload,"
                " held, not_before, cancel_requested, created_at, updated_at, note) VALUES (NULL, :kind, :lane,"
                " 'queued', :priority, 0, 0, :ma, :payload, :false, 0, :false, :now, :now, 'enqueued')"),
                [{"kind": kind, "lane": lane.value, "priority": priority, "ma": self.settings.queue.max_attempts,
                  "payload": self._json(p), "false": False, "now": now} for p in payloads])
        return len(payloads)

    # ------------------------------------------------------------------ claim, lease, finish
    _CLAIM = ("UPDATE jobs SET state = 'running', attempt = attempt + 1, owner_host = :host, owner_boot = :boot,"
              " owner_pid = :pid, owner_start = :start, device = :device, lease_until = :lease_until,"
              " heartbeat_at = :now, started_at = :now, updated_at = :now, note = :note,"
              " cancel_requested = :false, child_pid = NULL, child_start = NULL"
              " WHERE {guard}id IN (SELECT id FROM jobs WHERE lane = :lane AND " + CLAIMABLE + " AND not_before <= :now"
              " ORDER BY priority DESC, id LIMIT :n{skip}) RETURNING " + ", ".join(JOB_COLUMNS))
    _FINISH = ("UPDATE jobs SET state = 'succeeded', result = :result, error = NULL, finished_at = :now,"
               " updated_at = :now, note = :fnote, lease_until = NULL WHERE id = :id AND attempt = :a AND"
               " state = 'running' RETURNING id")

    def _claim_params(self, lane: Lane, owner: Owner, device: str | None, now: float, n: int) -> dict:
        key = (lane, owner, device, n)
        fixed = self._params.get(key)
        if fixed is None:
            if lane == Lane.GPU and (device is None or n != 1):
                raise ValueError("a gpu-lane claim names its device and takes one job")
            fixed = self._params[key] = {
                "host": owner.host, "boot": owner.boot, "pid": owner.pid, "start": owner.start, "device": device,
                "lease_s": self._lease_s(lane), "lane": lane.value, "false": False, "n": n,
                "note": f"claimed by {owner.label}" + (f" on gpu {device}" if device is not None else "")}
        return {**fixed, "lease_until": now + fixed["lease_s"], "now": now}

    def _claim(self, cur: _Cursor, lane: Lane, owner: Owner, device: str | None, now: float, n: int = 1
               ) -> list[Job]:
        rows = cur.tuples(self._claim_sql, self._claim_params(lane, owner, device, now, n))
        jobs = [Job.from_values(v) for v in rows]
        return jobs if n == 1 else sorted(jobs, key=lambda j: (-j.priority, j.id))

    def claim(self, lane: str | Lane, owner: Owner, device: str | None = None, now: float | None = None
              ) -> Job | None:
        """Lease the best eligible job of `lane` (priority, then age) to `owner`; None if there is none
        (or, gpu lane, this host's `device` already runs one: the database refuses a second)."""
        try:
            with self._tx(single=True) as cur:
                got = self._claim(cur, Lane(lane), owner, device, self.clock.now(now))
                return got[0] if got else None
        except Exception as e:
            if _unique_violation(e):
                return None
            raise

    def claim_many(self, lane: str | Lane, owner: Owner, n: int, now: float | None = None) -> list[Job]:
        """Lease up to n jobs of a cpu or agent lane in one transaction (best first)."""
        with self._tx(single=True) as cur:
            return self._claim(cur, Lane(lane), owner, None, self.clock.now(now), n)

    def heartbeat(self, job_id: int, attempt: int, now: float | None = None) -> bool:
        """Extend the lease; False when this claim no longer holds the job (stop working on it)."""
        now = self.clock.now(now)
        with self._tx(single=True) as cur:
            return cur.one(
                "UPDATE jobs SET heartbeat_at = :now, lease_until = :now + CASE WHEN lane = 'agent'"
                " THEN :agent_lease ELSE :lease END WHERE id = :id AND attempt = :a AND state = 'running'"
                " RETURNING id", {"now": now, "agent_lease": self.settings.queue.agent_lease_s,
                                  "lease": self.settings.queue.lease_s, "id": job_id, "a": attempt}) is not None

    def set_child(self, job_id: int, attempt: int, run_dir: str, child_pid: int | None, child_start: str | None
                  ) -> bool:
        """Record the runner's child and the run directory (kept across resumes)."""
        with self._tx(single=True) as cur:
            return cur.one("UPDATE jobs SET run_dir = :rd, child_pid = :cp, child_start = :cs"
                           " WHERE id = :id AND attempt = :a AND state = 'running' RETURNING id",
                           {"rd": run_dir, "cp": child_pid, "cs": child_start, "id": job_id, "a": attempt}) is not None

    def _fenced(self, cur: _Cursor, sql: str, params: dict, what: str) -> dict:
        row = cur.one(sql, params)
        if row is None:
            self._lease_lost(cur, params["id"], params["a"], what)
        return row

    def _lease_lost(self, cur: _Cursor, job_id: int, attempt: int, what: str) -> None:
        now = cur.one("SELECT state, attempt FROM jobs WHERE id = :id", {"id": job_id})
        if now is None:
            raise UnknownJob(f"no job {job_id}")
        raise LeaseLost(f"job {job_id} attempt {attempt} cannot {what}: it is now {now['state']} at attempt "
                        f"{now['attempt']}")

    def _finish(self, cur: _Cursor, job_id: int, attempt: int, result: dict, now: float, note: str) -> None:
        """The finish; a job that succeeds frees its dependents (a trigger, migrations.py)."""
        self._fenced(cur, self._FINISH, {"result": self._json(result), "now": now, "fnote": note, "id": job_id,
                                         "a": attempt}, "finish")

    def finish(self, job_id: int, attempt: int, result: dict, now: float | None = None, note: str = "succeeded"
               ) -> None:
        """Record success (fenced: LeaseLost if this attempt no longer holds the job); frees its dependents."""
        with self._tx() as cur:
            self._finish(cur, job_id, attempt, result, self.clock.now(now), note)

    def finish_and_claim(self, job_id: int, attempt: int, result: dict, lane: str | Lane, owner: Owner,
                         device: str | None = None, now: float | None = None) -> Job | None:
        """finish() and claim() in one transaction: one commit per job for a busy lane (PostgreSQL: one
        statement, so one round trip)."""
        now, lane = self.clock.now(now), Lane(lane)
        if self.sqlite or lane == Lane.GPU:  # the gpu claim may hit its unique index: keep the finish apart
            with self._tx() as cur:
                self._finish(cur, job_id, attempt, result, now, "succeeded")
                got = self._claim(cur, lane, owner, device, now)
                return got[0] if got else None
        with self._tx(single=True) as cur:
            (finished, *job), = cur.tuples(self._finish_claim_sql, {
                **self._claim_params(lane, owner, None, now, 1), "id": job_id, "a": attempt,
                "result": self._json(result), "fnote": "succeeded"})
            if not finished:
                self._lease_lost(cur, job_id, attempt, "finish")
            return Job.from_values(job) if job[0] is not None else None

    def finish_many_and_claim(self, done: list[tuple[int, int, dict]], lane: str | Lane, owner: Owner, n: int,
                              now: float | None = None) -> tuple[list[Job], list[int]]:
        """Record several successes (job id, attempt, result) and lease up to n more, in one transaction.
        Returns (claimed jobs, ids whose lease was lost: their result was not recorded)."""
        now = self.clock.now(now)
        lost = []
        with self._tx() as cur:
            for job_id, attempt, result in done:
                try:
                    self._finish(cur, job_id, attempt, result, now, "succeeded")
                except LeaseLost:
                    lost.append(job_id)
            return (self._claim(cur, Lane(lane), owner, None, now, n) if n > 0 else []), lost

    def _cascade_cancel(self, cur: _Cursor, job_id: int, now: float, why: str) -> None:
        todo = [job_id]
        while todo:
            parent = todo.pop()
            rows = cur.all("UPDATE jobs SET state = 'cancelled', finished_at = :now, updated_at = :now,"
                           " note = :note, error = :note WHERE depends_on = :id AND state IN ('blocked', 'queued',"
                           " 'retrying') RETURNING id", {"now": now, "id": parent,
                                                         "note": f"dependency #{parent} {why}"})
            todo += [r["id"] for r in rows]

    def fail(self, job_id: int, attempt: int, error: str, retry: bool = True, now: float | None = None) -> Job:
        """Record a failed attempt: retrying after a back-off (doubling per try) while tries remain and
        `retry`, else failed for good (its dependents are cancelled). Fenced like finish()."""
        now = self.clock.now(now)
        q = self.settings.queue
        with self._tx() as cur:
            row = self._fenced(cur, "SELECT * FROM jobs WHERE id = :id AND attempt = :a AND state = 'running'",
                               {"id": job_id, "a": attempt}, "fail")
            if row["cancel_requested"]:
                return self._cancel_running(cur, job_id, attempt, now, f"{error}\n(cancel requested while running)")
            tries = row["attempt"] - row["attempt_base"]
            again = retry and tries < row["max_attempts"]
            delay = q.retry_backoff_s * 2 ** (tries - 1)
            state = State.RETRYING if again else State.FAILED
            note = (f"attempt {tries} of {row['max_attempts']} failed; retry in {delay:g} s" if again
                    else f"failed on attempt {tries} of {row['max_attempts']}" + ("" if retry else " (no retry)"))
            out = self._fenced(cur, "UPDATE jobs SET state = :state, error = :error, not_before = :nb,"
                               " finished_at = :fin, updated_at = :now, note = :note, lease_until = NULL"
                               " WHERE id = :id AND attempt = :a AND state = 'running' RETURNING *",
                               {"state": state.value, "error": error, "nb": now + delay if again else 0.0,
                                "fin": None if again else now, "now": now, "note": note, "id": job_id,
                                "a": attempt}, "fail")
            if not again:
                self._cascade_cancel(cur, job_id, now, "failed")
            return Job.from_row(out)

    def requeue(self, job_id: int, attempt: int, reason: str, count_attempt: bool = False, delay: float = 0.0,
                now: float | None = None) -> Job:
        """Back to queued (after `delay`), resuming from the run directory's checkpoint when the stage has
        one. count_attempt False (exit 75, a warm stop): the attempt does not count against max_attempts,
        up to max_resumes such requeues; beyond that it counts, and may fail the job."""
        now = self.clock.now(now)
        q = self.settings.queue
        with self._tx() as cur:
            row = self._fenced(cur, "SELECT * FROM jobs WHERE id = :id AND attempt = :a AND state = 'running'",
                               {"id": job_id, "a": attempt}, "requeue")
            if row["cancel_requested"]:
                return self._cancel_running(cur, job_id, attempt, now, "cancelled (requested while running)")
            free = not count_attempt and row["resumes"] < q.max_resumes
            if not free and row["attempt"] - row["attempt_base"] >= row["max_attempts"]:
                note = f"{reason}; no attempts left ({row['resumes']} resumes, {row['max_attempts']} attempts)"
                out = cur.one("UPDATE jobs SET state = 'failed', error = :note, finished_at = :now, updated_at = :now,"
                              " note = :note, lease_until = NULL WHERE id = :id AND attempt = :a RETURNING *",
                              {"note": note, "now": now, "id": job_id, "a": attempt})
                self._cascade_cancel(cur, job_id, now, "failed")
                return Job.from_row(out)
            out = cur.one(self._REQUEUE, {"now": now, "note": reason, "base": int(free), "res": int(free),
                                          "nb": now + delay, "id": job_id, "a": attempt})
            return Job.from_row(out)

    _REQUEUE = ("UPDATE jobs SET state = 'queued', attempt_base = attempt_base + :base, resumes = resumes + :res,"
                " not_before = :nb, owner_host = NULL, owner_boot = NULL, owner_pid = NULL, owner_start = NULL,"
                " device = NULL, lease_until = NULL, child_pid = NULL, child_start = NULL, updated_at = :now,"
                " note = :note WHERE id = :id AND attempt = :a AND state = 'running' RETURNING *")

    def _cancel_running(self, cur: _Cursor, job_id: int, attempt: int, now: float, reason: str) -> Job:
        row = self._fenced(cur, "UPDATE jobs SET state = 'cancelled', error = :r, finished_at = :now,"
                           " updated_at = :now, note = :r, lease_until = NULL WHERE id = :id AND attempt = :a AND"
                           " state = 'running' RETURNING *", {"r": reason, "now": now, "id": job_id, "a": attempt},
                           "cancel")
        self._cascade_cancel(cur, job_id, now, "cancelled")
        return Job.from_row(row)

    def mark_cancelled(self, job_id: int, attempt: int, reason: str, now: float | None = None) -> Job:
        """The runner stopped a job whose cancel was requested (fenced)."""
        with self._tx() as cur:
            return self._cancel_running(cur, job_id, attempt, self.clock.now(now), reason)

    # ------------------------------------------------------------------ people's actions
    def cancel(self, job_id: int, reason: str = "cancelled", now: float | None = None) -> Job:
        """Cancel a waiting job at once; a running one is asked to stop (its worker kills the child's
        process group and marks it cancelled); an agent-lane claim is cancelled at once."""
        now = self.clock.now(now)
        with self._tx() as cur:
            job = self._get(cur, job_id)
            if job.state in FINAL:
                raise IllegalTransition(f"job {job_id} is already {job.state}; nothing to cancel")
            if job.state == State.RUNNING and job.lane != Lane.AGENT:
                cur.execute("UPDATE jobs SET cancel_requested = :true WHERE id = :id", {"true": True, "id": job_id})
                self._event(cur, job, now, f"cancel requested: {reason}")
            else:
                cur.execute("UPDATE jobs SET state = 'cancelled', error = :r, finished_at = :now, updated_at = :now,"
                            " note = :r, lease_until = NULL WHERE id = :id", {"r": reason, "now": now, "id": job_id})
                self._cascade_cancel(cur, job_id, now, "cancelled")
            return self._get(cur, job_id)

    def retry(self, job_id: int, now: float | None = None) -> Job:
        """Run a failed or cancelled job again, with a fresh set of attempts."""
        now = self.clock.now(now)
        with self._tx() as cur:
            job = self._get(cur, job_id)
            if job.state not in (State.FAILED, State.CANCELLED):
                raise IllegalTransition(f"job {job_id} is {job.state}; only failed or cancelled jobs can be retried")
            blocked = job.held or (job.depends_on is not None and
                                   self._get(cur, job.depends_on).state != State.SUCCEEDED)
            cur.execute("UPDATE jobs SET state = :s, attempt_base = attempt, resumes = 0, error = NULL, result = NULL,"
                        " not_before = 0, finished_at = NULL, cancel_requested = :false, updated_at = :now,"
                        " note = 'retry requested' WHERE id = :id",
                        {"s": "blocked" if blocked else "queued", "false": False, "now": now, "id": job_id})
            return self._get(cur, job_id)

    def hold_issue(self, issue: int, now: float | None = None) -> int:
        """The issue's `blocked` label: its waiting jobs turn blocked, new ones start blocked; running
        jobs finish. Returns how many jobs were held."""
        now = self.clock.now(now)
        with self._tx() as cur:
            if not cur.one("SELECT issue FROM held_issues WHERE issue = :i", {"i": issue}):
                cur.execute("INSERT INTO held_issues (issue, held_at) VALUES (:i, :now)", {"i": issue, "now": now})
            cur.execute("UPDATE jobs SET held = :true WHERE issue = :i", {"true": True, "i": issue})
            return cur.rowcount_of("UPDATE jobs SET state = 'blocked', updated_at = :now, note = :note"
                                   " WHERE issue = :i AND " + CLAIMABLE,
                                   {"now": now, "note": f"issue #{issue} is on hold", "i": issue})

    def release_issue(self, issue: int, now: float | None = None) -> int:
        """Lift the hold; jobs whose dependency is met are queued again. Returns how many."""
        now = self.clock.now(now)
        with self._tx() as cur:
            cur.execute("DELETE FROM held_issues WHERE issue = :i", {"i": issue})
            cur.execute("UPDATE jobs SET held = :false WHERE issue = :i", {"false": False, "i": issue})
            n = cur.rowcount_of(
                "UPDATE jobs SET state = 'queued', updated_at = :now, note = :note WHERE issue = :i AND"
                " state = 'blocked' AND (depends_on IS NULL OR depends_on IN"
                " (SELECT d.id FROM jobs d WHERE d.state = 'succeeded'))",
                {"now": now, "note": f"issue #{issue} released", "i": issue})
            return n

    # ------------------------------------------------------------------ recovery
    def recover(self, now: float | None = None) -> list[tuple[Job, str]]:
        """Return lost claims to the queue: running jobs whose lease expired (any host), and at once those
        whose owner is on this host and provably gone (pid dead or reused, or the machine rebooted).
        Each is requeued (an expired lease counts an attempt; a dead owner on this host does not, up to
        max_resumes), failed after its last attempt, or cancelled if a cancel was pending. Returns
        (job as it was, what happened) for each, so the caller can kill orphans."""
        now = self.clock.now(now)
        out: list[tuple[Job, str]] = []
        with self._tx() as cur:
            rows = cur.all("SELECT * FROM jobs WHERE state = 'running' AND (lease_until < :now OR owner_host = :h)",
                           {"now": now, "h": self.host})
            for row in rows:
                job = Job.from_row(row)
                # a dead owner on this host first: a restart after the lease ran out (or a reboot) is still a
                # crash of the worker, not a fault of the job
                if job.owner_pid and job.owner_host == self.host and \
                        not same_process(job.owner_pid, job.owner_start, job.owner_boot):
                    why = f"owner {job.owner_host}:{job.owner_pid} is gone"
                elif job.lease_until is not None and job.lease_until < now:
                    why = f"lease of {job.owner_host}:{job.owner_pid or 'agent'} expired"
                else:
                    continue
                params = {"now": now, "id": job.id, "a": job.attempt}
                # a dead owner on this host (a crashed or killed daemon) is not the job's fault: resume
                # without spending an attempt, up to max_resumes; an expired lease still counts
                free = why.startswith("owner") and job.resumes < self.settings.queue.max_resumes
                if job.cancel_requested:
                    action = "cancelled"
                    cur.execute("UPDATE jobs SET state = 'cancelled', error = :note, finished_at = :now,"
                                " updated_at = :now, note = :note, lease_until = NULL WHERE id = :id AND"
                                " attempt = :a AND state = 'running'", {**params, "note": f"{why}; cancel pending"})
                    self._cascade_cancel(cur, job.id, now, "cancelled")
                elif job.tries >= job.max_attempts and not free:
                    action = "failed"
                    note = f"{why} on attempt {job.tries} of {job.max_attempts}: no attempts left"
                    cur.execute("UPDATE jobs SET state = 'failed', error = :note, finished_at = :now,"
                                " updated_at = :now, note = :note, lease_until = NULL WHERE id = :id AND"
                                " attempt = :a AND state = 'running'", {**params, "note": note})
                    self._cascade_cancel(cur, job.id, now, "failed")
                else:
                    action = "requeued"
                    cur.execute(self._REQUEUE, {**params, "base": int(free), "res": int(free), "nb": 0.0,
                                                "note": f"{why}; " + (f"resumed (resume {job.resumes + 1}, attempt "
                                                                      "not counted)" if free else
                                                                      f"requeued after attempt {job.tries} of "
                                                                      f"{job.max_attempts}")})
                out.append((job, action))
        return out

    # ------------------------------------------------------------------ reading
    def _get(self, cur: _Cursor, job_id: int) -> Job:
        row = cur.one("SELECT * FROM jobs WHERE id = :id", {"id": job_id})
        if row is None:
            raise UnknownJob(f"no job {job_id}")
        return Job.from_row(row)

    def _event(self, cur: _Cursor, job: Job, now: float, message: str) -> None:
        """An event without a state change (the triggers write the others)."""
        cur.execute("INSERT INTO job_events (job_id, at, attempt, from_state, to_state, message, owner)"
                    " VALUES (:id, :now, :a, :s, :s, :m, NULL)",
                    {"id": job.id, "now": now, "a": job.attempt, "s": job.state.value, "m": message})

    def get(self, job_id: int) -> Job:
        with self._tx(write=False) as cur:
            return self._get(cur, job_id)

    def list(self, state: str | None = None, lane: str | None = None, issue: int | None = None,
             limit: int = 200) -> list[Job]:
        """Newest first, optionally filtered."""
        where, params = ["1 = 1"], {"limit": limit}
        for col, val in (("state", state), ("lane", lane), ("issue", issue)):
            if val is not None:
                where.append(f"{col} = :{col}")
                params[col] = val.value if isinstance(val, Lane | State) else val
        with self._tx(write=False) as cur:
            return [Job.from_row(r) for r in cur.all(
                f"SELECT * FROM jobs WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT :limit", params)]

    def jobs_for_issue(self, issue: int) -> list[Job]:
        with self._tx(write=False) as cur:
            return [Job.from_row(r) for r in cur.all("SELECT * FROM jobs WHERE issue = :i ORDER BY id", {"i": issue})]

    def events(self, job_id: int) -> list[Event]:
        with self._tx(write=False) as cur:
            self._get(cur, job_id)
            return [Event.from_row(r) for r in cur.all("SELECT * FROM job_events WHERE job_id = :id ORDER BY id",
                                                       {"id": job_id})]

    def cancel_requests(self, job_ids: list[int]) -> set[int]:
        """Which of these running jobs has a pending cancel."""
        if not job_ids:
            return set()
        names = {f"j{i}": j for i, j in enumerate(job_ids)}
        with self._tx(write=False) as cur:
            return {r["id"] for r in cur.all(
                f"SELECT id FROM jobs WHERE state = 'running' AND cancel_requested = :true AND id IN"
                f" ({', '.join(':' + n for n in names)})", {"true": True, **names})}

    def counts(self) -> dict[str, dict[str, int]]:
        """{lane: {state: n}} for status displays."""
        out: dict[str, dict[str, int]] = {}
        with self._tx(write=False) as cur:
            for r in cur.all("SELECT lane, state, COUNT(*) AS n FROM jobs GROUP BY lane, state", {}):
                out.setdefault(r["lane"], {})[r["state"]] = int(r["n"])
        return out

    def checkpoint(self) -> None:
        """SQLite: copy the WAL into the database and fsync both (PASSIVE: never waits on other connections),
        which makes every commit so far survive a power loss under synchronous=NORMAL. PostgreSQL: nothing."""
        if self.sqlite:
            self._conn()[2].execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    # ------------------------------------------------------------------ waiting for work
    def wait_for_work(self, timeout: float) -> bool:
        """Block until the queue changes or `timeout` passes; True if woken (jobqueue/wake.py: LISTEN/NOTIFY
        on PostgreSQL, PRAGMA data_version on SQLite)."""
        return self._waiter.wait(timeout)

    def wait_for_job(self, lane: str | Lane, owner: Owner, timeout: float) -> Job | None:
        """wait_for_work, offering to take the next job enqueued on `lane` (PostgreSQL, cpu lane: the hand-over,
        wake.py). Returns the job handed over, leased to `owner` as a claim would have, or None: woken by other
        work, or timed out (claim as usual). Only a worker with a free slot may offer."""
        lane = Lane(lane)
        ident = None if self.sqlite or lane != Lane.CPU else self._waiter.listening()
        if ident is None:
            self.wait_for_work(timeout)
            return None
        job, self.take_s = wait_offering(self, lane, owner, ident, timeout)
        return job
