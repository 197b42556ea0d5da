"""Graveyard resemblance: before a new idea spends device time, compare it with the killed ones.

The pipeline keeps each killed idea in the key-value table as `graveyard:<issue>` = {date, stage,
spec (effective), deltas {task: Δ}, title, reason, finding}. Intake calls `note_for` with a new
idea's effective spec; when a killed idea differs in at most graveyard_max_diff idea-defining keys
it comments "resembles #N, killed on DATE at Δ = …" with the keys that differ. Budgets (steps,
seeds, test-set size, checkpoints), the seed and the device are not part of what an idea *is*, so
they are ignored. The idea still runs unless the researcher labels it `blocked`.
"""

from __future__ import annotations

import json
from typing import Any

import config

# Effective-spec keys that say how much or where an idea runs, not what it is
IGNORED = frozenset({
    "seed", "device", "dtype", "allow_math_sdpa", "stage_threads", "stage_jobs", "loss_chunk_tokens", "test_examples",
    "smoke_steps", "smoke_overfit_steps", "smoke_overfit_loss", "ablation_steps", "ablation_seeds", "full_steps",
    "full_seeds", "ckpt_every", "eval_every", "eval_batches", "full_probe_steps", "corpus_dir", "eval_r_max",
})


def _norm(v: Any) -> str:
    return json.dumps(list(v) if isinstance(v, tuple) else v, sort_keys=True, default=str)


def idea_keys(spec: dict) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k in config.FIELD_SECTION and k not in IGNORED}


def differences(a: dict, b: dict) -> list[tuple[str, Any, Any]]:
    """(key, value in a, value in b) for each idea-defining key that differs."""
    ka, kb = idea_keys(a), idea_keys(b)
    return [(k, ka.get(k), kb.get(k)) for k in sorted(set(ka) | set(kb)) if _norm(ka.get(k)) != _norm(kb.get(k))]


def resemblances(spec: dict, killed: dict[int, dict], max_diff: int, exclude: int | None = None) -> list[dict]:
    """Killed ideas within max_diff idea-defining keys of `spec`, closest first."""
    out = []
    for n, rec in killed.items():
        if n == exclude or not rec or not rec.get("spec"):
            continue
        diff = differences(spec, rec["spec"])
        if len(diff) <= max_diff:
            out.append({"issue": n, "diff": diff, **{k: rec.get(k) for k in ("date", "deltas", "stage", "title",
                                                                              "reason", "finding")}})
    return sorted(out, key=lambda r: (len(r["diff"]), -r["issue"]))


def _v(x: Any) -> str:
    return _norm(x).strip('"')


def comment(matches: list[dict], limit: int = 3, held: bool = False) -> str:
    """held: the issue is already blocked, so it does not run yet (telling its author to block it would mislead)."""
    lines = []
    for m in matches[:limit]:
        deltas = m.get("deltas") or {}
        at = ("Δ = " + ", ".join(f"{t} {d:+.1f}" for t, d in deltas.items())) if deltas else "no Δ measured"
        where = f" (at the {m['stage']} stage)" if m.get("stage") else ""
        diff = ("the same idea-defining spec" if not m["diff"] else
                "differs in " + ", ".join(f"`{k}` ({_v(b)} there, {_v(a)} here)" for k, a, b in m["diff"]))
        link = f" Finding: `{m['finding']}`." if m.get("finding") else ""
        lines.append(f"- resembles #{m['issue']}, killed on {m.get('date', '?')} at {at}{where}; {diff}.{link}")
    more = f"\n- … and {len(matches) - limit} more." if len(matches) > limit else ""
    return ("**Graveyard check.** This idea is close to ideas refinery already killed:\n\n" + "\n".join(lines) + more
            + ("\n\nIt is on hold while this issue is blocked, and runs only when the hold is lifted." if held else
               "\n\nIt still runs. To stop it before it spends device time, label this issue `blocked`."))


def killed_ideas(kv) -> dict[int, dict]:
    out = {}
    for key in kv.keys("graveyard:"):
        try:
            out[int(key.split(":", 1)[1])] = kv.get(key)
        except ValueError:
            continue
    return out


def note_for(settings: config.Settings, kv, issue: int, spec: dict, held: bool = False) -> str | None:
    """The graveyard comment for a new idea, or None when it resembles no killed idea."""
    matches = resemblances(spec, killed_ideas(kv), settings.daemon.graveyard_max_diff, exclude=issue)
    return comment(matches, held=held) if matches else None
