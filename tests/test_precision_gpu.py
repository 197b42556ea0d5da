"""CUDA-only checks; the module skips cleanly without a GPU. Each has a CPU twin:
float16 training step  <-> tests/test_precision.py::test_step_updates_then_skips_non_finite_loss
SDPA kernel assertion  <-> tests/test_precision.py::test_sdpa_kernels_on_turing_exclude_math_unless_allowed
memory vs measurement  <-> tests/test_memory.py::test_estimate_within_ten_percent_of_cpu_measurement
make gpu-check         <-> tests/test_fp16_cpu.py (float16 smoke, memory of every stage part, the twin's JSON)

    .venv/bin/python -m pytest tests/test_precision_gpu.py -q      # on the GPU box
"""

from __future__ import annotations

import pytest
import torch

import config
from refiner_model.memory import compare
from refiner_model.model import build_model, configure_optimizer
from refiner_model.precision import Precision, SdpaBackendError

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def settings(**kw):
    base = {"d_model": 64, "n_heads": 2, "d_mlp": 256, "vocab_size": 512, "seq_len": 64, "device": "cuda"}
    return config.load({}).replace({**base, **kw})


def test_float16_training_step_with_scaler_and_fp32_state():
    st = settings()
    prec = Precision.from_settings(st)
    assert prec.dtype == torch.float16 and prec.scaler.is_enabled() and "SDPA" in prec.reason
    model = build_model(st).to(prec.device)
    opt = configure_optimizer(model, st)
    idx = torch.randint(0, 512, (8, 64), device=prec.device)
    for _ in range(3):
        with prec.autocast():
            s, cos, sin = model.embed(idx)
            assert s.dtype == torch.float32  # the running state stays float32 under autocast
            _, loss = model(idx, r=3, targets=idx)
        assert prec.step(loss, model, opt, 1.0) or prec.skipped <= 1
    assert prec.steps >= 2 and all(0 < g < 1 for g in model.last_stats["gate_mean"])
    with prec.autocast():
        assert not prec.step(model(idx, r=3, targets=idx)[1] * float("inf"), model, opt, 1.0)


def test_sdpa_backend_is_asserted():
    prec = Precision.from_settings(settings())
    name = prec.check_attention(32)
    cap = torch.cuda.get_device_capability()
    assert name in ("SDPA efficient_attention", "SDPA flash_attention", "SDPA cudnn_attention")
    if cap < (8, 0):
        assert name == "SDPA efficient_attention"
    prec.backends = []  # nothing allowed: an error, never a silent math fallback
    with pytest.raises(SdpaBackendError):
        prec.check_attention(32)


def test_memory_estimate_vs_max_memory_allocated():
    st = settings(r_max=4)
    res = compare(st, 32, 64, 512, device_type="cuda")
    assert res["error"] <= 0.25, res  # the float16 constants are not calibrated on a GPU yet


def test_gpu_check_passes_on_this_card(tmp_path):
    """`make gpu-check` itself: float16 smoke on rtx2060, memory within 10% under a 6 GiB cap, MFU, SDPA."""
    import json

    from experiments.gpucheck import main

    out = tmp_path / "gpu-check.json"
    rc = main(["--json", str(out), "--run-dir", str(tmp_path / "runs")])
    doc = json.loads(out.read_text())
    failed = [t for t in doc["targets"] if t["met"] is False]
    assert rc == (1 if failed else 0) and doc["figures"]["smoke"]["verdict"] == "PASS", doc["targets"]
    assert {t["name"]: t for t in doc["targets"]}["sdpa_fast_kernel"]["met"] is True
