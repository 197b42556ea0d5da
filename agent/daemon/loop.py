"""The daemon: poll the tracker, take in changed issues, run the queue, report, deliver the outbox.

    d = Daemon(settings)          # store, tracker, intake, outbox, worker, all on one database
    d.tick(now)                   # one iteration (tests step it): poll if due, work, report, deliver
    d.once()                      # `refinery daemon --once`: poll, drain what is runnable, deliver, return
    d.serve()                     # `refinery daemon`: the main thread runs the worker (claims, heartbeats,
                                  # stops), the reporter and the pipeline, and never calls the tracker;
                                  # the tracker thread polls, delivers the outbox and looks for approvals;
                                  # APScheduler runs the archive pass; SIGTERM/SIGINT: warm stop, a second
                                  # one: cold stop; SIGHUP: reload() the settings

No tracker call, however slow or hung, delays a heartbeat, a claim or a stop: in serve() every GitHub request
is made by the tracker thread (a daemon thread), and the stop waits for it at most tracker_join_s; a write it
had in flight stays in the outbox, its attempt recorded, so the next start looks for its marker first.

GitHub being rate-limited or down never stops the queue: a poll or a delivery that meets
TrackerUnavailable is noted (one line: what GitHub answered, until when) and retried after `until`;
writes stay in the outbox. The reporter turns job transitions into status labels and short
comments through the outbox (keys per job and state, so each is said once).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import config
from agent import redact
from agent.daemon.intake import Intake
from agent.daemon.outbox import Delivery, Outbox, Sender
from agent.daemon.pipeline import Pipeline, waiting_approvals
from agent.ops import sdnotify
from agent.ops.archive import archive_runs, champion_paths
from agent.state.tables import IntakeMemory, KeyValue, Leases, OutboxStore
from agent.trackers.factory import make_tracker
from agent.trackers.interface import Tracker, TrackerError, TrackerUnavailable
from experiments.runs import read_progress
from jobqueue.errors import unreachable
from jobqueue.models import FINAL, Job, Lane, State
from jobqueue.store import Store

log = logging.getLogger("refinery.daemon")

VERDICT_STATUS = {"PASS": "passed", "FAIL": "killed", "ERROR": "failed"}
REPORT_WINDOW = 200  # newest jobs the reporter looks at each pass
STOP_MARGIN_S = 10.0  # a warm stop turns cold this long before stop_timeout_s (systemd's SIGKILL)
# Settings a SIGHUP cannot change while running (read once at start: connections, paths, the worker's slots,
# the scheduler's watchdog); a reload that changes them says so and keeps the running values.
RESTART_ONLY = frozenset({"db_url", "sqlite_synchronous", "sqlite_busy_timeout_ms", "host_name", "gpu_devices",
                          "cpu_workers", "runs_dir", "docs_dir", "tracker", "github_repo", "github_api_url",
                          "token_file", "github_timeout_s", "watchdog", "watchdog_s", "coder"})


@dataclass
class PollReport:
    changed: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    not_modified: int = 0
    unavailable: TrackerUnavailable | None = None
    error: str | None = None


def until_text(t: float) -> str:
    return datetime.fromtimestamp(t).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


class Daemon:
    def __init__(self, settings: config.Settings, store: Store | None = None, tracker: Tracker | None = None,
                 worker=None):
        self.settings = settings
        self.store = store or Store(settings)
        engine = self.store.engine
        self.kv = KeyValue(engine)
        self.memory = IntakeMemory(engine)
        self.outbox_store = OutboxStore(engine)
        self.tracker = tracker or make_tracker(settings, engine)
        self.outbox = Outbox(settings, self.outbox_store)
        self.sender = Sender(settings, self.tracker, self.outbox_store, self.kv)
        self.intake = Intake(settings, self.store, self.tracker, self.outbox, self.memory)
        self._worker = worker
        self.next_poll = 0.0
        self.github_note: str | None = None  # the last thing GitHub said when it was unavailable
        self.kick = threading.Event()  # set by a poll that enqueued work: the main loop steps at once
        self.stop_event = threading.Event()
        self.stops = 0
        self.stop_requested_at: float | None = None  # the first stop signal (the warm-stop time is measured from it)
        self.reload_requested = False  # SIGHUP seen; the main loop reloads
        self._sched = None  # the archive scheduler while serve() runs
        self._tracker_thread: threading.Thread | None = None  # serve(): every tracker call is made there
        self._tracker_stop = threading.Event()
        self._watchdog: sdnotify.Watchdog | None = None
        self._reported: dict[int, str] = {}
        self.on_job: list = [self.report_job]  # hooks called with each job whose state changed

        self.pipeline = Pipeline(settings, self.store, self.outbox, self.kv, self.tracker)  # stage chaining
        self.leases = Leases(engine)
        self.writer_token: int | None = None  # the `writer` lease: this daemon advances the pipeline and writes docs
        self._writer_next = 0.0
        self.coder = None  # coder: REFINERY_CODER=claude runs Claude Code on agent-lane items (agent/coder/)
        if settings.coder.coder == "claude":
            from agent.coder.driver import Coder

            self.coder = Coder(settings, self.store, self.outbox, self.kv, self.tracker.name)

    @property
    def worker(self):
        if self._worker is None:
            from jobqueue.worker import Worker

            self._worker = Worker(self.store, self.settings)
        return self._worker

    # ------------------------------------------------------------------ the pieces
    def poll(self) -> PollReport:
        """Read what changed and hand each issue to intake. Never raises for GitHub trouble."""
        rep = PollReport()
        try:
            p = self.tracker.poll()
            rep.requests, rep.not_modified, rep.changed = p.requests, p.not_modified, len(p.issues)
            for issue in p.issues:
                word = self.intake.process(issue)
                rep.decisions[word] = rep.decisions.get(word, 0) + 1
                if word in ("enqueued", "agent item"):
                    self.kick.set()
            self.tracker.ack(p)  # only now: a crash above re-reads these issues (intake is idempotent)
            self._note(None)
        except TrackerUnavailable as e:
            rep.unavailable = e
            self._note(e)
        except TrackerError as e:
            rep.error = str(e)
            log.error("poll: %s", e)
        return rep

    def _note(self, e: TrackerUnavailable | None) -> None:
        if e is None:
            if self.github_note:
                log.info("%s is answering again", self.tracker.name)
            self.github_note = None
            return
        line = f"{self.tracker.name}: {e}; waiting until {until_text(e.until)}"
        if line != self.github_note:
            log.warning("%s", line)
        self.github_note = line

    def work(self, now: float) -> bool:
        """One worker iteration, then the reporter and the pipeline. True if the worker did something."""
        did = bool(self.worker.step(now))
        if self.coder is not None:
            did |= bool(self.coder.step(now))
        self.report()
        if self.pipeline is not None and self.is_writer(now):
            did |= bool(self.pipeline.step(now))
        return did

    def is_writer(self, now: float) -> bool:
        """Several hosts share one queue, one of them at a time is the writer: it advances the pipeline (next
        stages, result comments, findings, model cards, the graveyard) and commits the documents in its
        checkout. The `writer` lease (agent_leases, the database's clock) is renewed every writer_lease_s / 3;
        a writer that died on this host is replaced at once, one on another host after writer_lease_s."""
        if now >= self._writer_next:
            lease = self.settings.daemon.writer_lease_s
            self._writer_next = now + lease / 3
            token = self.leases.hold("writer", self.sender.holder, lease, gone=self.sender._gone)
            if (token is None) != (self.writer_token is None):
                log.info("%s the document writer (lease %s)", "this daemon is now" if token else "another daemon is",
                         token or (self.leases.get("writer") or {}).get("holder", "?").split("|")[0])
            self.writer_token = token
        return self.writer_token is not None

    def report(self) -> None:
        """Call the on_job hooks for each recent job whose state changed since it was last reported
        (kept in the database, so a restart does not walk every job again)."""
        if not self._reported:
            self._reported = {int(k): v for k, v in (self.kv.get("daemon.reported") or {}).items()}
        jobs = self.store.list(limit=REPORT_WINDOW)
        changed = False
        for job in jobs:
            if job.issue is None or self._reported.get(job.id) == str(job.state):
                continue
            for hook in self.on_job:
                hook(job)
            self._reported[job.id] = str(job.state)
            changed = True
        if changed:
            window = {j.id for j in jobs}
            self._reported = {k: v for k, v in self._reported.items() if k in window}
            self.kv.put("daemon.reported", {str(k): v for k, v in self._reported.items()})

    def report_job(self, job: Job) -> None:
        """Status labels and a short comment per transition (outbox keys make each one-time). Decided
        pipeline stages (payload "stage") are the pipeline's to report (agent/daemon/pipeline.py)."""
        n = job.issue
        base = f"i{n}/j{job.id}/{job.payload.get('stage', job.kind)}"
        assert n is not None
        if job.state == State.RUNNING:  # per attempt, so a retried stage shows running again
            self.outbox.status(n, f"{base}/status-running" + (f"-a{job.attempt}" if job.attempt > 1 else ""),
                               "running")
        elif job.state in (State.SUCCEEDED, State.FAILED) and "stage" in job.payload:
            return
        elif job.state == State.SUCCEEDED:
            verdict = str((job.result or {}).get("verdict", "done")).upper()
            reason = (job.result or {}).get("reason", "")
            self.outbox.comment(n, f"{base}/result", f"**{job.kind}: {verdict}** (job {job.id})"
                                + (f" — {reason}" if reason else "")
                                + (f"\n\nRun directory: `{job.run_dir}`" if job.run_dir else ""), job.run_dir)
            status = VERDICT_STATUS.get(verdict, "passed" if verdict == "DONE" else None)
            if verdict == "DONE" and job.kind == "agent":  # coder: a branch waits for a person, not the gate's word
                status = "review"
            if status:  # DONE: an agent item or a task finished its work
                self.outbox.status(n, f"{base}/status-done", status)
        elif job.state == State.RETRYING:  # an attempt failed; back in the queue until its back-off has passed
            wait = max(0, round(job.not_before - time.time()))
            tail = (job.error or "")[-1500:]
            self.outbox.comment(n, f"{base}/retry-a{job.attempt}", f"**{job.kind}: attempt {job.tries} of "
                                f"{job.max_attempts} failed** (job {job.id}), a fault of the run; it runs again in "
                                f"about {wait} s.\n\n```\n{tail}\n```", job.run_dir)
            self.outbox.status(n, f"{base}/status-retry-a{job.attempt}", "queued")
        elif job.state == State.FAILED:
            tail = (job.error or "")[-3000:]
            self.outbox.comment(n, f"{base}/failed", f"**{job.kind} failed** (job {job.id}, attempt {job.tries}"
                                f" of {job.max_attempts}).\n\n```\n{tail}\n```", job.run_dir)
            self.outbox.status(n, f"{base}/status-failed", "failed")
        elif job.state == State.CANCELLED:
            if "was closed" not in (job.error or ""):  # intake already said so on the issue
                self.outbox.comment(n, f"{base}/cancelled", f"{job.kind} (job {job.id}) was cancelled: "
                                    f"{job.error or 'by hand'}.")
            self.outbox.status(n, f"{base}/status-cancelled", "cancelled")

    def deliver(self, deadline: float | None = None, max_items: int | None = None) -> Delivery:
        d = self.sender.deliver(deadline=deadline, max_items=max_items)
        if d.blocked is not None:
            self._note(d.blocked)
        return d

    def tick(self, now: float | None = None) -> None:
        """One iteration of the long-running loop (tests call this; serve() runs the same pieces)."""
        now = time.time() if now is None else now
        if now >= self.next_poll:
            self.next_poll = now + self.settings.daemon.poll_interval
            self.poll()
        self.work(now)
        self.deliver(deadline=time.time() + 2 * self.settings.daemon.write_interval_s + 1, max_items=5)

    # ------------------------------------------------------------------ --once
    def once(self) -> dict:
        """Poll, drain what is runnable, deliver the outbox; GitHub waits are bounded by once_timeout_s.
        SIGINT/SIGTERM (a Ctrl-C) stop it as they stop serve(): warm, then cold; the children are
        never left running behind it."""
        start = time.time()
        deadline = start + self.settings.daemon.once_timeout_s
        with self._stop_signals():
            rep = self.poll()
            while True:  # drain: until the worker neither starts nor runs anything
                did = self.work(time.time())
                if self.stop_event.is_set():
                    self._stop_worker()  # a child started in the same step as the signal
                elif self.github_note is None and time.time() < deadline:
                    self.deliver(deadline=min(deadline, time.time() + 5), max_items=20)
                if not did and not self.worker.busy and not (self.coder is not None and self.coder.busy):
                    break
                if not did:
                    self.store.wait_for_work(0.05)
            if self.stop_event.is_set():  # stopped: what is left to say waits in the outbox
                deadline = min(deadline, time.time() + 2)
            if self.github_note is None and time.time() < deadline:
                self.deliver(deadline=deadline)
            self.report()
            if self.github_note is None and time.time() < deadline:
                self.deliver(deadline=deadline)
        counts = self.outbox_store.counts()
        return {"changed": rep.changed, "decisions": rep.decisions, "requests": rep.requests,
                "not_modified": rep.not_modified, "outbox_pending": counts["pending"], "outbox_dead": counts["dead"],
                "github": self.github_note, "error": rep.error, "wall_s": round(time.time() - start, 2)}

    @contextlib.contextmanager
    def _stop_signals(self):
        """SIGINT/SIGTERM → _signal while inside (main thread only); the previous handlers after."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        before = {sig: signal.signal(sig, self._signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)

    def _stop_worker(self) -> None:
        """Apply the stop asked for (warm after one signal, cold after two) to every child (idempotent)."""
        if self.coder is not None:  # coder: SIGINT to its sessions (warm), SIGKILL (cold)
            self.coder.warm_stop() if self.stops <= 1 else self.coder.cold_stop()
        if self._worker is None:
            return
        if self.stops <= 1:
            self._worker.warm_stop()
        elif self._worker.stopping != "cold":
            self._worker.cold_stop()

    # ------------------------------------------------------------------ the service
    def _poll_job(self) -> None:
        try:
            rep = self.poll()
            if rep.changed:
                log.info("poll: %d changed %s", rep.changed, rep.decisions)
        except Exception:  # noqa: BLE001 - a poll bug must not kill the scheduler thread; it is logged
            log.exception("poll failed")

    def archive(self) -> int:
        """One pass of the storage tiers: finished runs older than archive_after_days move to archive_dir
        (verified sha256 manifest); champion weights stay on both tiers. No-op without archive_dir."""
        if not self.settings.daemon.archive_dir:
            return 0
        try:
            done = archive_runs(self.settings, self.settings.runs_path, keep=champion_paths(config.ROOT, self.settings))
        except Exception:  # noqa: BLE001 - archiving waits for the next pass; the live copy is untouched
            log.exception("archive pass failed")
            return 0
        if done:
            log.info("archive: %d run(s) moved to %s", len(done), self.settings.daemon.archive_dir)
        return len(done)

    def _signal(self, signum, _frame) -> None:
        """SIGINT/SIGTERM: the first a warm stop, the second a cold stop. The children are signalled
        at once (the main loop may sit in a GitHub wait); everything else happens in the loop."""
        self.stops += 1
        if self.stops == 1:
            self.stop_requested_at = time.time()
        log.warning("signal %d: %s stop", signum, "warm" if self.stops == 1 else "cold")
        if self.coder is not None:
            self.coder.warm_stop() if self.stops == 1 else self.coder.cold_stop()
        if self._worker is not None:  # none yet: nothing runs (and none is made in a signal handler)
            if self.stops == 1:
                self._worker.warm_stop()
            else:
                self._worker.cold_stop()
        self.stop_event.set()
        self.kick.set()

    def _hup(self, _signum, _frame) -> None:
        """SIGHUP (`systemctl reload refinery`): only a flag; the main loop calls reload()."""
        self.reload_requested = True
        self.kick.set()

    def idle(self, timeout: float) -> None:
        """Between turns of the main loop. PostgreSQL, nothing running: wait in the queue (LISTEN; a cpu job
        enqueued meanwhile, by this host's poll or any other, is handed over at once: jobqueue/wake.py). Otherwise,
        and always on SQLite (whose waiter re-reads the database every 2 ms), on the kick that a poll which enqueued
        work, a signal or SIGHUP sets. Either way a signal is seen within `timeout`."""
        if not self.store.sqlite and not self.worker.busy and not self.kick.is_set() and not self.stop_event.is_set():
            self.worker.idle(timeout)
        else:
            self.kick.wait(timeout)
        self.kick.clear()

    def serve(self, install_signals: bool = True) -> int:
        from apscheduler.schedulers.background import BackgroundScheduler

        if install_signals:
            signal.signal(signal.SIGTERM, self._signal)
            signal.signal(signal.SIGINT, self._signal)
            signal.signal(signal.SIGHUP, self._hup)
        sched = self._sched = BackgroundScheduler(timezone=UTC)
        sched.add_job(self.archive, "interval", seconds=self.settings.daemon.archive_every_s, id="archive",
                      max_instances=1, coalesce=True)
        sched.start()
        self.pipeline.approvals_inline = False
        self.next_poll = 0.0
        self._tracker_stop.clear()
        self._tracker_thread = threading.Thread(target=self._tracker_loop, name="tracker", daemon=True)
        self._tracker_thread.start()
        log.info("daemon: %s tracker, polling every %g s", self.tracker.name, self.settings.daemon.poll_interval)
        watchdog = self._watchdog = sdnotify.Watchdog.from_settings(self.settings)
        sdnotify.ready(f"polling {self.tracker.name} every {self.settings.daemon.poll_interval:g} s")
        db_down = False
        try:
            while not self.stop_event.is_set():
                watchdog.ping(time.time())
                try:
                    if self.reload_requested:
                        self.reload_requested = False
                        self.reload()
                    self.work(time.time())
                    if db_down:
                        log.info("queue database reachable again")
                        db_down = False
                    self.idle(0.5)
                except Exception as e:  # noqa: BLE001 - keep serving; the error is logged with its traceback
                    if not unreachable(e):
                        log.exception("daemon loop")
                    elif not db_down:  # one line per outage, not a traceback a second
                        why = (str(getattr(e, "orig", None) or e).strip().splitlines() or [type(e).__name__])[0]
                        log.warning("queue database unreachable (%s); retrying", why)
                        db_down = True
                    time.sleep(1.0)
        finally:
            sdnotify.stopping()
            sched.shutdown(wait=False)
            self._tracker_stop.set()
            running = self.drain_stop()
            self._join_tracker()
            took = time.time() - (self.stop_requested_at or time.time())
            log.info("stopped (%s) in %.2f s after the signal; %d job(s) were running",
                     "warm" if self.stops <= 1 else "cold", took, running)
        return 0

    def _tracker_loop(self) -> None:
        """The tracker thread (serve()): poll when due, deliver the outbox, look for approvals; between rounds wait
        on kick_tracker (set by a stop or a reload) for at most tracker_idle_s. A bug is logged, never fatal."""
        while not self._tracker_stop.is_set():
            try:
                now = time.time()
                if now >= self.next_poll:
                    self.next_poll = now + self.settings.daemon.poll_interval
                    self._poll_job()
                if self._tracker_stop.is_set():
                    break
                d = self.deliver(deadline=time.time() + 2 * self.settings.daemon.write_interval_s + 1, max_items=5)
                if not self._tracker_stop.is_set():
                    self.pipeline.approvals(time.time())
                busy = d.sent + d.found + d.failed > 0 and d.blocked is None
            except Exception as e:  # noqa: BLE001 - the thread must outlive a bug or a database outage; logged
                if not unreachable(e):
                    log.exception("tracker thread")
                busy = False
            if not busy:
                self._tracker_stop.wait(min(self.settings.daemon.tracker_idle_s,
                                            max(0.0, self.next_poll - time.time())))

    def _join_tracker(self) -> None:
        """At the stop: wait for the tracker thread at most tracker_join_s. A request still hanging then is left to
        die with the process (a daemon thread): its write stays in the outbox with its attempt recorded."""
        t = self._tracker_thread
        if t is None:
            return
        t.join(self.settings.daemon.tracker_join_s)
        if t.is_alive():
            log.warning("stop: a %s request is still in flight after %.0f s; not waiting for it (what it was "
                        "writing stays in the outbox and is checked for at the next start)", self.tracker.name,
                        self.settings.daemon.tracker_join_s)

    def drain_stop(self) -> int:
        """After a stop request: step the worker until its children are gone (warm: a full stage
        checkpoints and exits 75 and is requeued without losing an attempt). A child still running
        STOP_MARGIN_S before stop_timeout_s (systemd's TimeoutStopSec) is killed (a cold stop) so
        its job is requeued here rather than left `running` for the next start to recover.
        Returns how many children were running."""
        if self.coder is not None and self.coder.busy:  # coder: its sessions stop (SIGINT, grace) and requeue
            self.coder.warm_stop() if self.stops <= 1 else self.coder.cold_stop()
            self.coder.drain((self.stop_requested_at or time.time()) + self.settings.daemon.stop_timeout_s)
        worker = self._worker
        if worker is None or not worker.busy:
            return 0
        running = len(worker.children)
        self._stop_worker()  # again: a child launched while the signal handler ran is not signalled yet
        watchdog = self._watchdog or sdnotify.Watchdog(enabled=False)
        budget = self.settings.daemon.stop_timeout_s
        start = self.stop_requested_at or time.time()
        cold_at = start + max(budget - STOP_MARGIN_S, budget / 2)
        sdnotify.status(f"stopping: waiting for {running} job(s) to checkpoint")
        while worker.busy:
            now = time.time()
            watchdog.ping(now)
            if now >= cold_at and worker.stopping != "cold":
                log.warning("warm stop: %d child(ren) still running after %.0f s; killing them (cold stop)",
                            len(worker.children), now - start)
                worker.cold_stop()
            if now >= start + budget + STOP_MARGIN_S:  # SIGKILL did not take? give up; the next start recovers
                log.error("stop: %d child(ren) did not exit; leaving them to recovery", len(worker.children))
                break
            worker.step(now)
            if worker.busy:
                time.sleep(0.05)
        return running

    # ------------------------------------------------------------------ reload (SIGHUP)
    def reload(self) -> dict[str, tuple]:
        """Re-read the settings (config.load(): environment and REFINERY_ENV_FILE, then the command
        line's flags again) and apply what can change while running; RESTART_ONLY fields keep their
        running values, with a warning. Returns {field: (old, new)} of what was applied; a bad
        configuration changes nothing (logged)."""
        notify_reload()
        redact.refresh()  # a rotated token file or a changed REFINERY_ENV_FILE: secrets are read again
        try:
            flags = {k: self.settings.get(k) for k, src in self.settings.sources if src == "flag"}
            new = config.load()
            new = new.replace(flags, source="flag") if flags else new
        except config.ConfigError as e:
            log.error("reload: bad configuration, nothing changed: %s", e)
            sdnotify.ready(f"reload refused: {e}")
            return {}
        old = self.settings
        changed = {k: (old.get(k), new.get(k)) for k in config.FIELD_SECTION if old.get(k) != new.get(k)}
        kept = sorted(k for k in changed if k in RESTART_ONLY)
        live = {k: v for k, v in changed.items() if k not in RESTART_ONLY}
        if live:
            self._apply(old.replace({k: new_v for k, (_, new_v) in live.items()},
                                    sources={k: new.source_of(k) for k in live}))
        text = "; ".join(f"{k} {a!r} → {b!r} ({new.source_of(k)})" for k, (a, b) in sorted(live.items()))
        log.info("reload: %s", text or "no setting changed")
        if kept:
            log.warning("reload: %s changed but need a restart (kept the running values)", ", ".join(kept))
        sdnotify.ready(f"polling {self.tracker.name} every {self.settings.daemon.poll_interval:g} s")
        return live

    def _apply(self, settings: config.Settings) -> None:
        """Hand the new settings to every part that reads them at call time; reschedule the poll."""
        before = self.settings.daemon.poll_interval
        self.settings = settings
        parts = [self.store, self.intake, self.outbox, self.sender, self.tracker, self._worker, self.pipeline,
                 getattr(self.pipeline, "docs", None), self.coder]
        for part in parts:
            if part is not None and hasattr(part, "settings"):
                part.settings = settings
        every = settings.daemon.poll_interval
        if every != before:
            self.next_poll = min(self.next_poll, time.time() + every)


def notify_reload() -> None:
    """RELOADING=1 with the monotonic timestamp systemd (Type=notify-reload) wants; READY=1 ends it."""
    sdnotify.notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def _progress_of(run_dir: str | None, now: float) -> dict:
    """A running job's progress from its run_dir/progress.json, with the ETA from its own measured step time."""
    p = read_progress(run_dir)
    if p is None:
        return {}
    age = p.pop("age_s")
    done, total, el = p.get("done") or 0, p.get("total") or 0, p.get("elapsed_s") or 0
    step_s = el / done if done else None
    eta = p.get("eta_s")
    if eta is None and step_s is not None and total:
        eta = step_s * (total - done)
    return {**p, "pct": round(100 * done / total, 1) if total else None, "step_s": step_s, "eta_s": eta,
            "updated_s_ago": round(age, 1)}


def status(settings: config.Settings, store: Store | None = None) -> dict:
    """Everything `refinery status` shows, as JSON-able data (no network: GitHub state from the database)."""
    store = store or Store(settings)
    kv, ob = KeyValue(store.engine), OutboxStore(store.engine)
    now = time.time()
    running = []
    for j in store.list(state=State.RUNNING, limit=20):
        running.append({"id": j.id, "issue": j.issue, "kind": j.kind, "stage": j.payload.get("stage", j.kind),
                        "lane": str(j.lane), "attempt": j.tries, "started_at": j.started_at, "run_dir": j.run_dir,
                        "host": j.owner_host, "device": j.device, "progress": _progress_of(j.run_dir, now)})
    queued = [{"id": j.id, "issue": j.issue, "kind": j.kind, "stage": j.payload.get("stage", j.kind),
               "lane": str(j.lane), "state": str(j.state), "note": j.note}
              for s in (State.QUEUED, State.BLOCKED, State.RETRYING) for j in store.list(state=s, limit=50)]
    recent = sorted([j for s in FINAL for j in store.list(state=s, limit=10)],
                    key=lambda j: j.finished_at or 0, reverse=True)[:10]
    counts = ob.counts()
    pending = ob.items(state="pending", limit=1)
    rd = settings.runs_path
    probe = rd if rd.exists() else config.ROOT
    disk = shutil.disk_usage(probe)
    return {
        "lanes": {**{lane.value: {} for lane in Lane}, **store.counts()},  # every lane, an empty one too
        "running": running,
        "queue": sorted(queued, key=lambda q: q["id"]),
        "recent": [{"id": j.id, "issue": j.issue, "kind": j.kind, "stage": j.payload.get("stage", j.kind),
                    "state": str(j.state), "verdict": (j.result or {}).get("verdict"),
                    "reason": ((j.result or {}).get("reason") or j.error or "")[:200],
                    "finished_at": j.finished_at} for j in recent],
        "outbox": {"pending": counts["pending"], "sent": counts["sent"], "dead": counts["dead"],
                   "oldest_pending_s": round(now - pending[0].created_at, 1) if pending else None,
                   "dead_items": [{"key": i.key, "error": i.last_error} for i in ob.items(state="dead", limit=10)]},
        "tracker": {"name": settings.daemon.tracker, "repo": settings.daemon.github_repo or None,
                    "rate": kv.get("github.rate"), "blocked": kv.get("github.blocked")},
        "disk": {"path": str(probe), "free_gb": round(disk.free / 1e9, 2), "total_gb": round(disk.total / 1e9, 2),
                 "min_free_gb": settings.hardware.min_free_disk_gb},
        "pipeline": {"waiting_approval": [{"issue": a["issue"], "job": a["job"]} for a in waiting_approvals(kv)],
                     "noise_floor": kv.get("noise-floor"), "champion": kv.get("champion")},
        "coder": _coder_status(settings, kv),
    }


def _coder_status(settings: config.Settings, kv) -> dict:
    from agent.coder.status import status as coder_status

    return coder_status(settings, kv)
