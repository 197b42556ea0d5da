"""What the coder shows: its lines in `refinery status`, and `refinery coder check`.

    refinery coder check [--json] [--no-call]
        the effective command line, the CLI's version, where the credential comes from (never its value),
        and one 1-turn call that proves the credential works (exit 0; 2 when anything is wrong). A check that
        passes lifts a pause the coder took for a refused credential.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import config
from agent.coder import command, credential, deliver
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


def register(sub) -> None:
    p = sub.add_parser("coder", help="the coder (Claude Code run headless on agent-lane items)")
    ps = p.add_subparsers(dest="coder_command", metavar="ACTION", required=True)
    c = ps.add_parser("check", help="command line, CLI version, credential source, and one 1-turn call")
    c.add_argument("--json", action="store_true")
    c.add_argument("--no-call", action="store_true", help="skip the 1-turn call")
    c.set_defaults(func=cmd_check)


class CoderCheckFailed(config.RefineryError):
    """`refinery coder check`: the 1-turn call did not succeed.

    Fix: read the answer it names (401/403: the credential; 429/529: try later; no answer: the network or
    ANTHROPIC_BASE_URL)."""


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


def cmd_check(args) -> int:
    from agent.coder.driver import PAUSE_KEY

    settings = config.load()
    out: dict = {"mode": settings.coder.coder, "cli_path": command.cli_path(settings),
                 "pinned": command.pinned_version()}
    cli = command.find_cli(settings)
    out["cli_version"] = cli.version
    cred = credential.require(settings)
    out["credential"] = f"{cred.var} from {cred.source}"
    item = command.Item(issue=0, title="(check)", body="", branch="agent/i0-check", worktree=Path("WORKTREE"),
                        notes=Path("runs/agent/ISSUE/notes.md"), attempt_dir=Path(tempfile.gettempdir()) / "x",
                        session_id="SESSION-ID", protected=settings.coder.coder_protected)
    argv = [cli.path, "-p", command.prompt(settings, item), "--output-format", "stream-json", "--verbose",
            "--tools", command.TOOLS, "--permission-mode", "dontAsk", "--settings", "runs/agent/ISSUE/N/settings.json",
            "--setting-sources", "user", "--strict-mcp-config", "--max-turns", str(settings.coder.coder_max_turns)]
    out["command"] = command.shown(argv)
    if not args.no_call:
        out["call"] = one_call(settings, cli, cred)
    if args.json:
        print(redact(json.dumps(out, indent=2)))
    else:
        print(redact(f"mode:        {out['mode']}\ncli:         {out['cli_path']} (Claude Code {cli.version}; "
                     f"pinned {out['pinned']})\ncredential:  {out['credential']}\ncommand:     {out['command']}"))
        if "call" in out:
            c = out["call"]
            print(f"1-turn call: {'ok' if c['ok'] else 'FAILED'} in {c['wall_s']} s"
                  + (f", API status {c['api_status']}" if c["api_status"] else "") + f": {c['answer']!r}")
    if "call" in out and not out["call"]["ok"]:
        raise CoderCheckFailed(f"the 1-turn call failed (API status {out['call']['api_status']})")
    if "call" in out:  # the credential works: lift a pause the daemon took for a refused one
        try:
            from jobqueue.db import init_db, make_engine
            from jobqueue.outbox import KeyValue

            engine = make_engine(settings=settings)
            init_db(engine)
            kv = KeyValue(engine)
            if (kv.get(PAUSE_KEY) or {}).get("kind") == "auth":
                kv.delete(PAUSE_KEY)
                print("the coder's pause for a refused credential is lifted")
        except Exception as e:  # noqa: BLE001 - the check itself passed; the queue may live elsewhere
            print(f"(could not reach the queue database to lift a pause: {type(e).__name__})", file=sys.stderr)
    return 0
