"""Run directories: self-describing, written so a crash never leaves a half-written verdict.

    runs/<YYYYMMDD-HHMMSS>-i<issue>-<stage>-<job>/
        config.json      the effective spec (defaults filled in), the prereg, the seeds
        log.txt          opens with git SHA, dirty-diff hash, versions, device, dtype reason, the effective
                         spec and the evaluation fingerprint; then one line per event
        metrics.jsonl    one JSON object per logged step or evaluation
        progress.json    {done, total, eta_s} rewritten atomically (refinery status reads it)
        plots/*.png      loss curves, accuracy against depth, per-seed strip plot
        ckpt/            weights + readable JSON metadata (full stage)
        result.json      written LAST and atomically: {verdict, reason, stage, evidence, figures, wall_s, ...}

The evaluation fingerprint hashes the task generators (with their test-set seed), the gate and the
evaluation code: two results are comparable only when their fingerprints match.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from config import ROOT

RESULT = "result.json"
PROGRESS = "progress.json"
METRICS = "metrics.jsonl"
PLOTS = "plots"


def _git(*args: str) -> str | None:
    try:
        p = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.decode(errors="replace") if p.returncode == 0 else None


def git_state() -> dict[str, Any]:
    """HEAD's SHA and a hash of the uncommitted diff (tracked changes plus untracked file names)."""
    sha = (_git("rev-parse", "HEAD") or "").strip() or None
    diff = (_git("diff", "HEAD") or "") + (_git("ls-files", "--others", "--exclude-standard") or "")
    return {"git_sha": sha, "dirty": bool(diff), "dirty_diff_sha256": hashlib.sha256(diff.encode()).hexdigest()
            if diff else None}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("torch", "numpy", "scipy", "tiktoken", "matplotlib"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional library is reported, not fatal
            out[mod] = "missing"
    return out


def evaluation_fingerprint() -> str:
    """sha256 of the task generators + test seed, the gate, and the evaluation read-out code."""
    from experiments import gate, train
    from experiments.tasks import fingerprint

    h = hashlib.sha256(fingerprint().encode())
    h.update(inspect.getsource(gate).encode())
    for fn in (train.depth_curve, train.read_points):
        h.update(inspect.getsource(fn).encode())
    return h.hexdigest()


def run_dir_name(stage: str, issue: int | None = None, job: int | str | None = None) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-i{issue if issue is not None else 0}-{stage}-{job or 'fg'}"


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write then rename (with fsync), so a reader sees the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # runs/bench/ on a fresh clone, say
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=_jsonable)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _jsonable(x):
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, (set, tuple)):
        return list(x)
    return str(x)


class Run:
    """One stage's directory: the log, metrics, progress and the final result."""

    def __init__(self, path: Path | str, echo: bool = False):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / PLOTS).mkdir(exist_ok=True)
        self.echo = echo
        self.t0 = time.time()
        self._last_progress = 0.0

    def log(self, msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        with open(self.path / "log.txt", "a") as f:
            f.write(line + "\n")
        if self.echo:
            print(line, file=sys.stderr, flush=True)

    def metric(self, rec: dict[str, Any]) -> None:
        with open(self.path / METRICS, "a") as f:
            f.write(json.dumps(rec, default=_jsonable) + "\n")

    def progress(self, done: float, total: float, what: str = "", force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last_progress < 2.0:
            return
        self._last_progress = now
        el = now - self.t0
        eta = el / done * (total - done) if done > 0 else None
        write_json_atomic(self.path / PROGRESS, {"done": done, "total": total, "what": what,
                                                         "elapsed_s": round(el, 1),
                                                         "eta_s": round(eta, 1) if eta is not None else None})

    def preamble(self, stage: str, spec: dict, extra: dict[str, Any]) -> dict[str, Any]:
        """The log's opening block; returns what it wrote (also kept in result.json)."""
        head = {"stage": stage, **git_state(), "versions": versions(), **extra,
                "evaluation_fingerprint": evaluation_fingerprint(), "host": platform.node(),
                "argv": sys.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        lines = [f"== refinery {stage} ==",
                 f"git {head['git_sha']}  dirty={head['dirty']}  diff sha256 {head['dirty_diff_sha256']}",
                 "versions " + "  ".join(f"{k} {v}" for k, v in head["versions"].items())]
        lines += [f"{k} {v}" for k, v in extra.items()]
        lines += [f"evaluation fingerprint {head['evaluation_fingerprint']}",
                  "effective spec " + json.dumps(spec, sort_keys=True, default=_jsonable)]
        with open(self.path / "log.txt", "a") as f:
            f.write("\n".join(lines) + "\n")
        return head

    def write_result(self, result: dict[str, Any]) -> Path:
        result.setdefault("wall_s", round(time.time() - self.t0, 3))
        write_json_atomic(self.path / RESULT, result)
        return self.path / RESULT


def read_result(run_dir: Path | str) -> dict[str, Any] | None:
    p = Path(run_dir) / RESULT
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- readers (the daemon's side)
def read_progress(run_dir: Path | str | None) -> dict[str, Any] | None:
    """progress.json with `age_s` (seconds since it was written); None before the first tick."""
    if not run_dir:
        return None
    p = Path(run_dir) / PROGRESS
    try:
        doc = json.loads(p.read_text())
        age = time.time() - os.stat(p).st_mtime
    except (OSError, ValueError):
        return None
    return {**doc, "age_s": age} if isinstance(doc, dict) else None


def error_reason(run_dir: Path | str | None) -> str:
    """The ERROR reason a stage wrote in its result.json ('' when it wrote none: a crash, a kill)."""
    res = read_result(run_dir) if run_dir else None
    return str(res.get("reason") or "") if isinstance(res, dict) and res.get("verdict") == "ERROR" else ""


def last_metrics(run_dir: Path | str, tail_bytes: int = 8192) -> dict | None:
    """The last JSON line of run_dir/metrics.jsonl (read from the end: the file can be long)."""
    try:
        with open(Path(run_dir) / METRICS, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - tail_bytes))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            return rec
    return None


def plot_files(run_dir: Path | str | None) -> list[Path]:
    """The plots a stage wrote, sorted by name."""
    return sorted(Path(run_dir).glob(f"{PLOTS}/*.png")) if run_dir else []
