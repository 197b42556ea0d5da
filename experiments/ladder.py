"""What refinery does with an INCONCLUSIVE ablation: one step along the uninformative task's difficulty ladder.

config.DIFFICULTY_LADDERS lists, per depth task, its levels easiest first (the spec fields each level sets). A task
at the ceiling (both arms within uninformative_margin of 100) moves one level up, a task at the floor (both at the
trivial answer's accuracy) one level down; ablation_steps never drops (a level's steps are a minimum). `plan()`
turns an INCONCLUSIVE result into either a re-run (the overrides, and text for the comment) or a wait (the ladder is
exhausted or the re-runs allowed, gate.inconclusive_reruns, are spent: the comment says what was seen and asks for a
spec). The agent's pipeline only enqueues what `plan()` says, with the spec file `write_spec()` writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from config import DIFFICULTY_LADDERS, RefineryError, Settings


class LadderError(RefineryError):
    """A task has no difficulty ladder, or a spec file to re-run cannot be read.

    Fix: add the task's levels to DIFFICULTY_LADDERS in config.py, or re-queue the idea by editing its issue body.
    """


def knob_of(task: str) -> str:
    """The spec field a task's ladder steps (its levels' first key)."""
    if task not in DIFFICULTY_LADDERS:
        raise LadderError(f"task {task!r} has no difficulty ladder: add its levels to DIFFICULTY_LADDERS in config.py")
    return next(iter(DIFFICULTY_LADDERS[task][0]))


def level_of(task: str, spec: dict[str, Any]) -> int:
    """The index of the ladder level a spec is at: the highest level whose knob ≤ the spec's (−1: below all)."""
    knob = knob_of(task)
    value = spec[knob]
    return max((i for i, lv in enumerate(DIFFICULTY_LADDERS[task]) if lv[knob] <= value), default=-1)


def step(task: str, spec: dict[str, Any], where: str) -> dict[str, Any] | None:
    """The overrides one level up ('ceiling') or down ('floor') from the spec's level; None at the ladder's end."""
    ladder, knob = DIFFICULTY_LADDERS[task], knob_of(task)
    i = level_of(task, spec)
    if where == "ceiling":
        j = i + 1
        if j >= len(ladder):
            return None
    else:  # floor: one level below the spec's own value (a value between levels steps to the level under it)
        j = i - 1 if i >= 0 and ladder[i][knob] == spec[knob] else i
        if j < 0:
            return None
    level = dict(ladder[j])
    level["ablation_steps"] = max(int(spec.get("ablation_steps", 0)), int(level.get("ablation_steps", 0)))
    return level


def plan(evidence: dict[str, Any], spec: dict[str, Any], reruns_done: int, settings: Settings) -> dict[str, Any]:
    """{"action": "rerun", "overrides": {...}, "moves": {task: [from, to, where]}, "text"} or {"action": "wait",
    "text"} for an INCONCLUSIVE result's evidence (gate.decide_ablation's) and the spec it ran with (flat)."""
    tasks = evidence.get("tasks") or {}
    uninf: dict[str, str] = evidence.get("uninformative") or {}
    seen = "; ".join(f"{t}: both arms at the {w} (candidate {tasks[t]['mean_candidate']:.1f}, control "
                     f"{tasks[t]['mean_control']:.1f}, trivial answer {_pts(tasks[t].get('floor'))})"
                     for t, w in uninf.items() if t in tasks) or "no uninformative task recorded"
    if reruns_done >= settings.gate.inconclusive_reruns:
        return {"action": "wait", "text": (
            f"Still inconclusive after {reruns_done} re-run(s) along the difficulty ladder ({seen}). Nothing more "
            "runs: edit the issue body with a spec whose tasks can show a difference (harder or easier levels, more "
            "steps), and refinery queues it again. This is no verdict on the idea.")}
    overrides: dict[str, Any] = {}
    moves: dict[str, list] = {}
    for t, where in uninf.items():
        if t not in DIFFICULTY_LADDERS:
            continue
        lv = step(t, spec, where)
        if lv is None:
            continue
        knob = knob_of(t)
        moves[t] = [spec[knob], lv[knob], where]
        steps = max(int(overrides.get("ablation_steps", 0)), lv.pop("ablation_steps"))
        overrides.update(lv, ablation_steps=steps)
    if not moves:
        return {"action": "wait", "text": (
            f"Inconclusive, and the difficulty ladder is exhausted for {', '.join(uninf) or 'its tasks'} ({seen}). "
            "Nothing more runs: edit the issue body with a spec that can show a difference, and refinery queues it "
            "again. This is no verdict on the idea.")}
    why = {"ceiling": "harder: both arms at the ceiling", "floor": "easier: both arms at the trivial answer"}
    how = ", ".join(f"{t} {knob_of(t)} {a} → {b} ({why[w]})" for t, (a, b, w) in moves.items())
    if overrides.get("ablation_steps") != spec.get("ablation_steps"):
        how += f", ablation_steps {spec.get('ablation_steps')} → {overrides['ablation_steps']}"
    return {"action": "rerun", "overrides": overrides, "moves": moves, "text": (
        f"Inconclusive ({seen}): that counts neither for nor against the idea. The ablation runs again, once, at "
        f"the next level of the difficulty ladder: {how}.")}


def write_spec(spec_file: str | Path, overrides: dict[str, Any], rerun: int) -> Path:
    """A copy of the stage's spec file (JSON {"spec": flat, ...}) with the overrides, next to it as <stem>-L<rerun>."""
    src = Path(spec_file)
    try:
        doc = json.loads(src.read_text())
    except (OSError, ValueError) as e:
        raise LadderError(f"cannot read the spec file {src} to re-run it ({e}): edit the issue body to queue the idea "
                          "again") from e
    doc["spec"] = {**doc.get("spec", {}), **overrides}
    doc["ladder"] = {"rerun": rerun, "overrides": overrides, "from": str(src)}
    out = src.with_name(f"{src.stem.split('-L')[0]}-L{rerun}.json")
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(out)
    return out


def _pts(x: Any) -> str:
    return "–" if x is None else f"{float(x):.1f}"
