"""End to end: the real `refinery daemon` against a GitHub-speaking server, real stages, two ideas.

Idea A is driven through smoke → ablation → replication (fresh seeds) → full → finding + model card;
idea B is killed at the ablation (finding + ROADMAP graveyard line); a third issue, filed after B died
and labeled `blocked`, gets the graveyard's "resembles #B" comment without spending device time.

Every budget is shrunk to seconds (tiny model, one depth task, 2 seeds, 100 test examples, 10 full
steps on a 60 kB corpus), and the gate's thresholds — the operator's settings, passed to the daemon
and its children as REFINERY_* variables — are shrunk so this tiny run can meet them: they exercise
the plumbing and claim no effect. With them, A passes because the refiner's seeds separate from the
reasoner's on `copy` at these seeds (a deterministic CPU computation, measured: Δ +27.5 and +9.5), and
B (reasoner against reasoner: identical arms, Δ exactly 0) must FAIL: fail_ci_upper = 100.

Run: .venv/bin/python -m pytest tests/test_e2e.py -q -s     (marked slow; about 3 minutes on 2 cores)
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest

import config
from tests.agent_support import TOKEN, docs_repo_with_staged_change, env_for, gh, git, settings_for, wait_for  # noqa: F401,E501

pytestmark = pytest.mark.slow

TINY = """
[model]
init_std = 0.3
r_min = 6
r_max = 6
r_mean = 6
seq_len = 32

[train]
lr = 0.01
batch_size = 16

[stages]
tasks = ["copy"]
control_task = "summod"
summod_len = 2
test_examples = 100
eval_r_max = 6
stage_threads = 1
smoke_steps = 10
smoke_overfit_steps = 5
smoke_overfit_loss = 100.0
ablation_steps = {steps}
ablation_seeds = 2
full_steps = 10
full_seeds = 1
ckpt_every = 100
eval_every = 1000
eval_batches = 1
full_probe_steps = 15
full_probe_task = "copy"
"""
IDEA_A = ("Does the gated loop beat the plain loop on copy at r̄ = 6?\n\n```toml\narch = \"refiner\"\nseed = 10000\n"
          + TINY.format(steps=120) + """
[prereg]
hypothesis = "the refiner's damped, gated update keeps what the prelude found"
primary_task = "copy"
expected_delta = 10
kill_if = "the 95% CI of Δ lies below the fail threshold on copy"
```
""")
IDEA_B = ("The plain loop against itself (must die).\n\n```toml\narch = \"reasoner\"\nseed = 10000\n"
          + TINY.format(steps=120) + "```\n")  # informative: at 20 steps copy sits at the trivial answer
# The gate's thresholds, shrunk for the plumbing (see the module docstring); the operator's, not a spec's.
GATE = {"pass_delta_points": 0.0, "pass_min_tasks": 1, "alpha": 0.5, "depth_gain_points": 0.0,
        "depth_gain_min_seeds": 1, "overthink_points": 100.0, "control_max_delta": 100.0, "control_min_acc": 0.0,
        "fail_ci_upper": 100.0, "fail_depth_gain": -100.0, "full_max_loss_gap": 10.0}
MARKER = re.compile(r"<!-- refinery:([^ >]+) -->")


def comments(srv, n: int) -> dict[str, str]:
    """refinery's comments on #n by marker key; each key must appear exactly once."""
    out: dict[str, str] = {}
    for c in srv.comments_of(n):
        if c["user"] != srv.bot_login:
            continue
        (key,) = MARKER.findall(c["body"])
        assert key not in out, f"{key} posted twice"
        out[key] = c["body"]
    return out


def status_label(srv, n: int) -> list[str]:
    return [x for x in srv.issues[n]["labels"] if x.startswith("refinery:")]


def test_two_ideas_end_to_end(gh, tmp_path, sqlite_url, capsys):  # noqa: F811
    t0 = time.time()
    from experiments import corpus

    runs = tmp_path / "runs"
    corpus.build(corpus.stdlib_sources(max_bytes=60_000), runs / "corpus", val_frac=0.2)
    repo = docs_repo_with_staged_change(tmp_path / "repo", "# Roadmap\n\n## Graveyard\n\n", "README.md",
                                        "lab\n", "lab, my staged edit\n")

    s = settings_for(sqlite_url, tmp_path, gh, cpu_workers=2, heartbeat_s=1.0, lease_s=60.0)
    extra = {"REFINERY_DOCS_DIR": str(repo / "docs"), "REFINERY_CORPUS_DIR": str(runs / "corpus"),
             "REFINERY_PROGRESS_EDIT_S": "2", "REFINERY_MAX_ATTEMPTS": "1", "REFINERY_NOISE_FLOOR_EVERY_S": "0",
             **{"REFINERY_" + k.upper(): str(v) for k, v in GATE.items()}}
    env = env_for(s, **extra)
    a = gh.create_issue("gated loop on copy", IDEA_A, labels=["ideas", "cpu"])
    b = gh.create_issue("plain loop against itself", IDEA_B, labels=["ideas", "cpu"])
    log = open(tmp_path / "daemon.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "agent", "daemon"], env=env, cwd=config.ROOT, stdout=log,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: "refinery:killed" in status_label(gh, b), timeout=240, step=0.5, what="idea B killed")
        c = gh.create_issue("plain loop again", IDEA_B.replace("(must die)", "(held)"),
                            labels=["ideas", "cpu", "blocked"])
        wait_for(lambda: len(comments(gh, c)) >= 2, timeout=30, step=0.5, what="graveyard check on C")
        wait_for(lambda: "refinery:passed" in status_label(gh, a) or "refinery:killed" in status_label(gh, a)
                 or "refinery:failed" in status_label(gh, a), timeout=330, step=0.5, what="idea A decided")
        time.sleep(3)  # the last edits of the progress comment
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    wall = time.time() - t0
    out = (tmp_path / "daemon.log").read_text()
    assert TOKEN not in out
    from jobqueue.store import Store

    with Store(s) as store:
        ja, jb, jc = store.jobs_for_issue(a), store.jobs_for_issue(b), store.jobs_for_issue(c)
    stage_times = {j.payload["stage"]: round((j.finished_at or 0) - (j.started_at or 0), 1) for j in ja}
    seen = tmp_path / "comments.md"  # what a user saw, for reading after a failure
    seen.write_text("\n\n".join(f"## #{n} {key}\n\n{body}" for n in (a, b, c) for key, body in comments(gh, n).items()))
    with capsys.disabled():
        print(f"\ne2e: {wall:.0f} s wall; idea A stages {stage_times}; idea B "
              f"{[(j.payload['stage'], (j.result or {}).get('verdict')) for j in jb]}; comments in {seen}")

    # idea A: four stages, each depending on the one before, each PASS
    assert [(j.payload["stage"], (j.result or {}).get("verdict")) for j in ja] == [
        ("smoke", "PASS"), ("ablation", "PASS"), ("replication", "PASS"), ("full", "PASS")], \
        [(j.payload["stage"], str(j.state), (j.result or {}).get("reason"), j.error) for j in ja]
    assert [j.depends_on for j in ja] == [None, ja[0].id, ja[1].id, ja[2].id]
    assert min(ja[2].result["figures"]["seeds"]) >= 10_000 + 10_000  # replication: fresh seeds
    ca = comments(gh, a)
    firsts = [ca[f"i{a}/j{j.id}/{j.payload['stage']}/result"].splitlines()[0] for j in ja]
    assert [f.split(" — ")[0] for f in firsts] == ["**Smoke test: PASS**", "**Ablation: PASS**",
                                                   "**Replication: PASS**", "**Full training: PASS**"]
    abl = ca[f"i{a}/j{ja[1].id}/ablation/result"]
    assert "| copy | depth |" in abl and "Predicted Δ on copy: +10.0 points" in abl and "Cost so far" in abl
    assert "Plots: `" in abl and "strip.png" in abl and "Effective spec" in abl
    assert set(ca) == {f"i{a}/j{ja[0].id}/smoke/queued", f"i{a}/progress"} | {
        f"i{a}/j{j.id}/{j.payload['stage']}/result" for j in ja}
    assert "full PASS" in ca[f"i{a}/progress"]
    assert status_label(gh, a) == ["refinery:passed"]
    docs = repo / "docs"
    (finding_a,) = docs.glob(f"findings/*-i{a}-gated-loop-on-copy.md")
    assert finding_a.read_text().startswith(f"# PASS: gated loop on copy (#{a})")
    (card,) = docs.glob(f"registry/refiner-i{a}-j{ja[3].id}.md")
    assert "bin_sha256" not in card.read_text() and "train.bin sha256: `" in card.read_text()
    # idea B: killed at the ablation with Δ = 0, its line in the graveyard
    assert [(j.payload["stage"], (j.result or {}).get("verdict")) for j in jb] == [("smoke", "PASS"),
                                                                                   ("ablation", "FAIL")]
    cb = comments(gh, b)
    assert cb[f"i{b}/j{jb[1].id}/ablation/result"].startswith("**Ablation: FAIL**")
    assert status_label(gh, b) == ["refinery:killed"]
    (finding_b,) = docs.glob(f"findings/*-i{b}-plain-loop-against-itself.md")
    roadmap = (docs / "ROADMAP.md").read_text()
    assert roadmap.startswith("# Roadmap\n\n## Graveyard\n\n") and roadmap.count(f"· #{b} ·") == 1
    assert f"(findings/{finding_b.name})" in roadmap and f"#{a}" not in roadmap
    # idea C: flagged before it spent anything, and held
    cc = comments(gh, c)
    grave = next(v for k, v in cc.items() if k.endswith("/graveyard"))
    assert f"resembles #{b}, killed on " in grave and "at Δ = copy +0.0 (at the ablation stage)" in grave
    assert [str(j.state) for j in jc] == ["blocked"]
    # refinery's commits are refinery's alone; the user's staged edit is still staged
    authors = git(repo, "log", "--format=%an <%ae>").splitlines()
    assert set(authors[:-1]) == {"refinery <refinery@localhost>"} and len(authors) >= 4
    assert git(repo, "diff", "--cached", "--name-only") == "README.md"
    assert wall < 420, f"e2e took {wall:.0f} s"
    # `refinery verify`: both findings and their comments re-derive from the real runs, with the operator's gate
    for finding in (finding_a, finding_b):
        out = subprocess.run([sys.executable, "-m", "agent", "verify", str(finding)], env=env, cwd=config.ROOT,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0 and "OK: every number re-derives" in out.stdout, out.stdout + out.stderr
        assert "re-decided by the gate of fingerprint" in out.stdout and "comments read" in out.stdout
