"""Two daemons posing as two hosts (REFINERY_HOST_NAME) on one PostgreSQL queue, each with its own gpu
lane and runs/ directory: each card runs one job at a time, cpu jobs spread over both, and a host that
dies (SIGKILL of everything it runs, never restarted) has its job taken over after its lease expires.

    .venv/bin/python -m pytest tests/test_queue_hosts.py -q
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from jobqueue.models import State
from jobqueue.store import Store
from tests.queue_support import child_argv, queue_env, read_records, settings_for, start_worker, wait_until

pytestmark = pytest.mark.postgres


def _stop(procs):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except Exception:  # noqa: BLE001 - a stuck worker must not hide the test's own failure
            p.kill()


def test_two_hosts_share_one_queue(pg_url, tmp_path):
    rec = tmp_path / "rec.jsonl"
    envs = {h: queue_env(pg_url, tmp_path / h, host_name=h, cpu_workers=1) for h in ("hostA", "hostB")}
    store = Store(settings_for(envs["hostA"]))
    gpu = [store.enqueue(None, "task", "gpu", {"argv": child_argv("--sleep", "0.4", "--record", str(rec))})
           for _ in range(4)]
    # 12 cpu jobs of 0.5 s: about 6 s of work for one host, far longer than the second host's start-up
    cpu = [store.enqueue(None, "task", "cpu", {"argv": child_argv("--sleep", "0.5", "--record", str(rec))})
           for _ in range(12)]
    procs = [start_worker(env, log=tmp_path / f"{h}.log") for h, env in envs.items()]
    try:
        wait_until(lambda: all(store.get(j.id).state == State.SUCCEEDED for j in gpu + cpu), 90, "all jobs")
    finally:
        _stop(procs)
    spans: dict[int, dict] = {}
    for r in read_records(rec):
        spans.setdefault(r["job"], {"host": r["host"]})[r["event"]] = r["t"]
    gpu_ids = {j.id for j in gpu}
    for host in envs:
        ivs = sorted((s["start"], s["end"]) for j, s in spans.items() if j in gpu_ids and s["host"] == host)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(ivs, ivs[1:])), (host, ivs)
    assert {s["host"] for j, s in spans.items() if j not in gpu_ids} == set(envs), "cpu jobs ran on one host only"
    store.close()


def test_a_dead_hosts_job_is_taken_over_after_its_lease_expires(pg_url, tmp_path):
    envs = {h: queue_env(pg_url, tmp_path / h, host_name=h, cpu_workers=1, lease_s=3) for h in ("hostA", "hostB")}
    store = Store(settings_for(envs["hostB"]))
    pidfile = tmp_path / "child.json"
    job = store.enqueue(None, "task", "cpu", {"argv": child_argv("--pidfile", str(pidfile), "--block-attempts", "1")})
    a = start_worker(envs["hostA"], "--lanes", "cpu", log=tmp_path / "a.log")
    b = None
    try:
        wait_until(pidfile.exists, 60, "hostA to start the job")
        assert store.get(job.id).owner_host == "hostA"
        b = start_worker(envs["hostB"], "--lanes", "cpu", log=tmp_path / "b.log")
        time.sleep(1.0)  # hostB is up and must leave hostA's live job alone
        assert store.get(job.id).owner_host == "hostA" and store.get(job.id).attempt == 1
        # hostA dies: its worker and everything it runs, at once, never restarted
        os.kill(a.pid, signal.SIGKILL)
        os.killpg(json.loads(pidfile.read_text())["pid"], signal.SIGKILL)
        died = time.time()
        lease_until = store.get(job.id).lease_until
        wait_until(lambda: store.get(job.id).state == State.SUCCEEDED, 60, "hostB to take the job over")
    finally:
        _stop([p for p in (a, b) if p is not None])
    j = store.get(job.id)
    assert j.owner_host == "hostB" and j.attempt == 2
    takeover = next(e for e in store.events(job.id) if e.from_state == "running" and e.to_state == "queued")
    assert "expired" in takeover.message and takeover.at >= lease_until > died - 3.5
    store.close()


def test_a_job_taken_over_from_a_host_whose_runs_dir_is_not_here_continues_in_this_hosts_runs(pg_url, tmp_path):
    """Hosts do not share disks: the dead host's run directory is not writable here (simulated by a file where
    its runs/ was). The taking host runs the job in a run directory of its own instead of crashing its loop and
    letting the job's lease lapse until no attempts are left."""
    envs = {h: queue_env(pg_url, tmp_path / h, host_name=h, cpu_workers=1, lease_s=3) for h in ("hostA", "hostB")}
    store = Store(settings_for(envs["hostB"]))
    pidfile = tmp_path / "child.json"
    job = store.enqueue(None, "task", "cpu", {"argv": child_argv("--pidfile", str(pidfile), "--block-attempts", "1")})
    a = start_worker(envs["hostA"], "--lanes", "cpu", log=tmp_path / "a.log")
    b = None
    try:
        wait_until(pidfile.exists, 60, "hostA to start the job")
        os.kill(a.pid, signal.SIGKILL)
        os.killpg(json.loads(pidfile.read_text())["pid"], signal.SIGKILL)
        runs_a = tmp_path / "hostA" / "runs"
        runs_a.rename(tmp_path / "hostA-runs-elsewhere")
        runs_a.write_text("not a directory on this host\n")
        b = start_worker(envs["hostB"], "--lanes", "cpu", log=tmp_path / "b.log")
        wait_until(lambda: store.get(job.id).state in (State.SUCCEEDED, State.FAILED), 60, "hostB to finish the job")
        assert b.poll() is None, (tmp_path / "b.log").read_text()
    finally:
        _stop([p for p in (a, b) if p is not None])
    j = store.get(job.id)
    assert j.state == State.SUCCEEDED and j.owner_host == "hostB" and j.attempt == 2, store.events(job.id)
    assert j.run_dir.startswith(str(tmp_path / "hostB" / "runs")), j.run_dir
    assert "not writable on hostB" in (tmp_path / "hostB" / "runs" / os.path.basename(j.run_dir) / "log.txt"
                                       ).read_text()
    store.close()


def test_a_database_outage_costs_the_daemon_one_log_line_and_no_job(pg_url, tmp_path):
    """The queue database unreachable under a running daemon for a few seconds (its connections terminated and
    new ones refused; a role of its own, so nothing else on the server notices): the daemon says so in one line,
    says when the database is back, and runs every job exactly once."""
    import subprocess
    import sys
    import uuid

    import psycopg

    import config
    from tests.conftest import PG_ADMIN
    from tests.queue_support import proc_env

    role = "refinery_outage_" + uuid.uuid4().hex[:8]
    schema = pg_url.rsplit("%3D", 1)[1]
    admin = psycopg.connect(PG_ADMIN, autocommit=True)
    admin.execute(f'CREATE ROLE "{role}" LOGIN')
    admin.execute(f'ALTER SCHEMA "{schema}" OWNER TO "{role}"')
    url = pg_url.replace("postgres@", f"{role}@", 1)
    env = {**queue_env(url, tmp_path, host_name="hostA", cpu_workers=1), "REFINERY_TRACKER": "local",
           "REFINERY_DOCS_DIR": str(tmp_path / "docs"), "REFINERY_POLL_INTERVAL": "3600"}
    rec = tmp_path / "rec.jsonl"
    log, d, store = tmp_path / "daemon.log", None, None
    try:
        with Store(settings_for(env)):  # the role creates the tables, so they are its own
            pass
        store = Store(settings_for({**env, "REFINERY_DB_URL": pg_url}))  # as postgres: it stays connected
        jobs = [store.enqueue(None, "task", "cpu", {"argv": child_argv("--sleep", "2", "--record", str(rec))})
                for _ in range(3)]
        with open(log, "ab") as out:
            d = subprocess.Popen([sys.executable, "-m", "agent", "daemon"], cwd=config.ROOT, env=proc_env(env),
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: any(r["event"] == "start" for r in read_records(rec)), 60, "the first job to start")
        admin.execute(f'ALTER ROLE "{role}" NOLOGIN')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
        time.sleep(4)
        admin.execute(f'ALTER ROLE "{role}" LOGIN')
        wait_until(lambda: all(store.get(j.id).state == State.SUCCEEDED for j in jobs), 60, "every job")
        wait_until(lambda: "reachable again" in log.read_text(), 30, "the daemon to see the database back")
    finally:
        _stop([d] if d else [])
        if store is not None:
            store.close()
        admin.execute(f'ALTER SCHEMA "{schema}" OWNER TO postgres')
        admin.execute(f'REASSIGN OWNED BY "{role}" TO postgres')
        admin.execute(f'DROP OWNED BY "{role}"')
        admin.execute(f'DROP ROLE "{role}"')
        admin.close()
    text = log.read_text()
    assert "Traceback" not in text and text.count("queue database unreachable") == 1, text
    starts = [r["job"] for r in read_records(rec) if r["event"] == "start"]
    assert sorted(starts) == sorted(j.id for j in jobs), starts  # each job ran once
