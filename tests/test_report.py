"""Reporting: result comments, findings, graveyard lines, model cards, the docs commits, graveyard resemblance.

Run: .venv/bin/python -m pytest tests/test_report.py -q
"""

from __future__ import annotations

import pytest

import config
from agent.daemon import graveyard
from agent.reporting import report
from agent.reporting.gitdocs import DocsCommitError
from tests.agent_support import docs_repo_with_staged_change, git

ABLATION = {
    "verdict": "PASS", "reason": "2 depth tasks clear", "wall_s": 61.2,
    "run": {"git_sha": "feedfacecafebeef0000", "dirty": True},
    "evidence": {"alpha": 0.01, "u": 2, "rank_u_p": 0.008, "control_ok": True, "clearing_tasks": ["khop", "s5"],
                 "tasks": {
                     "copy": {"candidate": [99.0, 100.0], "control": [100.0, 99.0], "delta": 0.0,
                              "delta_ci": [-1.0, 1.0], "mannwhitney_p": 0.5, "p_superiority": 0.5},
                     "khop": {"candidate": [70.0, 72.5], "control": [50.0, 51.0], "delta": 20.75,
                              "delta_ci": [19.0, 22.5], "mannwhitney_p": 0.004, "holm_p": 0.008,
                              "p_superiority": 1.0, "clears": True},
                     "s5": {"candidate": [40.0, 41.0], "control": [30.0, 31.0], "delta": 10.0, "delta_ci": [9.0, 11.0],
                            "mannwhitney_p": 0.004, "holm_p": 0.008, "p_superiority": 1.0, "clears": True}}}}
PREREG = {"hypothesis": "gates help", "primary_task": "khop", "expected_delta": 15, "kill_if": "CI below +5"}


def comment(**over):
    kw = dict(issue=7, stage="ablation", job_id=3, result=ABLATION, spec={"lr": 0.01, "tasks": ["khop", "s5"]},
              prereg=PREREG, ledger={"device_min": {"gpu": 12.5}, "wall_min": 30.0, "stages": ["smoke", "ablation"]},
              run_dir="runs/x", next_step="Replication queued as job 4 on the gpu lane.",
              plots=["runs/x/plots/depth.png"], finding=None, noise={"khop": 5.2, "s5": 2.5})
    kw.update(over)
    return report.result_comment(**kw)


def test_result_comment_reads_top_down():
    text = comment()
    lines = text.splitlines()
    assert lines[0] == "**Ablation: PASS** — 2 depth tasks clear"
    rows = [line for line in lines if line.startswith("| ")]
    assert rows[2].startswith("| khop | depth | 70.0, 72.5 | 50.0, 51.0 | +20.8 [+19.0, +22.5] | 0.0040 | 0.0080 | "
                              "1.00 | yes |")
    assert rows[-1].startswith("| copy | control |")  # the control task last
    assert "rank-2 Holm p = 0.0080 (α = 0.01); control task healthy" in text
    assert "khop +5.2σ, s5 +2.5σ" in text
    assert "Predicted Δ on khop: +15.0 points; observed +20.8 [+19.0, +22.5] — the prediction lies outside the CI " \
           "(better than predicted)." in text
    assert "**Cost so far.** gpu lane 12.5 device-min; wall 30.0 min; stages run: smoke, ablation." in text
    assert "Plots: `runs/x/plots/depth.png`" in text and "code feedfacecafe (dirty tree)" in text
    assert "```toml\nlr = 0.01\ntasks = [\"khop\", \"s5\"]\n```" in text and len(text) < 65_536
    linked = comment(plots=["https://github.com/a/b/blob/s/docs/findings/plots/x.png"], finding="https://f")
    assert "[x.png](https://github.com/a/b/blob/s/docs/findings/plots/x.png)" in linked
    assert "Finding: https://f" in linked


def test_p_superiority_is_not_rounded_into_a_separation():
    """24 of 25 seed pairs (0.96) is not complete separation: the table must not print it as 1.0."""
    khop = {**ABLATION["evidence"]["tasks"]["khop"], "p_superiority": 0.96, "clears": False}
    res = {**ABLATION, "evidence": {**ABLATION["evidence"], "tasks": {**ABLATION["evidence"]["tasks"], "khop": khop}}}
    row = next(line for line in report.evidence_table(res).splitlines() if line.startswith("| khop |"))
    assert row.endswith("| 0.0040 | 0.0080 | 0.96 | no |"), row
    copy = next(line for line in report.evidence_table(ABLATION).splitlines() if line.startswith("| copy |"))
    assert "| 0.50 | – |" in copy


def test_error_and_smoke_and_full_comments():
    err = comment(result={"verdict": "ERROR", "reason": "out of memory: boom"}, prereg=None, noise=None)
    assert err.splitlines()[0].startswith("**Ablation: failed** (ERROR: a fault of the run, not a verdict on the idea)")
    smoke = comment(stage="smoke", result={"verdict": "FAIL", "reason": "no", "evidence": {
        "overfit": {"ok": False, "detail": "loss 2.0"}, "finite": {"ok": True, "detail": "0 skipped"}}})
    assert "| overfit | FAILED | loss 2.0 |" in smoke and "Pre-registration" not in smoke
    full = comment(stage="full", result={"verdict": "PASS", "reason": "ok", "evidence": {
        "val_loss_candidate": [3.1, 3.2], "val_loss_control": [3.15, 3.2], "mean_candidate": 3.15,
        "mean_control": 3.175, "loss_gap": -0.025, "welch_p": 0.6, "depth_curve_r": [1, 2],
        "depth_curve_mean": [10.0, 30.0]}})
    assert "| candidate | 3.1000, 3.2000 | 3.1500 |" in full and "loss gap -0.0250 nats (Welch p = 0.6000)" in full
    assert "depth probe r=1: 10.0, r=2: 30.0" in full


def test_prereg_inside_the_ci_and_not_measured():
    inside = report.prereg_score({**PREREG, "expected_delta": 20}, ABLATION)
    assert "the prediction lies inside the CI." in inside and "Kill criterion as registered: CI below +5" in inside
    assert "not measured at this stage" in report.prereg_score({**PREREG, "primary_task": "listops"}, ABLATION)
    assert report.prereg_score(None, ABLATION) == ""


def test_finding_has_the_verdict_in_its_title_and_every_stage():
    smoke = {"verdict": "PASS", "reason": "healthy", "evidence": {"finite": {"ok": True, "detail": "d"}}}
    text = report.finding_markdown(date="2026-01-02", issue=7, title="Gates help", verdict="FAIL",
                                   decided_at="ablation",
                                   stages=[{"stage": "smoke", "job": 1, "result": smoke, "run_dir": "r1", "plots": []},
                                           {"stage": "ablation", "job": 2, "result": {**ABLATION, "verdict": "FAIL"},
                                            "run_dir": "r2", "plots": ["plots/i7-j2-depth.png"]}],
                                   spec={"lr": 0.01}, prereg=PREREG, issue_url="https://x/7")
    assert text.startswith("# FAIL: Gates help (#7)\n")
    assert "killed at the ablation" in text and "## Smoke test: PASS" in text and "## Ablation: FAIL" in text
    assert "![i7-j2-depth](plots/i7-j2-depth.png)" in text and "## Raw evidence" in text and "Predicted Δ" in text


def test_graveyard_lines_append_without_rewriting(tmp_path):
    s = config.load({}).replace({"docs_dir": str(tmp_path / "docs"), "git_commit": False})
    w = report.DocsWriter(s)
    line = report.graveyard_line(date="2026-01-02", issue=7, title="Gates | help", why="killed at ablation: Δ +0.1",
                                 finding_rel="findings/x.md")
    assert line == "- 2026-01-02 · #7 · Gates | help · killed at ablation: Δ +0.1 · [finding](findings/x.md)\n"
    first = w.roadmap_with(line).decode()
    assert first == "# Roadmap\n\n## Graveyard\n\n" + line
    w.write({"ROADMAP.md": first.encode()}, "m")
    assert w.roadmap_with(line).decode() == first  # never twice
    (tmp_path / "docs" / "ROADMAP.md").write_text("# R\n\n## Graveyard\n\n- old\n\n## Later\n\ntext\n")
    out = w.roadmap_with(line).decode()
    assert out == "# R\n\n## Graveyard\n\n- old\n" + line + "\n## Later\n\ntext\n"


@pytest.fixture
def repo(tmp_path):
    # the user's own change to mine.txt is staged
    return docs_repo_with_staged_change(tmp_path / "repo", "# Roadmap\n", "mine.txt", "a\n", "b\n")


def test_docs_commits_are_refinerys_alone(repo):
    s = config.load({}).replace({"docs_dir": str(repo / "docs")})
    w = report.DocsWriter(s)
    w.write({"findings/a.md": b"# PASS: a\n", "findings/plots/a.png": b"png"}, "refinery: PASS for #1")
    assert w.last_sha and git(repo, "log", "-1", "--format=%an <%ae>") == "refinery <refinery@localhost>"
    assert git(repo, "show", "--name-only", "--format=", "HEAD").splitlines() == ["docs/findings/a.md",
                                                                                     "docs/findings/plots/a.png"]
    assert git(repo, "diff", "--cached", "--name-only") == "mine.txt"
    head = git(repo, "rev-parse", "HEAD")
    assert w.write({"findings/a.md": b"# PASS: a\n"}, "again") == [] and git(repo, "rev-parse", "HEAD") == head
    (repo / "docs" / "findings" / "a.md").write_text("the user's edit\n")
    with pytest.raises(DocsCommitError, match="uncommitted changes at .*findings/a.md"):
        w.write({"findings/a.md": b"# PASS: a, v2\n"}, "refinery: update")
    assert w.url("findings/a.md", head) is None  # not pushed: comments name the files
    gh = s.replace({"git_push": True, "tracker": "github", "github_repo": "acme/lab"})
    w2 = report.DocsWriter(gh)
    w2.last_rel = w.last_rel
    assert w2.url("findings/a.md", "abc") == "https://github.com/acme/lab/blob/abc/docs/findings/a.md"


def test_registry_card_names_weights_data_and_how_to_load(tmp_path):
    ck = tmp_path / "ckpt" / "candidate-s0"
    ck.mkdir(parents=True)
    (ck / "state.pt").write_bytes(b"weights")
    card = report.registry_card(name="refiner-i7-j9", date="2026-01-02", issue=7, spec={"lr": 0.01, "dims": {}},
                                result={"evidence": {"mean_candidate": 3.1, "mean_control": 3.2}}, ckpt=ck,
                                data_manifest={"tokenizer": "r50k_base", "documents": 3, "tokens": {"train": 10},
                                               "bin_sha256": {"train": "ab" * 32}},
                                data_dir="runs/corpus", archive_dir="", finding="findings/f.md")
    import hashlib

    assert f"state.pt sha256: `{hashlib.sha256(b'weights').hexdigest()}`" in card
    assert f"train.bin sha256: `{'ab' * 32}`" in card and "validation loss 3.1000 nats" in card
    assert '"lr": 0.01' in card and '"dims"' not in card and "load_checkpoint(" in card
    assert "no archive tier configured" in card and "(../findings/f.md)" in card


def test_graveyard_resemblance_ignores_budgets_and_counts_differences():
    base = {"arch": "refiner", "lr": 0.01, "r_mean": 4, "tasks": ["khop"], "ablation_steps": 1500, "seed": 0}
    killed = {3: {"spec": {**base, "ablation_steps": 10, "seed": 5}, "date": "2026-01-01", "stage": "ablation",
                  "deltas": {"khop": -1.25}},
              4: {"spec": {**base, "lr": 0.02, "r_mean": 8, "arch": "reasoner"}, "date": "2026-01-01"},
              5: {"spec": {**base, "lr": 0.02}, "date": "2026-01-03", "deltas": {}}}
    m = graveyard.resemblances(base, killed, max_diff=1)
    assert [r["issue"] for r in m] == [3, 5] and m[0]["diff"] == [] and m[1]["diff"] == [("lr", 0.01, 0.02)]
    assert graveyard.resemblances(base, killed, max_diff=1, exclude=3)[0]["issue"] == 5
    text = graveyard.comment(m)
    assert "- resembles #3, killed on 2026-01-01 at Δ = khop -1.2 (at the ablation stage); the same" in text
    assert "- resembles #5, killed on 2026-01-03 at no Δ measured; differs in `lr` (0.02 there, 0.01 here)" in text
    assert graveyard.resemblances(base, killed, max_diff=0) == m[:1]


def test_graveyard_comment_on_an_issue_already_blocked_says_it_is_held():
    """An idea filed with `blocked` was told "It still runs. ... label this issue `blocked`" (it was already)."""
    m = [{"issue": 3, "diff": [], "date": "2026-01-01", "stage": "ablation", "deltas": {"khop": -1.0}}]
    assert "It still runs. To stop it" in graveyard.comment(m)
    held = graveyard.comment(m, held=True)
    assert "It still runs" not in held and "label this issue `blocked`" not in held
    assert held.endswith("It is on hold while this issue is blocked, and runs only when the hold is lifted.")


def test_progress_comment():
    text = report.progress_comment(stage="ablation", job_id=4, progress={"done": 300, "total": 1200,
                                                                          "what": "candidate/khop/s1",
                                                                          "elapsed_s": 100, "eta_s": 450},
                                   metrics={"run": "candidate/khop/s1", "step": 300, "loss": 0.123456, "other": 1},
                                   lane="gpu", history=["smoke PASS (40 s)"])
    assert text.startswith("**Progress** — Ablation (job 4, gpu lane): step 300 of 1200 (25%) · candidate/khop/s1 · "
                           "elapsed 100 s · ETA 8 min")
    assert "Last metrics: run candidate/khop/s1, step 300, loss 0.1235" in text and "other" not in text
    assert text.endswith("Stages so far: smoke PASS (40 s)")


def test_the_echoed_effective_spec_parses_back_as_a_spec():
    """The first comment's effective spec (and each result comment's) is a ```toml block a researcher copies into
    the next idea; derived values (dims, r_eval_effective) used to be written as keys, so a copy was invalid."""
    import re

    from agent.daemon.intake import queued_comment
    from agent.trackers.interface import Issue
    from experiments.spec import parse_spec

    res = parse_spec('arch = "reasoner"\n[model]\nr_max = 3\nr_mean = 2\n', config.load({}))
    assert res.ok and "dims" in res.spec and "r_eval_effective" in res.spec
    first = queued_comment(Issue(1, "t", "", "open", ("ideas", "cpu"), "me"), 4, "cpu", res, held=False)
    block = re.search(r"```toml\n(.*?)```", first, re.S).group(1)
    assert "r_max = 3  # from the issue" in block and "# dims = { d_model = 64" in block
    again = parse_spec(block, config.load({}))
    assert again.ok, again.error_text()
    assert again.spec == res.spec
    text = comment(spec=res.spec)
    block = re.search(r"<summary>Effective spec</summary>\n\n```toml\n(.*?)```", text, re.S).group(1)
    assert parse_spec(block, config.load({})).ok, parse_spec(block, config.load({})).error_text()


def test_failed_comment_leads_with_the_error_reason_and_cuts_the_log_at_a_line(tmp_path):
    """A stage that failed for good showed only a log tail starting mid-line ("irty=False ..."); the ERROR reason it
    wrote in result.json (e.g. "corpus unavailable: ...") belongs on the first line."""
    import json

    from experiments.runs import error_reason

    log = "".join(f"09:41:{i % 60:02d} line {i} dirty=False\n" for i in range(200))
    error = "exit code 3\n--- log tail ---\n" + log[-3000:]
    res = {"verdict": "ERROR", "reason": "corpus unavailable: no train.bin"}
    (tmp_path / "result.json").write_text(json.dumps(res))
    text = report.failed_comment(stage="full", job_id=12, attempts=1, error=error, run_dir=str(tmp_path),
                                 ledger={}, reason=error_reason(str(tmp_path)))
    first = text.splitlines()[0]
    assert first == ("**Full training: failed** (an error of the run, not a verdict on the idea) after 1 attempt(s): "
                     "corpus unavailable: no train.bin"), first
    block = text.split("```\n", 1)[1].split("\n```", 1)[0]
    assert block.startswith("09:41:") and log.endswith(block + "\n") and len(block) <= 3000
    (tmp_path / "result.json").unlink()  # a crash wrote none: the first line ends plainly
    assert error_reason(str(tmp_path)) == "" and error_reason(None) == ""
    assert report.failed_comment(stage="smoke", job_id=1, attempts=3, error="boom", run_dir="r", ledger={}
                                 ).splitlines()[0].endswith("after 3 attempt(s).")
