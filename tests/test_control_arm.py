"""The ablation's control arm from the branch's merge-base (a code idea's `[code] control = "base"`): the real
stage (tiny budgets) as a child process in the read-only tree of the branch's commit, its control arm in a child
of its own in the merge-base's tree (experiments/control_arm.py). Real git, real worktrees, real training.

Run: .venv/bin/python -m pytest tests/test_control_arm.py -q       (slow: ~55 s on 2 loaded cores)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from jobqueue import srctree
from tests.agent_support import git, settings_for
from tests.code_support import MODEL_NEW, MODEL_OLD, SETTING_NEW, SETTING_OLD, commit_change, project_repo

TINY = {"r_max": 2, "r_mean": 2, "init_std": 0.1, "stage_threads": 1, "stage_jobs": 1, "test_examples": 100,
        "batch_size": 16, "tasks": ["khop"], "ablation_seeds": 2, "ablation_steps": 5}
ENV = {k: v for k, v in os.environ.items() if not k.startswith("REFINERY_") and k != "MODEL_ARCH"}


def toml(flat: dict) -> str:
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in flat.items())


@pytest.mark.slow  # real training in two processes: ~55 s on 2 loaded cores
def test_the_control_arm_runs_the_merge_base_and_the_candidate_the_branch(tmp_path, sqlite_url):
    repo, _ = project_repo(tmp_path)
    base = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "-b", "agent/i1-embed-scale")
    commit_change(repo, "config.py", SETTING_OLD, SETTING_NEW, "config: embed_scale")
    head = commit_change(repo, "refiner_model/model.py", MODEL_OLD, MODEL_NEW, "model: scale the embeddings")
    s = settings_for(sqlite_url, tmp_path)
    cand, ctrl = srctree.ensure(repo, head, s), srctree.ensure(repo, base, s)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"toml": toml({**TINY, "embed_scale": 0.5}), "issue": 1, "control": {
        "what": "base", "sha": base, "tree": str(ctrl), "spec": TINY, "dropped": ["embed_scale"]}}))
    run = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "experiments.stage", "ablation", "--spec", str(spec), "--run-dir",
                        str(run)], cwd=cand, env={**ENV, "PYTHONPATH": str(cand), "CUDA_VISIBLE_DEVICES": ""},
                       capture_output=True, text=True, timeout=600)
    res = json.loads((run / "result.json").read_text())
    assert p.returncode in (0, 3) and "control" in res["figures"], (p.returncode, res.get("reason"), p.stderr[-2000:])
    assert res["run"]["git_sha"] == head  # the stage itself (the candidate arm) ran the branch's commit
    ctl = res["figures"]["control"]
    assert ctl["what"] == "base" and ctl["sha"] == base and ctl["ran"] == [base] and ctl["candidate_sha"] == head
    assert ctl["dropped"] == ["embed_scale"]
    recs = [json.loads(line) for line in (run / "done.jsonl").read_text().splitlines()]
    control, candidate = [r for r in recs if r["arm"] == "control"], [r for r in recs if r["arm"] == "candidate"]
    assert len(control) == len(candidate) == 4  # 2 seeds × (khop + the control task)
    assert {r["src_sha"] for r in control} == {base} and all("src_sha" not in r for r in candidate)
    assert {r["arch"] for r in control} == {"refiner"}  # the same spec's arch, not the reasoner
    log = (run / "log.txt").read_text()
    assert f"control arm: 4 runs from commit {base}" in log and "left out: embed_scale" in log
    # the spec the merge-base's parser read is kept beside the run (embed_scale is unknown there)
    assert json.loads((run / "control-spec.json").read_text())["spec"] == TINY
