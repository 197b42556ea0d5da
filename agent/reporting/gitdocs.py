"""Commit refinery's documents (findings, registry cards, the roadmap) without touching a
user's work.

The commit is built with git plumbing on a private index: start from HEAD's tree, add only
refinery's files, `commit-tree` with refinery's fixed author, move the branch ref with a
compare-and-swap (`update-ref NEW OLD`), then refresh just those paths in the user's index so
`git status` stays clean for them. Files the user has modified or staged at those paths make it
refuse with a clear message instead of mixing changes. Pushing is off unless git_push is set.
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


def commit_files(repo: Path, files: dict[str, bytes], message: str, author: str, push: bool = False) -> str:
    """Write `files` ({repo-relative path: content}) into the working tree and commit exactly them.

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
    branch = _git(repo, "symbolic-ref", "-q", "HEAD")
    paths = sorted(files)
    dirty = _git(repo, "status", "--porcelain", "--", *paths)
    if dirty:
        raise DocsCommitError(f"uncommitted changes at {', '.join(line[3:] for line in dirty.splitlines())}")
    old = subprocess.run(["git", "rev-parse", "-q", "--verify", "HEAD"], cwd=repo, capture_output=True,
                         text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        if old:
            _git(repo, "read-tree", old, env=env)
        entries = []
        for rel in paths:
            path = repo / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(files[rel])
            blob = _git(repo, "hash-object", "-w", "--", rel)
            entries.append(f"100644 {blob}\t{rel}")
        _git(repo, "update-index", "--add", "--index-info", env=env, input="\n".join(entries) + "\n")
        tree = _git(repo, "write-tree", env=env)
    ident = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
             "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}
    parents = ["-p", old] if old else []
    sha = _git(repo, "commit-tree", tree, *parents, "-m", message, env=ident)
    _git(repo, "update-ref", "-m", "refinery: " + message.splitlines()[0], branch, sha, old or "0" * 40)
    # the user's index learns our paths only, so their status stays clean and their staging untouched
    _git(repo, "update-index", "--add", "--index-info", input="\n".join(entries) + "\n")
    if push:
        _git(repo, "push", "origin", branch)
    return sha
