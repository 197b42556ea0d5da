"""The daemon's archiving pass moves finished runs to the cold tier.
Run: .venv/bin/python -m pytest tests/test_daemon_archive.py"""

from __future__ import annotations

import json
import os
import time

import config
from agent.daemon.loop import Daemon


def test_daemon_archive_pass_moves_an_old_finished_run(tmp_path, sqlite_url):
    runs, cold = tmp_path / "runs", tmp_path / "cold"
    run = runs / "20250101-000000-i7-ablation-3"
    (run / "plots").mkdir(parents=True)
    (run / "log.txt").write_text("a log\n")
    (run / "plots" / "loss.png").write_bytes(b"\x89PNG fake")
    (run / "result.json").write_text(json.dumps({"verdict": "FAIL"}))
    old = time.time() - 30 * 86400
    os.utime(run / "result.json", (old, old))
    settings = config.Settings().replace({"db_url": sqlite_url, "runs_dir": str(runs), "archive_dir": str(cold),
                                          "archive_after_days": 14})
    daemon = Daemon(settings)
    assert daemon.archive() == 1
    copies = [p for p in cold.rglob("log.txt")]
    assert copies and copies[0].read_text() == "a log\n"
    assert not (run / "log.txt").exists() and (run / "ARCHIVED.json").exists()
    assert daemon.archive() == 0  # nothing left to move

    off = Daemon(settings.replace({"archive_dir": ""}))
    assert off.archive() == 0
