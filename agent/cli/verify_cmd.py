"""`refinery verify FINDING.md`: re-derive every number in a finding and in its issue's comments from the run
artifacts, with the gate of the evaluation fingerprint each run recorded (agent/reporting/verify_report.py). Exit 0 when
everything agrees, 1 on any mismatch (each printed with where, what the document says and what the runs give),
2 when a run cannot be re-derived (an artifact missing, the recorded gate not in this repository)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("verify", help="re-derive every number in a finding and its comments from the run artifacts")
    p.add_argument("finding", help="a finding, e.g. docs/findings/2026-01-01-i12-idea.md")
    p.add_argument("--no-comments", action="store_true", help="check the finding only (no tracker is asked for "
                   "the issue's comments)")
    p.add_argument("--json", action="store_true", help="the report as one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    import config
    from agent.reporting import verify_report as verify

    comments, why = None, ""
    if not args.no_comments:
        comments, why = _comments(config.load(), verify.parse_finding(Path(args.finding)).issue)
    rep = verify.verify(args.finding, comments)
    if why:
        rep.notes.append(why)
    if args.json:
        print(json.dumps({"finding": rep.finding, "ok": rep.ok, "mismatches": rep.mismatches,
                          "numbers_checked": rep.numbers_checked, "lines_checked": rep.lines_checked,
                          "comments_checked": rep.comments_checked, "not_derivable": rep.not_derivable,
                          "runs": rep.runs, "notes": rep.notes}, indent=1))
    else:
        print(verify.text(rep), file=sys.stdout)
    return 0 if rep.ok else 1


def _comments(settings, issue: int) -> tuple[list | None, str]:
    """The issue's comments through the configured tracker; (None, why) when it cannot be read."""
    from agent.trackers.factory import make_tracker
    from agent.trackers.interface import TrackerError

    try:
        return list(make_tracker(settings).comments(issue)), ""
    except TrackerError as e:
        return None, f"the comments of #{issue} were not read ({e}): only the finding was checked"
