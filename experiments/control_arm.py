"""The ablation's control arm from another commit (a code idea's `[code] control = "base"`).

    runs = control_arm.run(ctx, calls)     # yields done.jsonl records of the control arm, as they finish
    control_arm.describe(ctx, done)        # result.json's figures["control"]: which control, from which commit

A code idea's ablation measures the code change itself: the candidate arm is the spec at the approved commit
(the stage's own process, in that commit's read-only tree), the control arm the same spec at the branch's
merge-base. The spec file names that commit's read-only tree (jobqueue/srctree.py made it, and the runner makes
sure it is there before the stage starts) and the spec as the merge-base knows it (keys the branch added are
left out: agent/daemon/codeidea.py):

    "control": {"what": "base", "sha": "<merge-base>", "tree": "runs/src/<merge-base>", "spec": {flat},
                "dropped": ["embed_scale"]}

The control arm's runs go to one child process: `python -c CHILD` with the tree as its working directory and
only PYTHONPATH entry, so it imports that commit's code (its experiments.stages_impl._ablation_run, its model,
its config). It reads the spec with that commit's parser, reports the commit it ran (experiments.runs.git_state
of the code it imported) on every record, and prints one record a line; its stderr goes to the stage's log.
A SIGTERM to the job reaches it too (same process group); the records already printed are kept (done.jsonl),
so a resumed stage trains only what is missing. A child that fails, or ran another commit than the one named,
is a fault of the run (ERROR), never a verdict on the idea.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from config import RefineryError
from experiments.context import Ctx

MARK = "@@control-record "
CHILD = r"""
import json, sys
from experiments.stage import load_spec
from experiments.runs import git_state
res, _ = load_spec(sys.argv[1])
if not res.ok:
    sys.exit("the control spec does not parse at this commit: " + "; ".join(e.text() for e in res.errors))
s = res.settings
import torch
if s.stages.stage_threads:
    torch.set_num_threads(s.stages.stage_threads)
from experiments.stages_impl import _ablation_run
sha = git_state()["git_sha"]
for t, seed, steps, arm in json.loads(sys.stdin.read()):
    rec = _ablation_run(s, t, seed, steps, arm, s.model.arch)
    rec["src_sha"] = sha
    print("@@control-record " + json.dumps(rec), flush=True)
"""


class ControlArmError(RefineryError):
    """The control arm from another commit could not run (its tree is missing, its child failed, or it ran a
    commit other than the one named).

    Fix: read the stage's log.txt (the child's output is there). A missing tree is made again by the runner when
    the job is retried (`refinery queue retry JOB`); a spec the merge-base cannot parse needs an edited spec."""


def wanted(ctx: Ctx) -> bool:
    return bool(ctx.control and ctx.control.get("what") == "base")


def run(ctx: Ctx, calls: list[tuple]) -> Iterator[dict[str, Any]]:
    """The control arm's (settings, task, seed, steps, arm, arch) calls, run from ctx.control's tree."""
    c = ctx.control or {}
    tree = Path(c.get("tree") or "")
    if not (tree / "experiments" / "stage.py").is_file():
        raise ControlArmError(f"the control arm's tree {tree} (commit {c.get('sha')}) is not there")
    spec_file = ctx.run.path / "control-spec.json"
    spec_file.write_text(json.dumps({"spec": c.get("spec") or {}}, indent=1, sort_keys=True) + "\n")
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
    todo = [[t, seed, steps, arm] for _s, t, seed, steps, arm, _arch in calls]
    ctx.run.log(f"control arm: {len(todo)} runs from commit {c.get('sha')} (tree {tree}), spec {c.get('spec')}"
                + (f"; settings that commit does not have, left out: {', '.join(c['dropped'])}" if c.get("dropped")
                   else ""))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(spec_file)], cwd=tree, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        proc.stdin.write(json.dumps(todo))
        proc.stdin.close()
        for line in proc.stdout:
            ctx.check_stop()
            if not line.startswith(MARK):
                ctx.run.log("control arm: " + line.rstrip())
                continue
            rec = json.loads(line[len(MARK):])
            if rec.get("src_sha") != c.get("sha"):
                raise ControlArmError(f"the control arm ran commit {rec.get('src_sha')}, not {c.get('sha')}")
            yield rec
        rc = proc.wait()
        ctx.check_stop()  # a SIGTERM to the group ended the child too: stop warm, not ERROR
        if rc != 0:
            raise ControlArmError(f"the control arm's child (commit {str(c.get('sha'))[:12]}) exited {rc}; its "
                                  "output is in log.txt")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def describe(ctx: Ctx, done: dict, candidate_sha: str | None) -> dict[str, Any]:
    """Which control the ablation used and the commit each arm ran (result.json's figures["control"])."""
    if not wanted(ctx):
        return {"what": "reasoner", "sha": candidate_sha, "arch": "reasoner", "candidate_sha": candidate_sha}
    c = ctx.control or {}
    ran = sorted({r.get("src_sha") for r in done.values() if r.get("arm") == "control"} - {None})
    return {"what": "base", "sha": c.get("sha"), "ran": ran, "arch": next((r["arch"] for r in done.values()
                                                                           if r.get("arm") == "control"), None),
            "dropped": c.get("dropped") or [], "candidate_sha": candidate_sha}
