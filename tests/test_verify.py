"""`refinery verify`: a finding built through the real daemon and pipeline, re-derived from its run directories.

The stages are experiments.stage itself with synthetic training (tests/verify_support.py): config.json,
done.jsonl, the real gate and result.json are what a trained model's stage writes. A finding and its comments
verify; a number changed in the finding, in a comment or in result.json is found; the pre-registration hash is taken
on acceptance and shown in the first comment and the finding; an older commit's gate decides a run that recorded its
fingerprint.

Run: .venv/bin/python -m pytest tests/test_verify.py -q
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

import config
import experiments.stage
from agent.cli import main as cli_main
from agent.reporting import verify_report as verify
from experiments import verify as rv
from tests.agent_support import gh  # noqa: F401
from tests.test_pipeline import SPEC, by_key, daemon_for, docs_repo, drive, settled  # noqa: F401

PREREG = {"hypothesis": "the gate helps on k-hop", "primary_task": "khop", "expected_delta": 15,
          "kill_if": "CI below +5 on every depth task"}


@pytest.fixture
def synthetic_stage(monkeypatch):
    monkeypatch.setattr(experiments.stage, "STAGE_MODULE", "tests.verify_support")


def test_prereg_hash_is_canonical():
    h = rv.prereg_hash(PREREG)
    assert re.fullmatch(r"[0-9a-f]{64}", h)
    assert rv.prereg_hash(dict(reversed(PREREG.items()))) == h  # key order is not the pre-registration
    assert rv.prereg_hash({**PREREG, "expected_delta": 14}) != h and rv.prereg_hash(None) is None


def test_a_finding_and_its_comments_verify_and_a_tampered_number_is_found(gh, tmp_path, sqlite_url,  # noqa: F811
                                                                          docs_repo, synthetic_stage):  # noqa: F811
    d = daemon_for(gh, tmp_path, sqlite_url, docs_repo)
    n = gh.create_issue("verified idea effect=0", SPEC, labels=["ideas", "cpu"])
    drive(d, lambda: settled(d, n) and len(d.store.jobs_for_issue(n)) == 2, timeout=180)
    jobs = d.store.jobs_for_issue(n)
    assert [(j.payload["stage"], j.result["verdict"]) for j in jobs] == [("smoke", "PASS"), ("ablation", "FAIL")]
    digest = rv.prereg_hash(PREREG)
    assert jobs[0].payload["prereg_sha256"] == digest
    comments = by_key(gh, n)
    first = comments[f"i{n}/j{jobs[0].id}/smoke/queued"]
    assert f"Pre-registration sha256: `{digest}`" in first
    (finding,) = (docs_repo / "docs" / "findings").glob(f"*-i{n}-*.md")
    text = finding.read_text()
    assert f"- pre-registration sha256: {digest}" in text
    bodies = [{"body": b} for b in comments.values()]

    rep = verify.verify(finding, bodies)
    assert rep.ok, verify.text(rep)
    assert [(r["stage"], r["verdict"]) for r in rep.runs] == [("smoke", "PASS"), ("ablation", "FAIL")]
    assert "re-decided by the gate of fingerprint" in rep.runs[1]["how"] and "this checkout" in rep.runs[1]["how"]
    assert rep.numbers_checked > 200 and rep.comments_checked == 3  # the first comment and two result comments
    assert cli_main(["verify", str(finding), "--no-comments"]) == 0

    # one per-seed value in the finding's evidence table
    lines = text.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("| khop | depth | "))
    cells = lines[i].split(" | ")
    first_value = cells[2].split(", ")[0]
    cells[2] = cells[2].replace(first_value, f"{float(first_value) + 3:.1f}", 1)
    lines[i] = " | ".join(cells)
    forged = tmp_path / finding.name
    forged.write_text("\n".join(lines) + "\n")
    rep = verify.verify(forged, None)
    assert not rep.ok and len(rep.mismatches) == 1, verify.text(rep)
    assert f"line {i + 1}: says {float(first_value) + 3:.1f} where the artifacts give {first_value}" in \
        rep.mismatches[0]
    assert cli_main(["verify", str(forged), "--no-comments"]) == 1

    # the ablation's Δ in its result comment
    key = f"i{n}/j{jobs[1].id}/ablation/result"
    m = re.search(r"\| khop \| depth \| [^|]+ \| [^|]+ \| ([-+]\d+\.\d)", comments[key])
    forged_body = comments[key].replace(m.group(0), m.group(0)[:-len(m.group(1))] + "+12.0", 1)
    rep = verify.verify(finding, [{"body": b if k != key else forged_body} for k, b in comments.items()])
    assert not rep.ok and any(f"comment {key}" in x and "+12.0" in x for x in rep.mismatches), verify.text(rep)

    # a per-seed record under the run: result.json and the finding no longer follow from it
    done = jobs[1].run_dir + "/done.jsonl"
    recs = [json.loads(x) for x in open(done).read().splitlines()]
    rec = next(r for r in recs if r["key"].startswith("candidate/khop/"))
    rec["acc"]["rbar"] += 0.5  # small: the verdict stays FAIL, its numbers move
    open(done, "w").write("".join(json.dumps(r) + "\n" for r in recs))
    rep = verify.verify(finding, None)
    assert not rep.ok and any("result.json.evidence.tasks.khop.candidate" in x for x in rep.mismatches)
    assert any(x.startswith(finding.name) and "says" in x for x in rep.mismatches), verify.text(rep)
    d.store.close()


def test_the_gate_of_an_older_fingerprint_decides_in_its_own_tree():
    """A run whose recorded fingerprint is an older commit's is decided by that commit's gate, unpacked from git."""
    old = subprocess.run(["git", "rev-parse", "61f5745^"], cwd=config.ROOT, capture_output=True, text=True)
    if old.returncode != 0:
        pytest.skip("this clone lacks the history (a shallow clone)")
    sha = old.stdout.strip()
    from experiments.runs import evaluation_fingerprint

    fp, root = rv.archived_fingerprint(sha)
    assert fp != evaluation_fingerprint() and (root / "experiments" / "gate.py").is_file()
    g = rv.gate_for(fp, sha)
    assert "archived" in g.source and g.root == root
    ev = {"tasks": {"khop": {"role": "depth", "candidate": {"r1": [40.0] * 5, "rbar": [70.0, 71, 72, 73, 74],
                                                           "r2bar": [70.0, 71, 72, 73, 74]},
                             "control": {"r1": [40.0] * 5, "rbar": [50.0, 51, 52, 53, 54], "r2bar": [50.0] * 5}},
                    "copy": {"role": "control", "candidate": {k: [99.0] * 5 for k in ("r1", "rbar", "r2bar")},
                             "control": {k: [99.5] * 5 for k in ("r1", "rbar", "r2bar")}}},
          "extended": False}
    spec = {"tasks": ["khop"], "pass_min_tasks": 1}
    v = g.decide("ablation", ev, spec)
    assert v["verdict"] == "PASS" and v["evidence"]["tasks"]["khop"]["delta"] == pytest.approx(20.0)
    with pytest.raises(rv.VerifyError, match="not the recorded"):
        rv.gate_for("0" * 64, sha)
