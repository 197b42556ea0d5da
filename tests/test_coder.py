"""The coder in-process: the real, pinned Claude Code CLI against the scripted Messages API (tests/
anthropic_server.py), real git worktrees, the real queue, stepped like the daemon steps it (local tracker).

    happy path        the session writes and commits; the checks pass; job succeeded with every check recorded,
                      `refinery:review`, the ledger; the checkout's HEAD, branch and tree untouched
    no proof of work  `success` without a commit → failed attempt "no proof of work"
    check fails       the check command's tail in the failure
    protected path    the gate edited → refused; the issue's label allows it
    turn cap          refinery stops the session at coder_max_turns
    wall / silence    the server stalls mid-stream: the wall-clock and the output-silence limits stop it
    401               the coder pauses, no attempt spent, no comment
    529               refinery backs off (no attempt spent), resumes, delivers once
"""

from __future__ import annotations

import json
import time

import pytest

from agent.coder.driver import PAUSE_KEY, Coder
from agent.daemon.outbox import Outbox
from agent.state.local_tables import LocalIssues
from agent.state.tables import KeyValue, OutboxStore
from jobqueue.store import Store
from tests.agent_support import git
from tests.anthropic_server import Step, bash, edit, text, write
from tests.coder_support import (  # noqa: F401
    KEY,
    absolute,
    anth,
    coder_settings,
    happy_script,
    make_checkout,
    needs_cli,
    read,
    step_until,
    worktree_of,
)

pytestmark = [needs_cli, pytest.mark.slow]  # about 5 s each: a real CLI, real git


@pytest.fixture
def rig(tmp_path, sqlite_url, anth, monkeypatch):  # noqa: F811
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", anth.url)
    repo, remote = make_checkout(tmp_path)

    class Rig:
        def __init__(self):
            self.repo, self.remote, self.anth, self.tmp = repo, remote, anth, tmp_path
            self.settings = self.store = self.coder = None

        def start(self, labels=("tools",), title="Say hi in hello.txt", script=None, **over):
            s = self.settings = coder_settings(sqlite_url, tmp_path, repo, **over)
            store = self.store = Store(s)
            self.issues = LocalIssues(store.engine)
            n = self.n = self.issues.create(title, "hello.txt should say hi.", list(labels), "alice")
            self.job = store.enqueue(n, "agent", "agent", {"title": title, "body": "hello.txt should say hi.",
                                                           "labels": list(labels)}, key="agent")
            self.kv, self.obs = KeyValue(store.engine), OutboxStore(store.engine)
            self.coder = Coder(s, store, Outbox(s, self.obs), self.kv, "local")
            anth.script = absolute(script or happy_script(), worktree_of(s, n))
            return self

        def job_now(self):
            return self.store.get(self.job.id)

        def until_state(self, *states, timeout=60.0):
            return step_until(self.coder, lambda: str(self.job_now().state) in states and not self.coder.busy,
                              timeout, f"job in {states}")

        def comments(self) -> dict:
            return {i.key: i.body for i in self.obs.items(limit=100)}

    r = Rig()
    yield r
    if r.coder is not None:
        r.coder.cold_stop()
        r.coder.drain(time.time() + 10)
        r.store.close()


def runs_text(tmp_path) -> str:
    out = []
    for p in (tmp_path / "runs").rglob("*"):
        if p.is_file() and not p.is_symlink() and "/wt/.git" not in str(p):
            try:
                out.append(p.read_text(errors="replace"))
            except OSError:
                pass
    return "\n".join(out)


def test_happy_path_local(rig):
    r = rig.start()
    before = (git(r.repo, "rev-parse", "HEAD"), git(r.repo, "symbolic-ref", "HEAD"), git(r.repo, "status", "--short"))
    r.until_state("succeeded")
    job = r.job_now()
    res = job.result
    assert res["verdict"] == "DONE" and res["branch"].startswith(f"agent/i{r.n}-say-hi")
    assert {c["name"]: c["ok"] for c in res["checks"]} == {"result": True, "commits": True, "clean": True,
                                                           "protected": True, "check": True}
    assert res["turns"] == 3 and res["usd"] > 0 and res["pr_url"] is None
    # the branch holds the session's commit, made with refinery's git identity; the checkout is untouched
    assert git(r.repo, "log", "-1", "--format=%s|%an", res["branch"]) == "hello: say hi|refinery-coder"
    assert git(r.repo, "show", f"{res['branch']}:hello.txt") == "hi"
    assert (git(r.repo, "rev-parse", "HEAD"), git(r.repo, "symbolic-ref", "HEAD"),
            git(r.repo, "status", "--short")) == before
    c = r.comments()
    key = f"i{r.n}/j{job.id}/agent"
    assert "a branch waits for review" in c[f"{key}/result"] and res["branch"] in c[f"{key}/result"]
    assert "hello.txt | 1 +" in c[f"{key}/result"]
    assert r.obs.get(f"{key}/status-done").label == "refinery:review"
    assert "turns" in c[f"i{r.n}/coder-progress"]
    led = r.kv.get(f"coder.ledger:{r.n}")
    assert led["turns"] == 3 and led["sessions"] == 1 and led["usd"] == pytest.approx(res["usd"])
    # what the model saw: the sanitized issue, the notes file, the branch, what done means
    first = r.anth.turns()[0].body["messages"][0]
    prompt = json.dumps(first)
    assert "hello.txt should say hi." in prompt and "notes.md" in prompt and res["branch"] in prompt
    assert "sh check.sh" in prompt
    stream = (r.tmp / "runs" / "agent" / str(r.n) / str(job.attempt) / "stream.jsonl").read_text().splitlines()
    assert json.loads(stream[0])["subtype"] == "init" and json.loads(stream[-1])["type"] == "result"
    assert KEY not in runs_text(r.tmp)


def test_success_without_commit_is_no_proof_of_work(rig):
    r = rig.start(script=[Step([text("All done, trust me.")])], max_attempts=1)
    r.until_state("failed")
    job = r.job_now()
    assert "no proof of work" in job.error
    body = r.comments()[f"i{r.n}/j{job.id}/agent/failed"]
    assert "no proof of work" in body and "All done, trust me." in body and "$" in body


def test_check_fails_with_its_tail(rig):
    r = rig.start(script=[Step([write("hello.txt", "bye\n")]), Step([bash("git add -A && git commit -qm bye")]),
                          Step([text("Done.")])], max_attempts=1)
    r.until_state("failed")
    job = r.job_now()
    assert job.error.startswith("check: `sh check.sh` failed (exit 1")
    assert "check: hello.txt does not say hi" in r.comments()[f"i{r.n}/j{job.id}/agent/failed"]


@pytest.mark.parametrize("labels", [("tools",), ("tools", "gate-change")])
def test_protected_path_refused_unless_labelled(rig, labels):
    script = [Step([read("experiments/gate.py")]),
              Step([edit("experiments/gate.py", "THRESHOLD = 10", "THRESHOLD = 1"), write("hello.txt", "hi\n")]),
              Step([bash("git add -A && git commit -qm 'lower the bar'")]), Step([text("Done.")])]
    r = rig.start(script=script, labels=labels, max_attempts=1)
    if "gate-change" in labels:
        r.until_state("succeeded")
        (protected,) = [c for c in r.job_now().result["checks"] if c["name"] == "protected"]
        assert "allowed by the label `gate-change`" in protected["detail"]
        return
    r.until_state("failed")
    assert "refused" in r.job_now().error and "experiments/gate.py" in r.job_now().error


def test_turn_cap(rig):
    loop = [Step([bash("git status")])]  # a model that never stops
    r = rig.start(script=loop, coder_max_turns=3, max_attempts=1)
    r.until_state("failed")
    job = r.job_now()
    assert job.error.startswith("session: ")
    assert "turn" in job.error
    assert len(r.anth.turns()) <= 4


@pytest.mark.parametrize("limit", ["wall", "silence"])
def test_wall_and_silence_limits(rig, limit):
    script = [Step([text("thinking...")], stall_s=30.0)]
    over = {"coder_wall_s": 3.0, "coder_silence_s": 60.0} if limit == "wall" else \
        {"coder_wall_s": 60.0, "coder_silence_s": 3.0}
    r = rig.start(script=script, max_attempts=1, coder_grace_s=1.0, **over)
    t0 = time.time()
    r.until_state("failed", timeout=30)
    assert time.time() - t0 < 15
    err = r.job_now().error
    assert ("wall-clock" in err) if limit == "wall" else ("no output" in err)


def test_401_pauses_the_coder_without_spending_an_attempt(rig):
    r = rig.start()
    r.anth.reject_all = 401
    step_until(r.coder, lambda: r.kv.get(PAUSE_KEY) and not r.coder.busy, 30, "the coder paused")
    job = r.job_now()
    assert str(job.state) == "queued" and job.tries == 0
    assert r.kv.get(PAUSE_KEY)["kind"] == "auth"
    assert not [k for k in r.comments() if "/failed" in k or "/retry" in k]
    r.coder.step(time.time())  # paused: nothing is claimed again
    assert str(r.job_now().state) == "queued"


def test_529_backs_off_without_an_attempt_then_delivers_once(rig):
    script = happy_script()
    script[0].fail = [529]
    r = rig.start(script=script, coder_api_retries=0)  # refinery stops at the first 529 retry and backs off
    r.until_state("succeeded")
    job = r.job_now()
    assert job.tries == 1 and job.resumes == 1  # the busy stop spent no attempt
    assert [t.status for t in r.anth.turns()].count(529) == 1
    assert not [k for k in r.comments() if "/failed" in k or "/retry" in k]
    assert len([k for k in r.comments() if k.endswith("/result")]) == 1


def test_coder_check_command(anth, tmp_path):  # noqa: F811
    import os
    import subprocess
    import sys

    import config

    env = {**os.environ, "ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": anth.url, "PYTHONPATH": str(config.ROOT),
           "REFINERY_RUNS_DIR": str(tmp_path / "runs"), "REFINERY_DB_URL": f"sqlite:///{tmp_path}/q.db"}
    p = subprocess.run([sys.executable, "-m", "agent", "coder", "check"], env=env, capture_output=True, text=True,
                       timeout=120, cwd=config.ROOT)
    assert p.returncode == 0, p.stderr
    assert "credential:  ANTHROPIC_API_KEY from env:ANTHROPIC_API_KEY" in p.stdout
    assert "--setting-sources user" in p.stdout and "1-turn call: ok" in p.stdout
    assert KEY not in p.stdout + p.stderr
    anth.reject_all = 401
    p = subprocess.run([sys.executable, "-m", "agent", "coder", "check"], env=env, capture_output=True, text=True,
                       timeout=120, cwd=config.ROOT)
    assert p.returncode == 2 and "API status 401" in p.stderr
