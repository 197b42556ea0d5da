"""Code ideas (issue 19), the rest of the trust boundary and the outcome, through the real daemon, worker, runner,
outbox and GitHub tracker against the local GitHub-speaking server (reviews, merges and the GraphQL mutation
markPullRequestReadyForReview included); git repositories and worktrees are real. Stages are the scripted stand-in
(tests/pipeline_support.py), run by the runner from the pinned trees.

    review, merge   a reader's approving review does nothing, nor a writer's on another commit; a writer's on the
                    offered commit approves exactly it; merging approves the merged head; an idea that passes every
                    stage gets its pull request marked ready for review (GraphQL) with the finding linked
    killed, base    `[code] control = "base"`: the control arm's tree is the merge-base's, said on the issue and the
                    pull request; a killed idea's pull request gets the finding and stays an open draft
    auto-approve    REFINERY_CODE_AUTO_APPROVE=cpu: smoke and ablation run unapproved (the issue says so), the
                    replication waits for a writer's 👍

Run: .venv/bin/python -m pytest tests/test_code_approvals.py -q
"""

from __future__ import annotations

import json
import os
import time

import pytest

import experiments.stage
from jobqueue import srctree
from jobqueue.models import Lane
from jobqueue.proc import Owner
from tests.agent_support import gh, git  # noqa: F401
from tests.code_support import MODEL_NEW, MODEL_OLD, SETTING_NEW, SETTING_OLD, commit_change, project_repo
from tests.test_pipeline import by_key, daemon_for, docs_repo, drive  # noqa: F401

SPEC = """Scale the token embeddings by a setting.

```toml
embed_scale = 0.5
r_max = 4
r_mean = 2
{extra}```
"""


@pytest.fixture
def fake_stage(monkeypatch):
    monkeypatch.setattr(experiments.stage, "STAGE_MODULE", "tests.pipeline_support")


def deliver(gh, d, repo, n: int, branch: str) -> tuple[str, int]:  # noqa: F811
    """The coder's part as an outside agent would do it: the idea on `branch`, a draft pull request for it."""
    (job,) = d.store.claim_many(Lane.AGENT, Owner.current("outside-agent"), 1)
    git(repo, "checkout", "-q", "-b", branch)
    commit_change(repo, "config.py", SETTING_OLD, SETTING_NEW, "config: embed_scale")
    head = commit_change(repo, "refiner_model/model.py", MODEL_OLD, MODEL_NEW, "model: scale the embeddings")
    git(repo, "checkout", "-q", "main")
    pr = gh.create_issue(f"Code idea #{n}", "draft", author=gh.bot_login, pr=True)
    gh.pulls[pr] = {"head": branch, "base": "main", "draft": True, "sha": head}
    d.store.finish(job.id, job.attempt, {"verdict": "DONE", "branch": branch, "head": head,
                                         "pr_url": f"https://github.invalid/{gh.repo}/pull/{pr}"})
    return head, pr


def stages(d, n: int) -> list:
    return [j for j in d.store.jobs_for_issue(n) if j.kind != "agent"]


def idle(d, seconds: float) -> None:
    end = time.time() + seconds
    while time.time() < end:
        d.tick()
        time.sleep(0.05)


def test_review_and_merge_approve_exact_commits_and_a_pass_readies_the_pull_request(  # noqa: F811
        gh, tmp_path, sqlite_url, docs_repo, fake_stage):  # noqa: F811
    gh.add_collaborator("rita", "read")
    gh.add_collaborator("bob", "write")
    repo, _ = project_repo(tmp_path)
    d = daemon_for(gh, tmp_path, sqlite_url, docs_repo, stage_source="pinned", coder_repo=str(repo))
    n = gh.create_issue("embed scale", SPEC.format(extra=""), labels=["ideas", "cpu", "code"])
    drive(d, lambda: d.store.jobs_for_issue(n))
    first, pr = deliver(gh, d, repo, n, f"agent/i{n}-embed-scale")
    drive(d, lambda: f"i{n}/code-{first[:12]}/review" in by_key(gh, n))
    gh.add_review(pr, "rita", first)  # a reader's approval
    gh.add_review(pr, "bob", git(repo, "rev-parse", "main"))  # a writer's, on another commit
    gh.add_review(pr, "bob", first, state="CHANGES_REQUESTED")
    idle(d, 2.5)  # two approval looks at least (poll_interval 1 s)
    assert stages(d, n) == [] and not d.kv.get(f"code:{n}")["approved"]
    gh.add_review(pr, "bob", first)  # a writer's approving review on the offered commit
    drive(d, lambda: len(stages(d, n)) == 4 and d.kv.get(f"code:{n}").get("ready") == "done"
          and d.outbox_store.counts()["pending"] == 0)
    assert {j.payload["source"]["sha"] for j in stages(d, n)} == {first}
    assert stages(d, n)[0].payload["code"]["approved_how"] == "review"
    assert "Approved by @bob (an approving review of the pull request" in by_key(gh, n)[
        f"i{n}/code-{first[:12]}/approved"]
    # passed every stage: ready for review through the GraphQL mutation, the finding linked on the pull request
    assert gh.pulls[pr]["draft"] is False and gh.writes("POST", "markPullRequestReadyForReview")
    passed = by_key(gh, pr)[f"i{n}/code-{first[:12]}/passed/pr{pr}"]
    assert "passed every stage" in passed and "Finding: " in passed and "findings/" in passed
    assert "marked ready for review" in passed
    # a later commit, merged by a writer: merging approves exactly the merged head
    git(repo, "checkout", "-q", f"agent/i{n}-embed-scale")
    second = commit_change(repo, "README.md", "", "A later line.\n", "later")
    git(repo, "checkout", "-q", "main")
    drive(d, lambda: f"i{n}/code-{second[:12]}/review" in by_key(gh, n))
    gh.set_pull_head(pr, second)
    gh.merge_pull(pr, "bob")
    drive(d, lambda: any(j.payload["source"]["sha"] == second for j in stages(d, n)))
    later = next(j for j in stages(d, n) if j.payload["source"]["sha"] == second)
    assert later.payload["code"]["approved_how"] == "merge" and later.payload["code"]["approved_by"] == "bob"


def test_a_killed_code_idea_with_the_base_control_leaves_its_pull_request_open(  # noqa: F811
        gh, tmp_path, sqlite_url, docs_repo, fake_stage):  # noqa: F811
    repo, _ = project_repo(tmp_path)
    base = git(repo, "rev-parse", "main")
    d = daemon_for(gh, tmp_path, sqlite_url, docs_repo, stage_source="pinned", coder_repo=str(repo))
    n = gh.create_issue("base control ablation=FAIL", SPEC.format(extra='[code]\ncontrol = "base"\n'),
                        labels=["ideas", "cpu", "code"])
    drive(d, lambda: d.store.jobs_for_issue(n))
    sha, pr = deliver(gh, d, repo, n, f"agent/i{n}-base-control")
    review = f"i{n}/code-{sha[:12]}/review"
    drive(d, lambda: review in by_key(gh, n))
    gh.add_reaction(next(c["id"] for c in gh.comments_of(n) if review in c["body"]), "alice", "+1")
    drive(d, lambda: len(stages(d, n)) == 2 and all(d.kv.get(f"advanced:{j.id}") for j in stages(d, n))
          and d.outbox_store.counts()["pending"] == 0)
    smoke, abl = stages(d, n)
    ctl = abl.payload["control_source"]
    assert ctl["sha"] == base and ctl["what"] == "base" and ctl["dropped"] == ["embed_scale"]
    assert ctl["spec"] == {"r_max": 4, "r_mean": 2}  # the spec as the merge-base knows it
    assert json.loads(open(abl.payload["spec_file"]).read())["control"]["tree"] == ctl["tree"]
    assert git(ctl["tree"], "rev-parse", "HEAD") == base and not os.stat(ctl["tree"]).st_mode & 0o222
    log = open(os.path.join(abl.run_dir, "log.txt")).read()
    assert f"the control arm from commit {base} (base)" in log
    approved = by_key(gh, n)[f"i{n}/code-{sha[:12]}/approved"]
    assert f"merge-base `{base[:12]}`" in approved and "left out of that arm: embed_scale" in approved
    key = f"i{n}/j{abl.id}/ablation/result"
    for where, k in ((n, key), (pr, f"{key}/pr{pr}")):
        assert f"Control arm: the same spec from the merge-base `{base[:12]}`" in by_key(gh, where)[k]
    assert "Control arm: the reasoner" not in by_key(gh, n)[f"i{n}/j{smoke.id}/smoke/result"]
    killed = by_key(gh, pr)[f"i{n}/code-{sha[:12]}/killed/pr{pr}"]
    assert "was killed** at the ablation stage (FAIL)" in killed and "Finding: " in killed and "left open" in killed
    assert gh.pulls[pr]["draft"] is True and gh.issues[pr]["state"] == "open"
    assert not gh.writes("POST", "markPullRequestReadyForReview")
    roadmap = (docs_repo / "docs" / "ROADMAP.md").read_text()
    assert f"branch `agent/i{n}-base-control` at `{sha[:12]}` kept (PR #{pr})" in roadmap
    # the issue closed: its branch is watched no more (a later commit is not offered)
    gh.close_issue(n)
    drive(d, lambda: d.kv.get(f"code:{n}").get("closed"))
    git(repo, "checkout", "-q", f"agent/i{n}-base-control")
    later = commit_change(repo, "README.md", "", "A later line.\n", "later")
    git(repo, "checkout", "-q", "main")
    idle(d, 2.5)
    assert f"i{n}/code-{later[:12]}/review" not in by_key(gh, n)


def test_unused_source_trees_are_pruned_and_live_ones_kept(gh, tmp_path, sqlite_url, docs_repo):  # noqa: F811
    repo, _ = project_repo(tmp_path)
    a = git(repo, "rev-parse", "HEAD")
    b = commit_change(repo, "README.md", "", "A line.\n", "b")
    c = commit_change(repo, "README.md", "", "Another.\n", "c")
    d = daemon_for(gh, tmp_path, sqlite_url, docs_repo, stage_source="pinned", coder_repo=str(repo),
                   src_keep_days=1.0)
    trees = {sha: srctree.ensure(repo, sha, d.settings) for sha in (a, b, c)}
    d.store.enqueue(7, "task", "cpu", {"argv": ["true"], "source": {"repo": str(repo), "sha": b}})  # live: queued
    old = time.time() - 2 * 86400
    for sha in (a, b):
        os.utime(trees[sha].parent / f"{sha}.ok", (old, old))
    assert d.pipeline.code.prune_sources() == [a]  # b: a live job names it; c: used within the day
    assert not trees[a].exists() and trees[b].exists() and trees[c].exists()
    assert a not in git(repo, "worktree", "list") and c in git(repo, "worktree", "list")
    assert git(srctree.ensure(repo, a, d.settings), "rev-parse", "HEAD") == a  # made again when needed


def test_auto_approve_cpu_runs_smoke_and_ablation_unapproved_then_waits(  # noqa: F811
        gh, tmp_path, sqlite_url, docs_repo, fake_stage):  # noqa: F811
    repo, _ = project_repo(tmp_path)
    d = daemon_for(gh, tmp_path, sqlite_url, docs_repo, stage_source="pinned", coder_repo=str(repo),
                   code_auto_approve="cpu")
    n = gh.create_issue("auto approved", SPEC.format(extra=""), labels=["ideas", "cpu", "code"])
    drive(d, lambda: d.store.jobs_for_issue(n) and d.outbox_store.counts()["pending"] == 0)
    queued = next(v for k, v in by_key(gh, n).items() if k.endswith("/agent/queued"))
    assert "REFINERY_CODE_AUTO_APPROVE=cpu is set" in queued
    sha, pr = deliver(gh, d, repo, n, f"agent/i{n}-auto")
    drive(d, lambda: len(stages(d, n)) == 2 and all(d.kv.get(f"advanced:{j.id}") for j in stages(d, n))
          and d.outbox_store.counts()["pending"] == 0)
    smoke, abl = stages(d, n)
    assert smoke.payload["unapproved"] and smoke.payload["code"]["approved_by"] is None
    assert "REFINERY_CODE_AUTO_APPROVE=cpu" in by_key(gh, n)[f"i{n}/code-{sha[:12]}/review"]
    assert "Not approved: REFINERY_CODE_AUTO_APPROVE=cpu" in by_key(gh, n)[f"i{n}/code-{sha[:12]}/approved"]
    result = by_key(gh, n)[f"i{n}/j{abl.id}/ablation/result"]
    assert "Replication waits" in result and "ran unapproved" in result
    idle(d, 2.5)
    assert len(stages(d, n)) == 2  # nothing after the ablation without a 👍
    cid = next(c["id"] for c in gh.comments_of(n) if f"i{n}/j{abl.id}/ablation/result" in c["body"])
    gh.add_reaction(cid, "alice", "+1")
    drive(d, lambda: len(stages(d, n)) == 3)
    assert stages(d, n)[2].payload["stage"] == "replication" and stages(d, n)[2].payload["source"]["sha"] == sha
