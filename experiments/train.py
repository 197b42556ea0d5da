"""One training run on a toy task, and its depth curve: the unit every stage and calibration repeats.

    res = train_task(settings, "khop", seed=3, steps=1500)
    res["curve"]          # accuracy (points) on the fixed test set after each loop pass 1 … eval_r_max
    res["acc"]["rbar"]    # the primary read-out: r = r̄ (settings.r_eval)

A seed sets the initial weights, the data stream and the depth draws (Bouthillier 2021: randomise them
together). A step draws r from DepthSampler, then a batch whose levels are capped by r when
stages.level_by_depth (r ≥ k for k-hop), runs the model at that r and scores the single answer token.
Evaluation reads out after every pass in one forward (LoopedLM.depth_curve), so the whole accuracy-
against-depth curve costs one pass at the deepest r.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np
import torch

from config import Settings
from experiments.tasks import Task, make_task
from refiner_model.model import DepthSampler, build_model, configure_optimizer, lr_at, num_params
from refiner_model.precision import Precision


def level_cap(task: Task, r: int, settings: Settings) -> int | None:
    """The hardest level a batch at depth r may hold (None = the task's hardest): the hardest level is the one
    read out at r̄, so fewer passes get proportionally easier problems and r ≥ r̄ gets them all — passes beyond
    what a problem needs (k-hop: r > k) train the loop to hold its answer rather than keep going."""
    if not settings.stages.level_by_depth or settings.model.arch == "stack" or r >= settings.r_eval:
        return None
    return max(1, math.ceil(task.level * r / max(settings.r_eval, 1)))


def eval_r_max(settings: Settings) -> int:
    return settings.stages.eval_r_max or 2 * settings.model.r_mean


def tensors(batch, device, vocab_map: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """idx, pos, ans as tensors; vocab_map (task.r50k) turns compact ids into r50k ids for a full-vocab model."""
    idx, ans = (batch.idx, batch.ans) if vocab_map is None else (vocab_map[batch.idx], vocab_map[batch.ans])
    return (torch.from_numpy(idx).to(device), torch.from_numpy(batch.pos).to(device), torch.from_numpy(ans).to(device))


@torch.no_grad()
def depth_curve(model, task: Task, r_max: int, device, level: int | None = None, chunk: int = 1000,
                vocab_map: np.ndarray | None = None) -> list[float]:
    """Accuracy in points on the fixed test set after each pass 1..r_max (stack: one value)."""
    model.eval()
    test = task.test_set(level=level)
    hits = None
    idx, pos, ans = tensors(test, device, vocab_map)
    for i in range(0, len(test), chunk):
        logits = model.depth_curve(idx[i:i + chunk], pos[i:i + chunk], r_max)  # [r, b, V]
        h = (logits.argmax(-1) == ans[i:i + chunk]).sum(-1).cpu().numpy()
        hits = h if hits is None else hits + h
    model.train()
    return [float(100.0 * x / len(test)) for x in hits]


def read_points(curve: list[float], settings: Settings, arch: str) -> dict[str, float]:
    """r = 1, r̄ and 2r̄ read off a depth curve (the stack arm has one depth: all three are it)."""
    if arch == "stack" or len(curve) == 1:
        return {"r1": curve[0], "rbar": curve[-1], "r2bar": curve[-1]}
    rb = settings.r_eval
    at = lambda r: curve[min(r, len(curve)) - 1]  # noqa: E731
    return {"r1": at(1), "rbar": at(rb), "r2bar": at(2 * rb)}


def train_task(settings: Settings, task_name: str, seed: int, steps: int, arch: str | None = None,
               on_step: Callable[[int, dict], None] | None = None, log_every: int = 0,
               overrides: dict[str, Any] | None = None, label_noise: float = 0.0) -> dict[str, Any]:
    """Train one model on one toy task; return its metrics, final depth curve and timing.

    arch overrides settings.model.arch (the ablation's arms). label_noise replaces that fraction of the
    training answers with random tokens (the calibration's crippled positive control)."""
    over = {"seed": seed, **({"arch": arch} if arch else {}), **(overrides or {})}
    s = settings.replace(over, source="run")
    if s.stages.stage_threads:
        torch.set_num_threads(s.stages.stage_threads)
    task = make_task(task_name, s)
    prec = Precision.from_settings(s)
    model = build_model(s, vocab_size=task.vocab_size).to(prec.device)
    opt = configure_optimizer(model, s)
    sampler = DepthSampler(s, seed, steps)
    noise_rng = np.random.default_rng([seed, 0xBAD])
    history, t0, tokens = [], time.perf_counter(), 0
    # health of the loop over the last 50 steps, per pass index: sums on the device, counts on the host
    stat_sums: dict[str, torch.Tensor] = {}
    stat_n: dict[str, np.ndarray] = {}
    loss_sum, loss_n = torch.zeros((), device=prec.device), 0  # the interval's losses (device)
    fig: dict[str, Any] = {}
    for step in range(steps):
        r = sampler.draw(step)
        batch = task.train_batch(seed, step, s.train.batch_size, max_level=level_cap(task, r, s))
        idx, pos, ans = tensors(batch, prec.device)
        if label_noise > 0:
            flip = torch.from_numpy(noise_rng.random(len(ans)) < label_noise).to(prec.device)
            ans = torch.where(flip, torch.from_numpy(noise_rng.integers(1, task.vocab_size, len(ans))).to(
                prec.device), ans)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, s)
        with prec.autocast():
            _, loss = model(idx, r=r, targets=ans, positions=pos)
        prec.step(loss, model, opt, s.train.grad_clip)
        loss_sum, loss_n = loss_sum + loss.detach().float(), loss_n + 1
        tokens += idx.numel()
        if step >= steps - 50:  # health of the loop at the end of training, per pass index (summed on the device)
            for k, v in model.stats_tensors().items():
                if k not in stat_sums:
                    stat_sums[k] = torch.zeros(model.r_limit + len(model.prelude) + 64, device=prec.device)
                    stat_n[k] = np.zeros(len(stat_sums[k]), dtype=np.int64)
                stat_sums[k][:len(v)] += v
                stat_n[k][:len(v)] += 1
        rec = {"step": step, "r": r, "lr": opt.param_groups[0]["lr"]}
        if log_every and (step % log_every == 0 or step == steps - 1):
            fig = prec.figures(loss_sum / max(loss_n, 1))  # the interval's one device-to-host transfer
            loss_sum, loss_n = torch.zeros((), device=prec.device), 0
            rec.update(loss=fig["extra"][0], skipped=fig["skipped"], grad_scale=fig["grad_scale"],
                       elapsed_s=time.perf_counter() - t0)
            history.append(rec)
        if on_step:
            on_step(step, rec)
    train_s = time.perf_counter() - t0
    fig = prec.figures()  # the totals, after training
    means = {k: [x / n for x, n in zip(v.tolist(), stat_n[k]) if n] for k, v in stat_sums.items()}
    rmax = 1 if s.model.arch == "stack" else eval_r_max(s)
    curve = depth_curve(model, task, rmax, prec.device, chunk=s.stages.eval_chunk)
    return {
        "task": task_name, "seed": seed, "arch": s.model.arch, "steps": steps, "params": num_params(model),
        "curve": curve, "acc": read_points(curve, s, s.model.arch), "history": history,
        "train_s": train_s, "eval_s": time.perf_counter() - t0 - train_s, "tokens_per_s": tokens / max(train_s, 1e-9),
        "skipped": fig["skipped"], "calibration_skips": fig["calibration_skips"],
        "settled_skips": fig["settled_skips"], "grad_scale": fig["grad_scale"], "syncs": prec.syncs,
        "floor": task.floor(task.test_set()),
        "gate_mean": means.get("gate_mean", []), "state_delta": means.get("state_delta", []),
        "model": model, "precision": prec,
    }


# --------------------------------------------------------------------------- many runs at once
def stage_jobs(settings: Settings, n_runs: int) -> int:
    """How many toy runs to train at once: 1 on a GPU (the card runs one thing at a time), else
    stages.stage_jobs (0: the cores), never more than there are runs. On 2 CPU cores a tiny model trains 300
    k-hop steps in 4.7 s with one thread and 5.2 s with two, so two one-thread processes side by side do
    twice the work of one two-thread process."""
    from refiner_model.precision import resolve_device

    if resolve_device(settings.train.device).type != "cpu":
        return 1
    jobs = settings.stages.stage_jobs or len(os.sched_getaffinity(0))
    return max(1, min(jobs, n_runs))


def _pool_worker() -> None:
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops the pool


def run_many(fn: Callable[..., Any], calls: list[tuple], jobs: int, stop: Callable[[], None] | None = None,
             local: Callable[[tuple], dict] | None = None, poll_s: float = 0.2) -> Iterator[tuple[tuple, Any]]:
    """Call fn(*args) for each args of `calls`, yielding (args, result) as each finishes.

    jobs == 1: one after another in this process, with the extra keyword arguments local(args) (e.g. a
    per-step progress hook). jobs > 1: in that many spawned processes with one torch thread each (fn is a
    module-level function, its result picklable), in the order they finish. `stop` is called while
    waiting; when it raises (a stop was requested) or a worker is killed by the same signal, the workers
    are terminated and the exception propagates: the results already yielded are all there is."""
    if jobs <= 1:
        for args in calls:
            if stop:
                stop()
            yield args, fn(*args, **(local(args) if local else {}))
        return
    before = set(mp.active_children())
    ex = ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_pool_worker)
    clean = False
    try:
        pending = {ex.submit(fn, *args): args for args in calls}
        while pending:
            finished, _ = wait(pending, timeout=poll_s, return_when=FIRST_COMPLETED)
            if stop:
                stop()
            for fut in finished:
                args = pending.pop(fut)
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    time.sleep(poll_s)  # a SIGTERM to the process group reaches the workers first: let ours land
                    if stop:
                        stop()
                    raise
                yield args, result
        clean = True
    finally:
        if not clean:  # stopped, failed, or the caller stopped reading: no run goes on in the background
            for p in set(mp.active_children()) - before:
                p.terminate()
        ex.shutdown(wait=True, cancel_futures=True)
