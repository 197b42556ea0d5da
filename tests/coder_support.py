"""Shared pieces of the coder tests: the scripted Messages API, a git checkout with a bare remote, settings,
and an in-process Coder stepped like the daemon steps it.

The real, pinned Claude Code CLI runs (node_modules/.bin/claude, or REFINERY_CLAUDE_BIN); tests skip when it
is not installed (`make setup` installs it).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

import config
from tests.agent_support import git, settings_for
from tests.anthropic_server import AnthropicServer, Step, bash, text, tool, write

KEY = "sk-ant-api03-" + "PlantedKeyForTests" * 3  # key-shaped, so the redaction pattern must catch it
CLAUDE = os.environ.get("REFINERY_CLAUDE_BIN") or str(config.ROOT / "node_modules" / ".bin" / "claude")
needs_cli = pytest.mark.skipif(not Path(CLAUDE).exists(), reason=f"the Claude Code CLI is not at {CLAUDE} "
                               "(make setup, or REFINERY_CLAUDE_BIN)")
CHECK = "#!/bin/sh\n# the project's check in these tests: hello.txt must say hi\ngrep -q hi hello.txt 2>/dev/null || " \
        "{ echo 'check: hello.txt does not say hi'; exit 1; }\necho 'check: all good'\n"


@pytest.fixture
def anth():
    srv = AnthropicServer(key=KEY).start()
    yield srv
    srv.stop()


def make_checkout(tmp: Path) -> tuple[Path, Path]:
    """(a checkout whose origin is a local bare repository, that bare repository). main holds check.sh, the
    gate (a protected path) and config.py with a GateConfig class."""
    remote, repo = tmp / "remote.git", tmp / "checkout"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "check.sh").write_text(CHECK)
    (repo / "experiments").mkdir()
    (repo / "experiments" / "gate.py").write_text("THRESHOLD = 10\n")
    (repo / "config.py").write_text("class GateConfig:\n    alpha = 0.01\n\n\nclass Other:\n    x = 1\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "start")
    git(repo, "remote", "add", "origin", str(remote))
    git(repo, "push", "-q", "origin", "main")
    git(repo, "remote", "set-head", "origin", "main")
    return repo, remote


def coder_settings(db_url: str, tmp: Path, repo: Path, srv=None, **over) -> config.Settings:
    base = {"coder": "claude", "coder_repo": str(repo), "claude_bin": CLAUDE, "coder_check_cmd": "sh check.sh",
            "coder_check_s": 30.0, "progress_edit_s": 1.0, "retry_backoff_s": 0.0, "coder_grace_s": 3.0,
            "coder_backoff_s": 0.0, "coder_wall_s": 120.0, "coder_silence_s": 60.0, "heartbeat_s": 0.5}
    base.update(over)
    return settings_for(db_url, tmp, srv, **base)


def happy_script(repo_file: str = "hello.txt") -> list[Step]:
    """Write the file (relative: inside the worktree), commit, say what was done."""
    return [Step([text("I will write the file."), write(repo_file, "hi\n")]),
            Step([bash(f"git add {repo_file} && git commit -q -m 'hello: say hi'")]),
            Step([text("Done: hello.txt says hi; `sh check.sh` passes.")])]


def read(path: str) -> dict:
    return tool("Read", file_path=path)


def absolute(script: list[Step], wt: Path) -> list[Step]:
    """The script with Write/Edit paths made absolute inside the worktree `wt` (the CLI wants absolute paths)."""
    for step in script:
        for b in step.blocks:
            path = b.get("input", {}).get("file_path") if b.get("type") == "tool_use" else None
            if path and not path.startswith("/"):
                b["input"]["file_path"] = str(wt / path)
    return script


def worktree_of(settings: config.Settings, issue: int) -> Path:
    from agent.coder.driver import agent_root

    return (agent_root(settings) / str(issue) / "wt").resolve()


def step_until(coder, cond, timeout: float = 60.0, what: str = "condition"):
    """Step the coder (as the daemon's loop does) until cond() holds."""
    end = time.time() + timeout
    while time.time() < end:
        coder.step(time.time())
        out = cond()
        if out:
            return out
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
