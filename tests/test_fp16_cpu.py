"""The float16 path on a CPU (the CI profile `cpu-fp16`): the same autocast + GradScaler code the RTX 2060 runs,
through every stage: smoke, one seed of the ablation on every task, a full stage killed and resumed with its
GradScaler's state, the memory estimate of every stage part against the measured peak; the smoke's scaler rule
(calibration skips apart from settled ones), an arm that skips too often is an ERROR, and `make gpu-check`
refuses cleanly without CUDA (its CPU twin writes the benchmark JSON).

    .venv/bin/python -m pytest tests/test_fp16_cpu.py -q
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import config
from config import ROOT, TASK_NAMES
from experiments.runs import Run, read_result
from experiments.stage import Ctx, execute

ENV = {k: v for k, v in os.environ.items() if not k.startswith("REFINERY_") and k != "MODEL_ARCH"}
FAST = {"init_std": 0.1, "stage_threads": 1, "stage_jobs": 1, "test_examples": 100, "batch_size": 16, "r_max": 2,
        "r_mean": 2, "khop_k": 2, "s5_len": 2, "listops_depth": 1, "summod_len": 3}


def fp16(**over):
    s = config.load({"REFINERY_PROFILE": "cpu-fp16"})
    assert s.train.dtype == "float16" and s.train.device == "cpu"
    return s.replace({**FAST, **over})


def test_smoke_runs_in_float16_on_cpu_and_separates_the_scale_calibration(tmp_path):
    """From 2^24 the first steps overflow until the scale has calibrated: those skips are reported apart and do
    not count against the 1% limit (the old rule failed this smoke, and a smoke FAIL kills the idea)."""
    s = fp16(smoke_steps=30, smoke_overfit_steps=50, grad_scale_init=2.0 ** 24, max_calibration_skips=16)
    code, res = execute("smoke", s, {}, tmp_path / "run")
    assert code == 0 and res["verdict"] == "PASS", res["reason"]
    f = res["figures"]
    assert f["dtype"] == "torch.float16" and f["grad_scale"] >= 256 and f["syncs"] <= 30 // 10 + 2
    assert f["calibration_skips"] >= 1 and f["skipped_steps"] / 30 > 0.01, f
    assert f["settled_skips"] <= 0.01 * 30 and f["skipped_steps"] == f["calibration_skips"] + f["settled_skips"]
    assert f"{f['calibration_skips']} steps skipped while the GradScaler calibrated" in \
        res["evidence"]["scale_calibration"]["detail"]
    assert set(f["memory_estimate"]) == {"train", "eval"}
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "float16 autocast with GradScaler" in log and "check scale_calibration: ok" in log


@pytest.mark.slow
def test_one_seed_of_the_ablation_on_every_task_in_float16(tmp_path):
    from experiments.stages_impl import _ablation_round, _done

    tasks = tuple(t for t in TASK_NAMES if t != "copy")
    s = fp16(tasks=tasks, control_task="copy", ablation_steps=12)
    ctx = Ctx(s, Run(tmp_path / "run"), {})
    done = _done(ctx)
    _ablation_round(ctx, [0], done, 0.0)
    assert sorted(done) == sorted(f"{a}/{t}/s0" for t in (*tasks, "copy") for a in ("candidate", "control"))
    for rec in done.values():  # every run records its skipped steps and its final scale
        assert rec["grad_scale"] >= 1 and rec["skipped"] == rec["calibration_skips"] + rec["settled_skips"]
        assert len(rec["curve"]) == 4 and all(0 <= x <= 100 for x in rec["curve"])


def test_an_arm_that_keeps_overflowing_is_an_error_of_the_run(tmp_path):
    """growth_interval 1: the scale doubles after every clean step and overflows again, so about every other
    step is skipped and the scale never settles: an ERROR (retried), never a silently handicapped arm, never a
    FAIL."""
    s = fp16(tasks=("khop",), control_task="copy", ablation_steps=20, ablation_seeds=2,
             grad_scale_init=2.0 ** 24, grad_scale_growth_interval=1, skip_error_frac=0.05)
    code, res = execute("ablation", s, {}, tmp_path / "run")
    assert res["verdict"] == "ERROR" and res["reason"].startswith("skipped steps past the limit"), res
    assert "while it calibrated (limit 8)" in res["reason"]
    assert not (tmp_path / "run" / "done.jsonl").exists() or "khop" not in (tmp_path / "run" / "done.jsonl").read_text()


@pytest.mark.slow
def test_full_stage_in_float16_killed_and_resumed_restores_the_scaler(tiny_corpus_fp16, tmp_path):
    from experiments.lm import train_lm  # noqa: F401 - the stage under test
    from refiner_model.checkpoint import load_checkpoint, read_meta
    from refiner_model.model import build_model, configure_optimizer
    from refiner_model.precision import Precision

    spec = {"spec": {**FAST, "dtype": "float16", "device": "cpu", "corpus_dir": str(tiny_corpus_fp16),
                     "full_steps": 400, "full_seeds": 1, "ckpt_every": 3, "eval_every": 1000, "eval_batches": 1,
                     "seq_len": 16, "batch_size": 2, "full_probe_steps": 0,
                     "grad_scale_init": 2.0 ** 24, "n_prelude": 0}}
    sp = tmp_path / "spec.json"
    sp.write_text(json.dumps(spec))
    run = tmp_path / "run"
    ck = run / "ckpt" / "candidate-s0"
    child = subprocess.Popen([sys.executable, "-m", "experiments.stage", "full", "--spec", str(sp), "--run-dir",
                              str(run)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and not ((ck / "meta.json").is_file() and read_meta(ck)["step"] >= 5):
        time.sleep(0.1)
    child.send_signal(signal.SIGKILL)  # a kill, not a warm stop: the run resumes from its last checkpoint
    child.communicate(timeout=30)
    meta = read_meta(ck)
    assert meta["scaler"] and meta["scaler"]["scale"] < 2.0 ** 24, meta["scaler"]  # it calibrated down
    assert meta["precision"]["calibration_skips"] >= 1
    # the scaler's state comes back from the checkpoint, exactly
    s = config.load({}).replace(spec["spec"])
    prec = Precision.from_settings(s)
    model = build_model(s)
    load_checkpoint(ck, model, configure_optimizer(model, s), prec.scaler)
    assert prec.scaler.state_dict() == meta["scaler"] and prec.scaler.get_scale() != 2.0 ** 24
    # the rerun resumes there and finishes in float16 (fewer steps: the spec is the same, the budget is not)
    s = s.replace({"full_steps": meta["step"] + 4})
    code, res = execute("full", s, {}, run)
    assert code == 0 and res["verdict"] in ("PASS", "FAIL"), res
    assert f"resumed from candidate-s0 at step {meta['step'] + 1}" in (run / "log.txt").read_text()
    assert res["figures"]["skipped_steps"]["candidate/lm/s0"] >= meta["precision"]["skipped"]
    assert read_result(run)["verdict"] == res["verdict"]


@pytest.fixture
def tiny_corpus_fp16(tmp_path):
    from experiments import corpus

    out = tmp_path / "corpus"
    corpus.build(corpus.stdlib_sources(max_bytes=40_000), out, val_frac=0.2)
    return out


@pytest.mark.slow
def test_memory_estimate_of_every_stage_part_within_ten_percent_in_float16():
    from experiments.gpucheck import MEM_TWIN, memory_checks

    s = fp16(**{**MEM_TWIN, "batch_size": 32})
    res = memory_checks(s, "cpu")
    assert set(res) == {"toy_train", "toy_eval", "lm_train", "probe"}
    for part, m in res.items():
        assert m["dtype"] == "float16" and m["error"] <= 0.10, (part, m)


@pytest.mark.slow
def test_gpu_check_refuses_cleanly_without_cuda_and_its_twin_writes_the_benchmark_json(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is here: tests/test_precision_gpu.py runs the real gpu-check")
    p = subprocess.run([sys.executable, "-m", "experiments.gpucheck", "--json", str(tmp_path / "g.json")], cwd=ROOT,
                       env=ENV, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "needs a CUDA GPU" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "g.json").exists()
    from experiments.gpucheck import main

    out = tmp_path / "twin.json"
    assert main(["--cpu-twin", "--parts", "throughput,sdpa", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["device"].startswith("cpu") and doc["versions"]["torch"] == torch.__version__
    assert doc["figures"]["throughput"]["refiner"]["tokens_per_s"] > 0
    names = {t["name"]: t for t in doc["targets"]}
    assert set(names) == {"smoke_float16_pass", "memory_estimate_error_max", "mfu_small", "sdpa_fast_kernel",
                          "wall_s"}
    assert all(set(t) == {"name", "value", "target", "unit", "met"} for t in doc["targets"])
    assert names["mfu_small"]["met"] is None and names["sdpa_fast_kernel"]["met"] is None  # no MFU on a CPU
