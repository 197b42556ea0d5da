"""What each stage does (experiments/stage.py is the entry point, errors and signals).

smoke        overfit one batch; N steps without NaN (float16: the GradScaler's calibration skips apart from the
             settled ones, ≤ 1% of those, final scale ≥ 2^8: CLAUDE.md has the rule); gate mean per
             pass in (0.05, 0.95) and the state still changing between passes; an eval sweep at r ∈ {1, 2, r̄, 2r̄};
             throughput. PASS or FAIL with the reason.
ablation     arms candidate (the spec's arch) vs control (reasoner; a code idea's `[code] control = "base"`: the
             same spec from the branch's merge-base, experiments/control_arm.py) [+ stack], the same seeds,
             every depth task plus the control task; the depth curve per run; the gate decides (EXTEND runs the
             extra seeds once, here, and decides again at α/2).
replication  the ablation on fresh seeds (seed_base + 10,000 …): a PASS is real only when this agrees.
full         language modelling on runs/corpus/{train,val}.bin, candidate vs control at equal tokens, full_seeds
             each; checkpoints every ckpt_every steps and on SIGTERM; resumable; validation loss per r and a
             depth probe on one toy task at the end.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from typing import Any

import numpy as np

from experiments import control_arm, gate, plots, verify
from experiments.context import REPLICATION_SEED_OFFSET, Ctx, seeds_for
from experiments.runs import git_state
from experiments.train import eval_r_max, run_many, stage_jobs, tensors, train_task


def _done(ctx: Ctx, name: str = "done.jsonl") -> dict[str, dict]:
    p = ctx.run.path / name
    out = {}
    if p.is_file():
        data = p.read_bytes()
        if data and not data.endswith(b"\n"):  # a record cut short (a kill or a full disk mid-write): drop it,
            data = data[:data.rfind(b"\n") + 1]  # so its run trains again and the next record starts a line
            os.truncate(p, len(data))
            ctx.run.log(f"{name}: dropped a torn last line (an interrupted write); that run trains again")
        for i, line in enumerate(data.decode(errors="replace").splitlines(), 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                    out[rec["key"]] = rec
                except (ValueError, TypeError, KeyError) as e:
                    raise ValueError(f"{p} line {i} is not a record ({e}); delete that line to train its run "
                                     "again") from e
    return out


def _record(ctx: Ctx, rec: dict, name: str = "done.jsonl") -> None:
    with open(ctx.run.path / name, "a") as f:
        f.write(json.dumps(rec) + "\n")


def _check_memory(ctx: Ctx, stage: str) -> dict[str, int]:
    """The stage's estimated peak per part, checked against the device's budget before anything is built
    (MemoryBudgetError: an ERROR verdict that names the numbers)."""
    from experiments.stage_memory import check_stage, summary

    ests = check_stage(ctx.settings, stage)
    ctx.run.log(f"memory estimate ({stage}): {summary(ests)}")
    return {k: e["total"] for k, e in ests.items()}


def _stepper(ctx: Ctx, key: str, base: float, every: int = 25):
    def on_step(step: int, rec: dict) -> None:
        if step % every == 0:
            ctx.check_stop()
            ctx.tick(base + step, key)
            if step % (every * 4) == 0:
                ctx.run.metric({"run": key, **rec})
    return on_step


# --------------------------------------------------------------------------- smoke
def smoke(ctx: Ctx) -> dict[str, Any]:

    from experiments.tasks import make_task
    from refiner_model.model import build_model, configure_optimizer
    from refiner_model.precision import Precision

    s, st = ctx.settings, ctx.settings.stages
    task_name = st.tasks[0]
    seed = ctx.seed_base
    memory = _check_memory(ctx, "smoke")
    ctx.total_units = st.smoke_overfit_steps + st.smoke_steps
    # 1. overfit one batch at r̄
    s1 = s.replace({"seed": seed, "warmup_steps": 0})
    task = make_task(task_name, s1)
    prec = Precision.from_settings(s1)
    model = build_model(s1, vocab_size=task.vocab_size).to(prec.device)
    opt = configure_optimizer(model, s1)
    idx, pos, ans = tensors(task.train_batch(seed, 0, s1.train.batch_size), prec.device)
    loss0 = loss = None
    for step in range(st.smoke_overfit_steps):
        with prec.autocast():
            _, loss = model(idx, r=s1.r_eval, targets=ans, positions=pos)
        loss0 = loss0 if loss0 is not None else float(loss.detach())
        prec.step(loss, model, opt, s1.train.grad_clip)
        if step % 25 == 0:
            ctx.check_stop()
            ctx.tick(step, "overfit one batch")
    overfit_loss = float(loss.detach()) if loss is not None else float("nan")
    ctx.run.log(f"overfit one batch: loss {loss0:.3f} → {overfit_loss:.4f} in {st.smoke_overfit_steps} steps")
    # 2. N training steps, health of the loop, the eval sweep
    res = train_task(s, task_name, seed, st.smoke_steps, log_every=10,
                     on_step=_stepper(ctx, f"{s.model.arch}/{task_name}/s{seed}", st.smoke_overfit_steps))
    steps = st.smoke_steps
    calib, settled = res["calibration_skips"], res["settled_skips"]
    settled_frac = settled / max(steps, 1)
    losses = [h["loss"] for h in res["history"]]
    scale = res["grad_scale"]
    rb = s.r_eval
    sweep = {str(r): res["curve"][min(r, len(res["curve"])) - 1] for r in sorted({1, 2, rb, 2 * rb})}
    checks: dict[str, tuple[bool, str]] = {
        "overfit": (overfit_loss <= st.smoke_overfit_loss,
                    f"one batch reached loss {overfit_loss:.3f} (must be ≤ {st.smoke_overfit_loss:g})"),
        "finite": (all(math.isfinite(x) for x in losses) and settled_frac <= st.smoke_max_skip_frac,
                   f"{settled} of {steps} steps skipped for non-finite loss/grads after the loss scale settled "
                   f"({settled_frac:.1%}, limit {st.smoke_max_skip_frac:.0%}; {calib} more while it calibrated)"),
    }
    if scale is not None:
        checks["scale_calibration"] = (
            calib <= st.max_calibration_skips,
            f"{calib} steps skipped while the GradScaler calibrated from {s.train.grad_scale_init:g} "
            f"(limit {st.max_calibration_skips})")
        checks["grad_scale"] = (scale >= st.smoke_min_grad_scale,
                                f"GradScaler scale {scale:g} (must stay ≥ {st.smoke_min_grad_scale:g})")
    if res["gate_mean"]:
        lo, hi = min(res["gate_mean"]), max(res["gate_mean"])
        checks["gate"] = (0.05 < lo and hi < 0.95, f"gate mean per pass in [{lo:.3f}, {hi:.3f}] (must be inside "
                          "(0.05, 0.95))")
    if len(res["state_delta"]) > 1:
        low = min(res["state_delta"][1:])
        checks["state_change"] = (low > 1e-3, f"smallest relative state change between passes {low:.2e} "
                                  "(must exceed 1e-3)")
    failed = [msg for ok, msg in checks.values() if not ok]
    for name, (ok, msg) in checks.items():
        ctx.run.log(f"check {name}: {'ok' if ok else 'FAILED'} — {msg}")
    figures = {"overfit_loss": overfit_loss, "overfit_loss_start": loss0, "final_loss": losses[-1] if losses else None,
               "skipped_steps": res["skipped"], "calibration_skips": calib, "settled_skips": settled, "steps": steps,
               "grad_scale": scale, "syncs": res["syncs"], "dtype": str(res["precision"].dtype),
               "gate_mean": res["gate_mean"],
               "state_delta": res["state_delta"], "eval_sweep": sweep, "tokens_per_s": res["tokens_per_s"],
               "train_s": res["train_s"], "params": res["params"], "task": task_name, "memory_estimate": memory}
    ctx.run.metric({"run": "smoke", "eval_sweep": sweep, "tokens_per_s": res["tokens_per_s"]})
    fig = plots.depth_curves({task_name: {"candidate": [res["curve"]]}}, ctx.run.path / "plots" / "depth.png", rb,
                             title="smoke: accuracy against depth")
    loss_fig = plots.loss_curves({task_name: {"candidate": [[(h["step"], h["loss"]) for h in res["history"]]]}},
                                 ctx.run.path / "plots" / "loss.png")
    ctx.tick(ctx.total_units, "done")
    verdict = "FAIL" if failed else "PASS"
    reason = "; ".join(failed) if failed else (f"healthy: overfit {overfit_loss:.3f}, no NaN, "
                                              f"{res['tokens_per_s']:.0f} tokens/s, sweep {sweep}")
    return {"verdict": verdict, "reason": reason, "evidence": {k: {"ok": ok, "detail": m} for k, (ok, m)
                                                               in checks.items()},
            "figures": figures, "plots": [fig, loss_fig]}


# --------------------------------------------------------------------------- ablation
def arms_of(ctx: Ctx) -> dict[str, str]:
    arms = {"candidate": ctx.settings.model.arch, "control": "reasoner"}
    if ctx.settings.stages.ablation_stack_arm:
        arms["stack"] = "stack"
    return arms


def _ablation_run(s, t: str, seed: int, steps: int, arm: str, arch: str, on_step=None) -> dict:
    """One (seed, task, arm) run of an ablation, as done.jsonl records it (module level: a pool worker runs it)."""
    res = train_task(s, t, seed, steps, arch=arch, log_every=max(steps // 50, 1), on_step=on_step)
    return {"key": f"{arm}/{t}/s{seed}", "arm": arm, "arch": arch, "task": t, "seed": seed, "curve": res["curve"],
            "acc": res["acc"], "train_s": res["train_s"], "tokens_per_s": res["tokens_per_s"], "floor": res["floor"],
            "gate_mean": res["gate_mean"], "skipped": res["skipped"], "calibration_skips": res["calibration_skips"],
            "settled_skips": res["settled_skips"], "grad_scale": res["grad_scale"],
            "loss": [(h["step"], h["loss"]) for h in res["history"]]}


def check_skips(rec: dict, steps: int, limit_frac: float, max_calibration: int) -> None:
    """An arm whose steps were skipped past the limits (after the loss scale settled: limit_frac of its steps;
    while it calibrated: max_calibration) is a fault of the run: SkippedStepsError (an ERROR verdict, retried),
    never a silent handicap of that arm."""
    from refiner_model.precision import SkippedStepsError

    settled, calib = rec.get("settled_skips", rec.get("skipped", 0)), rec.get("calibration_skips", 0)
    if settled > limit_frac * steps or calib > max_calibration:
        raise SkippedStepsError(
            f"{rec['key']}: {settled} of {steps} steps skipped after the loss scale settled (limit "
            f"{limit_frac:.0%} = {int(limit_frac * steps)}) and {calib} while it calibrated (limit {max_calibration}); "
            f"final scale {rec.get('grad_scale')}")


def _ablation_round(ctx: Ctx, seeds: list[int], done: dict, base_units: float) -> float:
    """Train every (seed, task, arm) not yet done, stage_jobs at a time on a CPU; returns the units consumed."""
    s = ctx.settings
    tasks = list(s.stages.tasks) + [s.stages.control_task]
    steps = s.stages.ablation_steps
    keys = [(seed, t, arm, arch) for seed in seeds for t in tasks for arm, arch in arms_of(ctx).items()]
    todo = [(s, t, seed, steps, arm, arch) for seed, t, arm, arch in keys if f"{arm}/{t}/s{seed}" not in done]
    units = base_units + steps * (len(keys) - len(todo))
    base = control_arm.wanted(ctx)  # [code] control = "base": the control arm runs apart, in a child of its own
    remote = [a for a in todo if base and a[4] == "control"]
    local = [a for a in todo if not (base and a[4] == "control")]
    jobs = stage_jobs(s, len(local))
    if jobs > 1:
        ctx.run.log(f"{len(todo)} runs, {jobs} at once (one process and one torch thread each)")

    def progress(a: tuple) -> dict:  # one at a time: per-step progress from the units done so far (read when called)
        return {"on_step": _stepper(ctx, f"{a[4]}/{a[1]}/s{a[2]}", units)}

    if remote:
        ctx.tick(units, "control arm from another commit")
    from_base = ((None, rec) for rec in control_arm.run(ctx, remote)) if remote else ()
    for _, rec in itertools.chain(from_base, run_many(_ablation_run, local, jobs, stop=ctx.check_stop,
                                                      local=progress)):
        # before it is recorded: the retry trains it again
        check_skips(rec, steps, s.stages.skip_error_frac, s.stages.max_calibration_skips)
        _record(ctx, rec)
        done[rec["key"]] = rec
        acc = rec["acc"]
        ctx.run.log(f"{rec['key']}: acc r=1 {acc['r1']:.1f}  r̄ {acc['rbar']:.1f}  2r̄ {acc['r2bar']:.1f}  "
                    f"({rec['train_s']:.1f} s; skipped {rec['skipped']}, scale {rec['grad_scale']})")
        ctx.run.metric({"run": rec["key"], "eval": rec["curve"], **acc})
        units += steps
        ctx.tick(units, rec["key"])
    return units


def _evidence(ctx: Ctx, done: dict, seeds: list[int], extended: bool) -> dict:
    s = ctx.settings
    tasks = {t: "depth" for t in s.stages.tasks}
    tasks[s.stages.control_task] = "control"
    ev: dict[str, Any] = {"tasks": {}, "extended": extended, "seeds": seeds,
                          "primary": (ctx.prereg or {}).get("primary_task")}
    for t, role in tasks.items():
        floors = [done[k]["floor"] for k in done if done[k]["task"] == t and "floor" in done[k]]
        ev["tasks"][t] = {"role": role, "floor": 100.0 * floors[0] if floors else None}  # trivial answer, points
        for arm in ("candidate", "control"):
            recs = [done[f"{arm}/{t}/s{sd}"] for sd in seeds]
            ev["tasks"][t][arm] = {k: [r["acc"][k] for r in recs] for k in ("r1", "rbar", "r2bar")}
    return ev


def _plots(ctx: Ctx, done: dict, seeds: list[int]) -> list[str]:
    s = ctx.settings
    tasks = list(s.stages.tasks) + [s.stages.control_task]
    arms = list(arms_of(ctx))
    pick = lambda t, a, f: [done[f"{a}/{t}/s{sd}"][f] for sd in seeds if f"{a}/{t}/s{sd}" in done]  # noqa: E731
    d = ctx.run.path / "plots"
    floors = {t: next((done[k]["floor"] for k in done if done[k]["task"] == t), 0.0) for t in tasks}
    return [
        plots.loss_curves({t: {a: pick(t, a, "loss") for a in arms} for t in tasks}, d / "loss.png"),
        plots.depth_curves({t: {a: pick(t, a, "curve") for a in arms} for t in tasks}, d / "depth.png",
                           s.r_eval, floors=floors),
        plots.strip({t: {a: [x["rbar"] for x in pick(t, a, "acc")] for a in arms} for t in tasks}, d / "strip.png"),
    ]


def ablation(ctx: Ctx, offset: int = 0, label: str = "ablation") -> dict[str, Any]:
    s = ctx.settings
    memory = _check_memory(ctx, "ablation")
    n, extra = s.stages.ablation_seeds, s.gate.extend_seeds
    seeds = seeds_for(ctx, n, offset)
    per_round = (len(s.stages.tasks) + 1) * len(arms_of(ctx)) * s.stages.ablation_steps
    ctx.total_units = per_round * n
    done = _done(ctx)
    units = _ablation_round(ctx, seeds, done, 0.0)
    v = gate.decide_ablation(_evidence(ctx, done, seeds, False), s)
    first = v
    ctx.run.log(f"{label} gate on {n} seeds: {v.verdict} — {v.reason}")
    if v.verdict == "EXTEND":
        more = seeds_for(ctx, extra, offset + n)
        ctx.total_units = per_round * (n + extra)
        _ablation_round(ctx, more, done, units)
        seeds = seeds + more
        v = gate.decide_ablation(_evidence(ctx, done, seeds, True), s)
        ctx.run.log(f"{label} gate after the extension to {len(seeds)} seeds: {v.verdict} — {v.reason}")
    figs = _plots(ctx, done, seeds)
    curves = {k: done[k]["curve"] for k in sorted(done) if int(k.rsplit("/s", 1)[1]) in seeds}
    train_s = [done[k]["train_s"] for k in done]
    figures = {"seeds": seeds, "depth_curves": curves, "run_train_s_mean": float(np.mean(train_s)),
               "control": control_arm.describe(ctx, done, git_state()["git_sha"]),
               "runs": len(done), "tokens_per_s_mean": float(np.mean([done[k]["tokens_per_s"] for k in done])),
               "skipped_steps": {k: done[k].get("skipped") for k in sorted(done)},
               "grad_scale": {k: done[k].get("grad_scale") for k in sorted(done)}, "memory_estimate": memory}
    out = {"verdict": v.verdict, "reason": v.reason, "evidence": v.evidence, "figures": figures, "plots": figs,
           "first_round": first.verdict if first is not v else None}
    if ctx.prereg:
        out["prereg"] = score_prereg(ctx.prereg, v)
    return out


def replication(ctx: Ctx) -> dict[str, Any]:
    out = ablation(ctx, offset=REPLICATION_SEED_OFFSET, label="replication")
    out["replicates"] = out["verdict"] == "PASS"
    out["reason"] = ("replicated on fresh seeds: " if out["replicates"] else "did not replicate: ") + out["reason"]
    return out


def score_prereg(prereg: dict, v: gate.Verdict) -> dict[str, Any]:
    """The pre-registered expectation against what happened (kill_if is text: echoed for the reader); the one rule
    lives in experiments/verify.py, which re-derives it from a recorded verdict."""
    return verify.score_prereg(prereg, {"verdict": v.verdict, "evidence": v.evidence})


# --------------------------------------------------------------------------- full
def full(ctx: Ctx) -> dict[str, Any]:
    from experiments import lm

    s = ctx.settings
    memory = _check_memory(ctx, "full")
    seeds = seeds_for(ctx, s.stages.full_seeds)
    arms = {"candidate": s.model.arch, "control": "reasoner"}
    per = s.stages.full_steps
    ctx.total_units = per * len(seeds) * len(arms)
    done = _done(ctx, "full_done.jsonl")
    units = 0.0
    for seed in seeds:
        for arm, arch in arms.items():
            key = f"{arm}/lm/s{seed}"
            if key not in done:
                rec = lm.train_lm(ctx, arm, arch, seed, units)
                _record(ctx, {"key": key, **rec}, "full_done.jsonl")
                done[key] = rec
            units += per
            ctx.tick(units, key)
    ev = {"val_loss": {a: [done[f"{a}/lm/s{sd}"]["val_loss"] for sd in seeds] for a in arms},
          "depth_curve": {"r": list(range(1, eval_r_max(s) + 1)),
                          "candidate": [done[f"candidate/lm/s{sd}"]["probe_curve"] for sd in seeds]},
          "r_bar": s.r_eval}
    v = gate.decide_full(ev, s)
    d = ctx.run.path / "plots"
    figs = [plots.series({k: done[k]["val_history"] for k in done}, d / "val_loss.png", "validation loss (nats)",
                         "full: validation loss per run"),
            plots.depth_curves({s.stages.full_probe_task: {a: [done[f"{a}/lm/s{sd}"]["probe_curve"] for sd in seeds]
                                                           for a in arms}}, d / "depth.png", s.r_eval,
                               title="full: depth probe after language modelling"),
            plots.series({k: list(enumerate(done[k]["val_loss_by_r"], 1)) for k in done}, d / "val_loss_by_r.png",
                         "validation loss (nats)", "validation loss against loop depth r",
                         xlabel="loop passes r")]
    figures = {"val_loss_by_r": {k: done[k]["val_loss_by_r"] for k in done},
               "tokens_per_s": {k: done[k]["tokens_per_s"] for k in done}, "seeds": seeds, "memory_estimate": memory,
               "skipped_steps": {k: done[k].get("skipped") for k in done},
               "grad_scale": {k: done[k].get("grad_scale") for k in done}}
    return {"verdict": v.verdict, "reason": v.reason, "evidence": {**v.evidence, "input": ev}, "figures": figures,
            "plots": figs}
