"""Child-process hygiene (issue 9, item 6), through the real path: `python -m agent daemon --once` started
with a GitHub token and a systemd credentials directory in its environment, its worker and runner
starting a real child on each lane.

    - the child's environment is allow-listed: no GITHUB_TOKEN / GH_TOKEN, no CREDENTIALS_DIRECTORY, no
      database URL or token file, nothing named like a secret, and the token's value nowhere
    - the child leads a process group (and session) of its own, not the daemon's
    - the wall-time limit comes from config.py (REFINERY_WALL_TASK_S here): SIGTERM, then SIGKILL to the
      whole group after cancel_grace_s, and the job fails with the setting named

Run: .venv/bin/python -m pytest tests/test_hygiene.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import config
from jobqueue.store import Store
from tests.agent_support import TOKEN, env_for, settings_for
from tests.signals_support import alive, group_members, kill_leftovers

PROBE = ("import json, os; d = os.environ['QUEUE_RUN_DIR']; "
         "json.dump({'env': dict(os.environ), 'pid': os.getpid(), 'pgid': os.getpgrp(), 'sid': os.getsid(0)}, "
         "open(os.path.join(d, 'probe.json'), 'w')); open(os.path.join(d, 'result.json'), 'w').write('{}')")
STUBBORN = ("import os, signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "g = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)']); "
            "open(os.path.join(os.environ['QUEUE_RUN_DIR'], 'grandchild.pid'), 'w').write(str(g.pid)); "
            "time.sleep(60)")
SECRETS = {"GITHUB_TOKEN": TOKEN, "GH_TOKEN": TOKEN, "CREDENTIALS_DIRECTORY": "/run/credentials/refinery.service",
           "REFINERY_TOKEN_FILE": "/etc/refinery/github-token", "AWS_SECRET_ACCESS_KEY": "s3cr3t",
           "PGPASSWORD": "hunter2"}


def once(tmp_path: Path, sqlite_url: str, **over) -> tuple[config.Settings, dict, Store]:
    s = settings_for(sqlite_url, tmp_path, cpu_workers=1, **over)
    env = env_for(s, REFINERY_DOCS_DIR=str(tmp_path / "docs"), **SECRETS)
    return s, env, Store(s)


def run_once(env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", "daemon", "--once"], env=env, cwd=config.ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("lane", ["cpu", "gpu"])
def test_a_child_gets_no_secrets_and_its_own_process_group(tmp_path, sqlite_url, lane):
    s, env, store = once(tmp_path, sqlite_url, gpu_devices="0" if lane == "gpu" else "")
    job = store.enqueue(None, "task", lane, {"argv": [sys.executable, "-c", PROBE]}, key="probe")
    r = run_once(env)
    assert r.returncode == 0, r.stdout + r.stderr
    j = store.get(job.id)
    assert j.state == "succeeded", (j, r.stderr)
    probe = json.loads((Path(j.run_dir) / "probe.json").read_text())
    cenv = probe["env"]
    for name in SECRETS:
        assert name not in cenv, name
    assert "REFINERY_DB_URL" not in cenv and TOKEN not in json.dumps(cenv)
    assert not [k for k in cenv if any(w in k.upper() for w in ("TOKEN", "SECRET", "PASSWORD", "CREDENTIAL"))]
    assert cenv["REFINERY_RUNS_DIR"] == str(tmp_path / "runs") and cenv["QUEUE_JOB_ID"] == str(job.id)
    assert cenv["CUDA_VISIBLE_DEVICES"] == ("0" if lane == "gpu" else "")
    # a group and a session of its own (the gpu lane's lock wrapper execs the command: same process)
    assert probe["pgid"] == probe["pid"] == probe["sid"] == j.child_pid
    assert probe["pgid"] != os.getpgrp()
    store.close()


def test_the_wall_time_limit_from_config_kills_the_whole_group(tmp_path, sqlite_url):
    s, env, store = once(tmp_path, sqlite_url, gpu_devices="", wall_task_s=1.0, cancel_grace_s=0.5)
    env["REFINERY_WALL_TASK_S"], env["REFINERY_CANCEL_GRACE_S"] = "1", "0.5"
    job = store.enqueue(None, "task", "cpu", {"argv": [sys.executable, "-c", STUBBORN]}, key="stubborn",
                        max_attempts=1)
    t0 = time.monotonic()
    try:
        r = run_once(env)
    finally:
        kill_leftovers(tmp_path / "runs")
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    j = store.get(job.id)
    assert j.state == "failed" and "wall-time limit of 1 s exceeded (REFINERY_WALL_TASK_S)" in j.error, j
    grandchild = int((Path(j.run_dir) / "grandchild.pid").read_text())
    assert not group_members(j.child_pid) and not alive(grandchild)  # SIGTERM was ignored: SIGKILL took the group
    assert took < 30
    store.close()
