"""The worker and runner with real child processes and real signals, on SQLite and PostgreSQL.

    .venv/bin/python -m pytest tests/test_queue_worker.py -q
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from jobqueue.models import State
from jobqueue.proc import pid_alive
from jobqueue.store import Store
from jobqueue.worker import Worker
from tests.queue_support import child_argv, queue_env, read_records, settings_for, start_worker, wait_until


@pytest.fixture
def env(db_url, tmp_path):
    return queue_env(db_url, tmp_path)


@pytest.fixture
def store(env):
    s = Store(settings_for(env))
    yield s
    s.close()


def stepping(worker: Worker):
    return lambda: worker.step()


def state_of(store: Store, job_id: int):
    return lambda: store.get(job_id).state


def test_runs_a_job_to_success_with_a_clean_environment(store, tmp_path, monkeypatch):
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_secret")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/refinery")
    rec = tmp_path / "rec.jsonl"
    job = store.enqueue(3, "smoke", "cpu", {"argv": child_argv("--record", str(rec))})
    w = Worker(store)
    wait_until(lambda: store.get(job.id).state == State.SUCCEEDED, 30, "success", stepping(w))
    j = store.get(job.id)
    assert j.result == {"verdict": "PASS", "job": job.id, "attempt": 1}
    run_dir = Path(j.run_dir)
    assert run_dir.parent == tmp_path / "runs" and run_dir.name.endswith(f"-i3-smoke-{job.id}")
    assert "child of job" in (run_dir / "log.txt").read_text()
    start = read_records(rec)[0]
    assert start["github_token"] is None and start["creds"] is None and start["db_url"] is None
    assert start["device"] == ""  # a cpu job never sees the card


def test_a_full_disk_delays_jobs_and_spends_no_attempt(store, caplog):
    """Below min_free_disk_gb nothing is claimed (a stage would refuse to start and burn its attempts): the jobs
    wait, queued, and the worker says why once; with room again they run, on their first attempt."""
    cpu = store.enqueue(3, "smoke", "cpu", {"argv": child_argv()})
    gpu = store.enqueue(4, "smoke", "gpu", {"argv": child_argv()})
    full = Worker(store, store.settings.replace({"min_free_disk_gb": 1e6}))  # a million GB: never free
    with caplog.at_level("WARNING", logger="jobqueue.worker"):
        for _ in range(5):
            assert not full.step()
    assert store.get(cpu.id).state == store.get(gpu.id).state == State.QUEUED and store.get(cpu.id).attempt == 0
    said = [r.getMessage() for r in caplog.records if "min_free_disk_gb" in r.getMessage()]
    assert len(said) == 1 and "no job starts until there is room" in said[0] and "nothing is lost" in said[0]
    w = Worker(store)
    wait_until(lambda: store.get(cpu.id).state == store.get(gpu.id).state == State.SUCCEEDED, 30, "both jobs",
               stepping(w))
    assert store.get(cpu.id).tries == store.get(gpu.id).tries == 1


def test_exit_0_without_a_result_file_succeeds_for_a_command_and_fails_for_a_stage(store):
    """An ad hoc command's exit code is its result; a stage's protocol is result.json, so a stage that
    exits 0 without one is broken, and fails with its log tail."""
    argv = [sys.executable, "-c", "print('no result file')"]
    task = store.enqueue(None, "task", "cpu", {"argv": argv})
    stage = store.enqueue(None, "smoke", "cpu", {"argv": argv}, max_attempts=1)
    w = Worker(store)
    wait_until(lambda: store.get(task.id).state == State.SUCCEEDED and store.get(stage.id).state == State.FAILED,
               30, "both to finish", stepping(w))
    assert store.get(task.id).result == {"exit_code": 0} and store.get(task.id).tries == 1
    err = store.get(stage.id).error
    assert err.startswith("exited 0 without result.json") and "no result file" in err


def test_failure_carries_the_log_tail_and_retries(store):
    job = store.enqueue(None, "task", "cpu", {"argv": child_argv("--fail-attempts", "1")}, max_attempts=2)
    w = Worker(store)
    wait_until(lambda: store.get(job.id).state == State.SUCCEEDED, 30, "the retry to succeed", stepping(w))
    events = store.events(job.id)
    failed = next(e for e in events if e.to_state == "retrying")
    assert "attempt 1 of 2 failed" in failed.message
    assert store.get(job.id).attempt == 2


def test_the_log_tail_of_a_failure_starts_at_a_line(tmp_path):
    """A failed job's log tail (on the issue) began mid-line, e.g. "irty=False  diff sha256 None"."""
    from jobqueue.runner import log_tail

    lines = [f"09:41:{i % 60:02d} dirty=False line {i}" for i in range(300)]
    (tmp_path / "log.txt").write_text("\n".join(lines) + "\n")
    tail = log_tail(tmp_path, 1000)
    assert tail.splitlines()[0] in lines and tail.endswith(lines[-1] + "\n") and len(tail) <= 1000
    (tmp_path / "log.txt").write_text("x" * 5000)  # one long line: its end is still shown
    assert log_tail(tmp_path, 1000) == "x" * 1000
    assert log_tail(tmp_path / "missing", 1000) == ""


def test_exit_75_resumes_without_losing_an_attempt(store):
    job = store.enqueue(None, "full", "cpu", {"argv": child_argv("--exit", "75")}, max_attempts=1)
    w = Worker(store)
    wait_until(lambda: store.get(job.id).resumes >= 2, 30, "two resumes", stepping(w))
    j = store.get(job.id)
    assert j.state in (State.QUEUED, State.RUNNING) and j.tries <= 1
    store.cancel(job.id)
    wait_until(lambda: store.get(job.id).state == State.CANCELLED, 30, "cancel", stepping(w))


def test_kill_9_of_a_child_mid_job_requeues_and_later_succeeds(store, tmp_path):
    pidfile = tmp_path / "child.json"
    job = store.enqueue(None, "task", "cpu", {"argv": child_argv("--pidfile", str(pidfile), "--block-attempts", "1")})
    w = Worker(store)
    wait_until(pidfile.exists, 30, "the child to start", stepping(w))
    os.kill(json.loads(pidfile.read_text())["pid"], signal.SIGKILL)
    wait_until(lambda: store.get(job.id).state == State.SUCCEEDED, 30, "success on attempt 2", stepping(w))
    j = store.get(job.id)
    assert j.attempt == 2 and any("SIGKILL" in (e.message or "") or e.to_state == "retrying"
                                  for e in store.events(job.id))



def test_a_run_directory_removed_while_its_job_runs_is_named_and_the_retry_starts_afresh(store, tmp_path):
    """rm -rf of a running job's run directory takes its log with it: the failure says the directory went
    (not an empty log tail), and the retry makes it again and succeeds."""
    import shutil

    pidfile = tmp_path / "child.json"
    job = store.enqueue(None, "task", "cpu", {"argv": child_argv("--pidfile", str(pidfile), "--block-attempts", "1")},
                        max_attempts=1)
    w = Worker(store)
    wait_until(pidfile.exists, 30, "the child to start", stepping(w))
    run_dir = Path(store.get(job.id).run_dir)
    shutil.rmtree(run_dir)
    os.kill(json.loads(pidfile.read_text())["pid"], signal.SIGKILL)
    wait_until(lambda: store.get(job.id).state == State.FAILED, 30, "the failure", stepping(w))
    err = store.get(job.id).error
    assert f"its run directory {run_dir} was removed while it ran" in err and "--- log tail ---" not in err, err
    store.retry(job.id)
    wait_until(lambda: store.get(job.id).state == State.SUCCEEDED, 30, "success on the retry", stepping(w))
    assert (run_dir / "log.txt").is_file()

def test_kill_9_of_the_worker_process(store, env, tmp_path):
    """The worker dies with its child still running: the next worker on this host sees the owner is gone,
    kills the orphan's process group, requeues the job at once and runs it to success."""
    pidfile = tmp_path / "child.json"
    job = store.enqueue(None, "task", "cpu", {"argv": child_argv("--pidfile", str(pidfile), "--block-attempts", "1")})
    proc = start_worker(env, "--lanes", "cpu", log=tmp_path / "worker.log")
    try:
        wait_until(pidfile.exists, 60, "the child to start")
        orphan = json.loads(pidfile.read_text())["pid"]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert pid_alive(orphan)  # its own process group: the worker's death did not take it down
    finally:
        if proc.poll() is None:
            proc.kill()
    pidfile.unlink()
    w = Worker(store)
    wait_until(lambda: store.get(job.id).state == State.SUCCEEDED, 30, "success on attempt 2", stepping(w))
    assert not pid_alive(orphan)
    notes = [e.message for e in store.events(job.id)]
    assert any("is gone" in m for m in notes), notes
    assert store.get(job.id).attempt == 2



def test_a_dead_worker_restarted_after_its_lease_expired_does_not_cost_the_job_an_attempt(db_url, tmp_path):
    """kill -9 of the worker, and the next start comes after the lease ran out (a restart later than lease_s, a
    reboot): the owner is provably gone on this host, so the job resumes without spending an attempt, as when
    the restart is quick; three such crashes must not fail it for good."""
    env = queue_env(db_url, tmp_path, lease_s="1", heartbeat_s="0.2")
    store = Store(settings_for(env))
    pidfile = tmp_path / "child.json"
    job = store.enqueue(None, "task", "cpu", {"argv": child_argv("--pidfile", str(pidfile), "--block-attempts", "1")})
    proc = start_worker(env, "--lanes", "cpu", log=tmp_path / "worker.log")
    try:
        wait_until(pidfile.exists, 60, "the child to start")
        orphan = json.loads(pidfile.read_text())["pid"]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_until(lambda: store.get(job.id).lease_until < time.time() - 0.5, 30, "the lease to run out")
    w = Worker(store)
    wait_until(lambda: store.get(job.id).state == State.SUCCEEDED, 30, "success", stepping(w))
    assert not pid_alive(orphan)
    notes = [e.message for e in store.events(job.id)]
    assert any("is gone" in m and "attempt not counted" in m for m in notes), notes
    assert store.get(job.id).tries == 1, notes  # the one attempt that ran to the end
    store.close()

def test_cancel_kills_the_whole_process_group(store, tmp_path):
    pidfile = tmp_path / "child.json"
    job = store.enqueue(None, "task", "cpu", {"argv": child_argv("--pidfile", str(pidfile), "--block-attempts", "9",
                                                                 "--grandchild", "--ignore-term")})
    w = Worker(store)
    wait_until(pidfile.exists, 30, "the child to start", stepping(w))
    pids = json.loads(pidfile.read_text())
    t0 = time.monotonic()
    store.cancel(job.id, "not needed")
    wait_until(lambda: store.get(job.id).state == State.CANCELLED, 30, "cancelled", stepping(w))
    assert time.monotonic() - t0 >= 0.9  # it ignored SIGTERM: SIGKILL came after cancel_grace_s
    wait_until(lambda: not pid_alive(pids["pid"]) and not pid_alive(pids["grandchild"]), 5, "the group to be gone")


def test_wall_time_limit(store):
    job = store.enqueue(None, "task", "cpu", {"argv": child_argv("--sleep", "60"), "wall_s": 1})
    w = Worker(store)
    t0 = time.monotonic()
    wait_until(lambda: store.get(job.id).state == State.FAILED, 30, "the wall-time limit", stepping(w))
    assert time.monotonic() - t0 < 15
    assert "wall-time limit of 1 s exceeded" in store.get(job.id).error


def test_gpu_lane_never_runs_two_jobs_at_once_with_two_workers(store, env, tmp_path):
    rec = tmp_path / "rec.jsonl"
    jobs = [store.enqueue(None, "task", "gpu", {"argv": child_argv("--sleep", "0.3", "--record", str(rec))})
            for _ in range(4)]
    procs = [start_worker(env, "--lanes", "gpu", log=tmp_path / f"w{i}.log") for i in range(2)]
    try:
        wait_until(lambda: all(store.get(j.id).state == State.SUCCEEDED for j in jobs), 90, "all gpu jobs")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(20)
    spans = {}
    for r in read_records(rec):
        spans.setdefault(r["job"], {})[r["event"]] = r["t"]
        assert r["device"] == "0"
    ivs = sorted((s["start"], s["end"]) for s in spans.values())
    assert len(ivs) == 4
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(ivs, ivs[1:])), ivs
    owners = {store.get(j.id).owner_pid for j in jobs}
    assert len(owners) >= 1


def test_a_manual_gpu_lock_holder_keeps_the_lane_off_the_card(store, tmp_path):
    from jobqueue.gpulock import gpu_lock

    job = store.enqueue(None, "task", "gpu", {"argv": child_argv()})
    w = Worker(store)
    lock = gpu_lock(store.settings, "0")
    with lock:
        for _ in range(20):
            w.step()
            time.sleep(0.01)
        assert store.get(job.id).state == State.QUEUED
    wait_until(lambda: store.get(job.id).state == State.SUCCEEDED, 30, "the job once the card is free", stepping(w))


def test_sigterm_to_the_worker_is_a_warm_stop(store, env, tmp_path):
    """First SIGTERM: no new claims, the child gets SIGTERM, checkpoints and exits 75; the job is requeued
    without losing an attempt and the worker exits."""
    pidfile = tmp_path / "child.json"
    job = store.enqueue(None, "full", "cpu", {"argv": child_argv("--pidfile", str(pidfile), "--block-attempts", "1",
                                                                 "--term-exit", "75")}, max_attempts=1)
    store.enqueue(None, "task", "cpu", {"argv": child_argv("--sleep", "30")}, priority=-1)
    proc = start_worker(env, "--lanes", "cpu", log=tmp_path / "worker.log")
    try:
        wait_until(pidfile.exists, 60, "the child to start")
        wait_until(lambda: len(store.list(state="running")) == 2, 30, "both jobs running")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    j = store.get(job.id)
    assert j.state == State.QUEUED and j.tries == 0 and j.resumes == 1, (j.state, j.note)
    assert store.list(state="running") == []  # the other child was stopped and requeued too
    w = Worker(store)
    wait_until(lambda: store.get(job.id).state == State.SUCCEEDED, 30, "the resumed job", stepping(w))
