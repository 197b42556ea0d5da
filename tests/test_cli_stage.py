"""`refinery smoke|ablate|train` and `refinery corpus build` honour the configured locations
(REFINERY_RUNS_DIR, REFINERY_CORPUS_DIR), as real processes.

    .venv/bin/python -m pytest tests/test_cli_stage.py -q
"""

from __future__ import annotations

import os
import subprocess
import sys

from config import ROOT
from experiments.runs import read_result

ENV = {k: v for k, v in os.environ.items() if not k.startswith("REFINERY_") and k != "MODEL_ARCH"}
TINY = "init_std = 0.1\n[stages]\nsmoke_steps = 10\nsmoke_overfit_steps = 60\ntest_examples = 200\n"


def _refinery(*args: str, env: dict[str, str], timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_foreground_stage_writes_its_run_under_refinery_runs_dir(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(TINY)
    runs = tmp_path / "runs"
    p = _refinery("smoke", str(spec), env={**ENV, "REFINERY_RUNS_DIR": str(runs), "REFINERY_STAGE_THREADS": "1"})
    assert p.returncode == 0, p.stderr
    made = [d for d in runs.iterdir() if d.name.endswith("-i0-smoke-fg")] if runs.is_dir() else []
    assert len(made) == 1, f"no run under REFINERY_RUNS_DIR={runs}: {p.stderr}"
    assert read_result(made[0])["verdict"] == "PASS"


def test_corpus_build_writes_where_train_reads_it(tmp_path):
    """`corpus build` without --out writes REFINERY_CORPUS_DIR, the directory the full stage loads."""
    from experiments import corpus

    src = tmp_path / "texts"
    src.mkdir()
    for i in range(3):
        (src / f"d{i}.txt").write_text(f"document {i} " * 50)
    cdir = tmp_path / "corpus"
    p = _refinery("corpus", "build", str(src), env={**ENV, "REFINERY_CORPUS_DIR": str(cdir)}, timeout=60)
    assert p.returncode == 0, p.stderr
    assert str(cdir) in p.stdout and (cdir / "manifest.json").is_file()
    assert len(corpus.load("train", cdir, verify=True)) > 0 and len(corpus.load("val", cdir, verify=True)) > 0
