"""Helpers for the tests that signal and kill real daemons: a daemon subprocess whose output can be read
while it runs, process-group and environment probes through /proc, and a clean-up for children a killed
daemon left behind (they live in sessions of their own until a next daemon recovers them).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import config


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(d.name))
    return out


def alive(pid: int) -> bool:
    """Running, not a zombie (an orphan's zombie may linger where pid 1 does not reap)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def proc_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(x.split("=", 1) for x in raw.decode(errors="replace").split("\0") if "=" in x)


def kill_leftovers(runs: Path) -> None:
    """SIGKILL any process group still working for this test's runs directory (children of a daemon we
    killed outlive it in their own sessions until a next daemon recovers them)."""
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if proc_env(int(d.name)).get("QUEUE_RUN_DIR", "").startswith(str(runs)):
                    os.killpg(int(d.name), signal.SIGKILL)
            except (OSError, ValueError):
                pass


class DaemonProc:
    """`python -m agent daemon` with its output in a file we can read while it runs."""

    def __init__(self, env: dict, log: Path):
        self.log = log
        self.f = open(log, "a")
        self.p = subprocess.Popen([sys.executable, "-m", "agent", "daemon"], env=env, cwd=config.ROOT,
                                  stdin=subprocess.DEVNULL, stdout=self.f, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text()

    def check(self, value=True):
        """`value`, after making sure the daemon has not died (a wait_for condition fails fast)."""
        if self.p.poll() is not None:
            raise AssertionError(f"the daemon exited with {self.p.returncode}:\n{self.text()[-3000:]}")
        return value

    def signal(self, sig: int) -> float:
        self.p.send_signal(sig)
        return time.monotonic()

    def wait(self, timeout: float) -> int:
        try:
            return self.p.wait(timeout)
        finally:
            self.f.close()

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)
        self.f.close()


class NotifySocket:
    """A datagram socket standing where systemd's $NOTIFY_SOCKET would be; collects what arrives."""

    def __init__(self, path: Path):
        self.path, self.messages = path, []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        time.sleep(0.3)  # the last datagrams
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
