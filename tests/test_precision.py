"""The precision policy: decided once with a reason, bfloat16 refused below sm_80, the SDPA kernel list,
and a training step that skips (and counts) non-finite losses and gradients. CPU only; the CUDA twins
are in tests/test_precision_gpu.py.

    .venv/bin/python -m pytest tests/test_precision.py -q
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend

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
    with pytest.raises(config.ConfigError):
        config.compute_dtype("cpu", None, "float16")


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
    assert p.step(_loss(model), model, opt, grad_clip=1.0) is True
    assert p.steps == 1 and p.skipped == 0 and not torch.equal(before, model.wte.weight)
    after = model.wte.weight.detach().clone()
    assert p.step(_loss(model) * float("nan"), model, opt, grad_clip=1.0) is False
    assert p.skipped == 1 and torch.equal(after, model.wte.weight)
    assert all(q.grad is None for q in model.parameters())


def test_step_skips_non_finite_gradient():
    st = settings()
    p, model = Precision.from_settings(st), build_model(st)
    opt = configure_optimizer(model, st)
    before = model.wte.weight.detach().clone()
    loss = _loss(model)
    model.wte.weight.register_hook(lambda g: g * float("inf"))
    assert p.step(loss, model, opt, grad_clip=1.0) is False
    assert p.skipped == 1 and torch.equal(before, model.wte.weight)
