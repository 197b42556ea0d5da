"""sd_notify(3) in a few lines: tell systemd we are ready, alive, stopping, and what we are doing.

systemd (Type=notify) passes a datagram socket in $NOTIFY_SOCKET: a filesystem path, or a
name in the abstract namespace written with a leading '@'. Each message is one datagram of
newline-separated KEY=VALUE assignments. With WatchdogSec= set, systemd also exports
$WATCHDOG_USEC (and $WATCHDOG_PID); a service that does not send WATCHDOG=1 within that many
microseconds is killed and, with Restart=on-failure, restarted.

Everything here is a no-op returning False when $NOTIFY_SOCKET is unset (a terminal, the tests,
`daemon --once`), and a failed send never raises: a notification is advice, not a duty.

    notify("READY=1")                      after start-up, before the first claim
    notify("STATUS=running job 12")        shown by `systemctl status`
    Watchdog(settings).ping(now)           every loop step; sends at most every interval/2
    notify("STOPPING=1"); extend_timeout(s) on a warm stop that may take a while
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def _address(env: Mapping[str, str]) -> str | None:
    addr = env.get("NOTIFY_SOCKET", "")
    if addr.startswith("@"):
        return "\0" + addr[1:]  # Linux abstract namespace
    if addr.startswith("/"):
        return addr
    return None  # unset, or a transport we do not speak (vsock:)


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send one sd_notify message (e.g. "READY=1" or "STATUS=idle\\nWATCHDOG=1"). True if sent."""
    addr = _address(os.environ if env is None else env)
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode("utf-8", "replace"))
        return True
    except OSError as e:
        log.debug("sd_notify %r to %r failed: %s", state.split("=", 1)[0], addr, e)
        return False


def status(text: str, env: Mapping[str, str] | None = None) -> bool:
    """STATUS=text on one line (a newline would start a new assignment)."""
    return notify("STATUS=" + " ".join(text.split()), env)


def ready(text: str = "", env: Mapping[str, str] | None = None) -> bool:
    return notify("READY=1" + (f"\nSTATUS={' '.join(text.split())}" if text else ""), env)


def stopping(env: Mapping[str, str] | None = None) -> bool:
    return notify("STOPPING=1", env)


def reloading(env: Mapping[str, str] | None = None) -> bool:
    """Before re-reading settings on SIGHUP; send ready() when done."""
    return notify("RELOADING=1", env)


def extend_timeout(seconds: float, env: Mapping[str, str] | None = None) -> bool:
    """Ask for `seconds` more before systemd gives up on a start or stop in progress."""
    return notify(f"EXTEND_TIMEOUT_USEC={max(1, int(seconds * 1e6))}", env)


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """WatchdogSec in seconds if systemd asked *this* process for pings, else None."""
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None  # meant for another process (our parent) or malformed
    return usec / 1e6


class Watchdog:
    """Rate-limited WATCHDOG=1 for a loop that steps with time passed in (STYLE.md example 12).

    ping(now) sends when half the interval has passed since the last send, so one slow step
    cannot starve systemd; a hung loop stops pinging and gets restarted. Disabled (every call a
    no-op) when settings.daemon.watchdog is False or systemd set no watchdog.
    """

    def __init__(self, enabled: bool = True, env: Mapping[str, str] | None = None):
        self.env = dict(os.environ if env is None else env)
        self.interval = watchdog_interval(self.env) if enabled else None
        self.last: float | None = None
        self.sent = 0

    @classmethod
    def from_settings(cls, settings, env: Mapping[str, str] | None = None) -> Watchdog:
        return cls(settings.daemon.watchdog, env)

    @property
    def active(self) -> bool:
        return self.interval is not None

    def ping(self, now: float) -> bool:
        if self.interval is None:
            return False
        if self.last is not None and now - self.last < self.interval / 2:
            return False
        self.last = now
        ok = notify("WATCHDOG=1", self.env)
        self.sent += ok
        return ok
