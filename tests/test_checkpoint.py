"""Checkpoints: atomic save, readable JSON metadata, and a bit-for-bit resume on CPU, in this process and
in a fresh one.

    .venv/bin/python -m pytest tests/test_checkpoint.py -q
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import config
from refiner_model.checkpoint import CheckpointError, load_checkpoint, read_meta, save_checkpoint
from refiner_model.model import DepthSampler, build_model, configure_optimizer, lr_at
from refiner_model.precision import Precision

OVERRIDES = {"d_model": 32, "n_heads": 2, "d_mlp": 64, "vocab_size": 64, "seq_len": 16, "device": "cpu",
             "r_min": 1, "r_max": 4, "r_mean": 2, "warmup_steps": 2, "seed": 7}
TOTAL = 8

# The training loop both runs share: data and depth come from RNGs a checkpoint must restore.
LOOP = """
def run(model, opt, prec, sampler, settings, start, stop, ckpt=None, save_at=None):
    import torch
    from refiner_model.checkpoint import save_checkpoint
    losses = []
    for step in range(start, stop):
        if step == save_at:
            save_checkpoint(ckpt, model, opt, prec.scaler, {"config": settings.flat(), "step": step,
                            "sampler": sampler.state_dict()})
        for g in opt.param_groups:
            g["lr"] = lr_at(step, TOTAL, settings)
        idx = torch.randint(0, 64, (4, 16))  # the global torch RNG: restored by load_checkpoint
        _, loss = model(idx, r=sampler.draw(step), targets=idx.roll(-1, 1))
        prec.step(loss, model, opt, 1.0)
        losses.append(loss.item().hex())
    return losses
""".replace("TOTAL", str(TOTAL))


def _setup():
    torch.set_num_threads(1)
    settings = config.load({}).replace(OVERRIDES)
    model = build_model(settings)
    return settings, model, configure_optimizer(model, settings), Precision.from_settings(settings), \
        DepthSampler(settings, settings.train.seed)


def _run_fn():
    ns = {"lr_at": lr_at}
    exec(LOOP, ns)  # noqa: S102 - the same source text runs in the child process
    return ns["run"]


def test_resume_bit_for_bit_in_process_and_in_a_fresh_process(tmp_path):
    run = _run_fn()
    torch.manual_seed(123)
    settings, model, opt, prec, sampler = _setup()
    ckpt = tmp_path / "ckpt"
    straight = run(model, opt, prec, sampler, settings, 0, TOTAL, ckpt=ckpt, save_at=5)
    meta = read_meta(ckpt)
    assert meta["step"] == 5 and meta["config"]["d_model"] == 32 and meta["sampler"]["seed"] == 7
    assert set(meta["rng"]) == {"torch_cpu", "torch_cuda", "python", "numpy"} and "git_sha" in meta

    torch.manual_seed(999)  # a different RNG state: the checkpoint must override it
    settings, model2, opt2, prec2, sampler2 = _setup()
    meta2 = load_checkpoint(ckpt, model2, opt2, prec2.scaler)
    assert run(model2, opt2, prec2, sampler2, settings, meta2["step"], TOTAL) == straight[5:]

    child = f"""
import json, sys, torch
sys.path.insert(0, {str(config.ROOT)!r})
import config
from refiner_model.checkpoint import load_checkpoint
from refiner_model.model import DepthSampler, build_model, configure_optimizer, lr_at
from refiner_model.precision import Precision
{LOOP}
torch.set_num_threads(1)
settings = config.load({{}}).replace({OVERRIDES!r})
model = build_model(settings.replace({{"seed": 1}}))  # other init: the weights must come from the file
opt = configure_optimizer(model, settings)
prec = Precision.from_settings(settings)
meta = load_checkpoint({str(ckpt)!r}, model, opt, prec.scaler)
print(json.dumps(run(model, opt, prec, DepthSampler(settings, meta["sampler"]["seed"]), settings,
                     meta["step"], {TOTAL})))
"""
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120,
                         cwd=config.ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == straight[5:]


def test_save_is_atomic_and_replaces(tmp_path):
    settings, model, opt, prec, _ = _setup()
    d = tmp_path / "ckpt"
    save_checkpoint(d, model, opt, prec.scaler, {"step": 1})
    save_checkpoint(d, model, opt, prec.scaler, {"step": 2})
    assert read_meta(d)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no .tmp or .old left behind
    # a crash between the two renames leaves only DIR.old: it is still loadable
    d.rename(tmp_path / "ckpt.old")
    assert load_checkpoint(d, model)["step"] == 2


def test_missing_and_corrupt_checkpoints_raise(tmp_path):
    settings, model, opt, prec, _ = _setup()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nothing", model)
    d = save_checkpoint(tmp_path / "ckpt", model, opt, None, {"step": 3})
    data = (d / "state.pt").read_bytes()
    (d / "state.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(d, model)
    other = build_model(settings.replace({"d_model": 64}))
    d2 = save_checkpoint(tmp_path / "ckpt2", model, None, None, {"step": 3})
    with pytest.raises(CheckpointError, match="cannot load"):
        load_checkpoint(d2, other)
