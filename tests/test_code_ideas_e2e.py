"""A code idea end to end (issue 19): the real `refinery daemon` as a subprocess, the local GitHub-speaking server
(issue, pull request, reactions), a bare repository as the remote, the pinned Claude Code CLI against the scripted
Messages API, real stages (tiny budgets) from read-only worktrees of the approved commit.

    a `code` idea → the scripted session adds a setting (config.py) and the model code behind it → the coder's
    checks (the project's check, the spec parses in the worktree, a CPU smoke of the spec passes there) → draft
    PR + ready-for-review comment → nothing runs before approval → a reader's 👍 does nothing → a writer's 👍 →
    the smoke test and the ablation run from exactly the approved SHA (`[code] control = "base"`: the control arm
    from the merge-base, in its own tree) → result comments on the issue and on the pull request; a commit pushed
    after the approval is offered again and not run;
    the daemon's checkout (HEAD, branch, status) is the same before and after.

Prints the measured figures (wall time; approval → smoke start). Run:
    .venv/bin/python -m pytest tests/test_code_ideas_e2e.py -q -s        (slow: a few minutes on a loaded box)
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from jobqueue.store import Store
from tests.agent_support import gh, git, wait_for  # noqa: F401
from tests.anthropic_server import Step, bash, text, tool
from tests.code_support import MODEL_NEW, MODEL_OLD, SETTING_NEW, SETTING_OLD, project_repo
from tests.coder_support import absolute, anth, coder_settings, needs_cli, read  # noqa: F401
from tests.signals_support import DaemonProc
from tests.test_coder_daemon import daemon_env

pytestmark = [needs_cli, pytest.mark.slow]

BODY = """Scale the token embeddings by a new setting, embed_scale.

```toml
embed_scale = 0.5
r_max = 2
r_mean = 2
init_std = 0.1
stage_threads = 1
stage_jobs = 1
test_examples = 100
batch_size = 16
smoke_steps = 5
smoke_overfit_steps = 5
tasks = ["khop"]
ablation_seeds = 2
ablation_steps = 5

[code]
control = "base"
```
"""


def stage_jobs(s, n: int) -> list:
    with Store(s) as st:
        return [j for j in st.jobs_for_issue(n) if j.kind != "agent"]


def keyed(srv, n: int, key: str) -> dict | None:
    return next((c for c in srv.comments_of(n) if f"<!-- refinery:{key} -->" in c["body"]), None)


def test_a_code_idea_from_issue_to_approved_evidence(gh, anth, tmp_path, sqlite_url):  # noqa: F811
    t_start = time.monotonic()
    gh.add_collaborator("rita", "read")
    repo, remote = project_repo(tmp_path, bare_remote=True)
    check = f"{sys.executable} -c 'import config, refiner_model.model'"
    s = coder_settings(sqlite_url, tmp_path, repo, gh, stage_source="pinned", coder_check_cmd=check)
    n = gh.create_issue("Scale the embeddings", BODY, labels=["ideas", "cpu", "code"], author="alice")
    wt = (tmp_path / "runs" / "agent" / str(n) / "wt").resolve()
    anth.script = absolute([
        Step([text("Reading the config and the model."), read("config.py"), read("refiner_model/model.py")]),
        Step([tool("Edit", file_path="config.py", old_string=SETTING_OLD, new_string=SETTING_NEW),
              tool("Edit", file_path="refiner_model/model.py", old_string=MODEL_OLD, new_string=MODEL_NEW)]),
        Step([bash("git add config.py refiner_model/model.py && git commit -q -m 'embed_scale: the setting and "
                   "the model code'")]),
        Step([text("Done: embed_scale in config.py, used by the model's embedding.")])], wt)
    before = (git(repo, "rev-parse", "HEAD"), git(repo, "symbolic-ref", "HEAD"), git(repo, "status", "--short"))
    env = daemon_env(s, anth, REFINERY_MAX_ATTEMPTS="1", REFINERY_CODER_SMOKE_S="400")
    d = DaemonProc(env, tmp_path / "daemon.log")
    try:
        wait_for(lambda: d.check() and gh.pulls and any("/review -->" in c["body"] for c in gh.comments_of(n)),
                 400, 0.5, "the ready-for-review comment")
        (pr,) = gh.pulls
        branch = gh.pulls[pr]["head"]
        sha = git(remote, "rev-parse", branch)
        review = keyed(gh, n, f"i{n}/code-{sha[:12]}/review")
        assert review is not None and sha in review["body"], [c["body"][:200] for c in gh.comments_of(n)]
        agent = next(j for j in Store(s).jobs_for_issue(n) if j.kind == "agent")
        checks = {c["name"]: c for c in agent.result["checks"]}
        assert checks["spec"]["ok"] and checks["smoke"]["ok"] and checks["check"]["ok"], checks
        assert stage_jobs(s, n) == []  # nothing runs before approval
        gh.add_reaction(review["id"], "rita", "+1")  # a reader
        time.sleep(4.0)  # several approval looks (poll interval 1 s)
        assert d.check(stage_jobs(s, n)) == []
        gh.add_reaction(review["id"], "alice", "+1")  # a writer
        t_approved = time.time()
        smoke = wait_for(lambda: d.check() and next((j for j in stage_jobs(s, n) if j.started_at), None), 120, 0.1,
                         "the smoke job started")
        approve_to_smoke = smoke.started_at - t_approved
        # a commit pushed after the approval: offered again, never run without a new 👍
        person = tmp_path / "person"
        subprocess.run(["git", "clone", "-q", "-b", branch, str(remote), str(person)], check=True)
        (person / "NOTES.md").write_text("a later commit\n")
        git(person, "add", "NOTES.md")
        git(person, "commit", "-q", "-m", "later")
        git(person, "push", "-q", "origin", branch)
        later = git(person, "rev-parse", "HEAD")
        wait_for(lambda: d.check() and keyed(gh, n, f"i{n}/code-{later[:12]}/review"), 60, 0.5, "the new offer")
        # the ablation follows the smoke test, from the same commit, its control arm from the merge-base
        abl = wait_for(lambda: d.check() and next((j for j in stage_jobs(s, n) if j.payload["stage"] == "ablation"
                                                   and str(j.state) in ("succeeded", "failed")
                                                   and _pr_comment(gh, pr, f"i{n}/j{j.id}/ablation/")), None),
                       600, 0.5, "the ablation decided, its comment on the pull request")
        d.signal(signal.SIGTERM)
        assert d.wait(120) == 0
    finally:
        d.kill()
    jobs = stage_jobs(s, n)
    assert {j.payload["source"]["sha"] for j in jobs} == {sha}  # never the later commit
    base = git(remote, "merge-base", "main", sha)
    assert f"=== from commit {sha}" in _log(abl) and f"the control arm from commit {base} (base)" in _log(abl)
    res = json.loads(_file(abl, "result.json"))  # tiny budgets: the gate may say ERROR (exit 3), kept on disk
    assert abl.payload["control_source"]["sha"] == base and res["figures"]["control"]["ran"] == [base], res
    assert res["run"]["git_sha"] == sha
    for where in (n, pr):
        body = _pr_comment(gh, where, f"i{n}/j{abl.id}/ablation/")["body"]
        assert f"Control arm: the same spec from the merge-base `{base[:12]}`" in body
    smoke = next(j for j in jobs if j.payload["stage"] == "smoke")
    assert str(smoke.state) == "succeeded" and smoke.result["verdict"] == "PASS"
    assert smoke.result["run"]["git_sha"] == sha and not smoke.result["run"]["dirty"]
    assert smoke.payload["given"]["embed_scale"] == 0.5 and abl.payload["source"]["sha"] == sha
    # the result comment on the issue and on the pull request; control = "base" said truthfully
    key = f"i{n}/j{smoke.id}/smoke/result"
    assert keyed(gh, n, key) and keyed(gh, pr, f"{key}/pr{pr}")
    assert f"Source: commit `{sha[:12]}` ({branch})" in keyed(gh, n, key)["body"]
    approved = keyed(gh, n, f"i{n}/code-{sha[:12]}/approved")["body"]
    assert "Approved by @alice" in approved and 'control = "base"' in approved and "merge-base" in approved
    assert "left out of that arm: embed_scale" in approved
    assert keyed(gh, pr, f"i{n}/code-{sha[:12]}/approved/pr{pr}")
    assert (git(repo, "rev-parse", "HEAD"), git(repo, "symbolic-ref", "HEAD"), git(repo, "status", "--short")) \
        == before
    wall = time.monotonic() - t_start
    figures = {"wall_s": round(wall, 1), "approval_to_smoke_start_s": round(approve_to_smoke, 2)}
    print("\nMEASURED", json.dumps(figures))
    (tmp_path / "measured.json").write_text(json.dumps(figures))


def _pr_comment(srv, n: int, prefix: str) -> dict | None:
    """refinery's comment on #n whose key starts with `prefix` (a result, or an ERROR's failed-a1)."""
    return next((c for c in srv.comments_of(n) if f"<!-- refinery:{prefix}" in c["body"]), None)


def _file(job, name: str) -> str:
    try:
        from pathlib import Path

        return (Path(job.run_dir) / name).read_text(errors="replace")
    except OSError:
        return ""


def _log(job) -> str:
    return _file(job, "log.txt")
