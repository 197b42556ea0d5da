"""sd_notify over a real unix datagram socket: what systemd would receive.

    .venv/bin/python -m pytest tests/test_ops_sdnotify.py -q
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from agent.ops import sdnotify
from config import ROOT


@pytest.fixture
def notify_socket(tmp_path):
    """A bound datagram socket standing where systemd's notify socket would be; yields (env, recv)."""
    path = tmp_path / "notify.sock"
    short = None
    if len(str(path)) > 100:  # sun_path holds 108 bytes: bind in a short directory instead
        short = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")
        path = Path(short) / "notify.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(5)

    def recv() -> str:
        return s.recv(4096).decode()

    yield {"NOTIFY_SOCKET": str(path)}, recv, s
    s.close()
    if short:
        shutil.rmtree(short, ignore_errors=True)


def _nothing_waiting(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        s.recv(4096)
        return False
    except BlockingIOError:
        return True
    finally:
        s.settimeout(5)


def test_messages_arrive_as_datagrams(notify_socket):
    env, recv, _ = notify_socket
    assert sdnotify.ready("loop up", env=env)
    assert recv() == "READY=1\nSTATUS=loop up"
    assert sdnotify.status("running job 7\nFAKE=1", env=env)
    assert recv() == "STATUS=running job 7 FAKE=1"  # a newline cannot smuggle in another assignment
    assert sdnotify.notify("WATCHDOG=1", env=env)
    assert recv() == "WATCHDOG=1"
    assert sdnotify.stopping(env=env) and recv() == "STOPPING=1"
    assert sdnotify.extend_timeout(2.5, env=env) and recv() == "EXTEND_TIMEOUT_USEC=2500000"


def test_abstract_namespace_socket():
    name = f"refinery-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(5)
        assert sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": "@" + name})
        assert s.recv(100) == b"READY=1"


def test_child_process_reads_notify_socket_from_environment(notify_socket):
    env, recv, _ = notify_socket
    code = "from agent.ops import sdnotify; import sys; sys.exit(0 if sdnotify.ready('child') else 3)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env}, timeout=60)
    assert proc.returncode == 0
    assert recv() == "READY=1\nSTATUS=child"


def test_noop_without_socket_and_on_a_dead_socket(tmp_path):
    assert sdnotify.notify("READY=1", env={}) is False
    assert sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": "vsock:2:1234"}) is False
    assert sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}) is False  # never raises
    assert sdnotify.watchdog_interval({}) is None
    assert sdnotify.Watchdog(env={}).ping(0.0) is False


def test_watchdog_interval_only_for_this_pid():
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "180000000"}) == 180.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}) == 3.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "0"}) is None


def test_watchdog_pings_at_half_the_interval(notify_socket):
    env, recv, s = notify_socket
    wd = sdnotify.Watchdog(env={**env, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())})
    assert wd.active and wd.interval == 2.0
    sent = [wd.ping(t) for t in (100.0, 100.5, 100.99, 101.0, 101.2, 102.0)]
    assert sent == [True, False, False, True, False, True]
    assert [recv() for _ in range(3)] == ["WATCHDOG=1"] * 3
    assert _nothing_waiting(s)
    assert wd.sent == 3


def test_watchdog_disabled_by_setting(notify_socket):
    env, _, s = notify_socket
    wd = sdnotify.Watchdog(enabled=False, env={**env, "WATCHDOG_USEC": "2000000"})
    assert not wd.active and wd.ping(0.0) is False
    assert _nothing_waiting(s)
