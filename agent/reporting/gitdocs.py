"""Commit refinery's documents (findings, registry cards, the roadmap) without touching a
user's work.

The commit goes to the default branch (default_branch: REFINERY_CODER_BASE, else the remote's HEAD,
else main or master, else the branch checked out), whatever HEAD is. It is built with git plumbing
on a private index: start from that branch's tree, add only refinery's files, `commit-tree` with
refinery's fixed author, move the branch ref with a compare-and-swap (`update-ref NEW OLD`).
When that branch is the one checked out, the files are written into the working tree too and just
those paths refreshed in the user's index, so `git status` stays clean for them; files the user has
modified or staged at those paths make it refuse with a clear message instead of mixing changes.
When another branch (or a detached HEAD) is checked out, HEAD, the index and the working tree are
not touched at all. Pushing is off unless git_push is set.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

from config import RefineryError


class DocsCommitError(RefineryError):
    """refinery could not commit its documents.

    Fix: commit or stash your own changes to the named paths (refinery never mixes them with
    its own), finish any rebase or merge in progress, or check out a branch (not a detached HEAD).
    """


def _git(repo: Path, *args: str, env: dict | None = None, input: str | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, input=input,
                          env={**os.environ, **(env or {})}, timeout=60)
    if proc.returncode != 0:
        raise DocsCommitError(f"git {' '.join(args[:2])} failed: {proc.stderr.strip()[-300:]}")
    return proc.stdout.rstrip()


def is_repo(path: Path) -> bool:
    return subprocess.run(["git", "rev-parse", "--git-dir"], cwd=path, capture_output=True).returncode == 0


def _out(repo: Path, *args: str) -> str:
    p = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=60)
    return p.stdout.strip() if p.returncode == 0 else ""


def default_branch(repo: Path, configured: str = "", remote: str = "origin") -> str:
    """The branch documents go to: `configured`, else the remote's HEAD, else main or master, else HEAD's."""
    if configured:
        return configured
    head = _out(repo, "symbolic-ref", "--quiet", "--short", f"refs/remotes/{remote}/HEAD")
    if head:
        return head.split("/", 1)[1]
    for name in ("main", "master"):
        if _out(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{name}"):
            return name
    return _out(repo, "symbolic-ref", "--quiet", "--short", "HEAD") or "main"


def read_committed(repo: Path, branch: str, rel: str) -> bytes | None:
    """`rel` as committed on `branch` (None: not there)."""
    p = subprocess.run(["git", "cat-file", "blob", f"refs/heads/{branch}:{rel}"], cwd=repo, capture_output=True,
                       timeout=60)
    return p.stdout if p.returncode == 0 else None


def checked_out(repo: Path) -> str:
    """The branch HEAD names ('' when detached)."""
    return _out(repo, "symbolic-ref", "--quiet", "--short", "HEAD")


def commit_files(repo: Path, files: dict[str, bytes], message: str, author: str, push: bool = False,
                 branch: str | None = None) -> str:
    """Commit exactly `files` ({repo-relative path: content}) on `branch` (None: HEAD's); when that branch is the
    one checked out, write them into the working tree too.

    Returns the new commit's SHA. Raises DocsCommitError when a path holds the user's own changes.
    """
    repo = Path(repo)
    m = re.match(r"\s*(.*?)\s*<(.+)>\s*$", author)
    if not m:
        raise DocsCommitError(f"git_author {author!r} is not 'Name <email>'")
    name, email = m.groups()
    git_dir = Path(_git(repo, "rev-parse", "--absolute-git-dir"))
    for marker in ("rebase-merge", "rebase-apply", "MERGE_HEAD", "CHERRY_PICK_HEAD"):
        if (git_dir / marker).exists():
            raise DocsCommitError(f"a {marker.replace('_HEAD', '').lower()} is in progress in {repo}")
    if branch is None:
        branch = _git(repo, "symbolic-ref", "-q", "HEAD")
    elif not branch.startswith("refs/"):
        branch = f"refs/heads/{branch}"
    here = _out(repo, "symbolic-ref", "-q", "HEAD") == branch  # the branch checked out: the working tree follows
    paths = sorted(files)
    if here:
        dirty = _git(repo, "status", "--porcelain", "--", *paths)
        if dirty:
            raise DocsCommitError(f"uncommitted changes at {', '.join(line[3:] for line in dirty.splitlines())}")
    old = subprocess.run(["git", "rev-parse", "-q", "--verify", branch], cwd=repo, capture_output=True,
                         text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        if old:
            _git(repo, "read-tree", old, env=env)
        entries = []
        for rel in paths:
            if here:
                path = repo / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(files[rel])
            p = subprocess.run(["git", "hash-object", "-w", "--stdin", f"--path={rel}"], cwd=repo, input=files[rel],
                               capture_output=True, timeout=60)
            if p.returncode != 0:
                raise DocsCommitError(f"git hash-object failed: {p.stderr.decode(errors='replace').strip()[-300:]}")
            entries.append(f"100644 {p.stdout.decode().strip()}\t{rel}")
        _git(repo, "update-index", "--add", "--index-info", env=env, input="\n".join(entries) + "\n")
        tree = _git(repo, "write-tree", env=env)
    ident = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
             "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}
    parents = ["-p", old] if old else []
    sha = _git(repo, "commit-tree", tree, *parents, "-m", message, env=ident)
    _git(repo, "update-ref", "-m", "refinery: " + message.splitlines()[0], branch, sha, old or "0" * 40)
    if here:  # the user's index learns our paths only, so their status stays clean and their staging untouched
        _git(repo, "update-index", "--add", "--index-info", input="\n".join(entries) + "\n")
    if push:
        _git(repo, "push", "origin", branch)
    return sha
