"""The systemd unit: rendered with this checkout's paths, checked by systemd-analyze where it exists.

    .venv/bin/python -m pytest tests/test_ops_service.py -q
"""

from __future__ import annotations

import argparse
import io
import re
import shutil
import stat

import pytest

import config
from agent.cli import ops_cmd as cli_ops
from agent.ops import service
from agent.ops.service import ServiceError, analyze_verify, install, render_unit

FAKE_BIN = "/usr/bin/env"  # any executable: systemd-analyze checks ExecStart's binary exists


def _settings(**over):
    return config.load({}).replace(over) if over else config.load({})


def _keys(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


@pytest.mark.parametrize("user", [False, True])
def test_unit_runs_binary_directly_with_stop_and_watchdog(user, tmp_path):
    s = _settings(archive_dir=str(tmp_path / "cold"), stop_timeout_s=1234, watchdog_s=90)
    text = render_unit(user, settings=s, run_as="alice", credential=tmp_path / "tok")
    k = _keys(text)
    binary = str(service.find_binary())
    assert k["ExecStart"] == [f"{binary} daemon"]  # no shell wrapper
    assert not re.search(r"ExecStart=.*\b(sh|bash)\b", text)
    assert k["Type"] == ["notify"] and k["NotifyAccess"] == ["main"]
    assert k["Restart"] == ["on-failure"] and k["KillSignal"] == ["SIGINT"] and k["KillMode"] == ["mixed"]
    assert k["TimeoutStopSec"] == ["1234s"] and k["WatchdogSec"] == ["90s"]
    assert k["LoadCredential"] == [f"github-token:{tmp_path / 'tok'}", "anthropic-token"]  # coder: the Claude key
    assert k["NoNewPrivileges"] == ["yes"] and k["ProtectSystem"] == ["strict"] and k["PrivateTmp"] == ["yes"]
    rw = k["ReadWritePaths"][0].split()
    assert str(config.ROOT / "runs") in rw and str(config.ROOT / "docs") in rw
    assert f"-{tmp_path / 'cold'}" in rw  # '-': an unmounted archive disk does not stop the start
    # nothing that would close the device policy and hide /dev/nvidia* from CUDA
    for gpu_breaker in ("PrivateDevices", "DevicePolicy", "DeviceAllow", "ProtectClock", "MemoryDenyWriteExecute"):
        assert gpu_breaker not in k
    assert ("User" in k) == (not user)
    assert k["WantedBy"] == (["default.target"] if user else ["multi-user.target"])
    assert not re.search(r"@[A-Z_]+@", text)


def test_a_sqlite_queue_outside_runs_is_writable_in_the_unit(tmp_path):
    """SQLite writes -wal and -shm beside the database: its directory must be in ReadWritePaths= (the default
    queue under runs/ is covered by runs/; PostgreSQL needs nothing)."""
    def rw(db_url: str) -> list[str]:
        return _keys(render_unit(False, settings=_settings(db_url=db_url), run_as="alice",
                                 binary=FAKE_BIN))["ReadWritePaths"][0].split()

    base = rw("sqlite:///runs/queue.db")
    assert sorted(rw(f"sqlite:///{tmp_path}/q/queue.db")) == sorted([*base, str(tmp_path / "q")])
    assert sorted(rw("sqlite:///state/queue.db")) == sorted([*base, str(config.ROOT / "state")])
    assert rw("postgresql://refinery@db.lan/refinery") == base
    install(True, unit_dir=tmp_path / "units", etc_dir=tmp_path / "etc", out=io.StringIO(), binary=FAKE_BIN,
            settings=_settings(db_url=f"sqlite:///{tmp_path}/q2/queue.db"))
    assert (tmp_path / "q2").is_dir()  # made, as a ReadWritePaths= entry must exist


def test_install_reads_the_units_environment_file(tmp_path, monkeypatch):
    """The next steps say: put REFINERY_ARCHIVE_DIR in the environment file, then re-run install. The unit's
    ReadWritePaths= must then carry the archive, though install's own environment lacks it (sudo drops it)."""
    monkeypatch.delenv("REFINERY_ARCHIVE_DIR", raising=False)
    monkeypatch.delenv("REFINERY_ENV_FILE", raising=False)
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "refinery.env").write_text(f"REFINERY_ARCHIVE_DIR={tmp_path / 'cold'}\nREFINERY_WATCHDOG_S=77\n")
    out = io.StringIO()
    install(True, print_only=True, etc_dir=etc, out=out, binary=FAKE_BIN)
    k = _keys(out.getvalue())
    assert "-" + str(tmp_path / "cold") in k["ReadWritePaths"][0].split() and k["WatchdogSec"] == ["77s"]
    path = install(True, unit_dir=tmp_path / "units", etc_dir=etc, out=io.StringIO(), binary=FAKE_BIN)
    assert "-" + str(tmp_path / "cold") in _keys(path.read_text())["ReadWritePaths"][0].split()
    (etc / "refinery.env").unlink()  # no file yet: the defaults, no error
    assert "-" + str(tmp_path / "cold") not in _keys(
        render_unit(True, env_file=etc / "refinery.env", binary=FAKE_BIN))["ReadWritePaths"][0]


def test_stop_timeout_covers_the_child_grace():
    s = _settings()
    assert s.daemon.stop_timeout_s > s.queue.cancel_grace_s
    assert s.daemon.watchdog_s > s.daemon.github_timeout_s + s.daemon.max_rate_limit_wait_s


def test_paths_that_a_unit_cannot_carry_are_refused(tmp_path):
    with pytest.raises(ServiceError, match="space"):
        render_unit(False, settings=_settings(archive_dir=str(tmp_path / "my archive")), run_as="alice")
    with pytest.raises(ServiceError, match="User="):
        render_unit(False, settings=_settings(), run_as="bad user;rm")
    text = render_unit(True, settings=_settings(archive_dir=str(tmp_path / "100%")))
    assert f"-{tmp_path}/100%%" in text  # specifier escaped


@pytest.mark.parametrize("user", [False, True])
def test_systemd_analyze_verify_passes(user, tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (Debian: apt-get install systemd)")
    s = _settings(archive_dir=str(tmp_path / "cold"))
    result = analyze_verify(render_unit(user, settings=s, binary=FAKE_BIN, run_as="root"), tmp_path, user=user)
    assert result is not None
    rc, lines = result
    assert rc == 0 and lines == "", lines


def test_systemd_analyze_catches_a_broken_unit(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (Debian: apt-get install systemd)")
    text = render_unit(False, settings=_settings(), binary=FAKE_BIN, run_as="root")
    rc, lines = analyze_verify(text.replace("KillSignal=", "KilSignal="), tmp_path)
    assert "KilSignal" in lines  # the test above would notice a typo


def test_install_writes_unit_and_token_file_and_prints_next_steps(tmp_path):
    out = io.StringIO()
    path = install(True, unit_dir=tmp_path / "units", etc_dir=tmp_path / "etc", out=out,
                   settings=_settings(), binary=FAKE_BIN)
    assert path == tmp_path / "units" / "refinery.service"
    assert "ExecStart=/usr/bin/env daemon" in path.read_text()
    token = tmp_path / "etc" / "github-token"
    assert token.read_text() == "" and stat.S_IMODE(token.stat().st_mode) == 0o600
    said = out.getvalue()
    for expected in ("systemctl --user daemon-reload", "systemctl --user enable --now refinery", str(token),
                     "umask 077", "loginctl enable-linger", "REFINERY_GITHUB_REPO"):
        assert expected in said
    token.write_text("ghp_secret")  # a second install keeps the token
    install(True, unit_dir=tmp_path / "units", etc_dir=tmp_path / "etc", out=io.StringIO(), settings=_settings(),
            binary=FAKE_BIN)
    assert token.read_text() == "ghp_secret"


def test_cli_service_install_print(capsys):
    parser = argparse.ArgumentParser()
    cli_ops.register(parser.add_subparsers())
    args = parser.parse_args(["service", "install", "--user", "--print"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert text.startswith("# refinery") and "Type=notify" in text and "User=" not in text
