"""The precision policy: decided once with a reason, bfloat16 refused below sm_80, the SDPA kernel list,
float16 on a CPU through the same autocast + GradScaler code as CUDA, and a training step that skips (and
counts, on the device) non-finite losses and gradients with no device-to-host sync. CPU only; the CUDA twins
are in tests/test_precision_gpu.py.

    .venv/bin/python -m pytest tests/test_precision.py -q
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend
from torch.utils._python_dispatch import TorchDispatchMode

import config
from refiner_model.model import build_model, configure_optimizer
from refiner_model.precision import Precision, sdpa_backends

TINY = {"d_model": 32, "n_heads": 2, "d_mlp": 64, "vocab_size": 64, "seq_len": 16, "device": "cpu"}


def settings(**kw):
    return config.load({}).replace({**TINY, **kw})


@pytest.mark.parametrize("cap", [(7, 5), (6, 1), (7, 0)])
def test_bfloat16_refused_below_sm80(cap):
    with pytest.raises(config.ConfigError, match="bfloat16 needs compute capability 8.0"):
        config.compute_dtype("cuda", cap, "bfloat16")


def test_policy_decisions_and_reasons():
    name, reason = config.compute_dtype("cuda", (7, 5), "auto")
    assert name == "float16" and "GradScaler" in reason and "no bfloat16" in reason
    assert config.compute_dtype("cuda", (8, 0), "bfloat16")[0] == "bfloat16"
    assert config.compute_dtype("cpu", None, "auto")[0] == "float32"
    name, reason = config.compute_dtype("cpu", None, "float16")
    assert name == "float16" and "GradScaler" in reason and "slow" in reason
    with pytest.raises(config.ConfigError, match="float16 .slow: tests and CI. on CPU"):
        config.compute_dtype("cpu", None, "bfloat16")


def test_sdpa_kernels_on_turing_exclude_math_unless_allowed():
    assert sdpa_backends((7, 5), allow_math=False) == [SDPBackend.EFFICIENT_ATTENTION]
    assert SDPBackend.MATH in sdpa_backends((7, 5), allow_math=True)
    assert SDPBackend.FLASH_ATTENTION in sdpa_backends((9, 0), allow_math=False)


def test_cpu_precision_is_float32_without_scaler():
    p = Precision.from_settings(settings())
    assert p.device.type == "cpu" and p.dtype == torch.float32 and not p.scaler.is_enabled()
    assert "float32" in p.reason and "float32" in p.describe()
    with p.autocast():
        assert not torch.is_autocast_enabled("cuda")


def _loss(model):
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    return model(idx, r=2, targets=idx)[1]


def test_step_updates_then_skips_non_finite_loss():
    st = settings()
    p, model = Precision.from_settings(st), build_model(st)
    opt = configure_optimizer(model, st)
    before = model.wte.weight.detach().clone()
    assert bool(p.step(_loss(model), model, opt, grad_clip=1.0)) is True
    assert p.steps == 1 and p.skipped == 0 and not torch.equal(before, model.wte.weight)
    after = model.wte.weight.detach().clone()
    assert bool(p.step(_loss(model) * float("nan"), model, opt, grad_clip=1.0)) is False
    assert p.skipped == 1 and torch.equal(after, model.wte.weight)
    assert all(q.grad is None for q in model.parameters())


def test_step_skips_non_finite_gradient():
    st = settings()
    p, model = Precision.from_settings(st), build_model(st)
    opt = configure_optimizer(model, st)
    before = model.wte.weight.detach().clone()
    loss = _loss(model)
    model.wte.weight.register_hook(lambda g: g * float("inf"))
    assert bool(p.step(loss, model, opt, grad_clip=1.0)) is False
    assert p.skipped == 1 and torch.equal(before, model.wte.weight)


def test_float16_on_cpu_autocasts_and_scales_like_cuda():
    st = settings(dtype="float16", grad_scale_init=1024.0, grad_scale_settle_steps=1)
    p, model = Precision.from_settings(st), build_model(st)
    assert p.dtype == torch.float16 and p.scaler.is_enabled() and p.scaler.get_scale() == 1024.0
    opt = configure_optimizer(model, st)
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    with p.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.float16
        assert model.wte(idx).matmul(model.wte.weight.t()).dtype == torch.float16
        s0, _, _ = model.embed(idx)
        assert s0.dtype == torch.float32  # the running state stays float32 under autocast
        loss = model(idx, r=2, targets=idx)[1]
    before = model.wte.weight.detach().clone()
    p.step(loss, model, opt, 1.0)
    assert p.steps == 1 and not torch.equal(before, model.wte.weight) and model.wte.weight.dtype == torch.float32
    with p.autocast():  # an overflow: skipped, weights untouched, the scale halves and is counted as calibration
        loss = model(idx, r=2, targets=idx)[1] * float("inf")
    after = model.wte.weight.detach().clone()
    p.step(loss, model, opt, 1.0)
    f = p.figures()
    assert f["skipped"] == 1 and f["grad_scale"] == 512.0 and torch.equal(after, model.wte.weight)
    assert f["calibration_skips"] == 0 and f["settled_skips"] == 1  # settled after 1 clean step (settle_steps)
    p.restore_counts({**f, "settled": False, "clean_run": 0})  # not yet settled: the next skip is calibration
    with p.autocast():
        p.step(model(idx, r=2, targets=idx)[1] * float("inf"), model, opt, 1.0)
    assert p.figures()["calibration_skips"] == 1 and p.figures()["grad_scale"] == 256.0


class SyncCounter(TorchDispatchMode):
    """Counts the operators that hand a device value to the host (.item(), float(t), bool(t), torch.equal)."""

    OPS = ("aten._local_scalar_dense", "aten.is_nonzero", "aten.equal")

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += str(func).startswith(self.OPS)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_training_loop_syncs_once_per_logging_interval(dtype):
    from experiments.train import train_task

    st = settings(dtype=dtype, seq_len=64, d_model=32, batch_size=8, stage_threads=1,
                  test_examples=100, r_max=2, r_mean=2)
    with SyncCounter() as c:  # the training steps only: evaluation after them is not the hot loop
        res = train_task(st, "copy", seed=0, steps=40, log_every=10, on_step=lambda i, r: c.__setattr__(
            "at_end", c.n) if i == 39 else None)
    hidden = c.at_end  # scalar reads the loop made besides its figures() transfers
    assert hidden == 0, f"{hidden} hidden device-to-host syncs in 40 steps"
    assert res["syncs"] == 1 + 5  # one per interval (steps 0, 10, 20, 30, 39) + the totals after training
