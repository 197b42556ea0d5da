"""Memory estimate of one training step, a refusal for configs that will not fit, and measurements to check it.

    estimate(settings, batch, seq)   -> bytes: weights, grads, optimizer, activations, loss, transient, total
    estimate_eval(settings, chunk, seq, vocab, r)   -> a depth-curve evaluation (its [r, chunk, vocab] logits)
    estimate_probe(settings, batch, seq, chunk, ...) -> the full stage's depth probe (a copy + fresh optimiser)
    check_fits(settings, batch, seq) -> the estimate, or MemoryBudgetError naming the numbers and what to shrink
    measure_cpu(..., kind)           -> peak bytes of a real step / evaluation / probe in a child process (VmHWM)
    measure_cuda(..., kind)          -> torch.cuda.max_memory_allocated of the same
(experiments/stage_memory.py puts these together per stage and refuses a stage before it starts.)

Activations are counted per token per block-pass from what autograd saves (counted once with
saved_tensors_hooks on CPU, float32): 15·d + 4·d_mlp + 3·H + 2 elements for a full block, plus 3·d for the
refiner's channel gate (2·d + 1 for the token gate). Only passes inside the backprop window keep activations.
The loss keeps at most one chunk of logits (loss_chunk_tokens × vocab) alive. Under float16 autocast the
saved matmul inputs are half size and the autocast cache holds a float16 copy of the weights; the same
constants hold for float16 autocast on a CPU (measured) and are checked against CUDA by `make gpu-check`.

    python -m refiner_model.memory [--batch 32 --seq 128 --vocab 512]   # estimate vs CPU measurement
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from config import ROOT, RefineryError, Settings

MIB = 1 << 20


class MemoryBudgetError(RefineryError):
    """A training run would need more memory than the device budget allows.

    Fix: the message lists the estimate by part; shrink the largest (batch_size, seq_len, the size preset,
    r_max or backprop_window for activations; loss_chunk_tokens for the loss), or raise gpu_mem_budget /
    cpu_mem_budget in config.py if the budget itself is wrong.
    """


def _param_counts(settings: Settings, vocab: int) -> dict[str, int]:
    """Parameter counts by part, from the dimensions alone (no model is built)."""
    m, dims = settings.model, settings.dims
    d, H, dm = dims["d_model"], dims["n_heads"], dims["d_mlp"]
    hd = d // H
    attn = 3 * d * d + d * d + 2 * hd + d  # qkv, proj, q/k norm gains, norm1 gain
    mlp = 2 * d * dm + dm * d + d  # fc (fused gate/value), proj, norm2 gain
    block = attn + mlp
    prelude = m.n_prelude * (block if m.prelude_attention else mlp)
    core = block * (m.r_mean if m.arch == "stack" else 1)
    extra = 0
    if m.arch == "refiner":
        extra = m.r_limit * d + (d * d + d if m.gate == "channel" else d + 1)
    return {"embedding": vocab * d, "prelude": prelude, "core": core, "refiner_extra": extra, "final_norm": d}


def act_elems_per_token(settings: Settings, attention: bool = True, gated: bool = False) -> float:
    """Elements autograd saves per token for one block-pass (float32 CPU count; see the module docstring)."""
    dims = settings.dims
    d, H, dm = dims["d_model"], dims["n_heads"], dims["d_mlp"]
    n = 15 * d + 4 * dm + 3 * H + 2 if attention else 4 * d + 4 * dm + 1
    if gated:
        n += 3 * d if settings.model.gate == "channel" else 2 * d + 1
    return n


def estimate(settings: Settings, batch: int, seq: int, vocab_size: int | None = None, r: int | None = None,
             lm_loss: bool = True, dtype: str = "float32") -> dict[str, int]:
    """Bytes for one training step at depth r (default r_max: the worst a sampler draws), by part, and the
    peak `total` (not the sum of the parts: see below). Calibrated against measure_cpu within a few percent.

    lm_loss: the chunked loss over every token (else one scored token per row). dtype: the compute dtype
    (float16 halves the saved matmul inputs and adds the autocast weight cache).
    """
    m = settings.model
    vocab = vocab_size or m.vocab_size
    d, dm = settings.dims["d_model"], settings.dims["d_mlp"]
    r = r or m.r_max
    parts = _param_counts(settings, vocab)
    n_params = sum(parts.values())
    n_tok = batch * seq
    half = dtype in ("float16", "bfloat16")
    act_bytes = 2.6 if half else 4.0  # ~2/3 of the saved elements are matmul inputs (half) under autocast

    if m.arch == "stack":
        passes_grad = m.r_mean
    else:
        passes_grad = r if m.backprop_window == 0 else min(r, m.backprop_window)
    per_tok = (m.n_prelude * act_elems_per_token(settings, m.prelude_attention)
               + passes_grad * act_elems_per_token(settings, True, gated=(m.arch == "refiner")) + 20)
    activations = int(n_tok * per_tok * act_bytes)
    # loss: one chunk's logits, their soft cap and softmax gradient alive at once (float32; under float16
    # autocast also the head's float16 output before its cast to float32)
    loss_tokens = min(n_tok, m.loss_chunk_tokens) if lm_loss else batch
    loss = int(loss_tokens * vocab * (4 * 3 + (2 if half else 0)))
    # backward transient: gradients flowing through the widest layer of one block (float32)
    transient = int(n_tok * (2 * dm + 3 * d) * 4)
    out = {
        "params": n_params,
        "weights": n_params * 4 + (n_params * 2 if half else 0),  # fp32 master (+ fp16 autocast cache)
        "grads": n_params * 4,
        "optimizer": n_params * 8,  # AdamW exp_avg + exp_avg_sq
        "activations": activations,
        "loss": loss,
        "transient": transient,
    }
    # The peak is at the start of backward, before any gradient exists (they are set to None between steps):
    # weights + optimiser state + everything saved + the live loss chunk + the first gradients flowing back.
    # Late in backward the weight gradients (and AdamW's temporaries, about as large) take their place.
    out["total"] = (out["weights"] + out["optimizer"]
                    + max(activations + loss + transient, 2 * out["grads"]))
    return out


def eval_act_bytes_per_token(settings: Settings, half: bool) -> float:
    """Bytes alive per token at the peak of a no-grad forward (the MLP of a loop pass: the state, its norm and
    proposal, the fused gate/value output and the gated product): 7·d float32 + 4·d_mlp elements in the
    compute dtype. Fitted on CPU measurements (float32 and float16 autocast), within 2%."""
    d, dm = settings.dims["d_model"], settings.dims["d_mlp"]
    return 7 * d * 4 + 4 * dm * (2 if half else 4)


def estimate_eval(settings: Settings, chunk: int, seq: int, vocab_size: int | None = None, r: int | None = None,
                  dtype: str = "float32", optimizer: bool = True) -> dict[str, int]:
    """Bytes of one depth-curve evaluation: `chunk` rows of `seq` tokens read out after each of r passes (at one
    position per row) while the model (and its optimiser state) stay alive. Its logits, [r, chunk, vocab]
    float32, are held pass by pass and then stacked (both alive at the end: 2·r·chunk·vocab·4 bytes)."""
    m = settings.model
    vocab = vocab_size or m.vocab_size
    r = r or 2 * m.r_mean
    n_params = sum(_param_counts(settings, vocab).values())
    half = dtype in ("float16", "bfloat16")
    logits = chunk * vocab * 4  # one pass's read-out
    tokens = int(chunk * seq * eval_act_bytes_per_token(settings, half))
    out = {"params": n_params, "weights": n_params * 4 + (n_params * 2 if half else 0),
           "optimizer": n_params * 8 if optimizer else 0, "eval_logits": 2 * r * logits,
           "eval_activations": tokens}
    out["total"] = out["weights"] + out["optimizer"] + max(2 * r * logits, tokens + (r - 1) * logits)
    return out


def estimate_probe(settings: Settings, batch: int, seq: int, chunk: int, vocab_size: int | None = None,
                   r: int | None = None, dtype: str = "float32") -> dict[str, int]:
    """Bytes of the full stage's depth probe: the trained model and its optimiser stay alive while a deep copy
    with a fresh optimiser trains on a toy task (one scored token per row, the full vocabulary) and is then
    evaluated (estimate_eval)."""
    n_params = sum(_param_counts(settings, vocab_size or settings.model.vocab_size).values())
    held = n_params * 12  # the original: float32 weights + AdamW state
    train = estimate(settings, batch, seq, vocab_size, lm_loss=False, dtype=dtype)
    ev = estimate_eval(settings, chunk, seq, vocab_size, r, dtype)
    return {"params": n_params, "original": held, "probe_train": train["total"], "probe_eval": ev["total"],
            "total": held + max(train["total"], ev["total"])}


def compute_dtype_name(settings: Settings, device_type: str) -> str:
    """The dtype a run on this device computes in (config.compute_dtype's policy, without probing a GPU)."""
    req = settings.train.dtype
    if device_type == "cuda":
        return "float32" if req == "float32" else ("bfloat16" if req == "bfloat16" else "float16")
    return "float16" if req == "float16" else "float32"


def budget_of(settings: Settings, device_type: str) -> int:
    return settings.hardware.gpu_mem_budget if device_type == "cuda" else settings.hardware.cpu_mem_budget


def refuse(what: str, total: int, parts: dict[str, int], budget: int, device_type: str, hint: str) -> None:
    """MemoryBudgetError naming the stage part, its estimate by part, the budget and what to shrink."""
    listed = ", ".join(f"{k} {v / MIB:.0f} MiB" for k, v in parts.items() if k not in ("params", "total"))
    raise MemoryBudgetError(f"{what}: estimated {total / MIB:.0f} MiB exceeds the {device_type} budget "
                            f"{budget / MIB:.0f} MiB ({listed}); {hint}")


def check_fits(settings: Settings, batch: int, seq: int, vocab_size: int | None = None, device_type: str = "cpu",
               **kw) -> dict[str, int]:
    """The estimate, or MemoryBudgetError with the numbers and what to shrink."""
    dtype = compute_dtype_name(settings, device_type)
    est = estimate(settings, batch, seq, vocab_size, dtype=dtype, **kw)
    budget = settings.hardware.gpu_mem_budget if device_type == "cuda" else settings.hardware.cpu_mem_budget
    if est["total"] > budget:
        parts = ", ".join(f"{k} {v / MIB:.0f} MiB" for k, v in est.items() if k not in ("params", "total"))
        biggest = max((k for k in est if k not in ("params", "total")), key=est.get)
        hint = {"activations": "lower batch_size or seq_len, r_max, or set backprop_window",
                "loss": "lower loss_chunk_tokens", "transient": "lower batch_size or seq_len"}.get(
            biggest, "use a smaller preset")
        raise MemoryBudgetError(
            f"estimated {est['total'] / MIB:.0f} MiB exceeds the {device_type} budget {budget / MIB:.0f} MiB "
            f"(batch {batch}, seq {seq}): {parts}; largest is {biggest}: {hint}")
    return est


# --------------------------------------------------------------------------- measurement
def _step_once(settings: Settings, batch: int, seq: int, vocab: int, r: int, lm_loss: bool, device):
    import torch

    from refiner_model.model import build_model, configure_optimizer
    from refiner_model.precision import Precision

    prec = Precision.from_settings(settings)
    model = build_model(settings, vocab).to(device)
    model.track_stats = False
    opt = configure_optimizer(model, settings)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, vocab, (batch, seq), generator=g).to(device)

    def step(m=model, o=opt, rr=r, lm=lm_loss):
        with prec.autocast():
            if lm:
                _, loss = m(idx, r=rr, targets=idx)
            else:
                pos = torch.full((batch,), seq - 1, device=device)
                _, loss = m(idx, r=rr, targets=idx[:, 0], positions=pos)
        prec.step(loss, m, o, settings.train.grad_clip)

    def evaluate(chunk: int, r_max: int, m=model):
        pos = torch.full((chunk,), seq - 1, device=device)
        x = torch.randint(0, vocab, (chunk, seq), generator=g).to(device)
        with torch.no_grad(), prec.autocast():
            m.eval()
            out = m.depth_curve(x, pos, r_max)
            m.train()
        return out

    def probe(chunk: int, r_max: int):
        """The full stage's depth probe: a copy of the model and a fresh optimiser, trained on one scored token
        per row at the training depth r_max, then evaluated to depth r_max (the argument)."""
        import copy

        m = copy.deepcopy(model)
        o = configure_optimizer(m, settings)
        step(m, o, settings.model.r_max, False)
        step(m, o, settings.model.r_max, False)
        evaluate(chunk, r_max, m)

    return model, opt, step, evaluate, probe


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure_cpu_children(spec: dict) -> dict:
    """Several measurements in one process (one torch import): each part builds its own model, and its peak is
    taken above the RSS after its own warm-up, so what earlier parts left behind does not count."""
    import gc

    out = {}
    for name, part in spec["parts"].items():
        out[name] = _measure_cpu_child({**part, "overrides": spec["overrides"]})
        gc.collect()
    return out


def _measure_cpu_child(spec: dict) -> dict:
    """In a fresh process: one warm-up step (code paged in, optimiser state allocated; for "eval" and "probe"
    also one warm-up of what is measured), then the peak RSS (VmHWM, reset through /proc/self/clear_refs) of
    the measured part (kind: "train" a second step, "eval" a depth curve over one chunk, "probe" the depth
    probe: copy, fresh optimiser, two steps, a depth curve) above the RSS before it, plus the weights and
    optimiser state held across it."""
    import ctypes

    import torch

    torch.set_num_threads(1)
    from config import load
    settings = load({}).replace(spec["overrides"])
    model, opt, step, evaluate, probe = _step_once(settings, spec["batch"], spec["seq"], spec["vocab"], spec["r"],
                                                   spec["lm_loss"], "cpu")
    kind = spec.get("kind", "train")
    step()
    run = {"train": step, "eval": lambda: evaluate(spec["chunk"], spec["r"]),
           "probe": lambda: probe(spec["chunk"], spec["r"])}[kind]
    if kind == "eval":
        run()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current RSS
    before = _rss_kb("VmRSS")
    run()
    peak = _rss_kb("VmHWM")
    held = sum(p.numel() * p.element_size() for p in model.parameters())
    held += sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                if torch.is_tensor(t) and t.dim() > 0)
    return {"peak_delta": (peak - before) * 1024, "held": held, "measured": (peak - before) * 1024 + held}


def _part_spec(settings: Settings, batch: int, seq: int, vocab_size: int | None = None, r: int | None = None,
               lm_loss: bool = True, kind: str = "train", chunk: int = 0) -> dict:
    return {"batch": batch, "seq": seq, "vocab": vocab_size or settings.model.vocab_size,
            "r": r or settings.model.r_max, "lm_loss": lm_loss, "kind": kind, "chunk": chunk or batch}


def measure_cpu_parts(settings: Settings, parts: dict[str, dict]) -> dict[str, int]:
    """measure_cpu for several parts {name: its keyword arguments}, in one child process."""
    over = {k: v for k, v in settings.flat().items() if settings.source_of(k) != "default"}
    spec = {"overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in over.items()},
            "parts": {name: _part_spec(settings, **kw) for name, kw in parts.items()}}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}  # big blocks back to the OS
    proc = subprocess.run([sys.executable, "-m", "refiner_model.memory", "--child", json.dumps(spec)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement failed: {proc.stderr[-2000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    return {name: res[name]["measured"] for name in parts}


def measure_cpu(settings: Settings, batch: int, seq: int, vocab_size: int | None = None, r: int | None = None,
                lm_loss: bool = True, kind: str = "train", chunk: int = 0) -> int:
    """Peak bytes of one CPU training step (kind "train"), toy evaluation ("eval": a depth curve over `chunk`
    rows to depth r) or depth probe ("probe"), under the settings' dtype, measured in a child process."""
    return measure_cpu_parts(settings, {"x": dict(batch=batch, seq=seq, vocab_size=vocab_size, r=r, lm_loss=lm_loss,
                                                  kind=kind, chunk=chunk)})["x"]


def measure_cuda(settings: Settings, batch: int, seq: int, vocab_size: int | None = None, r: int | None = None,
                 lm_loss: bool = True, kind: str = "train", chunk: int = 0) -> int:
    """torch.cuda.max_memory_allocated of one training step (second step), evaluation or depth probe under the
    run's precision."""
    import torch

    r = r or settings.model.r_max
    model, opt, step, evaluate, probe = _step_once(settings, batch, seq, vocab_size or settings.model.vocab_size,
                                                   r, lm_loss, torch.device("cuda"))
    run = {"train": step, "eval": lambda: evaluate(chunk or batch, r), "probe": lambda: probe(chunk or batch, r)}
    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    run[kind]()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def _estimate_part(settings: Settings, dtype: str, batch: int, seq: int, vocab_size: int | None = None,
                   r: int | None = None, lm_loss: bool = True, kind: str = "train", chunk: int = 0) -> dict:
    if kind == "train":
        return estimate(settings, batch, seq, vocab_size, r=r, lm_loss=lm_loss, dtype=dtype)
    if kind == "eval":
        return estimate_eval(settings, chunk or batch, seq, vocab_size, r or settings.model.r_max, dtype)
    return estimate_probe(settings, batch, seq, chunk or batch, vocab_size, r or settings.model.r_max, dtype)


def compare_parts(settings: Settings, parts: dict[str, dict], device_type: str = "cpu") -> dict[str, dict]:
    """Estimate vs measurement of several parts {name: keyword arguments of compare}, in the settings' dtype
    (CPU: all measured in one child process)."""
    dtype = compute_dtype_name(settings, device_type)
    if device_type == "cuda":
        meas = {name: measure_cuda(settings, **kw) for name, kw in parts.items()}
    else:
        meas = measure_cpu_parts(settings, parts)
    out = {}
    for name, kw in parts.items():
        est = _estimate_part(settings, dtype, **kw)
        out[name] = {"estimate": est["total"], "measured": meas[name],
                     "error": abs(est["total"] - meas[name]) / meas[name], "parts": est,
                     "kind": kw.get("kind", "train"), "dtype": dtype}
    return out


def compare(settings: Settings, batch: int, seq: int, vocab_size: int | None = None, lm_loss: bool = True,
            device_type: str = "cpu", kind: str = "train", chunk: int = 0, r: int | None = None) -> dict:
    """Estimate vs measurement of one training step, evaluation or depth probe (kind), in the settings' dtype:
    {"estimate", "measured", "error"} with error = |est − meas| / meas."""
    kw = dict(batch=batch, seq=seq, vocab_size=vocab_size, lm_loss=lm_loss, kind=kind, chunk=chunk, r=r)
    return compare_parts(settings, {"x": kw}, device_type)["x"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=512)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_measure_cpu_children(json.loads(args.child))))
        return 0
    from config import load
    settings = load()
    res = compare(settings, args.batch, args.seq, args.vocab)
    print(json.dumps({k: v for k, v in res.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
