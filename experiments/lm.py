"""The full stage's unit: one language-modelling run on runs/corpus, checkpointed and resumable.

A run trains `full_steps` steps of batch_size × seq_len windows drawn from train.bin by a generator seeded
with (seed, step), so a resumed run sees exactly the data it would have seen; depths come from DepthSampler
(also deterministic in (seed, step)). Every ckpt_every steps, and when SIGTERM asks for a warm stop, the
weights, optimiser, scaler and RNG states go to DIR/ckpt/<arm>-s<seed>/ (atomic). At the end: validation
loss at r̄ on fixed windows, validation loss at every r = 1 … eval_r_max, and the depth probe: a copy of the
model fine-tuned for full_probe_steps on one toy task in r50k ids, read out after every pass.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch

from experiments import corpus
from experiments.context import Ctx, Stopped
from experiments.tasks import make_task
from experiments.train import depth_curve, eval_r_max, level_cap, tensors
from refiner_model.checkpoint import load_checkpoint, save_checkpoint
from refiner_model.model import DepthSampler, build_model, configure_optimizer, lr_at
from refiner_model.precision import Precision

VAL_SEED = 4_242_424  # the fixed validation windows


@torch.no_grad()
def val_loss(model, data, s, prec, r: int | None = None) -> float:
    model.eval()
    rng = np.random.default_rng(VAL_SEED)
    total = 0.0
    for _ in range(s.stages.eval_batches):
        x, y = corpus.windows(data, s.train.batch_size, s.model.seq_len, rng)
        with prec.autocast():
            _, loss = model(torch.from_numpy(x).to(prec.device), r=r, targets=torch.from_numpy(y).to(prec.device))
        total += float(loss)
    model.train()
    return total / s.stages.eval_batches


def probe(model, s, seed: int, prec) -> list[float]:
    """Fine-tune a copy on the probe task (r50k ids, full vocabulary) and return its depth curve."""
    task = make_task(s.stages.full_probe_task, s)
    m = copy.deepcopy(model)
    opt = configure_optimizer(m, s)
    steps = s.stages.full_probe_steps
    sampler = DepthSampler(s, seed + 1, steps)
    for step in range(steps):
        r = sampler.draw(step)
        idx, pos, ans = tensors(task.train_batch(seed, step, s.train.batch_size, level_cap(task, r, s)),
                                prec.device, task.r50k)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, s)
        with prec.autocast():
            _, loss = m(idx, r=r, targets=ans, positions=pos)
        prec.step(loss, m, opt, s.train.grad_clip)
    return depth_curve(m, task, eval_r_max(s), prec.device, chunk=s.stages.eval_chunk, vocab_map=task.r50k)


def train_lm(ctx: Ctx, arm: str, arch: str, seed: int, units_base: float) -> dict[str, Any]:
    from refiner_model.memory import check_fits

    s = ctx.settings.replace({"seed": seed, "arch": arch}, source="run")
    cdir = s.stages.corpus_dir
    cdir = corpus.ROOT / cdir if not cdir.startswith("/") else cdir
    train, val = corpus.load("train", cdir), corpus.load("val", cdir)
    prec = Precision.from_settings(s)
    check_fits(s, s.train.batch_size, s.model.seq_len, device_type=prec.device.type)
    model = build_model(s).to(prec.device)
    opt = configure_optimizer(model, s)
    sampler = DepthSampler(s, seed, s.stages.full_steps)
    ck = ctx.run.path / "ckpt" / f"{arm}-s{seed}"
    start, val_hist, tokens = 0, [], 0
    if ck.exists() or ck.with_name(ck.name + ".old").exists():
        meta = load_checkpoint(ck, model, opt, prec.scaler, map_location=prec.device)
        start, val_hist = meta["step"] + 1, [tuple(x) for x in meta.get("val_history", [])]
        prec.restore_counts(meta.get("precision"))
        ctx.run.log(f"{arm}/s{seed}: resumed from {ck.name} at step {start}")
    steps, every = s.stages.full_steps, s.stages.ckpt_every

    def save(step: int) -> None:
        save_checkpoint(ck, model, opt, prec.scaler, {"step": step, "arm": arm, "arch": arch, "seed": seed,
                                                      "val_history": val_hist, "sampler": sampler.state_dict(),
                                                      "precision": prec.figures(),
                                                      "spec": ctx.spec})

    t0 = time.perf_counter()
    for step in range(start, steps):
        r = sampler.draw(step)
        x, y = corpus.windows(train, s.train.batch_size, s.model.seq_len, np.random.default_rng([seed, step, 11]))
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, s)
        with prec.autocast():
            _, loss = model(torch.from_numpy(x).to(prec.device), r=r, targets=torch.from_numpy(y).to(prec.device))
        prec.step(loss, model, opt, s.train.grad_clip)
        tokens += x.size
        if step % s.stages.eval_every == 0 or step == steps - 1:
            vl = val_loss(model, val, s, prec)
            val_hist.append((step, vl))
            ctx.run.metric({"run": f"{arm}/lm/s{seed}", "step": step, "r": r, "loss": float(loss.detach()),
                            "val_loss": vl})
        if (step + 1) % every == 0 or step == steps - 1:
            save(step)
        if step % 10 == 0:
            ctx.tick(units_base + step, f"{arm}/lm/s{seed}")
        if ctx.stop_requested:  # every step: an LM step can take seconds on CPU
            save(step)
            ctx.run.log(f"{arm}/s{seed}: checkpoint at step {step} on warm stop")
            raise Stopped()
    train_s = time.perf_counter() - t0
    fig = prec.figures()  # skipped steps and the loss scale of the training (the probe below uses the scaler too)
    by_r = [val_loss(model, val, s, prec, r=r) for r in range(1, eval_r_max(s) + 1)] if arch != "stack" else []
    curve = probe(model, s, seed, prec) if s.stages.full_probe_steps else []
    final = val_hist[-1][1] if val_hist else val_loss(model, val, s, prec)
    ctx.run.log(f"{arm}/lm/s{seed}: val loss {final:.4f}; by r {[round(v, 3) for v in by_r]}; probe "
                f"{[round(c, 1) for c in curve]}")
    return {"arm": arm, "arch": arch, "seed": seed, "val_loss": final, "val_history": val_hist,
            "val_loss_by_r": by_r, "probe_curve": curve, "train_s": train_s, "skipped": fig["skipped"],
            "calibration_skips": fig["calibration_skips"], "grad_scale": fig["grad_scale"],
            "tokens_per_s": tokens / max(train_s, 1e-9)}
