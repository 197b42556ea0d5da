"""Shared pieces of the agent tests: a GitHub-speaking server, settings, and a daemon on either tracker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import config
from tests.ghserver import GitHubServer

TOKEN = "ghp_" + "T0kenForTests" * 3  # token-shaped, so the redaction pattern must catch it
REPO = "acme/lab"
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def settings_for(db_url: str, tmp_path: Path, srv: GitHubServer | None = None, **over) -> config.Settings:
    base = {"db_url": db_url, "runs_dir": str(tmp_path / "runs"), "poll_interval": 1.0, "write_interval_s": 0.0,
            "github_backoff_s": 0.0, "max_rate_limit_wait_s": 3.0, "github_timeout_s": 5.0, "gpu_devices": "",
            "cpu_workers": 1, "heartbeat_s": 0.2, "lease_s": 10.0, "once_timeout_s": 20.0,
            # stage_source: the tests test this checkout's uncommitted code (test_code_ideas.py pins)
            "stage_source": "checkout", "marker_settle_s": 0.0}
    if srv is not None:
        base.update(tracker="github", github_repo=REPO, github_api_url=srv.url)
    base.update(over)
    return config.load({}).replace(base)


def wait_for(cond, timeout: float = 10.0, step: float = 0.05, what: str = "condition"):
    end = time.time() + timeout
    while time.time() < end:
        out = cond()
        if out:
            return out
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def gh():
    srv = GitHubServer(repo=REPO, token=TOKEN, base_path="/api/v3").start()
    srv.add_collaborator("alice", "write")
    srv.add_collaborator("mona", "admin")
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _token_env(monkeypatch):
    """The configured token is in the environment (as under systemd), so redaction knows it."""
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)


def make_daemon(settings: config.Settings, tracker=None):
    from agent.daemon.loop import Daemon
    from jobqueue.store import Store

    store = Store(settings)
    if tracker is None and settings.daemon.tracker == "github":
        from agent.state.tables import KeyValue
        from agent.trackers.github_tracker import GitHubTracker

        tracker = GitHubTracker(settings, KeyValue(store.engine), token=TOKEN)
    return Daemon(settings, store=store, tracker=tracker)


def env_for(settings: config.Settings, **extra) -> dict[str, str]:
    """A child process's environment carrying these settings (REFINERY_*), the token, the repo on PYTHONPATH."""
    keys = ("db_url", "runs_dir", "poll_interval", "write_interval_s", "github_backoff_s", "max_rate_limit_wait_s",
            "github_timeout_s", "gpu_devices", "cpu_workers", "heartbeat_s", "lease_s", "once_timeout_s", "tracker",
            "github_repo", "github_api_url", "stage_source")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFINERY_")}
    for k in keys:
        v = settings.get(k)
        env["REFINERY_" + k.upper()] = ",".join(v) if isinstance(v, tuple) else str(v)
    env["PYTHONPATH"] = str(config.ROOT)
    env["GITHUB_TOKEN"] = TOKEN
    env.update(extra)
    return env


IDEA_BODY = """An idea worth a smoke test.

```toml
r_max = 6
r_mean = 3
```
"""

BAD_BODY = """A typo.

```toml
n_refine = 3
lr = -1
```
"""


def git(repo, *args) -> str:
    """git as a user of the repository (not refinery), output stripped."""
    return subprocess.run(["git", "-c", "user.name=Ursula", "-c", "user.email=ursula@example.com", *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout.strip()


def docs_repo_with_staged_change(repo, roadmap: str, user_file: str, before: str, after: str):
    """A repository with docs/ROADMAP.md committed and the owner's own change to user_file staged
    (refinery must never sweep it into its commits)."""
    (repo / "docs").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "docs" / "ROADMAP.md").write_text(roadmap)
    (repo / user_file).write_text(before)
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "start")
    (repo / user_file).write_text(after)
    git(repo, "add", user_file)
    return repo
