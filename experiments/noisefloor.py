"""The noise floor per spec: the control arm's seed-to-seed spread, keyed by what shapes that arm.

A floor measured at one difficulty, step count or size says little about an idea run at another, so every
measurement is filed under `fingerprint(settings, task)`: a hash of the task, its own knobs (k-hop's k and n,
S5's length, ListOps' nesting, ...), the training steps, the preset and model dimensions and every other field
the control (reasoner) arm trains with. Fields only the candidate uses (arch, the refiner's gate) and fields that
change nothing trained (device, threads, the stage's other tasks) are left out. "Δ in noise-floor units" is shown
only when an idea's fingerprint has a measured floor (`units`).

The floors live in the daemon's key-value table as one dict {fingerprint: record} (`add` merges a noise-floor
run's result into it; `sigma` is the pooled standard deviation of every round). This module holds the logic;
agent/pipeline.py only stores and reads the dict.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from config import FIELD_SECTION, Settings

# the spec fields each task's generator reads (the others' knobs do not change its control runs)
TASK_FIELDS = {"khop": ("khop_n", "khop_k"), "s5": ("s5_len",), "listops": ("listops_depth",),
               "summod": ("summod_len", "summod_p"), "copy": ()}
# fields that never change what the control arm trains to: the candidate's own, the machine's, the stage's plan
NOT_CONTROL = {"arch", "gate", "gate_init_bias", "device", "dtype", "stage_threads", "stage_jobs", "tasks",
               "control_task", "ablation_seeds", "ablation_stack_arm", "seed", "smoke_steps", "smoke_overfit_steps",
               "smoke_overfit_loss", "full_steps", "full_seeds", "ckpt_every", "eval_every", "eval_batches",
               "full_probe_task", "full_probe_steps", "corpus_dir", "allow_math_sdpa", "loss_chunk_tokens",
               *(f for fs in TASK_FIELDS.values() for f in fs)}
MAX_ROUNDS = 20  # rounds pooled per fingerprint (older ones dropped)


def control_fields(settings: Settings, task: str) -> dict[str, Any]:
    """The fields that shape the control arm's runs on `task` (dims resolved from the preset)."""
    flat = settings.flat()
    out = {k: flat[k] for k in sorted(flat)
           if FIELD_SECTION[k] in ("model", "train", "stages") and k not in NOT_CONTROL}
    out.update({k: flat[k] for k in TASK_FIELDS.get(task, ())})
    out.update(task=task, control_arch="reasoner", dims=settings.dims)
    return out


def fingerprint(settings: Settings, task: str) -> str:
    blob = json.dumps(control_fields(settings, task), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def add(floors: dict[str, Any], result: dict[str, Any], when: float | None = None) -> dict[str, Any]:
    """floors with a noise-floor run's result merged in (result: {"tasks": {task: {"values": [...],
    "fingerprint"}}, "steps", "wall_s" ...}); pooled σ = sqrt(mean of the rounds' variances)."""
    out = dict(floors)
    runs = sum(len(v.get("values") or []) for v in (result.get("tasks") or {}).values())
    s_per_run = (float(result["wall_s"]) / runs) if result.get("wall_s") and runs else None
    for task, v in (result.get("tasks") or {}).items():
        fp, vals = v.get("fingerprint"), [float(x) for x in v.get("values") or []]
        if not fp or len(vals) < 2:
            continue
        rec = dict(out.get(fp) or {"task": task, "rounds": []})
        rounds = (list(rec["rounds"]) + [{"values": vals, "at": when}])[-MAX_ROUNDS:]
        var = [_var(r["values"]) for r in rounds]
        rec.update(rounds=rounds, sigma=math.sqrt(sum(var) / len(var)), values=[x for r in rounds for x in r["values"]],
                   s_per_run=s_per_run or rec.get("s_per_run"), fingerprint=fp, task=task)
        out[fp] = rec
    return out


def _var(v: list[float]) -> float:
    m = sum(v) / len(v)
    return sum((x - m) ** 2 for x in v) / (len(v) - 1)


def floor_for(floors: dict[str, Any], settings: Settings, task: str) -> dict[str, Any] | None:
    """The measured floor of this spec's control arm on `task`, or None when none matches its fingerprint."""
    return (floors or {}).get(fingerprint(settings, task))


def units(deltas: dict[str, float], floors: dict[str, Any], settings: Settings) -> dict[str, float] | None:
    """{task: Δ / σ} for the tasks whose floor matches this spec's fingerprint; None when none does."""
    out = {}
    for t, d in deltas.items():
        rec = floor_for(floors, settings, t)
        if rec and rec.get("sigma"):
            out[t] = d / rec["sigma"]
    return out or None


def wanted(floors: dict[str, Any], specs: list[Settings]) -> Settings | None:
    """The first spec (ideas' specs, newest first) with a depth task whose floor is unmeasured: measure that next."""
    for s in specs:
        if any(fingerprint(s, t) not in (floors or {}) for t in s.stages.tasks):
            return s
    return None


def settings_of(spec: dict[str, Any], base: Settings) -> Settings:
    """The settings an idea's effective spec (flat, JSON: lists for tuples) ran with, on top of `base`."""
    flat = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items() if k in FIELD_SECTION
            and FIELD_SECTION[k] in ("model", "train", "stages")}
    return base.replace(flat, source="spec")
