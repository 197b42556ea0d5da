"""Which commit an idea's stages run from, recorded at enqueue (every stage runs from a pinned commit).

    src = pin(settings)                  # {"repo", "ref", "sha"}: the default branch's head now
    src = pin_commit(settings, sha, ref) # an approved commit of a code idea's branch
    dep_changes(repo, base, sha)         # dependency files a branch changed (such a branch is refused)
    line(payload, result)                # what a comment says about it

The repository is the coder's (REFINERY_CODER_REPO, '' = the daemon's checkout) and the default branch is
the coder's base (REFINERY_CODER_BASE, else the remote's HEAD, else the branch the checkout is on when the
idea arrives). The SHA goes into the job's payload as {"source": {...}}; every later stage copies the payload,
so moving the daemon's checkout to another branch mid-run changes nothing. The runner starts the child in the
read-only tree of that SHA (jobqueue/srctree.py); the stage's preamble records the SHA it ran (result.json's
run.git_sha), and the result comment shows both.

Fallbacks, each said once in the log and on the issue: REFINERY_STAGE_SOURCE=checkout (development, the test
suite) runs the checkout as it is; a checkout that is not a git repository (or has no commit) runs as it is,
unpinned. A dirty checkout is pinned all the same: its uncommitted changes do not run (the log says so).
"""

from __future__ import annotations

import logging
from pathlib import Path

import config
from agent.coder import worktree as wtree

log = logging.getLogger("refinery.source")
DEP_FILES = ("pyproject.toml", "constraints.txt", "package.json", "package-lock.json")
_said: set[str] = set()


def _once(level: int, msg: str, *args) -> None:
    key = msg % args
    if key not in _said:
        _said.add(key)
        log.log(level, msg, *args)


def pin(settings: config.Settings) -> dict:
    """The default branch's head of the coder's repository: {"repo", "ref", "sha"}; {"sha": None, "why"} when
    stages run from the checkout as it is."""
    repo = wtree.repo_of(settings)
    if settings.coder.stage_source == "checkout":
        return {"sha": None, "why": "REFINERY_STAGE_SOURCE=checkout"}
    try:
        branch = wtree.base_branch(repo, settings)
        sha = wtree.base_commit(repo, branch)
    except wtree.GitFailed as e:
        _once(logging.WARNING, "stages run from the checkout %s as it is, not pinned: it is not a git repository "
              "with a commit on its default branch (%s)", repo, str(e).splitlines()[0][:200])
        return {"sha": None, "why": f"{repo} is not a git repository with a default branch"}
    if wtree.git(repo, "status", "--porcelain", "--untracked-files=no", check=False):
        _once(logging.WARNING, "the checkout %s has uncommitted changes: stages run the committed %s of %s, not "
              "them (REFINERY_STAGE_SOURCE=checkout runs the checkout as it is)", repo, sha[:12], branch)
    return {"repo": str(repo), "ref": branch, "sha": sha}


def pin_commit(settings: config.Settings, sha: str, ref: str) -> dict:
    return {"repo": str(wtree.repo_of(settings)), "ref": ref, "sha": sha}


def dep_changes(repo: Path | str, base: str, sha: str) -> list[str]:
    """The dependency files (DEP_FILES) that differ between `base` and `sha`."""
    out = wtree.git(Path(repo), "diff", "--name-only", base, sha, "--", *DEP_FILES)
    return [f for f in out.splitlines() if f]


def merge_base(repo: Path | str, a: str, b: str) -> str:
    return wtree.git(Path(repo), "merge-base", a, b)


def line(payload: dict, result: dict | None = None) -> str:
    """One line for a comment: the commit the stage ran from (and the one it recorded, when they differ)."""
    src = payload.get("source") or {}
    ran = ((result or {}).get("run") or {}).get("git_sha")
    if not src.get("sha"):
        why = src.get("why") or "no commit was recorded at enqueue"
        return f"Source: the daemon's checkout as it is (not pinned: {why})" + (f"; it was at `{ran[:12]}`." if ran
                                                                                else ".")
    text = f"Source: commit `{src['sha'][:12]}` ({src.get('ref') or 'pinned'}), run from a read-only worktree"
    if ran and ran != src["sha"]:
        text += f"; ⚠️ the run recorded `{ran[:12]}`"
    if payload.get("stage") in ("ablation", "extend", "replication"):
        text += ". " + control_line(payload, result)
    return text + "."


def control_line(payload: dict, result: dict | None = None) -> str:
    """Which control arm the ablation used, and its commit (what the run recorded, when it did)."""
    control = payload.get("control_source") or {}
    fig = (((result or {}).get("figures") or {}).get("control")) or {}
    if not control.get("sha"):
        sha = fig.get("sha") or (payload.get("source") or {}).get("sha")
        return "Control arm: the reasoner at the same commit" + (f" `{sha[:12]}`" if sha else "")
    text = f"Control arm: the same spec from the merge-base `{control['sha'][:12]}` (`[code] control = \"base\"`)"
    ran = fig.get("ran")
    if ran is not None and ran != [control["sha"]]:
        text += f"; ⚠️ its runs recorded {', '.join(f'`{r[:12]}`' for r in ran) or 'no commit'}"
    if control.get("dropped"):
        text += f"; left out there: {', '.join(control['dropped'])}"
    return text
