"""Settings reach the stages (#20 item 5): the daemon's effective settings — REFINERY_ENV_FILE's lines, a SIGHUP
reload — are in a stage child's environment (jobqueue/runner.settings_env), used by it, and recorded in its
config.json; secrets never are.

    the env file    a worker loaded from REFINERY_ENV_FILE runs a real smoke stage: the file's hardware setting
                    (cpu_mem_budget) decides its ERROR, its gate threshold is in config.json (PostgreSQL)
    SIGHUP          a real daemon (SQLite) started with an env file, then the file edited and reloaded: each stage
                    ran with the values of its time, in config.json and used (~35 s, marked slow)
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

import config
from agent.state.local_tables import LocalIssues
from experiments.stage import stage_argv
from jobqueue import runner
from jobqueue.store import Store
from jobqueue.worker import Worker
from tests.agent_support import TOKEN, env_for, settings_for, wait_for
from tests.signals_support import DaemonProc

SECRET_PW = "pw-not-for-children"


def _stage_job(store: Store, tmp_path: Path, title: str):
    spec_file = tmp_path / "runs" / "specs" / f"{title}.json"
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(json.dumps({"spec": {"stage_threads": 1}}))
    n = LocalIssues(store.engine).create(title, "", [], "alice")
    return store.enqueue(n, "smoke", "cpu", {"argv": stage_argv("smoke", str(spec_file)), "stage": "smoke",
                                             "spec_file": str(spec_file)}, key=title)


def _config_json(job) -> dict:
    return json.loads((Path(job.run_dir) / "config.json").read_text())


def test_settings_env_passes_values_not_secrets(tmp_path):
    f = tmp_path / "refinery.env"
    f.write_text(f"REFINERY_PASS_DELTA_POINTS=12.5\nREFINERY_MIN_FREE_DISK_GB=1000000\nREFINERY_TASKS=khop,s5\n"
                 f"REFINERY_FULL_REQUIRES_APPROVAL=true\nREFINERY_DB_URL=postgresql://u:{SECRET_PW}@db/q\n"
                 "REFINERY_TOKEN_FILE=/secret/github-token\nREFINERY_CODER_CREDENTIAL_FILE=/secret/anthropic\n"
                 "REFINERY_PROFILE=cpu-fp16\nREFINERY_LOSS_CHUNK_TOKENS=1024\n")
    daemon = config.load({"REFINERY_ENV_FILE": str(f)})
    env = runner.settings_env(daemon)
    assert env["REFINERY_PASS_DELTA_POINTS"] == "12.5" and env["REFINERY_PROFILE"] == "cpu-fp16"
    assert not any(SECRET_PW in v or "/secret/" in v for v in env.values()), env
    assert not {"REFINERY_DB_URL", "REFINERY_TOKEN_FILE", "REFINERY_CODER_CREDENTIAL_FILE"} & set(env)
    child = config.load(env)  # the child reads back every value the daemon runs with, secrets aside
    diff = {k for k in config.FIELD_SECTION if child.get(k) != daemon.get(k)}
    assert diff == set(config.SECRET_FIELDS), diff
    # the process environment loses to the daemon's effective settings (a reload changed them since the start)
    job = type("J", (), {"id": 1, "attempt": 1})()
    full = runner.child_env(job, tmp_path, None, base={"REFINERY_PASS_DELTA_POINTS": "3", "GITHUB_TOKEN": TOKEN,
                                                       "REFINERY_ENV_FILE": str(f)}, settings=daemon)
    assert full["REFINERY_PASS_DELTA_POINTS"] == "12.5" and "GITHUB_TOKEN" not in full
    assert "REFINERY_ENV_FILE" not in full


@pytest.mark.slow
@pytest.mark.postgres
def test_a_stage_runs_with_the_env_files_settings(tmp_path, pg_url):
    """PostgreSQL here; the SIGHUP test below runs on SQLite (both start from an env file)."""
    db_url = pg_url
    f = tmp_path / "refinery.env"
    f.write_text("REFINERY_PASS_DELTA_POINTS=12.5\nREFINERY_CPU_MEM_BUDGET=1048576\n")
    base = settings_for(db_url, tmp_path, max_attempts=1)
    s = config.load({"REFINERY_ENV_FILE": str(f)}).replace({k: base.get(k) for k, _ in base.sources})
    store = Store(s)
    job = _stage_job(store, tmp_path, "env-file")
    w = Worker(store, s, lanes=("cpu",))
    try:
        wait_for(lambda: w.step(time.time()) is not None and str(store.get(job.id).state) in ("failed", "succeeded"),
                 timeout=120, step=0.1, what="the stage to finish")
    finally:
        w.cold_stop() if w.busy else None
    done = store.get(job.id)
    doc = _config_json(done)
    assert doc["settings"]["pass_delta_points"] == 12.5 and doc["settings"]["cpu_mem_budget"] == 1 << 20
    assert "db_url" not in doc["settings"] and "db_url" not in doc["settings_sources"]
    result = json.loads((Path(done.run_dir) / "result.json").read_text())
    assert result["verdict"] == "ERROR" and "cpu budget 1 MiB" in result["reason"], result  # used
    store.close()


@pytest.mark.slow
def test_a_sighup_reload_reaches_the_next_stage(tmp_path, sqlite_url):
    s = settings_for(sqlite_url, tmp_path, max_attempts=1, poll_interval=30.0)
    env_file = tmp_path / "refinery.env"
    env_file.write_text("REFINERY_PASS_DELTA_POINTS=12.5\nREFINERY_CPU_MEM_BUDGET=1048576\n"
                        "REFINERY_MAX_ATTEMPTS=1\n")
    store = Store(s)
    d = DaemonProc(env_for(s, REFINERY_ENV_FILE=str(env_file), REFINERY_DOCS_DIR=str(tmp_path / "docs")),
                   tmp_path / "daemon.log")
    try:
        first = _stage_job(store, tmp_path, "before")
        wait_for(lambda: d.check(str(store.get(first.id).state) == "failed"), timeout=90, what="the first stage")
        env_file.write_text("REFINERY_PASS_DELTA_POINTS=7.25\nREFINERY_CPU_MEM_BUDGET=2097152\n"
                            "REFINERY_MAX_ATTEMPTS=1\n")
        d.signal(signal.SIGHUP)
        wait_for(lambda: d.check("pass_delta_points 12.5 → 7.25" in d.text()), timeout=20, what="the reload")
        second = _stage_job(store, tmp_path, "after")
        wait_for(lambda: d.check(str(store.get(second.id).state) == "failed"), timeout=90, what="the second stage")
        d.signal(signal.SIGTERM)
        assert d.wait(30) == 0
    finally:
        d.kill()
    a, b = _config_json(store.get(first.id)), _config_json(store.get(second.id))
    assert a["settings"]["pass_delta_points"] == 12.5 and b["settings"]["pass_delta_points"] == 7.25
    assert b["settings"]["cpu_mem_budget"] == 2 << 20
    reason = json.loads((Path(store.get(second.id).run_dir) / "result.json").read_text())["reason"]
    assert "cpu budget 2 MiB" in reason, reason  # the reloaded hardware setting decided the run
    store.close()
