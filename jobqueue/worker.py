"""The lanes: a worker loop that steps, with time passed in.

`Worker(store, settings).step(now)` does one iteration and returns whether anything happened:

    1. maintenance (every heartbeat_s): store.checkpoint(), store.recover(now), then kill the process groups of
       orphaned children whose owner on this host is gone (they might still hold the GPU)
    2. reap children that exited; their exit code and result file decide the job's state
    3. enforce: pending cancels (checked every cancel_poll_s), wall-time limits, SIGKILL after
       cancel_grace_s for children that ignored SIGTERM
    4. heartbeat every heartbeat_s; a heartbeat refused (the lease was taken over) kills the
       child and writes nothing: the job belongs to someone else now
    5. start: gpu lane, one job per device of this host (a free GPU file lock, then a claim the
       database refuses if the device already runs one); cpu lane, up to cpu_workers jobs. Nothing is
       claimed while runs/ has less than min_free_disk_gb free: a full disk delays jobs, it never
       spends their attempts (a stage would refuse to start, an ERROR each try, until none were left)

`run()` loops step() and, when a step did nothing, waits in idle(): store.wait_for_work() (LISTEN/NOTIFY,
or SQLite's data_version) so an idle worker starts new work within milliseconds; with nothing running it
waits in store.wait_for_job(), offering to take the next cpu job, which on PostgreSQL the enqueue hands over
in its own commit (jobqueue/wake.py), so the start needs no claim of its own. Signals only set flags:
the first SIGINT/SIGTERM is a warm stop (no new claims; children get SIGTERM, checkpoint and
exit 75, and are requeued without losing an attempt), the second a cold stop (SIGKILL to every
child group, requeued the same way).

    python -m jobqueue.worker [--once] [--lanes gpu,cpu]   # one worker process, settings from env
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import sys
import time

import config
from jobqueue import gpulock, runner
from jobqueue.models import Lane
from jobqueue.proc import Owner, kill_group
from jobqueue.store import LeaseLost, Store

log = logging.getLogger("jobqueue.worker")
CANCEL_POLL_S = 0.25  # how often running jobs are checked for a pending cancel


class Worker:
    def __init__(self, store: Store, settings: config.Settings | None = None,
                 lanes: tuple[str, ...] = ("gpu", "cpu")):
        self.store = store
        self.settings = settings or store.settings
        q = self.settings.queue
        self.owner = Owner.current(self.settings.host)
        self.devices = [d.strip() for d in q.gpu_devices.split(",") if d.strip()] if "gpu" in lanes else []
        self.cpu_slots = self.settings.cpu_worker_count if "cpu" in lanes else 0
        self.children: dict[int, runner.Child] = {}
        self.stopping: str | None = None  # None | "warm" | "cold"
        self._next_maint = self._next_beat = self._next_cancel = 0.0
        self._disk_low = False

    # ------------------------------------------------------------------ control
    def warm_stop(self) -> None:
        """Claim nothing more; ask running children to stop (SIGTERM: checkpoint, exit 75)."""
        self.stopping = "warm"
        now = time.time()
        for child in self.children.values():
            child.terminate("stop", now)

    def cold_stop(self) -> None:
        """SIGKILL every child group now; their jobs are requeued without losing an attempt."""
        self.stopping = "cold"
        for child in self.children.values():
            child.kill("stop")

    @property
    def busy(self) -> bool:
        return bool(self.children)

    # ------------------------------------------------------------------ one iteration
    def step(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        q = self.settings.queue
        did = False
        if now >= self._next_maint:
            self._next_maint = now + q.heartbeat_s
            did |= self._maintain(now)
        did |= self._reap(now)
        self._enforce(now)
        if self.children and now >= self._next_beat:
            self._next_beat = now + q.heartbeat_s
            self._heartbeat(now)
        if self.stopping is None:
            did |= self._start(now)
        return did

    def _maintain(self, now: float) -> bool:
        self.store.checkpoint()
        recovered = self.store.recover(now)
        for job, action in recovered:
            log.warning("job %s (%s) %s: %s", job.id, job.kind, action, "lease lost or owner gone")
            mine = self.children.pop(job.id, None)
            if mine is not None:  # our own lease lapsed (we were stalled): the job is not ours any more
                mine.kill("lost")
            elif job.owner_host == self.owner.host and job.child_pid:
                kill_group(job.child_pid, job.child_start)  # an orphan of a dead worker on this host
        return bool(recovered)

    def _reap(self, now: float) -> bool:
        done = [c for c in self.children.values() if c.proc.poll() is not None]
        for child in done:
            del self.children[child.job.id]
            child.signal_group(signal.SIGKILL)  # stragglers the child left in its group
            if child.stop_reason != "lost":
                self._record(child, now)
        return bool(done)

    def _record(self, child: runner.Child, now: float) -> None:
        job, out = child.job, runner.outcome(child)
        try:
            if out.action == "succeeded" and job.lane == Lane.CPU and self.stopping is None and self._room():
                # a busy cpu lane: record this one and claim the next in one transaction (one commit per job)
                nxt = self.store.finish_and_claim(job.id, job.attempt, out.result, Lane.CPU, self.owner, now=now)
                if nxt is not None:
                    self._launch(nxt, None, now)
            elif out.action == "succeeded":
                self.store.finish(job.id, job.attempt, out.result, now)
            elif out.action == "cancelled":
                self.store.mark_cancelled(job.id, job.attempt, out.error, now)
            elif out.action == "timeout":
                self.store.fail(job.id, job.attempt, out.error, retry=False, now=now)
            elif out.action == "stopped":  # our warm or cold stop: not the job's fault, resume at once
                self.store.requeue(job.id, job.attempt, out.error, count_attempt=False, now=now)
            elif out.action == "resume":
                self.store.requeue(job.id, job.attempt, out.error, count_attempt=False,
                                   delay=self.settings.queue.resume_backoff_s, now=now)
            else:
                self.store.fail(job.id, job.attempt, out.error, retry=True, now=now)
            log.info("job %s %s", job.id, out.action)
        except LeaseLost as e:
            log.warning("job %s finished after its lease was taken over; result discarded: %s", job.id, e)

    def _enforce(self, now: float) -> None:
        q = self.settings.queue
        if self.children and now >= self._next_cancel:
            self._next_cancel = now + min(CANCEL_POLL_S, q.heartbeat_s)
            for job_id in self.store.cancel_requests(list(self.children)):
                self.children[job_id].terminate("cancel", now)
        for child in self.children.values():
            if child.term_at is None and now - child.started > child.wall_s:
                child.terminate("wall", now)
            # a warm stop may take as long as the daemon's stop timeout allows (checkpoint, final eval)
            grace = (max(q.cancel_grace_s, self.settings.daemon.stop_timeout_s - 15)
                     if child.stop_reason == "stop" else q.cancel_grace_s)
            if child.term_at is not None and not child.killed and now - child.term_at >= grace:
                child.kill()

    def _heartbeat(self, now: float) -> None:
        for job_id, child in list(self.children.items()):
            if not self.store.heartbeat(job_id, child.job.attempt, now):
                log.warning("job %s: lease taken over; killing its child", job_id)
                child.kill("lost")

    def _room(self) -> bool:
        """Whether runs/ has min_free_disk_gb free, so a new job may start; said once per low spell."""
        need = self.settings.hardware.min_free_disk_gb
        where = self.settings.runs_path
        while not where.exists() and where != where.parent:
            where = where.parent
        try:
            free = shutil.disk_usage(where).free / 1e9
        except OSError:  # cannot tell: the stage checks again before it starts
            return True
        low = free < need
        if low and not self._disk_low:
            log.warning("%.2f GB free on %s, below min_free_disk_gb = %g: no job starts until there is room "
                        "(free space there, or lower REFINERY_MIN_FREE_DISK_GB); queued jobs wait, nothing is lost",
                        free, where, need)
        elif self._disk_low and not low:
            log.info("%.2f GB free on %s again: jobs start", free, where)
        self._disk_low = low
        return not low

    def _start(self, now: float) -> bool:
        started = False
        if (self.devices or self.cpu_slots) and not self._room():
            return False
        gpu_busy = {c.device for c in self.children.values() if c.job.lane == Lane.GPU}
        for device in self.devices:
            if device not in gpu_busy and gpulock.is_free(self.settings, device):
                job = self.store.claim(Lane.GPU, self.owner, device=device, now=now)
                if job is not None:
                    started |= self._launch(job, device, now)
        free = self.cpu_slots - sum(1 for c in self.children.values() if c.job.lane == Lane.CPU)
        if free > 0:  # every free slot in one claim transaction
            for job in self.store.claim_many(Lane.CPU, self.owner, free, now=now):
                started |= self._launch(job, None, now)
        return started

    def _launch(self, job, device: str | None, now: float) -> bool:
        try:
            child = runner.start(job, self.settings, device, now)
        except runner.RunnerError as e:
            self.store.fail(job.id, job.attempt, str(e), retry=False, now=now)
            return True
        if not self.store.set_child(job.id, job.attempt, str(child.run_dir), child.pid, child.start_time):
            child.kill("lost")  # taken over between claim and start (we were stalled that long)
            return True
        self.children[job.id] = child
        return True

    # ------------------------------------------------------------------ the loop
    def run(self, once: bool = False, should_stop=lambda: False) -> None:
        """Step until stopped; once: until nothing is running or claimable (`daemon --once`)."""
        while True:
            did = self.step()
            if should_stop() and self.stopping is None:
                self.warm_stop()
            if self.stopping and not self.children:
                return
            if once and not did and not self.children:
                return
            if not did:
                self.idle(0.05 if self.children else 1.0)

    def idle(self, timeout: float) -> None:
        """Wait for work. With nothing running, a worker with cpu slots offers to take the next cpu job as it
        is enqueued (Store.wait_for_job: on PostgreSQL the enqueue hands it over, one commit instead of two)."""
        if self.children or not self.cpu_slots or self.stopping is not None or self._disk_low:
            self.store.wait_for_work(timeout)
            return
        job = self.store.wait_for_job(Lane.CPU, self.owner, timeout)
        if job is None:
            return
        if self.stopping is not None:  # a signal came while we waited: back to the queue, no attempt spent
            self.store.requeue(job.id, job.attempt, "handed over as the worker stopped", count_attempt=False)
        else:
            self._launch(job, None, time.time())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobqueue.worker", description="one queue worker process")
    p.add_argument("--once", action="store_true", help="drain what is queued, then exit")
    p.add_argument("--lanes", default="gpu,cpu", help="lanes to work (comma-separated)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = config.load()
    store = Store(settings)
    worker = Worker(store, settings, lanes=tuple(x.strip() for x in a.lanes.split(",") if x.strip()))
    signals = {"n": 0}

    def on_signal(signum, _frame):
        signals["n"] += 1
        if signals["n"] == 1:
            worker.warm_stop()
        else:
            worker.cold_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"worker {worker.owner.label} ready: lanes {a.lanes}, gpu devices {worker.devices}, "
          f"cpu slots {worker.cpu_slots}, db {config.hide_url_password(store.url)}", flush=True)
    try:
        worker.run(once=a.once)
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
