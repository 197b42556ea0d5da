"""refinery's document commits go to the default branch through its private index, whatever HEAD is (issue 19):
the real daemon (worker, runner, outbox, GitHub tracker against the local server) kills an idea while the docs
repository is checked out on another branch with the owner's uncommitted work; real git throughout.

Run: .venv/bin/python -m pytest tests/test_docs_branch.py -q
"""

from __future__ import annotations

import pytest

import experiments.stage
from agent.reporting import gitdocs
from tests.agent_support import gh, git  # noqa: F401
from tests.test_pipeline import by_key, daemon_for, docs_repo, drive, settled  # noqa: F401


@pytest.fixture
def fake_stage(monkeypatch):
    monkeypatch.setattr(experiments.stage, "STAGE_MODULE", "tests.pipeline_support")


def test_a_finding_lands_on_the_default_branch_while_head_is_elsewhere(gh, tmp_path, sqlite_url,  # noqa: F811
                                                                        docs_repo, fake_stage):  # noqa: F811
    repo = docs_repo
    main_before = git(repo, "rev-parse", "main")
    git(repo, "checkout", "-q", "-b", "elsewhere")
    (repo / "docs" / "ROADMAP.md").write_text("# Roadmap on another branch\n\n## Graveyard\n")
    git(repo, "commit", "-q", "-am", "another branch's roadmap")
    (repo / "docs" / "ROADMAP.md").write_text("the owner's unsaved edit\n")  # uncommitted, at refinery's path
    head, status = git(repo, "rev-parse", "HEAD"), git(repo, "status", "--porcelain")
    staged = git(repo, "diff", "--cached", "--name-only")
    d = daemon_for(gh, tmp_path, sqlite_url, repo)
    n = gh.create_issue("branch idea ablation=FAIL", "Idea.\n\n```toml\nr_max = 4\nr_mean = 2\n```\n",
                        labels=["ideas", "cpu"])
    drive(d, lambda: settled(d, n) and len(d.store.jobs_for_issue(n)) == 2)
    # the finding and the graveyard line are on main, built on main's roadmap, by refinery alone
    log = git(repo, "log", "--format=%an %s", f"{main_before}..main").splitlines()
    assert log and all(line.startswith("refinery ") for line in log), log
    files = git(repo, "diff", "--name-only", main_before, "main").splitlines()
    assert "docs/ROADMAP.md" in files and any(f.startswith("docs/findings/") for f in files), files
    roadmap = gitdocs.read_committed(repo, "main", "docs/ROADMAP.md").decode()
    assert roadmap.startswith("# Roadmap\n\nNarrative.") and f"#{n} · branch idea" in roadmap
    assert "- old line" in roadmap
    # HEAD, the index and the working tree as they were: on `elsewhere`, the owner's edits untouched
    assert git(repo, "symbolic-ref", "--short", "HEAD") == "elsewhere" and git(repo, "rev-parse", "HEAD") == head
    assert git(repo, "status", "--porcelain") == status and git(repo, "diff", "--cached", "--name-only") == staged
    assert (repo / "docs" / "ROADMAP.md").read_text() == "the owner's unsaved edit\n"
    assert not (repo / "docs" / "findings").exists()
    assert "Finding: " in by_key(gh, n)[f"i{n}/j{d.store.jobs_for_issue(n)[1].id}/ablation/result"]
