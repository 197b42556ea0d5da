"""`refinery issue new|ls|show|comment|label|close`: the local tracker from the shell.

The local tracker (REFINERY_TRACKER=local, the default) keeps issues in the queue database; the
daemon treats them exactly like GitHub issues. Whoever files an issue from this shell is recorded
as admin (trusted); `--as LOGIN` acts as someone else, untrusted unless `issue grant` says so.
"""

from __future__ import annotations

import getpass
import json
import sys

import config
from agent.trackers.interface import TrackerError


def register(sub) -> None:
    p = sub.add_parser("issue", help="the local tracker: issue new|ls|show|comment|label|close|edit|react|grant")
    s = p.add_subparsers(dest="issue_cmd", metavar="ACTION", required=True)

    a = s.add_parser("new", help="file an issue (body from --body, --body-file, or stdin with --body-file -)")
    a.add_argument("title", nargs="?", default=None)
    a.add_argument("-t", "--title", dest="title_opt", default=None, help="the title (or give it as the argument)")
    a.add_argument("--body", default=None)
    a.add_argument("--body-file", default=None, help="a file with the body (e.g. a ```toml spec); - = stdin")
    a.add_argument("-l", "--label", action="append", default=[], help="a label (repeat: -l ideas -l cpu)")
    a.add_argument("--as", dest="as_login", default=None, help="file as this login (untrusted unless granted)")
    a.set_defaults(func=_new)

    a = s.add_parser("ls", help="list issues")
    a.add_argument("--state", choices=("open", "closed", "all"), default="open")
    a.add_argument("-l", "--label", default=None)
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=_ls)

    a = s.add_parser("show", help="an issue with its labels and comments")
    a.add_argument("number", type=int)
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=_show)

    a = s.add_parser("comment", help="comment on an issue")
    a.add_argument("number", type=int)
    a.add_argument("text")
    a.add_argument("--as", dest="as_login", default=None)
    a.set_defaults(func=_comment)

    a = s.add_parser("label", help="add or remove labels: label N ideas gpu --remove blocked")
    a.add_argument("number", type=int)
    a.add_argument("add", nargs="*", help="labels to add")
    a.add_argument("-r", "--remove", action="append", default=[], help="a label to remove (repeat)")
    a.add_argument("--as", dest="as_login", default=None)
    a.set_defaults(func=_label)

    a = s.add_parser("close", help="close an issue (cancels its queued or running work)")
    a.add_argument("number", type=int)
    a.add_argument("--as", dest="as_login", default=None)
    a.set_defaults(func=_close)

    a = s.add_parser("edit", help="replace an issue's body (re-triggers intake)")
    a.add_argument("number", type=int)
    a.add_argument("--body", default=None)
    a.add_argument("--body-file", default=None)
    a.set_defaults(func=_edit)

    a = s.add_parser("react", help="react to a comment (a 👍 from a writer approves a full run)")
    a.add_argument("number", type=int)
    a.add_argument("comment_id", type=int)
    a.add_argument("content", nargs="?", default="+1")
    a.add_argument("--as", dest="as_login", default=None)
    a.set_defaults(func=_react)

    a = s.add_parser("grant", help="give a login a permission (admin, maintain, write, triage, read, none)")
    a.add_argument("login")
    a.add_argument("permission", choices=("admin", "maintain", "write", "triage", "read", "none"))
    a.set_defaults(func=_grant)


class NotLocal(config.RefineryError):
    """`refinery issue` drives the local tracker, but REFINERY_TRACKER is github.

    Fix: use GitHub's own interface for GitHub issues, or set REFINERY_TRACKER=local.
    """


def _db():
    from agent.state.local_tables import LocalIssues
    from jobqueue.store import Store

    settings = config.load()
    if settings.daemon.tracker != "local":
        raise NotLocal("REFINERY_TRACKER=github: `refinery issue` only manages the local tracker's issues")
    return LocalIssues(Store(settings).engine)  # Store: a database it cannot open is one clear line


def _me(db, as_login: str | None) -> str:
    if as_login:
        return as_login
    me = getpass.getuser()
    if db.permission(me) == "none":
        db.grant(me, "admin")  # the person at this machine's keyboard owns its local tracker
    return me


def _read_body(body: str | None, body_file: str | None) -> str:
    if body_file == "-":
        return sys.stdin.read()
    if body_file:
        from pathlib import Path

        try:
            return Path(body_file).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise TrackerError(f"cannot read --body-file {body_file} ({getattr(e, 'strerror', None) or e}): give "
                               "a readable text file, or - for stdin", 400) from None
    return body or ""


def _check_labels(labels: list[str]) -> None:
    if any(not lab.strip() for lab in labels):
        raise TrackerError("a label cannot be empty: give its name, e.g. -l ideas", 422)


def _get(db, number: int) -> dict:
    d = db.get(number)
    if d is None:
        raise TrackerError(f"local issue #{number} does not exist (see `refinery issue ls --state all`)", 404)
    return d


def _new(args) -> int:
    title = args.title or args.title_opt
    if not title or not title.strip() or (args.title and args.title_opt):
        raise TrackerError("give the issue one title: refinery issue new TITLE (or --title TITLE) [--body TEXT] "
                           "[-l LABEL]...", 400)
    _check_labels(args.label)
    db = _db()
    n = db.create(title, _read_body(args.body, args.body_file), args.label, _me(db, args.as_login))
    print(f"#{n}")
    return 0


def _ls(args) -> int:
    rows = _db().list(state=args.state, label=args.label)
    if args.json:
        print(json.dumps(rows, default=str))
        return 0
    for d in rows:
        labels = " ".join(f"[{x}]" for x in d["labels"])
        print(f"#{d['number']:<4} {d['state']:<6} {d['title']}  {labels}")
    return 0


def _show(args) -> int:
    db = _db()
    d = _get(db, args.number)
    comments = db.comments(args.number)
    if args.json:
        print(json.dumps({**d, "comments": comments}, default=str))
        return 0
    print(f"#{d['number']} {d['title']} ({d['state']}, by {d['author']})")
    print("labels: " + (", ".join(d["labels"]) or "-"))
    print()
    print(d["body"] or "(no body)")
    for c in comments:
        print(f"\n--- comment {c['id']} by {c['author']}\n{c['body']}")
    return 0


def _comment(args) -> int:
    if not args.text.strip():  # GitHub refuses an empty comment (422); so does the local tracker
        raise TrackerError("a comment cannot be empty: give its text, e.g. refinery issue comment N 'the result'", 422)
    db = _db()
    _get(db, args.number)
    print(db.add_comment(args.number, args.text, _me(db, args.as_login)))
    return 0


def _label(args) -> int:
    _check_labels(args.add + args.remove)
    db = _db()
    _get(db, args.number)
    who = _me(db, args.as_login)
    for lab in args.add:
        db.add_label(args.number, lab, who)
    for lab in args.remove:
        db.remove_label(args.number, lab, who)
    print(", ".join(_get(db, args.number)["labels"]) or "(no labels)")
    return 0


def _close(args) -> int:
    db = _db()
    if _get(db, args.number)["state"] != "closed":
        db.set_state(args.number, "closed", _me(db, args.as_login))
    print(f"#{args.number} closed")
    return 0


def _edit(args) -> int:
    db = _db()
    _get(db, args.number)
    db.edit(args.number, body=_read_body(args.body, args.body_file))
    print(f"#{args.number} edited")
    return 0


def _grant(args) -> int:
    _db().grant(args.login, args.permission)
    print(f"{args.login}: {args.permission}")
    return 0


def _react(args) -> int:
    db = _db()
    _get(db, args.number)
    if not any(c["id"] == args.comment_id for c in db.comments(args.number)):
        raise TrackerError(f"local issue #{args.number} has no comment {args.comment_id} (see `refinery issue show "
                           f"{args.number}`)", 404)
    db.react(args.comment_id, args.content, _me(db, args.as_login))
    print(f"{args.content} on comment {args.comment_id}")
    return 0
