"""The CausalRefiner, the reasoner control and the stack: causality, determinism, the depth sampler, the gate,
the time signal, parameter counts, the loss paths, FLOP counting, and a tiny model overfitting one batch.

    .venv/bin/python -m pytest tests/test_model.py -q

CPU only, tiny dimensions and a 64-symbol vocabulary, so the file runs in seconds.
"""

from __future__ import annotations

import math

import pytest
import torch

import config
from refiner_model.model import (
    DepthError,
    DepthSampler,
    build_model,
    configure_optimizer,
    flops_per_token,
    lr_at,
    num_params,
)

V, T = 64, 16
TINY = {"d_model": 32, "n_heads": 2, "d_mlp": 64, "vocab_size": V, "seq_len": T, "n_prelude": 1,
        "r_min": 1, "r_max": 4, "r_mean": 3}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def settings(**kw):
    return config.load({}).replace({**TINY, **kw})


def tokens(B=3, seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- causality and determinism
@pytest.mark.parametrize("arch", ["refiner", "reasoner", "stack"])
@pytest.mark.parametrize("r", [1, 2, 4])
def test_causal_at_every_depth(arch, r):
    model = build_model(settings(arch=arch)).eval()
    idx = tokens()
    t = 6
    changed = idx.clone()
    changed[:, t + 1:] = (changed[:, t + 1:] + 1 + torch.randint(0, V - 1, changed[:, t + 1:].shape)) % V
    with torch.no_grad():
        a, _ = model(idx, r=r)
        b, _ = model(changed, r=r)
    assert a.shape == (3, T, V)
    assert torch.equal(a[:, : t + 1], b[:, : t + 1]), "a later token leaked into an earlier position"
    assert not torch.allclose(a[:, t + 1:], b[:, t + 1:]), "the changed tokens should change later logits"


def test_same_seed_same_output_other_seed_differs():
    idx = tokens()
    outs = []
    for seed in (5, 5, 6):
        model = build_model(settings(seed=seed))
        torch.manual_seed(1234 + len(outs))  # the global RNG must not matter
        with torch.no_grad():
            outs.append(model(idx, r=3)[0])
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], outs[2])


# --------------------------------------------------------------------------- depth sampler
def test_uniform_sampler_range_mean_and_determinism():
    s = DepthSampler(settings(r_min=2, r_max=6, r_mean=4), seed=3)
    draws = [s.draw(i) for i in range(4000)]
    assert set(draws) == {2, 3, 4, 5, 6}
    assert abs(sum(draws) / len(draws) - 4.0) < 0.1
    assert draws[:50] == [DepthSampler(settings(r_min=2, r_max=6, r_mean=4), seed=3).draw(i) for i in range(50)]
    assert draws[:50] != [DepthSampler(settings(r_min=2, r_max=6, r_mean=4), seed=4).draw(i) for i in range(50)]
    assert s.draw(17) == s.draw(17)  # a function of (seed, step): resume draws the same


def test_uniform_sampler_holds_back_deep_draws_for_r_hold_frac():
    st = settings(r_min=1, r_max=3, r_mean=2, r_hold_frac=0.5)
    s = DepthSampler(st, seed=3, steps=1000)
    early, late = {s.draw(i) for i in range(500)}, {s.draw(i) for i in range(500, 1000)}
    assert early == {1, 2} and late == {1, 2, 3}
    plain = DepthSampler(st, seed=3)  # no step count: no curriculum
    assert {plain.draw(i) for i in range(500)} == {1, 2, 3}
    assert [s.draw(i) for i in range(500, 600)] == [plain.draw(i) for i in range(500, 600)]  # same stream after


def test_poisson_lognormal_sampler_mean_and_range():
    st = settings(r_sampler="poisson_lognormal", r_min=1, r_max=64, r_mean=4)
    draws = [DepthSampler(st, seed=0).draw(i) for i in range(6000)]
    assert min(draws) >= 1 and max(draws) <= 64
    assert abs(sum(draws) / len(draws) - 4.0) < 0.2
    assert max(draws) >= 10, "the heavy tail is missing"


def test_fixed_sampler():
    assert {DepthSampler(settings(r_sampler="fixed"), seed=1).draw(i) for i in range(20)} == {3}


# --------------------------------------------------------------------------- gate, time signal, stats
@pytest.mark.parametrize("gate", ["channel", "token"])
def test_gate_in_unit_interval_and_state_moves(gate):
    model = build_model(settings(gate=gate))
    model(tokens(), r=4)
    st = model.last_stats
    assert len(st["gate_mean"]) == 4 and len(st["state_delta"]) == 4
    assert all(0.0 < g < 1.0 for g in st["gate_mean"])
    assert abs(st["gate_mean"][0] - 1 / (1 + math.exp(1.0))) < 1e-6  # W_g = 0, b_g = -1 at init
    assert all(d > 1e-3 for d in st["state_delta"])
    # after some training the gate depends on the input: still strictly inside (0, 1)
    opt = configure_optimizer(model, settings(gate=gate, lr=3e-2))
    for _ in range(5):
        _, loss = model(tokens(), r=4, targets=tokens(seed=1))
        loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        g = torch.sigmoid(model.gate(torch.randn(8, 32) * 10))
    assert bool(((g > 0) & (g < 1)).all()) and float(g.std()) > 0


def test_reasoner_and_stack_stats_have_no_gate():
    for arch in ("reasoner", "stack"):
        model = build_model(settings(arch=arch))
        model(tokens(), r=2)
        assert "gate_mean" not in model.last_stats and len(model.last_stats["state_delta"]) >= 2


def test_time_signal_changes_the_output():
    model = build_model(settings())
    idx = tokens()
    with torch.no_grad():
        a, _ = model(idx, r=3)
        model.time.weight.zero_()
        b, _ = model(idx, r=3)
    assert not torch.allclose(a, b)


# --------------------------------------------------------------------------- parameters and FLOPs
def _block_params(model):
    return num_params(model.core if not isinstance(model.core, torch.nn.ModuleList) else model.core[0])


def test_parameter_counts():
    ref, rea = build_model(settings(arch="refiner")), build_model(settings(arch="reasoner"))
    stack = build_model(settings(arch="stack"))
    gate_and_time = model_extra = ref.time.weight.numel() + ref.gate.weight.numel() + ref.gate.bias.numel()
    assert num_params(ref) - num_params(rea) == gate_and_time == 64 * 32 + 32 * 32 + 32
    assert num_params(stack) == num_params(rea) + (3 - 1) * _block_params(rea)  # r_mean = 3 distinct blocks
    tok = build_model(settings(gate="token"))
    assert num_params(tok) - num_params(rea) == model_extra - 32 * 32 - 32 + 32 + 1
    assert num_params(ref) == sum(p.numel() for p in ref.parameters())  # tied head counted once
    assert ref.wte.weight.std().item() < 0.03  # std 0.02 init (denormal-free tied head)


def test_flops_per_token():
    ref, stack = build_model(settings(arch="refiner")), build_model(settings(arch="stack"))
    f_ref, f_stack = flops_per_token(ref, 3), flops_per_token(stack, None)
    assert f_stack < f_ref < 1.1 * f_stack  # equal up to the gate's matmul
    assert flops_per_token(ref, 3, grad_passes=1) < f_ref  # no_grad passes cost 2N, not 6N
    assert flops_per_token(ref, 3, train=False) == pytest.approx(f_ref / 3)
    assert flops_per_token(ref, 4) > f_ref


def test_depth_out_of_range():
    with pytest.raises(DepthError):
        build_model(settings())(tokens(), r=0)


# --------------------------------------------------------------------------- loss paths
def test_positions_logits_match_full_logits():
    model = build_model(settings()).eval()
    idx, pos = tokens(), torch.tensor([3, 15, 0])
    with torch.no_grad():
        full, _ = model(idx, r=2)
        at, loss = model(idx, r=2, positions=pos, targets=idx[:, 0])
    assert at.shape == (3, V)
    assert torch.allclose(at, full[torch.arange(3), pos], atol=1e-6)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(at, idx[:, 0]).item(), rel=1e-6)
    assert float(full.abs().max()) <= 15.0  # soft-capped


def test_chunked_lm_loss_equals_unchunked_with_equal_grads():
    idx, tgt = tokens(4), tokens(4, seed=9)
    tgt[0, :5] = -1  # ignored positions
    out = []
    for chunk in (4096, 16):  # one chunk vs four, each recomputed in backward
        model = build_model(settings())
        model.loss_chunk = chunk
        logits, loss = model(idx, r=2, targets=tgt)
        assert logits is None
        loss.backward()
        out.append((loss.item(), model.wte.weight.grad.clone(), model.core.attn.qkv.weight.grad.clone()))
    (l1, g1, q1), (l4, g4, q4) = out
    assert l4 == pytest.approx(l1, rel=1e-5)
    assert torch.allclose(g1, g4, atol=1e-6) and torch.allclose(q1, q4, atol=1e-6)
    with torch.no_grad():
        full, _ = build_model(settings())(idx, r=2)
    ref = torch.nn.functional.cross_entropy(full.reshape(-1, V), tgt.reshape(-1), ignore_index=-1)
    assert l1 == pytest.approx(ref.item(), rel=1e-5)


def test_backprop_window_limits_gradient():
    idx, tgt = tokens(), tokens(seed=2)
    full = build_model(settings(backprop_window=0))
    win = build_model(settings(backprop_window=1))
    for m in (full, win):
        m(idx, r=4, targets=tgt)[1].backward()
    assert full.prelude[0].mlp.fc.weight.grad.abs().sum() > 0
    assert win.prelude[0].mlp.fc.weight.grad is None  # the state entering the window is detached
    assert win.core.mlp.fc.weight.grad.abs().sum() > 0
    assert flops_per_token(win, 4) < flops_per_token(full, 4)


def test_depth_curve_matches_forward():
    model = build_model(settings()).eval()
    idx, pos = tokens(), torch.tensor([15, 15, 15])
    curve = model.depth_curve(idx, pos, 4)
    assert curve.shape == (4, 3, V)
    for r in (1, 4):
        with torch.no_grad():
            assert torch.allclose(curve[r - 1], model(idx, r=r, positions=pos)[0], atol=1e-5)
    assert build_model(settings(arch="stack")).depth_curve(idx, pos, 4).shape == (1, 3, V)


# --------------------------------------------------------------------------- training
@pytest.mark.parametrize("arch", ["refiner", "reasoner"])
def test_tiny_model_overfits_one_batch(arch):
    st = settings(arch=arch, lr=1e-2, warmup_steps=0, weight_decay=0.0)
    model = build_model(st)
    opt = configure_optimizer(model, st)
    idx = tokens(8, seed=3)
    ans, pos = tokens(8, seed=4)[:, 0], torch.full((8,), T - 1)
    for step in range(60):
        _, loss = model(idx, r=DepthSampler(st, 0).draw(step), targets=ans, positions=pos)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, loss.item()


def test_lr_schedule():
    st = settings(lr=1e-3, warmup_steps=10, lr_final_frac=0.1)
    assert lr_at(0, 100, st) == pytest.approx(1e-4)
    assert lr_at(9, 100, st) == pytest.approx(1e-3)
    assert lr_at(10, 100, st) == pytest.approx(1e-3)
    assert lr_at(100, 100, st) == pytest.approx(1e-4)
    assert lr_at(55, 100, st) == pytest.approx(0.55e-3)
