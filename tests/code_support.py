"""Shared pieces of the pinned-source and code-idea tests: a git repository holding a copy of this project (the
daemon's "checkout" in these tests: stages run from worktrees of its commits), and small git helpers.

The copy is taken from the working tree as it is (uncommitted changes included, so the code under test is what
the pinned trees run), committed once on `main`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import config
from tests.agent_support import git


def project_repo(tmp: Path, bare_remote: bool = False) -> tuple[Path, Path | None]:
    """(a git repository on `main` with this project's tracked files, its bare `origin` or None)."""
    repo = tmp / "project"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=config.ROOT, check=True, capture_output=True
                           ).stdout.decode().split("\0")
    for f in filter(None, files):
        src = config.ROOT / f
        if src.is_file() and not src.is_symlink():
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / f)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "the project")
    remote = None
    if bare_remote:
        remote = tmp / "remote.git"
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
        git(repo, "remote", "add", "origin", str(remote))
        git(repo, "push", "-q", "origin", "main")
        git(repo, "remote", "set-head", "origin", "main")
    return repo, remote


def commit_change(repo: Path, path: str, old: str, new: str, message: str) -> str:
    """Replace `old` by `new` in `path` (must occur), commit; returns the new HEAD."""
    p = repo / path
    text = p.read_text() if p.exists() else ""
    assert old in text, (path, old)
    p.write_text(text.replace(old, new, 1) if old else new + text)
    git(repo, "add", path)
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


# the idea the code-idea tests implement: a setting and the model code behind it
SETTING_OLD = '''    rope_base: float = F(10000.0, "RoPE frequency base", 1.0, 1e7)\n'''
SETTING_NEW = SETTING_OLD + '''    embed_scale: float = F(1.0, "embeddings times this (an idea)", 0.01, 100.0)\n'''
MODEL_OLD = "        x = self.wte(idx)\n"
MODEL_NEW = "        x = self.wte(idx) * self.settings.model.embed_scale\n"
