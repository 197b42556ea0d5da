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


def test_corpus_build_from_one_file_holds_out_its_tail(tmp_path):
    """One big text file is a corpus: the last val fraction of its tokens is the validation text."""
    import json

    from experiments import corpus

    book = tmp_path / "book.txt"
    book.write_text("".join(f"Line {i} of the only book I have.\n" for i in range(400)))
    cdir = tmp_path / "corpus"
    p = _refinery("corpus", "build", str(book), "--out", str(cdir), "--val-frac", "0.1", env=ENV, timeout=60)
    assert p.returncode == 0, p.stderr
    train, val = corpus.load("train", cdir, verify=True), corpus.load("val", cdir, verify=True)
    assert 0.08 < len(val) / (len(train) + len(val)) < 0.12
    man = json.loads((cdir / "manifest.json").read_text())
    assert man["documents"] == 1 and man["sources"][0]["split"] == f"train, last {len(val)} tokens val"


def test_corpus_build_says_what_it_left_out_and_refuses_nonsense(tmp_path):
    src = tmp_path / "texts"
    src.mkdir()
    (src / "a.txt").write_text("alpha " * 300)
    (src / "b.txt").write_text("beta " * 300)
    (src / "c.txt").write_text("gamma " * 3000)  # over the cap below
    (src / "empty.txt").write_text("\n")
    cdir = tmp_path / "corpus"
    p = _refinery("corpus", "build", str(src), "--out", str(cdir), "--max-bytes", "5000", env=ENV, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "corpus: 2 documents" in p.stdout and "1 empty file(s) left out" in p.stdout
    assert "1 file(s) left out over the --max-bytes cap of 5,000 bytes (first: texts/c.txt)" in p.stdout
    for bad, said in ((["--val-frac", "2"], "not a fraction between 0 and 1"),
                      (["--max-bytes", "-5"], "not a byte count of 0 or more")):
        p = _refinery("corpus", "build", str(src), "--out", str(tmp_path / "no"), *bad, env=ENV, timeout=60)
        assert p.returncode == 2 and said in p.stderr and "Traceback" not in p.stderr, p.stderr
    p = _refinery("corpus", "build", str(src / "empty.txt"), "--out", str(tmp_path / "no"), env=ENV, timeout=60)
    assert p.returncode == 2 and "no text to build from: 1 empty file(s) (empty.txt)" in p.stderr, p.stderr
    p = _refinery("corpus", "build", str(src / "c.txt"), "--out", str(tmp_path / "no"), "--max-bytes", "10",
                  env=ENV, timeout=60)
    assert p.returncode == 2 and "every file is over the --max-bytes cap of 10 bytes" in p.stderr, p.stderr
    assert not (tmp_path / "no").exists()  # a refused build leaves no empty directory behind


def test_demo_with_too_little_disk_says_so_at_once(tmp_path):
    """Jobs wait while the disk is full (the worker claims nothing); the demo would wait for ever, so it checks
    first and stops with the numbers."""
    p = _refinery("demo", env={**ENV, "REFINERY_RUNS_DIR": str(tmp_path / "runs"),
                               "REFINERY_MIN_FREE_DISK_GB": "1000000"}, timeout=60)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "needed for a stage (min_free_disk_gb)" in p.stderr and not (tmp_path / "runs" / "corpus").exists()
