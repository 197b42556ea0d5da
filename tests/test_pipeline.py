"""Stage chaining through the real daemon: smoke → ablation → replication → full, kills, faults,
restarts, approval, the graveyard check at intake, the noise floor.

The daemon, worker, runner, outbox and GitHub tracker are the real ones, against the local
GitHub-speaking server (tests/ghserver.py); only the stage program is a scripted stand-in
(tests/pipeline_support.py: verdicts from words in the issue title), so a whole idea takes seconds.
Documents go to a temporary git repository whose owner has a change staged.

Run: .venv/bin/python -m pytest tests/test_pipeline.py -q
"""

from __future__ import annotations

import re
import time

import pytest

import experiments.stage
from agent.daemon.outbox import STATUS_PREFIX
from tests.agent_support import docs_repo_with_staged_change, gh, git, make_daemon, settings_for  # noqa: F401

SPEC = """Does the gate help?

```toml
r_max = 4
r_mean = 2
lr = 0.002

[prereg]
hypothesis = "the gate helps on k-hop"
primary_task = "khop"
expected_delta = 15
kill_if = "CI below +5 on every depth task"
```
"""
MARKER = re.compile(r"<!-- refinery:([^ >]+) -->")


@pytest.fixture
def docs_repo(tmp_path):
    """A repository with docs/ROADMAP.md committed and the owner's own change staged (never swept in)."""
    return docs_repo_with_staged_change(tmp_path / "repo", "# Roadmap\n\nNarrative.\n\n## Graveyard\n\n- old line\n",
                                        "notes.md", "mine\n", "mine, edited and staged\n")


@pytest.fixture
def fake_stage(monkeypatch):
    monkeypatch.setattr(experiments.stage, "STAGE_MODULE", "tests.pipeline_support")


def daemon_for(gh_srv, tmp_path, sqlite_url, docs_repo, **over):
    s = settings_for(sqlite_url, tmp_path, gh_srv, docs_dir=str(docs_repo / "docs"), progress_edit_s=1.0,
                     **{"max_attempts": 1, "retry_backoff_s": 0.0, **over})
    return make_daemon(s)


def settled(d, n: int) -> bool:
    jobs = d.store.jobs_for_issue(n)
    return bool(jobs) and all(str(j.state) in ("succeeded", "failed", "cancelled") for j in jobs) and all(
        d.kv.get(f"advanced:{j.id}") for j in jobs if str(j.state) in ("succeeded", "failed")) and \
        d.outbox_store.counts()["pending"] == 0


def drive(d, until, timeout: float = 90.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        d.tick()
        if until():
            return
        time.sleep(0.05)
    raise AssertionError("timed out driving the daemon; jobs: " + str(
        [(j.id, j.payload.get("stage"), str(j.state), j.error) for j in d.store.list()]))


def bot_comments(gh_srv, n: int) -> list[dict]:
    return [c for c in gh_srv.comments_of(n) if c["user"] == gh_srv.bot_login]


def by_key(gh_srv, n: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for c in bot_comments(gh_srv, n):
        (key,) = MARKER.findall(c["body"])
        assert key not in out, f"comment {key} posted twice"
        out[key] = c["body"]
    return out


def status_labels(gh_srv, n: int) -> list[str]:
    return [x for x in gh_srv.issues[n]["labels"] if x.startswith(STATUS_PREFIX)]


def label_history(gh_srv, n: int) -> list[str]:
    return [e["label"]["name"] for e in gh_srv.events[n] if e["event"] == "labeled"
            and e["label"]["name"].startswith(STATUS_PREFIX)]


def test_an_idea_passes_every_stage(gh, tmp_path, sqlite_url, docs_repo, fake_stage):  # noqa: F811
    d = daemon_for(gh, tmp_path, sqlite_url, docs_repo)
    n = gh.create_issue("gate idea sleep=1.5 loss=2.5", SPEC, labels=["ideas", "cpu"])
    drive(d, lambda: settled(d, n) and len(d.store.jobs_for_issue(n)) == 4)
    jobs = d.store.jobs_for_issue(n)
    assert [(j.kind, j.payload["stage"], str(j.state)) for j in jobs] == [
        ("smoke", "smoke", "succeeded"), ("ablation", "ablation", "succeeded"),
        ("replication", "replication", "succeeded"), ("full", "full", "succeeded")]
    assert [j.depends_on for j in jobs] == [None, jobs[0].id, jobs[1].id, jobs[2].id]
    assert jobs[2].payload["argv"][3] == "replication" and jobs[3].payload["argv"][3] == "full"
    # what the user sees: each comment once, the verdict in each result's first line
    c = by_key(gh, n)
    results = [c[f"i{n}/j{j.id}/{j.payload['stage']}/result"] for j in jobs]
    assert [r.splitlines()[0].split(" — ")[0] for r in results] == [
        "**Smoke test: PASS**", "**Ablation: PASS**", "**Replication: PASS**", "**Full training: PASS**"]
    abl = results[1]
    assert "| khop | depth | 80.0, 82.0, 85.0 | 60.0, 61.0, 58.0 | +22.7 [+19.7, +25.7] |" in abl
    assert "Predicted Δ on khop: +15.0 points; observed +22.7" in abl and "Kill criterion as registered" in abl
    assert "**Cost so far.** cpu lane" in abl and "stages run: smoke, ablation" in abl
    assert "Replication queued as job" in abl and "code 0123456789ab" in abl and 'lr = 0.002' in abl
    assert "plots/depth.png" in abl and "Run directory: `" in abl
    assert f"i{n}/progress" in c and "Stages so far: smoke PASS" in c[f"i{n}/progress"]
    assert "full PASS" in c[f"i{n}/progress"]  # edited in place after the last stage
    assert status_labels(gh, n) == ["refinery:passed"]
    assert label_history(gh, n)[:2] == ["refinery:queued", "refinery:running"]
    # the finding, its plots and the model card, committed by refinery alone
    docs = docs_repo / "docs"
    (finding,) = (docs / "findings").glob(f"*-i{n}-gate-idea*.md")
    text = finding.read_text()
    assert text.startswith(f"# PASS: gate idea sleep=1.5 loss=2.5 (#{n})")
    for stage in ("Smoke test", "Ablation", "Replication", "Full training"):
        assert f"## {stage}: PASS" in text
    assert len(list((docs / "findings" / "plots").glob(f"i{n}-j*-depth.png"))) == 4
    (card,) = (docs / "registry").glob(f"*-i{n}-j{jobs[3].id}.md")
    assert "state.pt sha256: `" in card.read_text() and "load_checkpoint" in card.read_text()
    assert "Finding: `" in results[3] and "model card `" in results[3] and "model card" not in results[0]
    authors = git(docs_repo, "log", "--format=%an <%ae>|%s").splitlines()
    assert all(a.startswith("refinery <refinery@localhost>|") for a in authors[:-1]) and "Ursula" in authors[-1]
    assert git(docs_repo, "diff", "--cached", "--name-only") == "notes.md"  # still staged, not committed
    assert "notes.md" not in git(docs_repo, "log", "--name-only", "--format=", "-n", str(len(authors) - 1))
    assert "- old line" in (docs / "ROADMAP.md").read_text() and f"#{n}" not in (docs / "ROADMAP.md").read_text()
    assert d.kv.get("champion")["job"] == jobs[3].id
    d.store.close()


def test_a_fail_kills_the_idea_and_intake_remembers_it(gh, tmp_path, sqlite_url, docs_repo, fake_stage):  # noqa: F811
    d = daemon_for(gh, tmp_path, sqlite_url, docs_repo)
    roadmap_before = (docs_repo / "docs" / "ROADMAP.md").read_text()
    n = gh.create_issue("doomed ablation=FAIL", SPEC, labels=["ideas", "cpu"])
    drive(d, lambda: settled(d, n) and len(d.store.jobs_for_issue(n)) == 2)
    jobs = d.store.jobs_for_issue(n)
    assert [j.payload["stage"] for j in jobs] == ["smoke", "ablation"]
    c = by_key(gh, n)
    res = c[f"i{n}/j{jobs[1].id}/ablation/result"]
    assert res.startswith("**Ablation: FAIL**") and "The idea is killed" in res and "Finding: `" in res
    assert status_labels(gh, n) == ["refinery:killed"]
    roadmap = (docs_repo / "docs" / "ROADMAP.md").read_text()
    assert roadmap.startswith(roadmap_before)  # appended, nothing rewritten
    (line,) = roadmap[len(roadmap_before):].splitlines()
    assert f"· #{n} · doomed ablation=FAIL · killed at ablation (FAIL)" in line and "(findings/" in line
    (finding,) = (docs_repo / "docs" / "findings").glob(f"*-i{n}-*.md")
    assert finding.read_text().startswith(f"# FAIL: doomed ablation=FAIL (#{n})")
    assert not list((docs_repo / "docs").glob("registry/*.md"))
    grave = d.kv.get(f"graveyard:{n}")
    assert grave["stage"] == "ablation" and grave["deltas"]["khop"] == pytest.approx(-0.0, abs=1.0)
    # a new idea with the same idea-defining spec (a different seed budget) is flagged, and still runs
    m = gh.create_issue("again", SPEC.replace("lr = 0.002", "lr = 0.002\nablation_seeds = 7"),
                        labels=["ideas", "cpu"])
    drive(d, lambda: len(bot_comments(gh, m)) >= 2)
    first = bot_comments(gh, m)[0]["body"]
    assert f"resembles #{n}, killed on " in first and "at Δ = khop -0.7 (at the ablation stage)" in first, first
    assert "differs in `ablation_seeds`" not in first and "same idea-defining spec" in first
    assert "label this issue `blocked`" in first and d.store.jobs_for_issue(m)
    d.store.close()


def test_crash_and_error_are_failures_not_verdicts(gh, tmp_path, sqlite_url, docs_repo, fake_stage):  # noqa: F811
    d = daemon_for(gh, tmp_path, sqlite_url, docs_repo)
    a = gh.create_issue("crashes crash=smoke", SPEC, labels=["ideas", "cpu"])
    b = gh.create_issue("errs ablation=ERROR", SPEC.replace("lr = 0.002", "lr = 0.003"), labels=["ideas", "cpu"])
    drive(d, lambda: settled(d, a) and settled(d, b) and len(d.store.jobs_for_issue(b)) == 2)
    (ja,) = d.store.jobs_for_issue(a)
    assert str(ja.state) == "failed"
    ca = by_key(gh, a)[f"i{a}/j{ja.id}/smoke/failed-a1"]
    assert ca.startswith("**Smoke test: failed** (an error of the run, not a verdict") and "crashing on purpose" in ca
    assert status_labels(gh, a) == ["refinery:failed"]
    jb = d.store.jobs_for_issue(b)[1]
    cb = by_key(gh, b)[f"i{b}/j{jb.id}/ablation/failed-a1"]
    assert cb.startswith("**Ablation: failed** (ERROR: a fault of the run, not a verdict on the idea)")
    assert status_labels(gh, b) == ["refinery:failed"]
    assert not d.kv.keys("graveyard:") and not list((docs_repo / "docs").glob("findings/*.md"))
    d.store.close()


def test_a_failed_attempt_waiting_for_its_retry_says_so(gh, tmp_path, sqlite_url, docs_repo, fake_stage):  # noqa: F811
    """Between a crashed attempt and its retry the issue is told: the error's tail, the attempt, and the label
    goes back to queued (it said running until the retry began)."""
    d = daemon_for(gh, tmp_path, sqlite_url, docs_repo, max_attempts=2, retry_backoff_s=600.0)
    n = gh.create_issue("crashes crash=smoke", SPEC, labels=["ideas", "cpu"])
    drive(d, lambda: any(str(j.state) == "retrying" for j in d.store.jobs_for_issue(n))
          and d.outbox_store.counts()["pending"] == 0 and status_labels(gh, n) == ["refinery:queued"])
    (job,) = d.store.jobs_for_issue(n)
    body = by_key(gh, n)[f"i{n}/j{job.id}/smoke/retry-a1"]
    assert body.startswith(f"**smoke: attempt 1 of 2 failed** (job {job.id}), a fault of the run; it runs again in"
                           " about "), body
    assert "crashing on purpose" in body
    assert label_history(gh, n)[-2:] == ["refinery:running", "refinery:queued"]
    d.store.close()


def test_a_restart_between_stages_neither_loses_nor_repeats_one(gh, tmp_path, sqlite_url, docs_repo, fake_stage):  # noqa: F811
    d = daemon_for(gh, tmp_path, sqlite_url, docs_repo)
    n = gh.create_issue("restartable", SPEC, labels=["ideas", "cpu"])
    drive(d, lambda: len(d.store.jobs_for_issue(n)) == 2)  # smoke advanced, ablation queued
    smoke = d.store.jobs_for_issue(n)[0]
    d.store.close()
    # a crash just before the smoke was marked advanced: the new daemon does the step again
    d = daemon_for(gh, tmp_path, sqlite_url, docs_repo)
    d.kv.delete(f"advanced:{smoke.id}")
    drive(d, lambda: settled(d, n) and len(d.store.jobs_for_issue(n)) == 4)
    jobs = d.store.jobs_for_issue(n)
    assert [j.payload["stage"] for j in jobs] == ["smoke", "ablation", "replication", "full"]
    keys = by_key(gh, n)  # raises on any comment posted twice
    assert sum(k.endswith("/result") for k in keys) == 4
    d.store.close()


def test_full_training_waits_for_a_writers_thumbs_up(gh, tmp_path, sqlite_url, docs_repo, fake_stage):  # noqa: F811
    d = daemon_for(gh, tmp_path, sqlite_url, docs_repo, full_requires_approval=True)
    gh.add_collaborator("eve", "read")
    n = gh.create_issue("needs approval", SPEC, labels=["ideas", "cpu"])
    drive(d, lambda: settled(d, n) and len(d.store.jobs_for_issue(n)) == 3)
    rep = d.store.jobs_for_issue(n)[2]
    key = f"i{n}/j{rep.id}/replication/result"
    body = by_key(gh, n)[key]
    assert "waits for approval" in body and "👍" in body
    cid = next(c["id"] for c in bot_comments(gh, n) if key in c["body"])
    gh.add_reaction(cid, "eve", "+1")  # read access: not enough
    gh.add_reaction(cid, "alice", "heart")  # not a thumbs-up
    for _ in range(30):
        d.tick()
        time.sleep(0.05)
    assert len(d.store.jobs_for_issue(n)) == 3
    gh.add_reaction(cid, "alice", "+1")
    drive(d, lambda: settled(d, n) and len(d.store.jobs_for_issue(n)) == 4)
    full = d.store.jobs_for_issue(n)[3]
    assert full.depends_on == rep.id and str(full.state) == "succeeded"
    assert by_key(gh, n)[f"i{n}/j{rep.id}/full/approved"].startswith("Approved by @alice")
    assert status_labels(gh, n) == ["refinery:passed"]
    d.store.close()


def test_noise_floor_runs_the_control_when_its_lane_is_idle(gh, tmp_path, sqlite_url, docs_repo):  # noqa: F811
    """The real noise child (experiments/noise.py) with budgets shrunk to seconds; off unless configured."""
    tiny = {"tasks": ("khop",), "ablation_steps": 20, "test_examples": 100, "batch_size": 8, "r_max": 2,
            "r_mean": 2, "init_std": 0.1, "stage_threads": 1, "khop_k": 1}
    d = daemon_for(gh, tmp_path, sqlite_url, docs_repo, noise_floor_every_s=3600.0, noise_floor_lane="cpu",
                   noise_floor_seeds=3, **tiny)
    drive(d, lambda: d.kv.get("noise-floor.history"), timeout=120)
    (job,) = d.store.list()
    assert job.issue is None and job.payload["noise"] and str(job.state) == "succeeded"
    (h,) = d.kv.get("noise-floor.history")
    assert len(h["tasks"]["khop"]["values"]) == 3 and min(job.result["seeds"]) >= 500_000
    for _ in range(20):  # not again within noise_floor_every_s
        d.tick()
    assert len(d.store.list()) == 1
    d.store.close()


def test_an_inconclusive_ablation_extends_once(gh, tmp_path, sqlite_url, docs_repo, fake_stage):  # noqa: F811
    """EXTEND → one extension stage (the ablation again, --extend-from the first run) → replication → full.
    (The real ablation stage extends inline and reports PASS or FAIL; this is the pipeline's fallback.)"""
    d = daemon_for(gh, tmp_path, sqlite_url, docs_repo)
    n = gh.create_issue("unsure ablation=EXTEND", SPEC, labels=["ideas", "cpu"])
    m = gh.create_issue("still unsure ablation=EXTEND extend=EXTEND", SPEC.replace("lr = 0.002", "lr = 0.004"),
                        labels=["ideas", "cpu"])
    drive(d, lambda: settled(d, n) and settled(d, m) and len(d.store.jobs_for_issue(n)) == 5
          and len(d.store.jobs_for_issue(m)) == 3)
    jobs = d.store.jobs_for_issue(n)
    assert [(j.kind, j.payload["stage"]) for j in jobs] == [("smoke", "smoke"), ("ablation", "ablation"),
                                                            ("ablation", "extend"), ("replication", "replication"),
                                                            ("full", "full")]
    ext = jobs[2].payload["argv"]
    assert ext[ext.index("--extend-from") + 1] == jobs[1].run_dir and jobs[2].depends_on == jobs[1].id
    assert status_labels(gh, n) == ["refinery:passed"]
    assert by_key(gh, n)[f"i{n}/j{jobs[1].id}/ablation/result"].startswith("**Ablation: EXTEND**")
    assert status_labels(gh, m) == ["refinery:killed"] and d.kv.get(f"graveyard:{m}")["stage"] == "extend"
    d.store.close()


def test_an_uninformative_ablation_climbs_the_ladder_once_then_waits(gh, tmp_path, sqlite_url, docs_repo,  # noqa: F811
                                                                     fake_stage):
    """INCONCLUSIVE (k-hop at the ceiling) → the ablation again one ladder level up (khop_k 4 → 6, its own spec file)
    → decided there; a second INCONCLUSIVE waits for a person's spec: never a kill, no graveyard line."""
    d = daemon_for(gh, tmp_path, sqlite_url, docs_repo)
    n = gh.create_issue("ceiling ablation=INCONCLUSIVE rerun=PASS", SPEC, labels=["ideas", "cpu"])
    m = gh.create_issue("ceiling again ablation=INCONCLUSIVE", SPEC.replace("lr = 0.002", "lr = 0.004"),
                        labels=["ideas", "cpu"])
    drive(d, lambda: settled(d, n) and settled(d, m) and len(d.store.jobs_for_issue(n)) == 5
          and len(d.store.jobs_for_issue(m)) == 3)
    jobs = d.store.jobs_for_issue(n)
    assert [j.payload["stage"] for j in jobs] == ["smoke", "ablation", "ablation", "replication", "full"]
    again = jobs[2].payload
    assert again["spec"]["khop_k"] == 6 and again["spec"]["ablation_steps"] == 4000 and again["ladder_reruns"] == 1
    assert again["spec_file"].endswith("-L1.json") and jobs[2].depends_on == jobs[1].id
    first = by_key(gh, n)[f"i{n}/j{jobs[1].id}/ablation/result"]
    assert first.startswith("**Ablation: INCONCLUSIVE**") and "khop_k 4 → 6" in first
    assert status_labels(gh, n) == ["refinery:passed"]
    mj = d.store.jobs_for_issue(m)
    last = by_key(gh, m)[f"i{m}/j{mj[2].id}/ablation/result"]
    assert "edit the issue body" in last and "no verdict on the idea" in last
    assert status_labels(gh, m) == ["refinery:waiting"] and d.kv.get(f"graveyard:{m}") is None
    d.store.close()


def test_a_spec_that_cannot_pass_waits_for_a_thumbs_up_before_anything_runs(gh, tmp_path, sqlite_url,  # noqa: F811
                                                                            docs_repo, fake_stage):
    """ablation_seeds = 3: 3 v 3 cannot reach p ≤ 0.01. One comment with the numbers, nothing queued; a writer's 👍
    on it queues the smoke test (experiments/power.py, agent/intake.py, Pipeline._approvals)."""
    d = daemon_for(gh, tmp_path, sqlite_url, docs_repo)
    gh.add_collaborator("eve", "read")
    n = gh.create_issue("three seeds", SPEC.replace("lr = 0.002", "lr = 0.002\nablation_seeds = 3"),
                        labels=["ideas", "cpu"])
    drive(d, lambda: any(k.endswith("/power") for k in by_key(gh, n)))
    key = next(k for k in by_key(gh, n) if k.endswith("/power"))
    body = by_key(gh, n)[key]
    assert "3 v 3 seeds cannot reach p ≤ α = 0.01" in body and "👍" in body
    cid = next(c["id"] for c in bot_comments(gh, n) if key in c["body"])
    gh.add_reaction(cid, "eve", "+1")  # read access: not enough
    for _ in range(20):
        d.tick()
        time.sleep(0.05)
    assert d.store.jobs_for_issue(n) == [] and status_labels(gh, n) == ["refinery:waiting"]
    gh.add_reaction(cid, "alice", "+1")
    drive(d, lambda: settled(d, n) and len(d.store.jobs_for_issue(n)) == 4)
    assert [j.payload["stage"] for j in d.store.jobs_for_issue(n)][0] == "smoke"
    assert any(b.startswith("Approved by @alice (👍 on the power comment): the smoke test queued")
               for b in by_key(gh, n).values())
    d.store.close()
