"""Intake: the label contract, trust, spec intake, holds and cancellation — on both trackers.

Each test runs against the GitHub tracker (a local GitHub-speaking server, real PyGithub, real
HTTP) and the local tracker (issues in the queue database); the daemon is stepped by hand.

Run: .venv/bin/python -m pytest tests/test_intake.py -q
"""

from __future__ import annotations

import os
import time

import pytest

from agent.state.local_tables import LocalIssues
from agent.trackers.local_tracker import LocalTracker
from jobqueue.models import State
from tests.agent_support import BAD_BODY, IDEA_BODY, SLEEPER, gh, make_daemon, settings_for, wait_for  # noqa: F401


class World:
    """The same test-side verbs on either tracker."""

    def __init__(self, kind: str, gh_srv, settings):
        self.kind, self.gh, self.settings = kind, gh_srv, settings
        self.daemon = make_daemon(settings) if kind == "github" else None
        if kind == "local":
            from jobqueue.store import Store

            store = Store(settings)
            self.db = LocalIssues(store.engine)
            self.db.grant("alice", "write")
            self.db.grant("mona", "admin")
            from agent.daemon.loop import Daemon

            self.daemon = Daemon(settings, store=store, tracker=LocalTracker(self.db))

    def create(self, title, body="", labels=(), author="alice", label_actor=None) -> int:
        if self.kind == "github":
            return self.gh.create_issue(title, body, labels=labels, author=author, label_actor=label_actor)
        n = self.db.create(title, body, [], author)
        for lab in labels:
            self.db.add_label(n, lab, label_actor or author)
        return n

    def add_label(self, n, label, actor="alice"):
        (self.gh.add_label if self.kind == "github" else self.db.add_label)(n, label, actor)

    def remove_label(self, n, label, actor="alice"):
        (self.gh.remove_label if self.kind == "github" else self.db.remove_label)(n, label, actor)

    def edit(self, n, body):
        self.gh.edit_body(n, body) if self.kind == "github" else self.db.edit(n, body=body)

    def close(self, n, actor="alice"):
        self.gh.close_issue(n, actor) if self.kind == "github" else self.db.set_state(n, "closed", actor)

    def comments(self, n) -> list[str]:
        if self.kind == "github":
            return [c["body"] for c in self.gh.comments_of(n) if c["user"] == self.gh.bot_login]
        return [c["body"] for c in self.db.comments(n) if c["author"] == "refinery"]

    def labels(self, n) -> list[str]:
        return list(self.gh.issues[n]["labels"] if self.kind == "github" else self.db.get(n)["labels"])

    def cycle(self, times: int = 1):
        """poll + deliver, as the daemon's loop does (without running jobs)."""
        for _ in range(times):
            rep = self.daemon.poll()
            self.daemon.deliver()
        return rep

    @property
    def store(self):
        return self.daemon.store


@pytest.fixture(params=["github", "local"])
def world(request, tmp_path, sqlite_url):
    srv = request.getfixturevalue("gh") if request.param == "github" else None
    s = settings_for(sqlite_url, tmp_path, srv)
    w = World(request.param, srv, s)
    yield w
    w.store.close()


def test_idea_is_enqueued_once_with_the_effective_spec(world):
    n = world.create("loops", IDEA_BODY, labels=["ideas", "cpu"])
    world.cycle()
    jobs = world.store.jobs_for_issue(n)
    assert [(j.kind, str(j.lane), str(j.state)) for j in jobs] == [("smoke", "cpu", "queued")]
    argv = jobs[0].payload["argv"]
    assert argv[1:4] == ["-m", "experiments.stage", "smoke"] and "{run_dir}" in argv and "{job_id}" in argv
    spec_file = argv[argv.index("--spec") + 1]
    assert os.path.exists(spec_file) and jobs[0].payload["spec"]["r_max"] == 6
    (comment,) = world.comments(n)
    assert "r_max = 6  # from the issue" in comment and "lr = " in comment and "<!-- refinery:" in comment
    assert "refinery:queued" in world.labels(n)
    world.add_label(n, "documentation")  # a change that is not the body
    world.cycle(3)
    assert len(world.store.jobs_for_issue(n)) == 1 and len(world.comments(n)) == 1


def test_untrusted_author_gets_one_polite_comment(world):
    n = world.create("from a stranger", IDEA_BODY, labels=["ideas", "cpu"], author="eve")
    world.cycle()
    world.edit(n, IDEA_BODY + "\nplease?")
    world.cycle(2)
    assert world.store.jobs_for_issue(n) == []
    (comment,) = world.comments(n)
    assert "@eve" in comment and "write access" in comment


def test_label_applied_by_an_untrusted_user(world):
    n = world.create("alice's idea", IDEA_BODY, labels=["ideas"])
    world.add_label(n, "cpu", actor="eve")
    world.cycle()
    assert world.store.jobs_for_issue(n) == []
    assert "applied the label `cpu`" in world.comments(n)[0]
    time.sleep(1.1)  # GitHub's timestamps have 1 s resolution: a same-second re-apply looks like no change
    world.remove_label(n, "cpu", actor="mona")
    world.add_label(n, "cpu", actor="mona")  # a maintainer re-applies it
    world.cycle()
    assert len(world.store.jobs_for_issue(n)) == 1 and len(world.comments(n)) == 2


def test_bots_only_when_allowlisted(world, tmp_path):
    n = world.create("bump", "", labels=["bug"], author="dependabot[bot]")
    world.cycle()
    assert world.store.jobs_for_issue(n) == [] and "bot" in world.comments(n)[0]
    world.daemon.intake.settings = world.settings.replace({"allowlist": "dependabot[bot]"})
    world.edit(n, "bump, again")
    world.cycle()
    (job,) = world.store.jobs_for_issue(n)
    assert (job.kind, str(job.lane)) == ("agent", "agent")


def test_invalid_spec_then_fixed(world):
    n = world.create("typo", BAD_BODY, labels=["ideas", "gpu"])
    world.cycle(2)
    assert world.store.jobs_for_issue(n) == []
    (comment,) = world.comments(n)
    assert "line 4: n_refine: unknown key" in comment and 'did you mean "r_max"' in comment
    assert "line 5: lr" in comment
    assert "refinery:invalid" in world.labels(n)
    world.edit(n, IDEA_BODY)
    world.cycle()
    (job,) = world.store.jobs_for_issue(n)
    assert (job.kind, str(job.lane)) == ("smoke", "gpu")
    assert "refinery:queued" in world.labels(n) and "refinery:invalid" not in world.labels(n)
    assert len(world.comments(n)) == 2


def test_blocked_label_and_blocked_by(world):
    first = world.create("prerequisite", "")
    later = world.create("needs #1", f"blocked by #{first}\n" + IDEA_BODY, labels=["ideas", "cpu"])
    held = world.create("on hold", IDEA_BODY, labels=["ideas", "cpu", "blocked"])
    world.cycle()
    assert [str(j.state) for j in world.store.jobs_for_issue(later)] == ["blocked"]
    assert [str(j.state) for j in world.store.jobs_for_issue(held)] == ["blocked"]
    world.close(first)
    world.remove_label(held, "blocked")
    world.cycle()
    assert [str(j.state) for j in world.store.jobs_for_issue(later)] == ["queued"]
    assert [str(j.state) for j in world.store.jobs_for_issue(held)] == ["queued"]
    assert any(f"#{first} is closed" in c for c in world.comments(later))
    world.add_label(held, "blocked")
    world.cycle()
    assert [str(j.state) for j in world.store.jobs_for_issue(held)] == ["blocked"]


def test_other_types_become_agent_items(world):
    n = world.create("fix the docs", "the README is wrong", labels=["documentation"])
    world.cycle()
    (job,) = world.store.jobs_for_issue(n)
    assert (job.kind, str(job.lane), job.payload["title"]) == ("agent", "agent", "fix the docs")
    assert "coding agent" in world.comments(n)[0]


def test_issue_closed_mid_run_cancels_the_job(world):
    n = world.create("long run", "")
    world.cycle()
    job = world.store.enqueue(n, "task", "cpu", {"argv": SLEEPER}, key="t")
    d = world.daemon
    wait_for(lambda: d.work(time.time()) or world.store.get(job.id).state == State.RUNNING, what="job start")
    pid = wait_for(lambda: world.store.get(job.id).child_pid, what="child pid")
    world.close(n)
    world.cycle()
    wait_for(lambda: d.work(time.time()) or world.store.get(job.id).state == State.CANCELLED, timeout=20,
             what="cancel")
    with pytest.raises(ProcessLookupError):
        wait_for(lambda: os.kill(pid, 0), timeout=5, what="child gone")
    d.deliver()
    assert any("cancelled its work" in c for c in world.comments(n))
    assert "refinery:cancelled" in world.labels(n)


@pytest.mark.postgres
def test_postgres_intake(gh, tmp_path, pg_url):  # noqa: F811
    s = settings_for(pg_url, tmp_path, gh)
    w = World("github", gh, s)
    n = w.create("loops", IDEA_BODY, labels=["ideas", "cpu"])
    w.cycle(2)
    assert len(w.store.jobs_for_issue(n)) == 1 and len(w.comments(n)) == 1
    w.store.close()


def test_pull_request_carrying_ideas_is_skipped(gh, tmp_path, sqlite_url):  # noqa: F811
    w = World("github", gh, settings_for(sqlite_url, tmp_path, gh))
    pr = gh.create_issue("a PR", IDEA_BODY, labels=["ideas", "cpu"], pr=True)
    rep = w.cycle()
    assert rep.decisions == {} and w.store.jobs_for_issue(pr) == [] and w.comments(pr) == []
    assert not any(f"/issues/{pr}" in e[1] for e in gh.log)  # never fetched again, never commented
    w.store.close()


def test_approvals_need_write_access(world):
    n = world.create("x", "")
    key = f"i{n}/j1/replication/result"
    world.daemon.outbox.comment(n, key, "replicated; react 👍 to run the full stage")
    world.daemon.deliver()
    cid = world.daemon.tracker.find_marker(n, key)
    if world.kind == "github":
        world.gh.add_reaction(cid, "eve", "+1")
        world.gh.add_reaction(cid, "mona", "+1")
    else:
        world.db.react(cid, "+1", "eve")
        world.db.react(cid, "+1", "mona")
    assert world.daemon.tracker.approvals(n, key) == ["mona"]
