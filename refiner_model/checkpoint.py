"""Checkpoints: a directory holding `state.pt` (weights, optimiser) and `meta.json` (readable: the caller's
meta — config, step, sampler state — plus RNG states, GradScaler state, git SHA, versions, a hash of state.pt).

Saved atomically: everything is written into DIR.tmp and fsynced, then DIR.tmp is renamed over DIR (the old
one moves to DIR.old for the instant between the two renames; load falls back to it after a crash there).
Loading restores the RNG states too, so a fresh process resumes bit-for-bit on CPU.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from config import ROOT, RefineryError

STATE, META = "state.pt", "meta.json"


class CheckpointError(RefineryError):
    """A checkpoint directory is missing, incomplete or does not match its metadata.

    Fix: point at a directory written by save_checkpoint (it holds state.pt and meta.json); if the file is
    corrupt, resume from an earlier checkpoint or start the run again.
    """


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_states() -> dict:
    """Every RNG a training loop may touch, as JSON."""
    np_state = np.random.get_state()
    return {
        "torch_cpu": _b64(torch.get_rng_state()),
        "torch_cuda": [_b64(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def set_rng_states(st: dict) -> None:
    torch.set_rng_state(_unb64(st["torch_cpu"]))
    if st.get("torch_cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in st["torch_cuda"]])
    v, state, gauss = st["python"]
    random.setstate((v, tuple(state), gauss))
    n = st["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(dirpath, model: torch.nn.Module, optimizer=None, scaler=None, meta: dict | None = None) -> Path:
    """Write DIR/state.pt and DIR/meta.json atomically. `meta` must be JSON-serialisable."""
    d = Path(dirpath)
    tmp, old = d.with_name(d.name + ".tmp"), d.with_name(d.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict() if optimizer is not None else None}
    with open(tmp / STATE, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    full = {
        **(meta or {}),
        "rng": rng_states(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "git_sha": git_sha(),
        "torch": torch.__version__,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "state_sha256": hashlib.sha256((tmp / STATE).read_bytes()).hexdigest(),
    }
    with open(tmp / META, "w") as f:
        json.dump(full, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    shutil.rmtree(old, ignore_errors=True)
    if d.exists():
        d.rename(old)
    tmp.rename(d)
    _fsync_dir(d.parent)
    shutil.rmtree(old, ignore_errors=True)
    return d


def read_meta(dirpath) -> dict:
    """meta.json of a checkpoint (DIR, or DIR.old after a crash between the two renames)."""
    d = _resolve(Path(dirpath))
    try:
        return json.loads((d / META).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{d / META}: unreadable ({e})") from e


def _resolve(d: Path) -> Path:
    if (d / META).is_file() and (d / STATE).is_file():
        return d
    old = d.with_name(d.name + ".old")
    if not d.exists() and (old / META).is_file() and (old / STATE).is_file():
        return old
    raise CheckpointError(f"{d}: no checkpoint there (need {STATE} and {META})")


def load_checkpoint(dirpath, model: torch.nn.Module, optimizer=None, scaler=None, map_location="cpu",
                    restore_rng: bool = True) -> dict:
    """Restore weights (and optimiser, GradScaler, RNG states); returns the metadata dict."""
    d = _resolve(Path(dirpath))
    meta = read_meta(d)
    raw = (d / STATE).read_bytes()
    if hashlib.sha256(raw).hexdigest() != meta.get("state_sha256"):
        raise CheckpointError(f"{d / STATE}: sha256 does not match meta.json (truncated or replaced)")
    try:
        state = torch.load(d / STATE, map_location=map_location, weights_only=True)
        model.load_state_dict(state["model"])
        if optimizer is not None and state.get("optimizer") is not None:
            optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{d}: cannot load into this model ({e})") from e
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    if restore_rng:
        set_rng_states(meta["rng"])
    return meta
