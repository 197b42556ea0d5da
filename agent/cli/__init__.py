"""agent.cli: the `refinery` command line. Each command group lives in its own module with a
`register(subparsers)` function; this file only assembles them and reports errors.

    daemon_cmd.py  daemon, status         queue_cmd.py  queue ..., gpu-lock
    issue_cmd.py   issue ... (local)      stage_cmd.py  smoke, ablate, train, corpus build
    ops_cmd.py     service, archive       config_cmd.py config
    coder_cmd.py   coder check            demo.py       demo
    verify_cmd.py  verify FINDING.md

May import anything in agent/ and below; nothing imports agent.cli.

Errors: a RefineryError prints its chain of causes, one line each, and exits 2; the
traceback appears only with -v. Nothing printed here ever contains the GitHub token.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from config import RefineryError

COMMAND_MODULES = (
    "agent.cli.config_cmd",  # config
    "agent.cli.daemon_cmd",  # daemon, status, demo, service, archive
    "agent.cli.ops_cmd",     # service install, archive run|verify|bench
    "agent.cli.issue_cmd",   # issue new|ls|show|comment|label|close (local tracker)
    "agent.cli.queue_cmd",   # queue ..., gpu-lock
    "agent.cli.stage_cmd",   # smoke, ablate, train, corpus
    "agent.cli.coder_cmd",   # coder check
    "agent.cli.verify_cmd",  # verify FINDING.md
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refinery", description="A research job-queue daemon for one GPU box. "
                                     "Settings come from REFINERY_* environment variables (see `refinery config`).")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def format_error(exc: BaseException) -> str:
    lines, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        lines.append(f"{type(exc).__name__}: {exc}" if not lines else f"  caused by {type(exc).__name__}: {exc}")
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)  # `raise ... from None`
    from agent.redact import redact

    return redact("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("refinery: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `refinery queue ls --json | head`: the reader left; no traceback, no second error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a command killed by SIGPIPE
    except RefineryError as e:
        if args.verbose:
            import traceback

            from agent.redact import redact

            print(redact(traceback.format_exc()), file=sys.stderr)
        print(f"refinery: {format_error(e)}", file=sys.stderr)
        return 2
