"""Precision, decided once: the device, the compute dtype and its reason, autocast, the GradScaler,
the attention backend, and a training step that skips (and counts) non-finite losses.

The policy itself is `config.compute_dtype` (torch-free, so it is testable without a GPU): float16
autocast + GradScaler on CUDA, never bfloat16 below compute capability 8.0, float32 on CPU.
On CUDA the attention path is restricted to the fast SDPA kernels (memory-efficient on sm_75, plus
flash/cuDNN on sm_80+); the slow math fallback is an error unless settings.train.allow_math_sdpa.
"""

from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

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
    device: torch.device
    dtype: torch.dtype
    reason: str
    scaler: torch.amp.GradScaler
    backends: list = field(default_factory=list)  # allowed SDPA kernels (CUDA only)
    skipped: int = 0  # optimiser steps skipped for a non-finite loss or gradient
    steps: int = 0  # optimiser steps taken
    last_grad_norm: float = float("nan")

    @classmethod
    def from_settings(cls, settings: Settings, check_attention_head_dim: int | None = None) -> Precision:
        """Decide once. On CUDA, probes attention with the model's head size and raises SdpaBackendError if
        only the math fallback could run it (unless allowed)."""
        dev = resolve_device(settings.train.device)
        cap = torch.cuda.get_device_capability(dev) if dev.type == "cuda" else None
        name, reason = config.compute_dtype(dev.type, cap, settings.train.dtype)
        dtype = DTYPES[name]
        scaler = torch.amp.GradScaler(dev.type, enabled=(dtype == torch.float16))
        backends = sdpa_backends(cap, settings.train.allow_math_sdpa) if cap else []
        p = cls(dev, dtype, reason, scaler, backends)
        if dev.type == "cuda":
            hd = check_attention_head_dim or settings.dims["d_model"] // settings.dims["n_heads"]
            p.reason += f"; attention: {p.check_attention(hd)}"
        return p

    @contextmanager
    def autocast(self):
        """Autocast to the compute dtype (CUDA, non-float32) and the allowed attention kernels."""
        with ExitStack() as stack:
            if self.device.type == "cuda":
                if self.dtype != torch.float32:
                    stack.enter_context(torch.autocast("cuda", dtype=self.dtype))
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
             grad_clip: float) -> bool:
        """backward, unscale, clip, optimiser step, zero grads. False (and skipped += 1) when the loss or the
        gradients are not finite: the weights are left as they were."""
        if not torch.isfinite(loss.detach()).item():
            optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
            return False
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)  # no-op when the scaler is disabled
        params = [p for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf)
        self.last_grad_norm = float(norm)
        if self.scaler.is_enabled():
            scale = self.scaler.get_scale()
            self.scaler.step(optimizer)  # skips by itself on inf/nan grads
            self.scaler.update()
            ok = self.scaler.get_scale() >= scale
        elif math.isfinite(self.last_grad_norm):
            optimizer.step()
            ok = True
        else:
            ok = False
        optimizer.zero_grad(set_to_none=True)
        self.steps += ok
        self.skipped += not ok
        return ok

    def describe(self) -> str:
        return f"device {self.device}, {str(self.dtype).removeprefix('torch.')}: {self.reason}"
