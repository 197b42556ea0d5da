"""The memory estimate: its parameter count matches the model, a config over budget is refused with the
numbers, and the estimate is within 10% of a real CPU training step's peak (measured in a child process).
The CUDA twin (max_memory_allocated) is in tests/test_precision_gpu.py.

    .venv/bin/python -m pytest tests/test_memory.py -q
"""

from __future__ import annotations

import pytest

import config
from refiner_model.memory import MemoryBudgetError, _param_counts, check_fits, compare, estimate
from refiner_model.model import build_model, num_params


def settings(**kw):
    return config.load({}).replace({"device": "cpu", **kw})


@pytest.mark.parametrize("arch", ["refiner", "reasoner", "stack"])
@pytest.mark.parametrize("extra", [{}, {"gate": "token", "prelude_attention": False, "n_prelude": 2}])
def test_param_count_matches_model(arch, extra):
    st = settings(arch=arch, **extra)
    assert sum(_param_counts(st, 300).values()) == num_params(build_model(st, 300))
    assert estimate(st, 4, 16, 300)["params"] == num_params(build_model(st, 300))


def test_estimate_scales_with_depth_window_and_chunk():
    st = settings(r_max=8)
    a = estimate(st, 32, 64, 50304)
    assert estimate(st.replace({"backprop_window": 2}), 32, 64, 50304)["activations"] < a["activations"] / 2
    assert estimate(st, 32, 64, 50304, r=2)["activations"] < a["activations"]
    assert estimate(st.replace({"loss_chunk_tokens": 512}), 32, 64, 50304)["loss"] == a["loss"] // 4
    assert estimate(st, 32, 64, 50304, lm_loss=False)["loss"] < a["loss"] / 10
    assert estimate(st, 32, 64, 50304, dtype="float16")["activations"] < a["activations"]


def test_check_fits_refuses_with_numbers_and_a_fix():
    st = settings(preset="base", r_max=16, cpu_mem_budget=1_000_000_000)
    with pytest.raises(MemoryBudgetError) as e:
        check_fits(st, 64, 1024, device_type="cpu")
    msg = str(e.value)
    assert "exceeds the cpu budget 954 MiB" in msg and "activations" in msg and "batch_size" in msg
    assert check_fits(settings(), 4, 16, 64)["total"] < st.hardware.cpu_mem_budget


def test_estimate_within_ten_percent_of_cpu_measurement():
    # not one of the configurations the constants were fitted on
    st = settings(arch="refiner", d_model=96, n_heads=3, d_mlp=384, r_max=3, r_mean=2, seq_len=96)
    res = compare(st, 24, 96, 1024, lm_loss=True)
    assert res["error"] <= 0.10, res
