"""Storage tiers: archive finished runs with a verified sha256 manifest; never lose the live copy.

    .venv/bin/python -m pytest tests/test_ops_archive.py -q
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import config
from agent.cli import ops_cmd as cli_ops
from agent.ops import archive
from agent.ops.archive import ArchiveError, DiskSpaceError

DAY = 86400.0


def make_run(runs, name, age_days=30.0, finished=True, big=0):
    d = runs / name
    (d / "ckpt").mkdir(parents=True)
    (d / "plots").mkdir()
    (d / "config.json").write_text('{"arch": "refiner"}\n')
    (d / "log.txt").write_text("git sha abc\n" * 100)
    (d / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "loss": 1 / (i + 1)}) + "\n" for i in range(50)))
    (d / "plots" / "loss.png").write_bytes(os.urandom(3000))
    (d / "ckpt" / "model.pt").write_bytes(os.urandom(big or 20000))
    (d / "ckpt" / "meta.json").write_text('{"step": 50}\n')
    (d / "empty.txt").write_bytes(b"")
    if finished:
        (d / "result.json").write_text('{"verdict": "PASS"}\n')
        t = time.time() - age_days * DAY
        os.utime(d / "result.json", (t, t))
    return d


def tree_hashes(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def tiers(tmp_path):
    runs, cold = tmp_path / "runs", tmp_path / "cold"
    runs.mkdir()
    settings = config.load({}).replace({"archive_dir": str(cold), "archive_after_days": 14})
    return runs, cold, settings


def test_archive_then_verify(tiers):
    runs, cold, settings = tiers
    old = make_run(runs, "20240101-000000-i1-ablation-3")
    young = make_run(runs, "20240301-000000-i2-smoke-4", age_days=1)
    unfinished = make_run(runs, "20240101-000000-i3-full-5", finished=False)
    (runs / "corpus").mkdir()
    (runs / "corpus" / "train.bin").write_bytes(b"x" * 100)
    before = tree_hashes(old)

    assert archive.due_runs(runs, 14) == [old]
    done = archive.archive_runs(settings, runs)
    assert [r.name for r in done] == [old.name] and done[0].copied and done[0].files == len(before)
    dest = cold / old.name
    assert {k: v for k, v in tree_hashes(dest).items() if k not in ("manifest.json", "SHA256SUMS")} == before
    assert sorted(p.name for p in old.iterdir()) == ["ARCHIVED.json"]  # live copy removed, marker left
    marker = json.loads((old / "ARCHIVED.json").read_text())
    assert marker["archived_to"] == str(dest) and marker["state"] == "done" and marker["kept"] == []
    assert tree_hashes(young) and tree_hashes(unfinished) and (runs / "corpus" / "train.bin").exists()
    if shutil.which("sha256sum"):  # the sums file works with coreutils too
        assert subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=dest).returncode == 0
    checks = archive.verify(cold)
    assert [(c.name, c.ok, c.files) for c in checks] == [(old.name, True, len(before))]
    assert archive.archive_runs(settings, runs) == []  # a second pass has nothing to do
    assert not any(p.name.endswith(".partial") for p in cold.iterdir())


def test_verify_detects_corruption(tiers):
    runs, cold, settings = tiers
    run = make_run(runs, "20240101-000000-i1-ablation-3")
    archive.archive_runs(settings, runs)
    dest = cold / run.name
    model = dest / "ckpt" / "model.pt"
    data = bytearray(model.read_bytes())
    data[1234] ^= 0x01  # one flipped bit
    model.write_bytes(bytes(data))
    (dest / "log.txt").unlink()
    (dest / "stray.txt").write_text("?")
    [c] = archive.verify(cold)
    assert not c.ok
    assert c.changed == ["ckpt/model.pt"] and c.missing == ["log.txt"] and c.extra == ["stray.txt"]
    assert "ckpt/model.pt" in c.problems()
    (dest / "manifest.json").write_text("{not json")
    [c] = archive.verify(cold)
    assert not c.ok and "manifest" in c.error


def test_cli_verify_exit_codes(tiers, monkeypatch, capsys):
    runs, cold, settings = tiers
    run = make_run(runs, "20240101-000000-i1-ablation-3")
    archive.archive_runs(settings, runs)
    monkeypatch.setenv("REFINERY_ARCHIVE_DIR", str(cold))
    parser = argparse.ArgumentParser()
    cli_ops.register(parser.add_subparsers())
    args = parser.parse_args(["archive", "verify"])
    assert args.func(args) == 0
    (cold / run.name / "config.json").write_text("tampered")
    assert args.func(args) == 1
    assert "BAD" in capsys.readouterr().out


def test_champion_weights_kept_on_both_tiers(tiers, tmp_path):
    runs, cold, settings = tiers
    run = make_run(runs, "20240101-000000-i1-full-9")
    whole = make_run(runs, "20240102-000000-i2-full-10")
    weights = run / "ckpt" / "model.pt"
    before = weights.read_bytes()
    card = tmp_path / "docs" / "registry" / "refiner-small.md"
    card.parent.mkdir(parents=True)
    card.write_text(f"# refiner-small\n\ncheckpoint: `runs/{run.name}/ckpt/model.pt` sha256 ...\n"
                    f"also runs/{whole.name}\n")
    keep = archive.champion_paths(tmp_path)
    assert keep == {tmp_path / "runs" / run.name / "ckpt" / "model.pt", tmp_path / "runs" / whole.name}
    done = archive.archive_runs(settings, runs, keep=keep)
    assert {r.name: r.kept for r in done} == {run.name: ["ckpt/model.pt"], whole.name: ["."]}
    assert weights.read_bytes() == before == (cold / run.name / "ckpt" / "model.pt").read_bytes()
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()) == \
        ["ARCHIVED.json", "ckpt/model.pt"]
    assert (whole / "log.txt").exists() and (cold / whole.name / "log.txt").exists()
    checks = archive.verify(cold, runs)
    assert len(checks) == 4 and all(c.ok for c in checks)
    weights.write_bytes(b"tampered")  # the live champion copy is checked against the same manifest
    bad = [c for c in archive.verify(cold, runs) if not c.ok]
    assert [c.name for c in bad] == [f"{run.name} (live copy)"] and bad[0].changed == ["ckpt/model.pt"]


def test_champion_paths_follow_docs_dir_and_runs_dir(tmp_path):
    """Cards under REFINERY_DOCS_DIR naming weights under REFINERY_RUNS_DIR (absolute, as the pipeline writes
    them) are found too: champion weights stay on both tiers whatever the two directories are."""
    runs, docs = tmp_path / "store" / "lab-runs", tmp_path / "notes"
    settings = config.load({}).replace({"runs_dir": str(runs), "docs_dir": str(docs)})
    card = docs / "registry" / "refiner-i3-j9.md"
    card.parent.mkdir(parents=True)
    card.write_text(f"- checkpoint: `{runs}/20240101-000000-i3-full-9/ckpt/candidate-s0`\n")
    assert archive.champion_paths(tmp_path, settings) == {runs / "20240101-000000-i3-full-9" / "ckpt" / "candidate-s0"}
    assert archive.champion_paths(tmp_path) == set()  # root/docs has no cards


CHILD = """
import sys, time
from pathlib import Path
from agent.ops.archive import archive_run
ready = Path(sys.argv[3])
def progress(rel, done, total):
    ready.write_text(rel)
    time.sleep(120)  # stand still mid-copy until the parent kills us
archive_run(sys.argv[1], sys.argv[2], progress=progress)
"""


def test_killed_copy_leaves_live_copy_intact_and_resumes(tiers, tmp_path):
    runs, cold, settings = tiers
    run = make_run(runs, "20240101-000000-i1-ablation-3")
    before = tree_hashes(run)
    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(run), str(cold), str(ready)], cwd=config.ROOT)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert child.poll() is None, "archiving child exited early"
            assert time.monotonic() < deadline, "child never reached the copy"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    assert tree_hashes(run) == before and not (run / "ARCHIVED.json").exists()
    assert not (cold / run.name).exists()
    assert (cold / f".{run.name}.partial").is_dir()  # the half copy, never mistaken for an archive
    assert archive.verify(cold) == []
    [done] = archive.archive_runs(settings, runs)  # the next pass starts over and finishes
    assert done.copied and [c.ok for c in archive.verify(cold)] == [True]
    assert sorted(p.name for p in cold.iterdir() if not p.name.startswith(".archive")) == [run.name]


def test_error_mid_copy_removes_partial_and_keeps_live(tiers):
    runs, cold, _ = tiers
    run = make_run(runs, "20240101-000000-i1-ablation-3")
    before = tree_hashes(run)

    def boom(rel, done, total):
        if rel.startswith("ckpt"):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        archive.archive_run(run, cold, progress=boom)
    assert tree_hashes(run) == before and list(cold.iterdir()) == []


def test_copy_already_in_archive_is_checked_before_pruning(tiers):
    runs, cold, _ = tiers
    run = make_run(runs, "20240101-000000-i1-ablation-3")
    saved = runs.parent / "saved"
    shutil.copytree(run, saved)
    archive.archive_run(run, cold)
    shutil.rmtree(run)
    shutil.copytree(saved, run)  # as if killed after the rename, before the marker
    done = archive.archive_run(run, cold)
    assert not done.copied and sorted(p.name for p in run.iterdir()) == ["ARCHIVED.json"]
    other = make_run(runs, "20240101-000000-i1-ablation-3x")
    shutil.copytree(cold / run.name, cold / other.name)  # an archived copy that does not match this run
    with pytest.raises(ArchiveError, match="differs"):
        archive.archive_run(other, cold)
    assert (other / "log.txt").exists() and not (other / "ARCHIVED.json").exists()


def test_interrupted_prune_resumes_only_after_reverifying(tiers):
    runs, cold, _ = tiers
    run = make_run(runs, "20240101-000000-i1-ablation-3")
    archive.archive_run(run, cold)
    marker = json.loads((run / "ARCHIVED.json").read_text())
    marker["state"] = "pruning"  # as if killed while deleting
    (run / "ARCHIVED.json").write_text(json.dumps(marker))
    (run / "log.txt").write_text("left behind")
    assert archive.due_runs(runs, 14) == [run]
    (cold / run.name / "log.txt").write_text("corrupted archive copy")
    with pytest.raises(ArchiveError, match="fails verification"):
        archive.archive_run(run, cold)
    assert (run / "log.txt").exists()  # nothing more deleted while the archive is bad


def test_require_free_disk_names_the_numbers(tmp_path):
    free = archive.free_bytes(tmp_path)
    assert archive.require_free_disk(tmp_path / "not" / "yet", 0) > 0  # nearest existing parent
    with pytest.raises(DiskSpaceError) as e:
        archive.require_free_disk(tmp_path, free + 10**15, "a full stage")
    msg = str(e.value)
    assert "GB free" in msg and "GB needed for a full stage" in msg and "short by" in msg
    settings = config.load({}).replace({"min_free_disk_gb": 1e6})
    with pytest.raises(DiskSpaceError, match="min_free_disk_gb"):
        archive.require_stage_disk(settings, tmp_path)
    assert archive.require_stage_disk(config.load({}).replace({"min_free_disk_gb": 0}), tmp_path) > 0


def test_bench_reports_a_rate(tmp_path):
    figures = archive.bench(tmp_path, total_mb=4, n_files=4)
    assert figures["bytes"] >= 4 << 20 and figures["copy_and_verify_mb_s"] > 0
