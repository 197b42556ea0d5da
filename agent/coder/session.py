"""One supervised run of the Claude Code CLI.

    s = Session(plan, cwd, attempt_dir, limits).start()
    while not s.poll(time.time()): ...          # the limits are enforced in poll(); the CLI's words are read by
    end = s.end()                               # a reader thread and every line saved to stream.jsonl (redacted)

The CLI runs in a process group of its own, stdin from /dev/null. refinery counts the model's turns itself
(distinct assistant message ids: the CLI's own --max-turns has been overshot) and estimates the spend from
the usage it reports; it stops the session (SIGINT to the group, SIGKILL after the grace period) at the turn
cap, the wall-clock limit, the output-silence limit, the item's or the day's spend cap, a credential the API
refuses (an `api_retry` with 401/403: the CLI would retry it for minutes), or more 429/529 retries than
allowed. A stop asked from outside (the daemon's warm stop) is the same SIGINT. What ended the run is
`SessionEnd.reason`; the result event, if any, is kept whole.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.redact import redact
from jobqueue.proc import start_time

AUTH_STATUSES = (401, 403)
BUSY_STATUSES = (429, 529)
TAIL_CHARS = 1500


@dataclass(frozen=True)
class Limits:
    max_turns: int
    wall_s: float
    silence_s: float
    grace_s: float
    usd_left: float  # this item's spend cap minus what earlier sessions spent
    day_usd_left: float  # the day's cap minus what was spent today before this session
    api_retries: int
    usd_per_tok_in: float
    usd_per_tok_out: float


@dataclass
class SessionEnd:
    reason: str  # exit | turns | wall | silence | spend | day | auth | busy | stop | lost | start
    exit_code: int | None
    result: dict | None
    turns: int
    usd: float
    session_id: str
    last_tool: str
    last_text: str
    api_status: int | None
    wall_s: float
    denials: list = field(default_factory=list)

    @property
    def detail(self) -> str:
        return {"turns": f"stopped at the turn cap ({self.turns} turns)",
                "wall": f"stopped at the wall-clock limit ({self.wall_s:.0f} s)",
                "silence": "stopped: no output for longer than the silence limit",
                "spend": f"stopped at the item's spend cap (${self.usd:.2f})",
                "day": "stopped at the day's spend cap",
                "auth": f"the API refused the credential ({self.api_status})",
                "busy": f"the API was rate limited or overloaded ({self.api_status})",
                "stop": "stopped by the daemon (warm stop)",
                "lost": "the lease was lost",
                "start": "the CLI could not be started"}.get(self.reason, f"the CLI exited ({self.exit_code})")


class Session:
    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, attempt_dir: Path, limits: Limits,
                 session_id: str):
        self.argv, self.env, self.cwd, self.dir, self.limits = argv, env, cwd, attempt_dir, limits
        self.session_id = session_id
        self.proc: subprocess.Popen | None = None
        self.pid_start = ""
        self.lock = threading.Lock()
        self.started = self.last_output = time.time()
        self.msg_ids: set[str] = set()
        self.usd_own = 0.0
        self.result: dict | None = None
        self.last_tool = ""
        self.last_text = ""
        self.api_status: int | None = None
        self.busy_retries = 0
        self.events = 0
        self.reason: str | None = None  # why refinery stopped it (None: it ended by itself)
        self.int_at: float | None = None
        self.killed = False
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Session:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.started = self.last_output = time.time()
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                     close_fds=True)
        self.pid_start = start_time(self.proc.pid)
        for target, stream in ((self._read_stdout, self.proc.stdout), (self._read_stderr, self.proc.stderr)):
            t = threading.Thread(target=target, args=(stream,), daemon=True, name=f"coder-{self.proc.pid}")
            t.start()
            self._threads.append(t)
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _read_stdout(self, stream) -> None:
        with open(self.dir / "stream.jsonl", "ab") as out:
            for raw in iter(stream.readline, b""):
                line = redact(raw.decode(errors="replace").rstrip("\n"))
                out.write(line.encode() + b"\n")
                out.flush()
                with self.lock:
                    self.last_output = time.time()
                    self.events += 1
                try:
                    self._take(json.loads(line))
                except (ValueError, TypeError, AttributeError):
                    continue

    def _read_stderr(self, stream) -> None:
        with open(self.dir / "stderr.txt", "ab") as out:
            for raw in iter(stream.readline, b""):
                out.write(redact(raw.decode(errors="replace")).encode())
                out.flush()
                with self.lock:
                    self.last_output = time.time()

    def _take(self, ev: dict) -> None:
        kind, sub = ev.get("type"), ev.get("subtype")
        with self.lock:
            if kind == "system" and sub == "init" and ev.get("session_id"):
                self.session_id = ev["session_id"]
            elif kind == "system" and sub == "api_retry":
                status = ev.get("error_status")
                self.api_status = status
                if status in BUSY_STATUSES:
                    self.busy_retries += 1
            elif kind == "assistant":
                msg = ev.get("message") or {}
                mid = msg.get("id") or f"anon-{len(self.msg_ids)}"
                if mid not in self.msg_ids:
                    self.msg_ids.add(mid)
                    u = msg.get("usage") or {}
                    tin = (u.get("input_tokens") or 0) + (u.get("cache_creation_input_tokens") or 0) \
                        + 0.1 * (u.get("cache_read_input_tokens") or 0)
                    self.usd_own += tin * self.limits.usd_per_tok_in + (u.get("output_tokens") or 0) \
                        * self.limits.usd_per_tok_out
                for block in msg.get("content") or []:
                    if block.get("type") == "tool_use":
                        inp = block.get("input") or {}
                        what = inp.get("command") or inp.get("file_path") or inp.get("pattern") or ""
                        self.last_tool = f"{block.get('name')} {str(what)[:80]}".strip()
                    elif block.get("type") == "text" and block.get("text"):
                        self.last_text = block["text"][-TAIL_CHARS:]
            elif kind == "result":
                self.result = ev
                if ev.get("api_error_status"):
                    self.api_status = ev.get("api_error_status")

    # ------------------------------------------------------------------ supervision
    @property
    def turns(self) -> int:
        with self.lock:
            return len(self.msg_ids)

    @property
    def usd(self) -> float:
        with self.lock:
            cli = float((self.result or {}).get("total_cost_usd") or 0.0)
            return max(self.usd_own, cli)

    def stop(self, reason: str, now: float | None = None) -> None:
        """SIGINT to the group (once); the first reason given sticks. SIGKILL follows after the grace period."""
        if self.reason is None:
            self.reason = reason
        if self.int_at is None and self.proc is not None and self.proc.poll() is None:
            self.int_at = time.time() if now is None else now
            self._signal(signal.SIGINT)

    def kill(self, reason: str | None = None) -> None:
        if self.reason is None and reason:
            self.reason = reason
        self.killed = True
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)  # type: ignore[union-attr]
        except (ProcessLookupError, PermissionError, AttributeError):
            pass

    def poll(self, now: float) -> bool:
        """Enforce the limits; True once the CLI has exited (and its output is read)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            for t in self._threads:
                t.join(5)
            self._signal(signal.SIGKILL)  # stragglers it left in its group (a test run, a shell)
            return True
        lim = self.limits
        with self.lock:
            silent, status, busy = now - self.last_output, self.api_status, self.busy_retries
        if self.reason is None:
            if self.turns > lim.max_turns:
                self.stop("turns", now)
            elif now - self.started > lim.wall_s:
                self.stop("wall", now)
            elif silent > lim.silence_s:
                self.stop("silence", now)
            elif self.usd >= lim.usd_left:
                self.stop("spend", now)
            elif self.usd >= lim.day_usd_left:
                self.stop("day", now)
            elif status in AUTH_STATUSES and self.result is None:
                self.stop("auth", now)
            elif busy > lim.api_retries:
                self.stop("busy", now)
        if self.int_at is not None and not self.killed and now - self.int_at >= lim.grace_s:
            self.kill()
        return False

    def wait(self, timeout: float) -> bool:
        """Poll until the CLI exits or `timeout` passes; True if it exited."""
        end = time.time() + timeout
        while time.time() < end:
            if self.poll(time.time()):
                return True
            time.sleep(0.05)
        return False

    def end(self) -> SessionEnd:
        assert self.proc is not None and self.proc.returncode is not None
        r = self.result or {}
        status = self.api_status
        reason = self.reason or "exit"
        if reason == "exit" and r.get("is_error") and status in AUTH_STATUSES:
            reason = "auth"
        elif reason == "exit" and r.get("is_error") and status in BUSY_STATUSES:
            reason = "busy"
        elif reason == "exit" and r.get("subtype") == "error_max_turns":
            reason = "turns"
        elif reason == "exit" and r.get("subtype") == "error_max_budget_usd":
            reason = "spend"
        with self.lock:
            last_text = (r.get("result") or self.last_text or "")[-TAIL_CHARS:]
            return SessionEnd(reason=reason, exit_code=self.proc.returncode, result=self.result,
                              turns=len(self.msg_ids),
                              usd=round(max(self.usd_own, float(r.get("total_cost_usd") or 0.0)), 6),
                              session_id=self.session_id, last_tool=self.last_tool, last_text=redact(last_text),
                              api_status=status, wall_s=round(time.time() - self.started, 2),
                              denials=list(r.get("permission_denials") or []))
