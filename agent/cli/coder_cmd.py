"""`refinery coder check`: the coder's effective command line, the CLI's version, where the credential comes
from (never its value), and one 1-turn call to prove the credential works."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import config
from agent.coder import command, credential
from agent.coder.driver import PAUSE_KEY
from agent.coder.status import one_call
from agent.redact import redact


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


def cmd_check(args) -> int:
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
            from agent.state.tables import KeyValue
            from jobqueue.db import make_engine
            from jobqueue.migrations import init_db

            engine = make_engine(settings=settings)
            init_db(engine)
            kv = KeyValue(engine)
            if (kv.get(PAUSE_KEY) or {}).get("kind") == "auth":
                kv.delete(PAUSE_KEY)
                print("the coder's pause for a refused credential is lifted")
        except Exception as e:  # noqa: BLE001 - the check itself passed; the queue may live elsewhere
            print(f"(could not reach the queue database to lift a pause: {type(e).__name__})", file=sys.stderr)
    return 0
