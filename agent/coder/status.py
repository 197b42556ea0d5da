"""What the coder shows: its lines in `refinery status`, and `refinery coder check`.

    refinery coder check [--json] [--no-call]
        the effective command line, the CLI's version, where the credential comes from (never its value),
        and one 1-turn call that proves the credential works (exit 0; 2 when anything is wrong). A check that
        passes lifts a pause the coder took for a refused credential.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
import uuid

import config
from agent.coder import command, deliver
from agent.redact import redact


def status(settings: config.Settings, kv) -> dict:
    """The coder's part of `refinery status` (JSON-able; no network)."""
    from agent.coder.driver import PAUSE_KEY

    pause = kv.get(PAUSE_KEY)
    if pause and pause.get("until") is not None and pause["until"] <= time.time():
        pause = None
    return {"mode": settings.coder.coder, "workers": settings.coder.coder_workers,
            "spent_today_usd": round(deliver.spent_today(kv), 4), "usd_per_day": settings.coder.coder_usd_per_day,
            "paused": pause}


def status_lines(st: dict) -> list[str]:
    if not st or st.get("mode") == "off":
        return ["coder: off (agent-lane items wait for an outside agent)"]
    line = (f"coder: claude, {st['workers']} at a time; spent today ${st['spent_today_usd']:.2f} of "
            f"${st['usd_per_day']:.2f}")
    p = st.get("paused")
    if p:
        until = (f" until {time.strftime('%Y-%m-%d %H:%M %Z', time.localtime(p['until']))}" if p.get("until")
                 else " until fixed")
        line += f"\ncoder PAUSED{until}: {p['why']}"
    return [line]


def one_call(settings: config.Settings, cli: command.Cli, cred, timeout: float = 120.0) -> dict:
    """`claude -p 'Reply with OK'` once, max one turn, no tools, in an empty directory with refinery's HOME."""
    from agent.coder.driver import home_dir

    home = home_dir(settings)
    with tempfile.TemporaryDirectory(prefix="refinery-coder-check-") as d:
        argv = [cli.path, "-p", "Reply with the single word OK.", "--output-format", "stream-json", "--verbose",
                "--max-turns", "1", "--tools", "", "--setting-sources", "user", "--strict-mcp-config",
                "--session-id", str(uuid.uuid4())]
        if settings.coder.coder_model:
            argv += ["--model", settings.coder.coder_model]
        env = command.session_env(settings, cred, home)
        t0 = time.time()
        try:
            p = subprocess.Popen(argv, cwd=d, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, start_new_session=True)
        except OSError as e:
            raise command.CliMissing(f"cannot start {cli.path}: {e}") from None
        result, status = None, None
        deadline = t0 + timeout
        for line in p.stdout:  # type: ignore[union-attr]
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("type") == "system" and ev.get("subtype") == "api_retry":
                status = ev.get("error_status")
                if status in (401, 403):  # the CLI would retry a refused credential for minutes
                    break
            if ev.get("type") == "result":
                result = ev
            if time.time() > deadline:
                break
        if p.poll() is None:
            p.kill()
        p.wait(10)
    ok = bool(result) and result.get("subtype") == "success" and not result.get("is_error")
    return {"ok": ok, "api_status": status or (result or {}).get("api_error_status"),
            "answer": redact(str((result or {}).get("result", ""))[:200]), "wall_s": round(time.time() - t0, 2),
            "usd": (result or {}).get("total_cost_usd")}
