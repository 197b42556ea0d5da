"""Helpers for the queue tests, and the programs they run as real child processes.

    python -m tests.queue_support child [--sleep S] [--record FILE] [--pidfile FILE] [--block-attempts N]
                                        [--fail-attempts N] [--ignore-term] [--term-exit N] [--grandchild]
                                        [--exit N]
    python -m tests.queue_support hammer --out FILE [--lane cpu]   (claims + finishes until the lane is empty)
    python -m tests.queue_support waiter --out FILE --stop FILE [--timeout S]   (an idle worker's loop: claim, else
                                        wait offering to take the next job; until STOP exists and the lane is empty)

Settings come from the environment (REFINERY_*), as for any refinery process.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import config

ROOT = config.ROOT


def queue_env(db_url: str, tmp_path: Path, **over: str) -> dict[str, str]:
    """REFINERY_* settings for a test: fast heartbeats (a 10 s lease survives a loaded machine), no back-off,
    runs under tmp_path; tests of lease expiry pass a short lease_s."""
    env = {"REFINERY_DB_URL": db_url, "REFINERY_RUNS_DIR": str(tmp_path / "runs"), "REFINERY_LEASE_S": "10",
           "REFINERY_HEARTBEAT_S": "0.3", "REFINERY_RETRY_BACKOFF_S": "0", "REFINERY_CANCEL_GRACE_S": "1",
           "REFINERY_CPU_WORKERS": "2", "REFINERY_HOST_NAME": "testhost", "REFINERY_GPU_DEVICES": "0",
           "REFINERY_RESUME_BACKOFF_S": "0", "REFINERY_AGENT_LEASE_S": "2",
           "REFINERY_STAGE_SOURCE": "checkout"}  # this checkout's uncommitted code is what the tests test
    env.update({f"REFINERY_{k.upper()}": str(v) for k, v in over.items()})
    return env


def settings_for(env: dict[str, str]) -> config.Settings:
    return config.load(env)


def proc_env(env: dict[str, str]) -> dict[str, str]:
    """The environment of a refinery subprocess: ours without foreign REFINERY_* names, plus env."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("REFINERY_")}
    return {**base, **env, "PYTHONPATH": str(ROOT)}


def child_argv(*flags: str) -> list[str]:
    return ["{python}", "-m", "tests.queue_support", "child", "--run-dir", "{run_dir}", "--job-id", "{job_id}",
            "--attempt", "{attempt}", *flags]


def start_worker(env: dict[str, str], *args: str, log: Path | None = None) -> subprocess.Popen:
    out = open(log, "ab") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "jobqueue.worker", *args], cwd=ROOT, env=proc_env(env),
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_until(cond, timeout: float, what: str, step=None, interval: float = 0.02):
    """Poll cond() (calling step() between polls) until truthy; fail the test with `what` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if step is not None:
            step()
        value = cond()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _append(path: str, rec: dict) -> None:
    with open(path, "a") as f:  # one short write per line: atomic enough for O_APPEND
        f.write(json.dumps(rec) + "\n")


def child_main(a) -> int:
    if a.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if a.term_exit is not None:  # "checkpoint, then exit 75" like a full stage
        signal.signal(signal.SIGTERM, lambda *_: os._exit(a.term_exit))
    if a.pidfile:
        gpid = None
        if a.grandchild:
            gpid = subprocess.Popen(["sleep", "1000"]).pid
        Path(a.pidfile).write_text(json.dumps({"pid": os.getpid(), "grandchild": gpid, "attempt": a.attempt}))
    rec = {"job": a.job_id, "attempt": a.attempt, "host": os.environ.get("REFINERY_HOST_NAME", ""),
           "device": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid(),
           "github_token": os.environ.get("GITHUB_TOKEN"), "creds": os.environ.get("CREDENTIALS_DIRECTORY"),
           "db_url": os.environ.get("REFINERY_DB_URL")}
    if a.record:
        _append(a.record, {**rec, "event": "start", "t": time.time()})
    print(f"child of job {a.job_id} attempt {a.attempt} running", flush=True)
    if a.attempt <= a.block_attempts:
        time.sleep(1000)  # until killed
    time.sleep(a.sleep)
    if a.attempt <= a.fail_attempts:
        print("failing on purpose", flush=True)
        return 1
    if a.exit is not None:
        return a.exit
    if a.record:
        _append(a.record, {**rec, "event": "end", "t": time.time()})
    tmp = Path(a.run_dir) / "result.tmp"
    tmp.write_text(json.dumps({"verdict": "PASS", "job": a.job_id, "attempt": a.attempt}))
    tmp.replace(Path(a.run_dir) / "result.json")
    return 0


def hammer_main(a) -> int:
    from jobqueue.proc import Owner
    from jobqueue.store import Store

    settings = config.load()
    store = Store(settings)
    owner = Owner.current(settings.host)
    store.counts()  # connected and warmed up
    if a.go:  # a start barrier, so every hammer really competes (not one draining the lane alone)
        Path(a.out + ".ready").touch()
        deadline = time.time() + 60
        while not Path(a.go).exists() and time.time() < deadline:
            time.sleep(0.005)
    got = []
    while True:
        job = store.claim(a.lane, owner)
        if job is None:  # empty, or every remaining row was locked by another claimer: look again
            if not store.counts().get(a.lane, {}).get("queued"):
                break
            continue
        got.append(job.id)
        time.sleep(0.001)  # "run" the job outside any transaction, as a worker does: the others get their turn
        store.finish(job.id, job.attempt, {"by": os.getpid()})
    Path(a.out).write_text(json.dumps(got))
    store.close()
    return 0


def waiter_main(a) -> int:
    """Claim, or wait offering to take the next job (Store.wait_for_job), as an idle Worker does; each job run
    is recorded (id, attempt, how it came) and finished."""
    from jobqueue.proc import Owner
    from jobqueue.store import Store

    settings = config.load()
    store = Store(settings)
    owner = Owner.current(settings.host)
    got = []
    Path(a.out + ".ready").touch()
    while True:
        job, how = store.claim("cpu", owner), "claim"
        if job is None:
            job, how = store.wait_for_job("cpu", owner, a.timeout), "handoff"
        if job is None:
            if Path(a.stop).exists() and not store.counts().get("cpu", {}).get("queued"):
                break
            continue
        got.append({"id": job.id, "attempt": job.attempt, "how": how, "owner": job.owner_pid})
        store.finish(job.id, job.attempt, {"by": os.getpid()})
    Path(a.out).write_text(json.dumps(got))
    store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("child")
    c.add_argument("--run-dir", required=True)
    c.add_argument("--job-id", type=int, required=True)
    c.add_argument("--attempt", type=int, required=True)
    c.add_argument("--sleep", type=float, default=0.0)
    c.add_argument("--record")
    c.add_argument("--pidfile")
    c.add_argument("--block-attempts", type=int, default=0)
    c.add_argument("--fail-attempts", type=int, default=0)
    c.add_argument("--ignore-term", action="store_true")
    c.add_argument("--term-exit", type=int, help="exit with this code on SIGTERM")
    c.add_argument("--grandchild", action="store_true")
    c.add_argument("--exit", type=int)
    h = sub.add_parser("hammer")
    h.add_argument("--out", required=True)
    h.add_argument("--lane", default="cpu")
    h.add_argument("--go", help="write OUT.ready once connected, then wait for this file before claiming")
    w = sub.add_parser("waiter")
    w.add_argument("--out", required=True)
    w.add_argument("--stop", required=True)
    w.add_argument("--timeout", type=float, default=1.0)
    a = p.parse_args(argv)
    return {"child": child_main, "hammer": hammer_main, "waiter": waiter_main}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())


def use_env(monkeypatch, env: dict[str, str]) -> dict[str, str]:
    """Set env's REFINERY_* settings for an in-process command-line call; returns env."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """`refinery ARGV...` in this process: (exit code, stdout, stderr)."""
    from agent.cli import main

    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err
