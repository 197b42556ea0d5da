"""git for the coder: the item's worktree and branch, what the session changed, and the push.

    base = base_commit(repo, settings)          # the default branch's current commit (never switches the checkout)
    wt = ensure(repo, path, branch, base)        # `git worktree add -b BRANCH PATH BASE`; a retry reuses it
    new_commits(wt, base) / dirty(wt) / changed_files(wt, base) / diffstat(wt, base)
    push(repo, remote, branch, token)            # the token reaches git through a credential helper reading
                                                 # the environment, never a URL or an argument that is logged

The daemon's checkout is only ever read (rev-parse) and given worktrees; its HEAD and index are untouched.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import config
from agent.redact import redact

GIT_TIMEOUT_S = 120.0
# reads the token from the environment of the one git process that pushes
HELPER = "!f() { test \"$1\" = get && echo username=x-access-token && echo \"password=$REFINERY_PUSH_TOKEN\"; }; f"


class GitFailed(config.RefineryError):
    """A git command the coder needed failed.

    Fix: read git's message; check that the checkout (REFINERY_CODER_REPO) is a git repository with the
    branch it starts from, and that the remote (REFINERY_GIT_REMOTE) exists and accepts the push."""


def git(cwd: Path | str, *args: str, env: dict | None = None, check: bool = True,
        timeout: float = GIT_TIMEOUT_S) -> str:
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}
    base.update(GIT_TERMINAL_PROMPT="0", HOME=os.environ.get("HOME", "/nonexistent"))
    try:
        p = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL, env={**base, **(env or {})})
    except subprocess.TimeoutExpired:
        raise GitFailed(f"git {args[0]} in {cwd} took over {timeout:g} s") from None
    if check and p.returncode != 0:
        raise GitFailed(redact(f"git {' '.join(args[:3])} in {cwd} failed: {(p.stderr or p.stdout).strip()[-600:]}"))
    return p.stdout.strip()


def repo_of(settings: config.Settings) -> Path:
    r = settings.coder.coder_repo
    return Path(r) if r else config.ROOT


def base_branch(repo: Path, settings: config.Settings) -> str:
    c = settings.coder
    if c.coder_base:
        return c.coder_base
    head = git(repo, "symbolic-ref", "--quiet", "--short", f"refs/remotes/{c.git_remote}/HEAD", check=False)
    if head:
        return head.split("/", 1)[1]
    cur = git(repo, "symbolic-ref", "--quiet", "--short", "HEAD", check=False)
    return cur or "main"


def base_commit(repo: Path, branch: str) -> str:
    return git(repo, "rev-parse", "--verify", f"refs/heads/{branch}^{{commit}}")


def ensure(repo: Path, path: Path, branch: str, base: str) -> tuple[Path, str]:
    """The item's worktree at `path` on `branch`, made from `base` if new. Returns (path, the commit it started
    from: the branch's fork point from base, so a retry counts all of the item's commits)."""
    path = path.resolve()
    if (path / ".git").exists():
        cur = git(path, "symbolic-ref", "--quiet", "--short", "HEAD", check=False)
        if cur != branch:
            raise GitFailed(f"the worktree {path} is on {cur or 'a detached HEAD'}, not {branch}: remove it with "
                            f"`git worktree remove {path}` to start the item over")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        git(repo, "worktree", "prune")
        exists = git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False)
        if exists:
            git(repo, "worktree", "add", str(path), branch)
        else:
            git(repo, "worktree", "add", "-b", branch, str(path), base)
    start = git(path, "merge-base", "HEAD", base, check=False) or base
    return path, start


def new_commits(wt: Path, start: str) -> list[str]:
    out = git(wt, "log", "--format=%H %s", f"{start}..HEAD")
    return [line for line in out.splitlines() if line]


def dirty(wt: Path) -> list[str]:
    """Uncommitted changes (tracked or untracked, not ignored), as `git status --porcelain` lines."""
    return [line for line in git(wt, "status", "--porcelain", "--untracked-files=all").splitlines() if line]


def changed_files(wt: Path, start: str) -> list[str]:
    return [f for f in git(wt, "diff", "--name-only", f"{start}..HEAD").splitlines() if f]


def changed_lines(wt: Path, start: str, path: str) -> list[int]:
    """Line numbers of `path` at `start` that the branch's diff touches (removed or changed, or the line an
    insertion follows)."""
    out = git(wt, "diff", "--unified=0", f"{start}..HEAD", "--", path)
    lines: list[int] = []
    for row in out.splitlines():
        if row.startswith("@@"):
            old = row.split()[1][1:]
            first, _, count = old.partition(",")
            n = int(count) if count else 1
            lines.extend(range(int(first), int(first) + max(n, 1)))
    return lines


def file_at(wt: Path, rev: str, path: str) -> str:
    return git(wt, "show", f"{rev}:{path}", check=False)


def diffstat(wt: Path, start: str) -> str:
    return git(wt, "diff", "--stat", f"{start}..HEAD")


def head(wt: Path) -> str:
    return git(wt, "rev-parse", "HEAD")


def push(repo: Path, remote: str, branch: str, token: str | None) -> str:
    """Push `branch` to `remote`: from the checkout (the worktree shares its refs). The token, if any, is in
    the environment of this one git process and given to git by a credential helper."""
    env = {"REFINERY_PUSH_TOKEN": token} if token else {}
    args = ["-c", "credential.helper=", "-c", f"credential.helper={HELPER}", "push", "--porcelain", remote,
            f"refs/heads/{branch}:refs/heads/{branch}"]
    return git(repo, *args, env=env, timeout=300.0)
