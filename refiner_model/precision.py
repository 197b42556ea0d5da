"""Precision, decided once: the device, the compute dtype and its reason, autocast, the GradScaler,
the attention backend, and a training step that skips (and counts) non-finite losses.

The policy itself is `config.compute_dtype` (torch-free, so it is testable without a GPU): float16
autocast + GradScaler on CUDA, never bfloat16 below compute capability 8.0, float32 on CPU unless float16
is asked for (then the very same autocast + GradScaler code runs on the CPU, slowly: tests and CI).
On CUDA the attention path is restricted to the fast SDPA kernels (memory-efficient on sm_75, plus
flash/cuDNN on sm_80+); the slow math fallback is an error unless settings.train.allow_math_sdpa.
"""

from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import config
from config import RefineryError, Settings

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class SdpaBackendError(RefineryError):
    """No fast scaled-dot-product-attention kernel can run this model on this GPU, and the slow math
    fallback (about 10x slower on Turing) is not allowed.

    Fix: use float16 and a head size divisible by 8 (memory-efficient kernel), or set
    REFINERY_ALLOW_MATH_SDPA=1 (train.allow_math_sdpa) to accept the slow path knowingly.
    """


class SkippedStepsError(RefineryError):
    """A training run skipped too many optimiser steps (non-finite losses or gradients, float16 overflows) after
    its GradScaler settled: its figures would be a handicapped arm's, not evidence about the idea.

    Fix: this is an ERROR of the run and the queue retries it; if it recurs, lower lr or grad_scale_init, raise
    logit_softcap's protection (a lower cap), or look for an overflow in the idea's code (the log names the arm).
    """


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise config.ConfigError([config.Problem("device", f"{name} asked for but CUDA is not available",
                                                 "use device = auto or cpu")])
    return dev


def sdpa_backends(capability: tuple[int, int], allow_math: bool) -> list[SDPBackend]:
    """The attention kernels allowed on a GPU of this compute capability (fast ones first)."""
    out = [SDPBackend.EFFICIENT_ATTENTION]  # the fast path on sm_75 (flash needs sm_80+ since torch 2.2)
    if capability >= (8, 0):
        out = [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION] + out
    if allow_math:
        out.append(SDPBackend.MATH)
    return out


@dataclass
class Precision:
    """The run's device, compute dtype and GradScaler, and the training step.

    The step never asks the device for a number: whether a step was skipped (a non-finite loss or gradient,
    a float16 overflow), how many were, and the gradient norm stay in device tensors. `figures()` brings
    them (and any tensors the caller adds) to the host in ONE transfer: the training loops call it once per
    logging interval. `syncs` counts those transfers.
    """

    device: torch.device
    dtype: torch.dtype
    reason: str
    scaler: torch.amp.GradScaler
    backends: list = field(default_factory=list)  # allowed SDPA kernels (CUDA only)
    syncs: int = 0  # device-to-host transfers made by figures()
    settle_steps: int = 10  # clean steps in a row after which the loss scale counts as settled
    # [steps taken, skipped, skipped before the scale settled, clean steps in a row, settled (0/1)]
    _count: torch.Tensor | None = None
    _norm: torch.Tensor | None = None  # the last step's gradient norm (device)

    @classmethod
    def from_settings(cls, settings: Settings, check_attention_head_dim: int | None = None) -> Precision:
        """Decide once. On CUDA, probes attention with the model's head size and raises SdpaBackendError if
        only the math fallback could run it (unless allowed)."""
        dev = resolve_device(settings.train.device)
        cap = torch.cuda.get_device_capability(dev) if dev.type == "cuda" else None
        name, reason = config.compute_dtype(dev.type, cap, settings.train.dtype)
        dtype = DTYPES[name]
        t = settings.train
        scaler = torch.amp.GradScaler(dev.type, init_scale=t.grad_scale_init,
                                      growth_interval=t.grad_scale_growth_interval, enabled=(dtype == torch.float16))
        backends = sdpa_backends(cap, settings.train.allow_math_sdpa) if cap else []
        p = cls(dev, dtype, reason, scaler, backends, settle_steps=t.grad_scale_settle_steps)
        if dev.type == "cuda":
            hd = check_attention_head_dim or settings.dims["d_model"] // settings.dims["n_heads"]
            p.reason += f"; attention: {p.check_attention(hd)}"
        return p

    def __post_init__(self):
        self._count = torch.zeros(5, dtype=torch.int64, device=self.device)
        self._norm = torch.full((), float("nan"), device=self.device)

    @contextmanager
    def autocast(self):
        """Autocast to the compute dtype (non-float32; CUDA or CPU alike) and, on CUDA, the allowed attention
        kernels."""
        with ExitStack() as stack:
            if self.dtype != torch.float32:
                stack.enter_context(torch.autocast(self.device.type, dtype=self.dtype))
            if self.device.type == "cuda":
                stack.enter_context(sdpa_kernel(self.backends, set_priority=True))
            yield

    def check_attention(self, head_dim: int, seq: int = 64) -> str:
        """Run one causal attention with only the allowed kernels; name the first that works."""
        q = torch.randn(2, 2, seq, head_dim, device=self.device, dtype=self.dtype)
        for backend in self.backends:
            try:
                with sdpa_kernel([backend]):
                    F.scaled_dot_product_attention(q, q, q, is_causal=True)
                return f"SDPA {backend.name.lower()}"
            except RuntimeError:
                continue
        allowed = ", ".join(b.name.lower() for b in self.backends)
        raise SdpaBackendError(f"no allowed SDPA kernel ({allowed}) runs {self.dtype} attention with head size "
                               f"{head_dim} on {torch.cuda.get_device_name(self.device)}")

    def step(self, loss: torch.Tensor, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             grad_clip: float) -> torch.Tensor:
        """backward, unscale, clip, optimiser step, zero grads, without a device-to-host sync. Returns a 0-d
        bool tensor on the device: True when the step was taken, False when it was skipped (the loss or a
        gradient not finite; float16: an overflow, after which the scaler halves its scale). A skipped step
        leaves the weights and the optimiser state as they were. The optimiser must be fused
        (configure_optimizer): it reads the skip flag on the device (GradScaler's found_inf contract)."""
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)  # no-op when the scaler is disabled
        params = [p for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf)
        bad = ~torch.isfinite(norm)  # a non-finite loss or any non-finite gradient makes the norm non-finite
        if self.scaler.is_enabled():
            self.scaler.step(optimizer)  # fused: skips on the device when the unscale found inf/nan
            self.scaler.update()
        else:
            optimizer.grad_scale, optimizer.found_inf = None, bad.float()  # the same contract, scale 1
            try:
                optimizer.step()
            finally:
                del optimizer.grad_scale, optimizer.found_inf
        optimizer.zero_grad(set_to_none=True)
        ok = ~bad
        c = self._count
        run = (c[3] + 1) * ok  # clean steps in a row (0 after a skip)
        settled = (c[4] > 0) | (run >= self.settle_steps)
        calibrating = bad & (c[4] == 0)  # skipped before the scale settled
        self._count = torch.stack([c[0] + ok, c[1] + bad, c[2] + calibrating, run, settled.long()])
        self._norm = norm.detach()
        return ok

    def figures(self, *extra: torch.Tensor) -> dict[str, Any]:
        """steps, skipped, calibration_skips (skips before the scale settled: settle_steps clean steps in a row),
        settled_skips (the others), the current loss scale (None without a scaler), the last gradient norm, and
        `extra` (0-d tensors, as floats in the list "extra"): all in one device-to-host transfer."""
        parts = [self._count.double(), self._norm.double().reshape(1)]
        if self.scaler.is_enabled():
            parts.append(self.scaler._get_scale_async().double().reshape(1))
        parts += [x.detach().double().reshape(1) for x in extra]
        vals = torch.cat(parts).tolist()  # the one sync
        self.syncs += 1
        steps, skipped, calib, run, settled, norm = vals[:6]
        scale = vals[6] if self.scaler.is_enabled() else None
        return {"steps": int(steps), "skipped": int(skipped), "calibration_skips": int(calib),
                "settled_skips": int(skipped - calib), "settled": bool(settled), "clean_run": int(run),
                "grad_scale": scale, "grad_norm": norm, "extra": vals[6 + (scale is not None):]}

    @property
    def steps(self) -> int:
        """Optimiser steps taken (a sync: for tests and reports, not the training loop)."""
        return self.figures()["steps"]

    @property
    def skipped(self) -> int:
        """Optimiser steps skipped (a sync: for tests and reports, not the training loop)."""
        return self.figures()["skipped"]

    def restore_counts(self, figures: dict | None) -> None:
        """Resume the step counters from a checkpoint's figures() (the GradScaler's own state is restored by
        load_checkpoint)."""
        if figures:
            self._count = torch.tensor([figures["steps"], figures["skipped"], figures["calibration_skips"],
                                        figures["clean_run"], int(figures["settled"])], dtype=torch.int64,
                                       device=self.device)

    def describe(self) -> str:
        return f"device {self.device}, {str(self.dtype).removeprefix('torch.')}: {self.reason}"
