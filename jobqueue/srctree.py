"""Pinned sources: a stage's child runs from a read-only worktree of one commit, never from whatever the
daemon's checkout has checked out.

    tree = ensure(repo, sha, settings)     # runs/src/<sha>/: `git worktree add --detach`, made once, reused

The payload of a pinned job carries {"source": {"repo", "sha", ...}}; the runner starts the child with the tree
as its working directory and its only PYTHONPATH entry, so `python -m experiments.stage` imports that commit's
code. The tree is made read-only (files and directories lose their write bits: the child cannot change the
code it is measuring; Python then simply keeps no bytecode cache there). It borrows the daemon's tokenizer
cache and corpus (runs/cache, runs/corpus of the daemon's checkout, as symlinks under the tree's ignored
runs/), so a commit's relative paths resolve as they do in the checkout. Repository hooks never run
(core.hooksPath=/dev/null). `runs/src/<sha>.ok` marks a finished tree; a half-made one (a crash while
creating it) is removed and made again. `remove(settings, sha)` takes one away (`git worktree remove`);
`prune(settings, keep)` those unused for src_keep_days that no live job names (the marker's time is the last use).

Imports config only (the queue's rule).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import filelock

import config

SRC_DIR = "src"
BORROWED = ("cache", "corpus")  # runs/ entries of the daemon's checkout a tree links to (made if missing: cache)
GIT_TIMEOUT_S = 300.0
SHA_RE = re.compile(r"[0-9a-f]{40}")


class SourceError(config.RefineryError):
    """A stage's pinned source tree (runs/src/<sha>/) could not be made.

    Fix: read git's message; the commit must exist in the repository the job names (REFINERY_CODER_REPO, or
    the daemon's checkout), and runs/src/ must be writable. `git worktree prune` in that repository clears
    registrations whose directories were deleted by hand."""


def _git(repo: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TZ")}
    env["GIT_TERMINAL_PROMPT"] = "0"
    try:
        p = subprocess.run(["git", "-c", "core.hooksPath=/dev/null", *args], cwd=repo, capture_output=True,
                           text=True, timeout=GIT_TIMEOUT_S, stdin=subprocess.DEVNULL, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SourceError(f"git {args[0]} in {repo}: {e}") from None
    if p.returncode != 0:
        raise SourceError(f"git {' '.join(args[:3])} in {repo} failed: {(p.stderr or p.stdout).strip()[-500:]}")
    return p.stdout.strip()


def src_root(settings: config.Settings) -> Path:
    return settings.runs_path / SRC_DIR


def tree_path(settings: config.Settings, sha: str) -> Path:
    return src_root(settings) / sha


def _writable(path: Path) -> None:
    for dirpath, _dirs, filenames in os.walk(path):
        os.chmod(dirpath, os.stat(dirpath).st_mode | stat.S_IWUSR)
        for f in filenames:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode | stat.S_IWUSR)


def _read_only(path: Path) -> None:
    strip = ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    for dirpath, _dirs, filenames in os.walk(path, topdown=False):
        for f in filenames:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode & strip)
        os.chmod(dirpath, os.stat(dirpath).st_mode & strip)


def _borrow(tree: Path) -> None:
    """tree/runs/{cache,corpus} → the daemon's checkout's (its relative paths resolve the same way)."""
    runs = tree / "runs"
    runs.mkdir(exist_ok=True)
    for name in BORROWED:
        target = config.ROOT / "runs" / name
        if name == "cache":
            target.mkdir(parents=True, exist_ok=True)
        if target.exists() and not (runs / name).exists():
            (runs / name).symlink_to(target.resolve())


def ensure(repo: Path | str, sha: str, settings: config.Settings) -> Path:
    """The read-only tree of `sha` (a full 40-hex commit id) from `repo`, made if missing."""
    if not SHA_RE.fullmatch(sha or ""):
        raise SourceError(f"{sha!r} is not a full commit SHA")
    repo, path = Path(repo), tree_path(settings, sha)
    ok = path.parent / f"{sha}.ok"
    if ok.exists() and (path / ".git").exists():
        _used(ok)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(path.parent / ".lock"), timeout=GIT_TIMEOUT_S):
        if ok.exists() and (path / ".git").exists():
            return path
        if path.exists() or path.is_symlink():  # half-made by a crash: start it again
            _writable(path)
            shutil.rmtree(path)
        _git(repo, "worktree", "prune")
        _git(repo, "worktree", "add", "--detach", "--quiet", str(path), sha)
        got = _git(path, "rev-parse", "HEAD")
        if got != sha:
            raise SourceError(f"the tree {path} is at {got}, not {sha}")
        _borrow(path)
        _read_only(path)
        ok.write_text(f"{repo}\n")
    return path


def _used(ok: Path) -> None:
    try:
        os.utime(ok)  # the marker's time is the tree's last use (prune)
    except OSError:
        pass


def prune(settings: config.Settings, keep: Callable[[], set[str]], now: float | None = None) -> list[str]:
    """Remove the trees no one needs: unused for src_keep_days (a half-made one: made that long ago) and not in
    keep() (the SHAs live jobs name; asked only when some tree is that old). Returns the SHAs removed. A removed
    tree is made again when a job needs it."""
    days = settings.coder.src_keep_days
    root = src_root(settings)
    if not days or not root.is_dir():
        return []
    now = time.time() if now is None else now
    out: list[str] = []
    kept: set[str] | None = None
    for path in sorted(root.iterdir()):
        sha = path.name.removesuffix(".ok")
        if not SHA_RE.fullmatch(sha) or sha in out:
            continue
        ok = root / f"{sha}.ok"
        try:
            last = (ok if ok.exists() else path).stat().st_mtime
        except OSError:
            continue
        if now - last < days * 86400:
            continue
        kept = keep() if kept is None else kept
        if sha in kept:
            continue
        with filelock.FileLock(str(root / ".lock"), timeout=GIT_TIMEOUT_S):
            remove(settings, sha)
        out.append(sha)
    return out


def remove(settings: config.Settings, sha: str) -> bool:
    """Take the tree of `sha` away (its registration in the repository too). False when there was none."""
    path = tree_path(settings, sha)
    ok = path.parent / f"{sha}.ok"
    if not path.exists():
        ok.unlink(missing_ok=True)
        return False
    _writable(path)
    repo = Path(ok.read_text().strip()) if ok.exists() else None
    ok.unlink(missing_ok=True)
    shutil.rmtree(path)
    if repo is not None and repo.exists():
        try:
            _git(repo, "worktree", "prune")
        except SourceError:
            pass
    return True


def head_of(tree: Path) -> str | None:
    try:
        return _git(tree, "rev-parse", "HEAD")
    except SourceError:
        return None
