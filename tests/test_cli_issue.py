"""`refinery issue ...` (the local tracker) refusing bad input: one line on stderr, exit 2, nothing stored.

    .venv/bin/python -m pytest tests/test_cli_issue.py -q
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from config import ROOT
from tests.queue_support import queue_env, run_cli, use_env


@pytest.fixture
def env(sqlite_url, tmp_path, monkeypatch):
    return use_env(monkeypatch, queue_env(sqlite_url, tmp_path, tracker="local"))


run = run_cli


def test_unreadable_body_file_is_one_line_and_files_nothing(env, capsys, tmp_path):
    missing = str(tmp_path / "no-such-body.md")
    rc, out, err = run(capsys, "issue", "new", "an idea", "--body-file", missing)
    assert rc == 2 and not out and len(err.strip().splitlines()) == 1
    assert "cannot read --body-file" in err and "no-such-body.md" in err
    rc, out, _ = run(capsys, "issue", "ls", "--state", "all", "--json")
    assert rc == 0 and json.loads(out) == []  # nothing was filed
    assert run(capsys, "issue", "new", "an idea", "--body", "first")[0] == 0
    rc, out, err = run(capsys, "issue", "edit", "1", "--body-file", str(tmp_path))  # a directory
    assert rc == 2 and not out and len(err.strip().splitlines()) == 1 and "cannot read --body-file" in err
    rc, out, _ = run(capsys, "issue", "show", "1", "--json")
    assert rc == 0 and json.loads(out)["body"] == "first"  # the body is unchanged


def test_react_to_a_comment_that_is_not_on_the_issue_is_one_line(env, capsys):
    assert run(capsys, "issue", "new", "one", "--body", "x")[0] == 0
    assert run(capsys, "issue", "new", "two", "--body", "y")[0] == 0
    rc, out, _ = run(capsys, "issue", "comment", "1", "the result")
    assert rc == 0
    comment = out.strip()
    for number, cid in (("1", "999"), ("2", comment)):  # no such comment; a comment of another issue
        rc, out, err = run(capsys, "issue", "react", number, cid)
        assert rc == 2 and not out and len(err.strip().splitlines()) == 1 and f"has no comment {cid}" in err
    rc, out, _ = run(capsys, "issue", "react", "1", comment)
    assert rc == 0 and f"+1 on comment {comment}" in out


def test_an_empty_label_is_refused(env, capsys):
    rc, out, err = run(capsys, "issue", "new", "one", "-l", "ideas", "-l", " ")
    assert rc == 2 and not out and "label cannot be empty" in err
    assert json.loads(run(capsys, "issue", "ls", "--json")[1]) == []  # nothing filed
    assert run(capsys, "issue", "new", "one", "-l", "ideas")[0] == 0
    rc, out, err = run(capsys, "issue", "label", "1", "cpu", "")
    assert rc == 2 and not out and "label cannot be empty" in err
    assert json.loads(run(capsys, "issue", "show", "1", "--json")[1])["labels"] == ["ideas"]  # nothing half-done


def test_an_empty_comment_is_refused(env, capsys):
    assert run(capsys, "issue", "new", "one", "--body", "x")[0] == 0
    rc, out, err = run(capsys, "issue", "comment", "1", "  ")
    assert rc == 2 and not out and len(err.strip().splitlines()) == 1 and "comment cannot be empty" in err
    assert json.loads(run(capsys, "issue", "show", "1", "--json")[1])["comments"] == []


def _issue_new(url: str, tmp_path) -> subprocess.CompletedProcess:
    import os

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("REFINERY_")},
           **queue_env(url, tmp_path, tracker="local")}
    return subprocess.run([sys.executable, "-m", "agent", "issue", "new", "an idea", "--body", "x"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)


def test_a_queue_database_that_cannot_be_opened_is_one_line_not_a_traceback(tmp_path):
    """`refinery issue new` opens the database as the daemon does: a path it cannot create is QueueUnavailable
    (one line, exit 2, the free space where the file lives), never a traceback."""
    (tmp_path / "a-file").write_text("not a directory")
    p = _issue_new(f"sqlite:///{tmp_path}/a-file/queue.db", tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "cannot open the queue database" in p.stderr
    assert "MB free on" in p.stderr and "REFINERY_DB_URL" in p.stderr


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MB tmpfs filled to the last block (needs root and mount; skipped where neither is allowed)."""
    import os

    mnt = tmp_path / "full"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={mnt}/filler", "bs=4k"], capture_output=True)
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_queue_database_on_a_full_disk_says_the_disk_is_full(full_disk, tmp_path):
    p = _issue_new(f"sqlite:///{full_disk}/queue.db", tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert f"0.0 MB free on {full_disk} (the disk is full" in p.stderr
