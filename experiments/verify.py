"""Re-deriving a stage's verdict from its run directory, with the gate of the fingerprint it recorded.

A run directory (experiments/runs.py) keeps what the gate's numbers are made of: config.json (the effective spec,
the prereg, the first seed), done.jsonl (ablation and replication: one record per seed, task and arm, with its
accuracies at r = 1, r̄ and 2r̄ and the task's trivial-answer floor) or full_done.jsonl (full: the validation losses
and the depth probe per seed), and result.json (what the stage reported, with the evaluation fingerprint and the code
SHA it ran). `rederive(run_dir)` rebuilds the gate's input from the per-seed records alone, in the stage's own order
(the first round of seeds; the extension's seeds only when that round said EXTEND), decides again and returns the
result the stage would have written. `compare(recorded, rederived)` lists every number on which result.json
disagrees.

"The gate of the recorded fingerprint": the evaluation fingerprint hashes the task generators, the gate and the
read-out code (experiments/runs.py). When it equals this checkout's, this checkout's gate decides. Otherwise the
commit the run recorded is unpacked (`git archive`) into a temporary directory; if that tree's fingerprint is the
recorded one, its gate decides, in a child process. If neither holds (a run from a dirty tree, or a commit this
repository lacks) the verdict cannot be re-derived and VerifyError says so: a finding is never called verified
against another gate than the one that decided it.

Smoke results are measured by the training run itself (the overfit loss, skipped steps, the gate's mean per pass);
no gate decides them, so the run's result.json is their artifact and they are checked against it as recorded.

The pre-registration is hashed (`prereg_hash`) when intake accepts an idea; the hash is in the first comment and in
the finding, and config.json keeps the prereg each stage ran with, so the hash can be recomputed from the run.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import config
from config import RefineryError

RTOL = 1e-6  # numbers agree when within this relative tolerance (a library's last float digit is no mismatch)
GATE_STAGES = ("ablation", "extend", "replication")


class VerifyError(RefineryError):
    """A run or finding cannot be re-derived: an artifact is missing or unreadable, or the gate of the recorded
    evaluation fingerprint is not available in this repository.

    Fix: run `refinery verify` in the repository (and on the machine) whose runs/ holds the finding's run
    directories, with the commit the runs recorded fetched (`git fetch`); a run from a dirty tree cannot be
    re-derived by another gate.
    """


def prereg_hash(prereg: dict | None) -> str | None:
    """sha256 of the pre-registration as canonical JSON (sorted keys, no spaces, UTF-8); None without one."""
    if not prereg:
        return None
    text = json.dumps(prereg, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- the artifacts
def _json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise VerifyError(f"cannot read {path} ({e.strerror or e}): the run directory is incomplete or moved") from e
    except ValueError as e:
        raise VerifyError(f"{path} is not JSON ({e}): the artifact is damaged") from e
    if not isinstance(doc, dict):
        raise VerifyError(f"{path} holds no JSON object: the artifact is damaged")
    return doc


def _records(path: Path) -> dict[str, dict]:
    if not path.is_file():
        raise VerifyError(f"{path} is missing: the per-seed records the gate decided on are gone")
    out = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rec = json.loads(line)
                out[rec["key"]] = rec
            except (ValueError, TypeError, KeyError) as e:
                raise VerifyError(f"{path} line {i} is not a record ({e})") from e
    return out


def settings_of(spec: dict) -> config.Settings:
    """The settings a stage ran with: this host's defaults under the effective spec config.json recorded."""
    flat = {k: v for k, v in (spec or {}).items() if k in config.FIELD_SECTION}
    return config.load().replace(flat, source="run")


def ablation_evidence(done: dict[str, dict], settings: config.Settings, seeds: list[int], extended: bool,
                      primary: str | None) -> dict[str, Any]:
    """gate.decide_ablation's input from done.jsonl's records (the stage builds the same: stages_impl._evidence)."""
    st = settings.stages
    roles = {t: "depth" for t in st.tasks}
    roles[st.control_task] = "control"
    ev: dict[str, Any] = {"tasks": {}, "extended": extended, "seeds": seeds, "primary": primary}
    for t, role in roles.items():
        floors = [r["floor"] for r in done.values() if r.get("task") == t and "floor" in r]
        ev["tasks"][t] = {"role": role, "floor": 100.0 * floors[0] if floors else None}
        for arm in ("candidate", "control"):
            missing = [sd for sd in seeds if f"{arm}/{t}/s{sd}" not in done]
            if missing:
                raise VerifyError(f"done.jsonl has no {arm} run of {t} at seed(s) {missing}: the gate's input is "
                                  "incomplete")
            recs = [done[f"{arm}/{t}/s{sd}"] for sd in seeds]
            ev["tasks"][t][arm] = {k: [r["acc"][k] for r in recs] for k in ("r1", "rbar", "r2bar")}
    return ev


def full_evidence(done: dict[str, dict], settings: config.Settings, seeds: list[int]) -> dict[str, Any]:
    arms = ("candidate", "control")
    try:
        probe = [done[f"candidate/lm/s{sd}"]["probe_curve"] for sd in seeds]
        return {"val_loss": {a: [done[f"{a}/lm/s{sd}"]["val_loss"] for sd in seeds] for a in arms},
                "depth_curve": {"r": list(range(1, len(probe[0]) + 1)) if probe else [], "candidate": probe},
                "r_bar": settings.r_eval}
    except KeyError as e:
        raise VerifyError(f"full_done.jsonl lacks {e}: the gate's input is incomplete") from e


# --------------------------------------------------------------------------- the gate of a fingerprint
class Gate:
    """Decides with the gate of one evaluation fingerprint: this checkout's, or an archived commit's (a child)."""

    def __init__(self, fingerprint: str, root: Path | None = None, source: str = "this checkout"):
        self.fingerprint, self.root, self.source = fingerprint, root, source

    def decide(self, kind: str, evidence: dict, spec: dict) -> dict[str, Any]:
        if self.root is None:
            from experiments import gate

            s = settings_of(spec)
            fn = gate.decide_ablation if kind == "ablation" else gate.decide_full
            return json.loads(json.dumps(fn(evidence, s).to_dict(), default=_jsonable))
        return _child(self.root, {"op": "decide", "kind": kind, "evidence": evidence, "spec": spec,
                                  "fingerprint": self.fingerprint})


_CHILD = r"""
import json, sys
import config
from experiments import gate, runs
d = json.load(sys.stdin)
fp = runs.evaluation_fingerprint()
if d["op"] == "fingerprint":
    json.dump({"fingerprint": fp}, sys.stdout)
else:
    assert fp == d["fingerprint"], (fp, d["fingerprint"])
    s = config.load().replace({k: v for k, v in d["spec"].items() if k in config.FIELD_SECTION}, source="run")
    fn = gate.decide_ablation if d["kind"] == "ablation" else gate.decide_full
    plain = lambda x: x.tolist() if hasattr(x, "tolist") else str(x)
    json.dump(fn(d["evidence"], s).to_dict(), sys.stdout, default=plain)
"""


def _child(root: Path, msg: dict) -> dict[str, Any]:
    # no REFINERY_* settings: the older tree's config.py may not know today's names, and the run's recorded
    # settings are applied explicitly (d["spec"]), never this shell's
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("REFINERY_")}
    env["PYTHONPATH"] = str(root)
    p = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps(msg), capture_output=True, text=True,
                       cwd=root, env=env, timeout=600)
    if p.returncode != 0:
        raise VerifyError(f"the archived gate in {root} failed: {p.stderr.strip().splitlines()[-1:] or p.returncode}")
    return json.loads(p.stdout)


_GATES: dict[str, Gate] = {}
_TREES: dict[str, tuple[str, Path]] = {}


def archived_fingerprint(git_sha: str) -> tuple[str, Path]:
    """(the evaluation fingerprint of commit git_sha's tree, the directory it is unpacked in), cached per commit."""
    if git_sha in _TREES:
        return _TREES[git_sha]
    tar = subprocess.run(["git", "archive", "--format=tar", git_sha], cwd=config.ROOT, capture_output=True)
    if tar.returncode != 0:
        raise VerifyError(f"git archive {git_sha[:12]} failed: {tar.stderr.decode(errors='replace').strip()}: "
                          "fetch the commit (git fetch) and verify again")
    tmp = Path(tempfile.mkdtemp(prefix=f"refinery-gate-{git_sha[:12]}-"))
    atexit.register(shutil.rmtree, tmp, True)  # the unpacked tree lives as long as this process
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as tf:
        tf.extractall(tmp, filter="data")
    _TREES[git_sha] = (_child(tmp, {"op": "fingerprint"})["fingerprint"], tmp)
    return _TREES[git_sha]


def gate_for(fingerprint: str | None, git_sha: str | None, dirty: bool = False) -> Gate:
    """The gate whose evaluation fingerprint is `fingerprint` (cached per fingerprint)."""
    from experiments.runs import evaluation_fingerprint

    if not fingerprint:
        raise VerifyError("the run recorded no evaluation fingerprint: nothing says which gate decided it")
    if fingerprint in _GATES:
        return _GATES[fingerprint]
    if fingerprint == evaluation_fingerprint():
        _GATES[fingerprint] = Gate(fingerprint)
        return _GATES[fingerprint]
    where = f"commit {git_sha[:12]}" if git_sha else "no recorded commit"
    if not git_sha or subprocess.run(["git", "cat-file", "-e", f"{git_sha}^{{commit}}"], cwd=config.ROOT,
                                     capture_output=True).returncode != 0:
        raise VerifyError(f"the gate of evaluation fingerprint {fingerprint[:16]}… is not this checkout's, and "
                          f"{where} is not in this repository: fetch it (git fetch) and verify again")
    got, tmp = archived_fingerprint(git_sha)
    if got != fingerprint:
        raise VerifyError(f"{where} has evaluation fingerprint {got[:16]}…, not the recorded {fingerprint[:16]}…"
                          + (" (the run's tree was dirty: its gate was never committed)" if dirty else "")
                          + ": the gate that decided this run cannot be recovered")
    _GATES[fingerprint] = Gate(fingerprint, tmp, source=f"{where} (archived)")
    return _GATES[fingerprint]


# --------------------------------------------------------------------------- one run
def rederive(run_dir: str | Path) -> dict[str, Any]:
    """{"stage", "run_dir", "recorded": result.json, "result": the re-derived result, "how": what decided it,
    "config": config.json}. The re-derived result keeps the recorded facts no gate decides (run, wall_s, job_id).
    The gate's thresholds are those the run recorded in its evidence (an ablation's `thresholds`): the operator's
    settings when it ran; a full stage records none, so this environment's apply."""
    run = Path(run_dir)
    if not run.is_absolute():
        run = config.ROOT / run
    cfg, rec = _json(run / "config.json"), _json(run / "result.json")
    stage = rec.get("stage") or cfg.get("stage")
    info = rec.get("run") or {}
    base = {k: v for k, v in rec.items() if k not in ("verdict", "reason", "evidence", "prereg", "replicates")}
    out: dict[str, Any] = {"stage": stage, "run_dir": str(run), "recorded": rec, "config": cfg}
    if stage == "smoke" or rec.get("verdict") == "ERROR":
        out.update(result=rec, how="recorded: measured by the run itself, no gate decides it")
        return out
    g = gate_for(info.get("evaluation_fingerprint"), info.get("git_sha"), bool(info.get("dirty")))
    # the gate's thresholds as the run recorded them (the operator's settings then, not this shell's environment)
    th = {k: v for k, v in ((rec.get("evidence") or {}).get("thresholds") or {}).items() if k in config.FIELD_SECTION}
    spec, prereg = {**(cfg.get("spec") or {}), **th}, cfg.get("prereg")
    s = settings_of(spec)
    seed_base = int(cfg.get("seed_base", s.train.seed))
    if stage == "full":
        from experiments.context import seeds_for_base

        seeds = seeds_for_base(seed_base, s.stages.full_seeds)
        ev = full_evidence(_records(run / "full_done.jsonl"), s, seeds)
        v = g.decide("full", ev, spec)
        res = {**base, "verdict": v["verdict"], "reason": v["reason"], "evidence": {**v["evidence"], "input": ev}}
    elif stage in GATE_STAGES:
        from experiments.context import REPLICATION_SEED_OFFSET, seeds_for_base

        offset = REPLICATION_SEED_OFFSET if stage == "replication" else 0
        n, extra = s.stages.ablation_seeds, s.gate.extend_seeds
        done = _records(run / "done.jsonl")
        primary = (prereg or {}).get("primary_task")
        seeds = seeds_for_base(seed_base + offset, n)
        v = g.decide("ablation", ablation_evidence(done, s, seeds, False, primary), spec)
        first = v
        if v["verdict"] == "EXTEND":
            seeds = seeds + seeds_for_base(seed_base + offset + n, extra)
            v = g.decide("ablation", ablation_evidence(done, s, seeds, True, primary), spec)
        res = {**base, "verdict": v["verdict"], "reason": v["reason"], "evidence": v["evidence"],
               "first_round": first["verdict"] if first is not v else None}
        if prereg:
            res["prereg"] = score_prereg(prereg, v)
        if stage == "replication":
            res["replicates"] = res["verdict"] == "PASS"
            res["reason"] = ("replicated on fresh seeds: " if res["replicates"] else "did not replicate: ") + \
                res["reason"]
    else:
        raise VerifyError(f"{run}: stage {stage!r} is not one refinery re-derives")
    out.update(result=res, how=f"re-decided by the gate of fingerprint {g.fingerprint[:16]}… ({g.source})")
    return out


def score_prereg(prereg: dict, v: dict) -> dict[str, Any]:
    """The score of a pre-registration against a verdict (as a dict: {verdict, evidence}); the stages use it too."""
    t = prereg.get("primary_task")
    ev = (v.get("evidence") or {}).get("tasks", {}).get(t) if t else None
    out = {**prereg, "verdict": v["verdict"]}
    if ev:
        lo, hi = ev["delta_ci"]
        exp = prereg.get("expected_delta")
        out.update(observed_delta=ev["delta"], delta_ci=[lo, hi],
                   expected_in_ci=(lo <= exp <= hi) if exp is not None else None,
                   met=(ev["delta"] >= exp) if exp is not None else None)
    return out


# --------------------------------------------------------------------------- comparing
def same_number(a: Any, b: Any) -> bool:
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=RTOL, abs_tol=1e-9)


def compare(recorded: Any, rederived: Any, path: str = "") -> list[str]:
    """Every place where two JSON values differ (numbers within RTOL agree), as 'path: recorded X, re-derived Y'."""
    if isinstance(recorded, bool) or isinstance(rederived, bool) or recorded is None or rederived is None:
        return [] if recorded == rederived else [f"{path or '.'}: recorded {recorded!r}, re-derived {rederived!r}"]
    if isinstance(recorded, (int, float)) and isinstance(rederived, (int, float)):
        return [] if same_number(recorded, rederived) else [f"{path}: recorded {recorded!r}, re-derived {rederived!r}"]
    if isinstance(recorded, dict) and isinstance(rederived, dict):
        out = []
        for k in sorted(set(recorded) | set(rederived), key=str):
            if k not in rederived or k not in recorded:
                out.append(f"{path}.{k}: " + ("only recorded" if k in recorded else "only re-derived"))
            else:
                out += compare(recorded[k], rederived[k], f"{path}.{k}")
        return out
    if isinstance(recorded, list) and isinstance(rederived, list):
        if len(recorded) != len(rederived):
            return [f"{path}: recorded {len(recorded)} values, re-derived {len(rederived)}"]
        return [m for i, (a, b) in enumerate(zip(recorded, rederived)) for m in compare(a, b, f"{path}[{i}]")]
    return [] if recorded == rederived else [f"{path or '.'}: recorded {recorded!r}, re-derived {rederived!r}"]


def result_mismatches(run: dict[str, Any]) -> list[str]:
    """Where result.json disagrees with the re-derived result (verdict, reason, evidence, prereg score)."""
    rec, res = run["recorded"], run["result"]
    keys = ("verdict", "reason", "evidence", "prereg", "replicates", "first_round")
    return compare({k: rec.get(k) for k in keys}, {k: res.get(k) for k in keys}, "result.json")


def _jsonable(x):
    return x.tolist() if hasattr(x, "tolist") else str(x)
