"""Pinned stage sources and code ideas (issue 19), through the real daemon, worker, runner, outbox and GitHub
tracker against the local GitHub-speaking server; git repositories and worktrees are real.

    pinned        an ordinary idea's stages all run from the default branch's commit recorded at enqueue, even
                  when the daemon's checkout is moved to another branch (whose code would crash) mid-run
    tree          runs/src/<sha>/ is a read-only worktree of exactly that commit, reused, borrowing runs/cache
    approval      a `code` idea: the branch's commit is offered for review; nothing runs before approval; a
                  reader's 👍 does nothing; a writer's 👍 runs the smoke test from exactly that commit; a commit
                  pushed later needs a new 👍; a branch changing a dependency file is refused with a comment
    end to end    (slow, tests/test_code_ideas_e2e.py) the real CLI writes the idea, the real daemon subprocess

Stages are the scripted stand-in (tests/pipeline_support.py) here, run by the runner from the pinned trees.
Run: .venv/bin/python -m pytest tests/test_code_ideas.py -q
"""

from __future__ import annotations

import os
import time

import pytest

import experiments.stage
from jobqueue import srctree
from jobqueue.models import Lane
from jobqueue.proc import Owner
from tests.agent_support import gh, git  # noqa: F401
from tests.code_support import MODEL_NEW, MODEL_OLD, SETTING_NEW, SETTING_OLD, commit_change, project_repo
from tests.test_pipeline import by_key, daemon_for, docs_repo, drive, settled  # noqa: F401

IDEA = """Scale the embeddings.

```toml
r_max = 4
r_mean = 2
```
"""
CODE_IDEA = """Scale the token embeddings by a setting.

```toml
embed_scale = 0.5
r_max = 4
r_mean = 2
```
"""


@pytest.fixture
def fake_stage(monkeypatch):
    monkeypatch.setattr(experiments.stage, "STAGE_MODULE", "tests.pipeline_support")


def test_an_ordinary_idea_runs_from_the_recorded_commit_when_the_checkout_moves(gh, tmp_path, sqlite_url,  # noqa: F811
                                                                                 docs_repo, fake_stage):  # noqa: F811
    repo, _ = project_repo(tmp_path)
    main_sha = git(repo, "rev-parse", "HEAD")
    d = daemon_for(gh, tmp_path, sqlite_url, docs_repo, stage_source="pinned", coder_repo=str(repo))
    n = gh.create_issue("pinned idea sleep=2", IDEA, labels=["ideas", "cpu"])
    drive(d, lambda: any(str(j.state) == "running" for j in d.store.jobs_for_issue(n)))
    # mid-run, someone moves the daemon's checkout to a branch whose stage program would crash at once
    git(repo, "checkout", "-q", "-b", "elsewhere")
    moved = commit_change(repo, "tests/pipeline_support.py", "", "raise SystemExit(9)\n", "break the stand-in")
    drive(d, lambda: settled(d, n) and len(d.store.jobs_for_issue(n)) == 4)
    jobs = d.store.jobs_for_issue(n)
    assert [str(j.state) for j in jobs] == ["succeeded"] * 4, [(j.id, j.state, j.error) for j in jobs]
    assert all(j.payload["source"] == {"repo": str(repo), "ref": "main", "sha": main_sha} for j in jobs)
    for j in jobs:
        log = (tmp_path / "runs" / os.path.basename(j.run_dir) / "log.txt").read_text()
        assert f"=== from commit {main_sha} (main)" in log and moved not in log
    c = by_key(gh, n)
    assert f"Source: commit `{main_sha[:12]}` (main)" in c[f"i{n}/j{jobs[0].id}/smoke/queued"]
    assert all(f"Source: commit `{main_sha[:12]}` (main)" in c[f"i{n}/j{j.id}/{j.payload['stage']}/result"]
               for j in jobs)
    # refinery never touched the checkout: still on the branch it was moved to, clean
    assert git(repo, "symbolic-ref", "--short", "HEAD") == "elsewhere" and git(repo, "rev-parse", "HEAD") == moved
    assert git(repo, "status", "--porcelain") == ""


def test_the_tree_is_a_read_only_worktree_of_exactly_that_commit(tmp_path, sqlite_url):
    from tests.agent_support import settings_for

    repo, _ = project_repo(tmp_path)
    first = git(repo, "rev-parse", "HEAD")
    second = commit_change(repo, "README.md", "", "A line.\n", "second")
    s = settings_for(sqlite_url, tmp_path)
    tree = srctree.ensure(repo, first, s)
    assert tree == tmp_path / "runs" / "src" / first and git(tree, "rev-parse", "HEAD") == first
    assert not (tree / "README.md").read_text().startswith("A line.")
    assert srctree.ensure(repo, first, s) == tree  # reused
    assert git(srctree.ensure(repo, second, s), "rev-parse", "HEAD") == second
    assert (tree / "runs" / "cache").is_symlink()
    assert git(tree, "status", "--porcelain") == ""  # the borrowed links are ignored: the run reads as clean
    assert not os.stat(tree / "config.py").st_mode & 0o222 and not os.stat(tree).st_mode & 0o222
    if os.geteuid() != 0:  # root writes through any mode bits
        with pytest.raises(PermissionError):
            (tree / "config.py").write_text("changed")
    with pytest.raises(srctree.SourceError, match="not a full commit"):
        srctree.ensure(repo, "HEAD", s)
    assert srctree.remove(s, first) and not tree.exists()
    assert first not in git(repo, "worktree", "list")


def _deliver_branch(d, repo, n: int, branch: str) -> int:
    """Do the coder's part as an outside agent would (`refinery queue claim` / `done --branch`): claim the
    code idea's agent item, write the idea on `branch`, finish the item naming the branch."""
    (job,) = d.store.claim_many(Lane.AGENT, Owner.current("outside-agent"), 1)
    idea = job.payload["idea"]
    assert job.issue == n and idea["lane"] == "cpu" and "embed_scale = 0.5" in idea["toml"]
    git(repo, "checkout", "-q", "-b", branch)
    commit_change(repo, "config.py", SETTING_OLD, SETTING_NEW, "config: embed_scale")
    head = commit_change(repo, "refiner_model/model.py", MODEL_OLD, MODEL_NEW, "model: scale the embeddings")
    git(repo, "checkout", "-q", "main")
    d.store.finish(job.id, job.attempt, {"verdict": "DONE", "branch": branch, "note": "written"})
    return head


def test_a_code_idea_runs_only_from_the_commit_a_writer_approved(gh, tmp_path, sqlite_url, docs_repo,  # noqa: F811
                                                                  fake_stage):
    gh.add_collaborator("rita", "read")
    repo, _ = project_repo(tmp_path)
    d = daemon_for(gh, tmp_path, sqlite_url, docs_repo, stage_source="pinned", coder_repo=str(repo))
    n = gh.create_issue("embed scale idea", CODE_IDEA, labels=["ideas", "cpu", "code"])
    drive(d, lambda: d.store.jobs_for_issue(n))
    (agent,) = d.store.jobs_for_issue(n)
    assert agent.kind == "agent" and agent.payload["types"] == ["ideas", "code"]
    branch = f"agent/i{n}-embed-scale-idea"
    first = _deliver_branch(d, repo, n, branch)
    review = f"i{n}/code-{first[:12]}/review"
    drive(d, lambda: review in by_key(gh, n))
    assert f"at commit `{first}`" in by_key(gh, n)[review]
    cid = next(c["id"] for c in gh.comments_of(n) if review in c["body"])

    def stages():
        return [j for j in d.store.jobs_for_issue(n) if j.kind != "agent"]

    gh.add_reaction(cid, "rita", "+1")  # a reader: nothing runs, over several approval looks (poll_interval 1 s)
    end = time.time() + 3.5
    while time.time() < end:
        d.tick()
        time.sleep(0.05)
    assert stages() == [] and not d.kv.get(f"code:{n}")["approved"]
    gh.add_reaction(cid, "alice", "+1")  # a writer: the smoke test from exactly that commit
    drive(d, lambda: stages())
    (smoke,) = stages()
    assert smoke.payload["source"]["sha"] == first and smoke.payload["code"]["approved_by"] == "alice"
    assert "embed_scale" in smoke.payload["given"]  # parsed by the branch's own config
    assert "Approved by @alice" in by_key(gh, n)[f"i{n}/code-{first[:12]}/approved"]

    # a commit pushed after the approval: offered again, not run without a new 👍
    git(repo, "checkout", "-q", branch)
    second = commit_change(repo, "refiner_model/model.py", MODEL_NEW, MODEL_NEW.replace("\n", "  # scaled\n"),
                           "model: comment")
    git(repo, "checkout", "-q", "main")
    review2 = f"i{n}/code-{second[:12]}/review"
    drive(d, lambda: review2 in by_key(gh, n) and len(stages()) == 4 and all(
        d.kv.get(f"advanced:{j.id}") for j in stages()) and d.outbox_store.counts()["pending"] == 0)
    assert "an earlier approval does not cover them" in by_key(gh, n)[review2]
    assert {j.payload["source"]["sha"] for j in stages()} == {first}  # the whole first chain, nothing of second
    assert len(stages()) == 4
    cid2 = next(c["id"] for c in gh.comments_of(n) if review2 in c["body"])
    gh.add_reaction(cid2, "mona", "+1")
    drive(d, lambda: any(j.payload["source"]["sha"] == second for j in stages()))

    # a commit that changes a dependency file is refused, with a comment saying so
    git(repo, "checkout", "-q", branch)
    third = commit_change(repo, "constraints.txt", "", "# a new pin\n", "deps: change")
    git(repo, "checkout", "-q", "main")
    review3 = f"i{n}/code-{third[:12]}/review"
    drive(d, lambda: review3 in by_key(gh, n))
    cid3 = next(c["id"] for c in gh.comments_of(n) if review3 in c["body"])
    gh.add_reaction(cid3, "alice", "+1")
    drive(d, lambda: f"i{n}/code-{third[:12]}/refused" in by_key(gh, n))
    assert "changes constraints.txt" in by_key(gh, n)[f"i{n}/code-{third[:12]}/refused"]
    assert not any(j.payload["source"]["sha"] == third for j in stages())
