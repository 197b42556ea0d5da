"""A code idea's pull request on GitHub: who approved which commit there, and marking it ready for review.

    pull_approvals(tracker, pr)   # [(login, sha, how)]: a writer's review approval (its commit_id) or the merge
                                  # (the head SHA merged), trusted people only; [] for a tracker without pull requests
    mark_ready(tracker, pr)       # a draft pull request → ready for review (GraphQL: REST cannot undraft)

Every call goes through the GitHub tracker's one door (GitHubTracker._call: its lock, rate limits, back-off), so
an outage here is the same TrackerUnavailable as anywhere else. The same trust rule as intake and 👍 approvals
(interface.TRUSTED_PERMISSIONS or the allowlist; a login ending in [bot] only through the allowlist): a reader's
review approval does nothing. A review approves the commit it was left on (`commit_id`), never a later one.
"""

from __future__ import annotations

from agent.trackers.interface import TRUSTED_PERMISSIONS


def has_pulls(tracker) -> bool:
    return getattr(tracker, "name", "") == "github"


def _trusted(tracker, login: str) -> bool:
    if not login:
        return False
    if login in tracker.settings.daemon.allowlist:
        return True
    return not login.endswith("[bot]") and tracker.permission(login) in TRUSTED_PERMISSIONS


def pull_approvals(tracker, pr: int) -> list[tuple[str, str, str]]:
    """(login, commit SHA, "review" | "merge") for each approval of pull request `pr` by a trusted person."""
    if not has_pulls(tracker):
        return []
    base = f"{tracker.base}/pulls/{pr}"
    reviews = tracker._call(f"reviews of #{pr}", lambda: tracker._get_all(f"{base}/reviews"))
    out = [((r.get("user") or {}).get("login", ""), r.get("commit_id") or "", "review") for r in reviews
           if r.get("state") == "APPROVED"]
    _, _, pull = tracker._call(f"get pull request #{pr}", lambda: tracker._get_json(base))
    if pull.get("merged"):
        out.append(((pull.get("merged_by") or {}).get("login", ""), (pull.get("head") or {}).get("sha") or "",
                    "merge"))
    return [a for a in out if a[1] and _trusted(tracker, a[0])]


def mark_ready(tracker, pr: int) -> bool:
    """Mark pull request `pr` ready for review (PyGithub's mark_ready_for_review: the GraphQL mutation
    markPullRequestReadyForReview). True when it is ready now (already, or by this call)."""
    if not has_pulls(tracker):
        return False

    def ready() -> bool:
        pull = tracker.repo.get_pull(pr)
        if pull.draft:
            return not pull.mark_ready_for_review()["pullRequest"]["isDraft"]
        return True
    return tracker._call(f"mark #{pr} ready for review", ready, write=True)
