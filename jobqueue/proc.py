"""Process identity, so recovery can prove an owner is gone (no SQL here).

A claim records its owner as (host, boot id, pid, process start time). On the same host an
owner is provably gone when the machine rebooted since (boot id differs), the pid is dead, or
the pid is alive but belongs to a different process (a different start time: the pid was
reused). Linux: /proc; elsewhere only the pid check is possible, and start time reads "".
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22); '' if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    return stat.rsplit(")", 1)[1].split()[19]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if Path("/proc").is_dir():  # a zombie is dead for our purposes
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    return True


def same_process(pid: int | None, start: str | None, boot: str | None = None) -> bool:
    """Is (pid, start, boot) still the very process that recorded them?"""
    if not pid:
        return False
    if boot and boot_id() and boot != boot_id():
        return False
    if not pid_alive(pid):
        return False
    return not start or start_time(pid) in ("", start)


def kill_group(pid: int, start: str | None, sig: int = signal.SIGKILL) -> bool:
    """Signal the process group led by `pid` if pid is still that process (an orphaned child)."""
    if not same_process(pid, start):
        return False
    try:
        os.killpg(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


@dataclass(frozen=True)
class Owner:
    """Who holds a lease: a worker process, or (pid None) an outside agent."""

    host: str
    boot: str = ""
    pid: int | None = None
    start: str = ""

    @classmethod
    def current(cls, host: str) -> Owner:
        pid = os.getpid()
        return cls(host=host, boot=boot_id(), pid=pid, start=start_time(pid))

    @classmethod
    def agent(cls, host: str) -> Owner:
        """An agent-lane claimer: leased by time only (the claiming CLI exits at once)."""
        return cls(host=host, boot=boot_id())

    @property
    def label(self) -> str:
        return f"{self.host}:{self.pid}" if self.pid else f"{self.host}:agent"
