"""`refinery queue ...` and `refinery gpu-lock -- CMD...`.

    queue ls [--json] [--state S] [--lane L] [--issue N]    the jobs, newest first
    queue show ID [--json]                                  one job and its event history
    queue cancel ID [--reason TEXT]                          stop it (a running child gets SIGTERM, then SIGKILL)
    queue retry ID                                          run a failed or cancelled job again
    queue logs ID [-f]                                      its run_dir/log.txt (-f: follow until it ends)
    queue enqueue --lane L --kind K [--spec FILE | -- CMD...]
    queue claim --lane agent [--json]                       the coding agent's next work item
    queue heartbeat LEASE | done LEASE --note T | fail LEASE --note T

LEASE is what `claim` printed as lease_id ("17.2": job 17, attempt 2, the fencing token); a bare
job id means its current attempt. Exit codes: 0 done; 2 an error (one line on stderr);
3 nothing to claim (EXIT_NOTHING: the agent lane is empty, not an error).
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import config
from jobqueue.states import State

EXIT_NOTHING = 3  # `queue claim`: no work item right now


def _positive_int(text: str) -> int:
    import argparse

    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count of 1 or more")
    return int(text)


def register(sub) -> None:
    q = sub.add_parser("queue", help="the job queue: ls, show, cancel, retry, logs, enqueue, claim, heartbeat, done,"
                       " fail (database: REFINERY_DB_URL)")
    qs = q.add_subparsers(dest="queue_command", metavar="ACTION", required=True)

    p = qs.add_parser("ls", help="list jobs, newest first")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p.add_argument("--state", metavar="STATE", help="only this state: %(choices)s", choices=tuple(State))
    p.add_argument("--lane", choices=("gpu", "cpu", "agent"))
    p.add_argument("--issue", type=int)
    p.add_argument("--limit", type=_positive_int, default=50, help="at most this many jobs, newest first (50)")
    p.set_defaults(func=cmd_ls)

    p = qs.add_parser("show", help="one job with its event history")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = qs.add_parser("cancel", help="cancel a job (a running one is stopped: SIGTERM, then SIGKILL after "
                      "REFINERY_CANCEL_GRACE_S)")
    p.add_argument("id", type=int)
    p.add_argument("--reason", default="cancelled by hand")
    p.set_defaults(func=cmd_cancel)

    p = qs.add_parser("retry", help="run a failed or cancelled job again, with fresh attempts")
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_retry)

    p = qs.add_parser("logs", help="print a job's log.txt")
    p.add_argument("id", type=int)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    p.set_defaults(func=cmd_logs)

    p = qs.add_parser("enqueue", help="add a job: a stage with --spec FILE, or any command after --")
    p.add_argument("--lane", required=True, choices=("gpu", "cpu", "agent"))
    p.add_argument("--kind", required=True, choices=("smoke", "ablation", "replication", "full", "agent", "task"))
    p.add_argument("--spec", help="spec file for a stage (runs python -m experiments.stage KIND --spec FILE)")
    p.add_argument("--issue", type=int, help="source issue number")
    p.add_argument("--key", help="dedupe key: the same (issue, kind, key) is enqueued once")
    p.add_argument("--priority", type=int, default=0, help="higher runs first")
    p.add_argument("--title", help="agent lane: the item's title")
    p.add_argument("--body", default="", help="agent lane: the item's text")
    p.add_argument("--json", action="store_true")
    p.add_argument("cmd", nargs="*", help="the command, after --")
    p.set_defaults(func=cmd_enqueue)

    p = qs.add_parser("claim", help="lease the next work item of a lane (for a coding agent); exit 3 if none")
    p.add_argument("--lane", default="agent", choices=("agent",))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_claim)

    p = qs.add_parser("heartbeat", help="extend a claim's lease (REFINERY_AGENT_LEASE_S)")
    p.add_argument("lease", help="lease id from claim (JOB.ATTEMPT) or a job id")
    p.set_defaults(func=cmd_heartbeat)

    for name, helptext in (("done", "finish a claimed item"), ("fail", "give up a claimed item")):
        p = qs.add_parser(name, help=helptext)
        p.add_argument("lease", help="lease id from claim (JOB.ATTEMPT) or a job id")
        p.add_argument("--note", required=True, help="what was done, or why it failed")
        if name == "done":
            p.add_argument("--branch", help="the branch with the work (default: the one `claim` named)")
        if name == "fail":
            p.add_argument("--retry", action="store_true", help="let another claim try again (attempts permitting)")
        p.set_defaults(func=cmd_done if name == "done" else cmd_fail)

    g = sub.add_parser("gpu-lock", help="run a command under the GPU lock the gpu lane uses (runs/locks/gpuN.lock)")
    g.add_argument("--device", help="GPU id (default: the first of REFINERY_GPU_DEVICES)")
    g.add_argument("--wait", type=float, default=-1, help="seconds to wait for the card (-1: forever); busy → exit 75")
    g.add_argument("cmd", nargs="*", help="the command, after --")
    g.set_defaults(func=cmd_gpu_lock)


# --------------------------------------------------------------------------- helpers
def _store():
    from jobqueue.store import Store

    return Store(config.load())


def _ts(t: float | None) -> str:
    return "" if t is None else datetime.fromtimestamp(t).strftime("%m-%d %H:%M:%S")


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def _lease(store, text: str) -> tuple[int, int]:
    """'17.2' → (17, 2); '17' → (17, its current attempt)."""
    from jobqueue.store import IllegalTransition

    head, _, tail = text.partition(".")
    if not head.isdigit() or (tail and not tail.isdigit()):
        raise IllegalTransition(f"{text!r} is not a lease id (JOB.ATTEMPT, e.g. 17.2) or a job id")
    if tail:
        return int(head), int(tail)
    return int(head), store.get(int(head)).attempt


def _job_dict(job) -> dict:
    d = job.to_dict()
    d["tries"], d["lease_id"] = job.tries, job.lease_id
    return d


# --------------------------------------------------------------------------- commands
def cmd_ls(args) -> int:
    with _store() as store:
        jobs = store.list(state=args.state, lane=args.lane, issue=args.issue, limit=args.limit)
    if args.json:
        for j in jobs:
            print(json.dumps(_job_dict(j), sort_keys=True, default=str))
        return 0
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console()
    # a narrow terminal drops the columns `queue show` and --json still have, so the note stays readable
    cols = ["id", "issue", "kind", "lane", "state", "try", "prio", "since", "host", "note"]
    for col, below in (("host", 110), ("prio", 100), ("since", 72)):
        if console.width < below:
            cols.remove(col)
    t = Table(title=f"queue ({len(jobs)} shown)", box=box.SIMPLE, pad_edge=False)
    for col in cols:
        t.add_column(col, no_wrap=col != "note", overflow="fold", ratio=1 if col == "note" else None)
    for j in jobs:
        since = j.finished_at or j.started_at or j.created_at
        row = {"id": str(j.id), "issue": "" if j.issue is None else f"#{j.issue}", "kind": j.kind,
               "lane": j.lane.value, "state": j.state.value, "try": f"{j.tries}/{j.max_attempts}",
               "prio": str(j.priority), "since": _ts(since)[:-3], "host": j.owner_host or "",
               "note": (j.note or "")[:80]}
        t.add_row(*(row[c] for c in cols))
    console.print(t)
    return 0


def cmd_show(args) -> int:
    with _store() as store:
        job, events = store.get(args.id), store.events(args.id)
    if args.json:
        print(json.dumps({**_job_dict(job), "events": [e.__dict__ for e in events]}, indent=2, sort_keys=True,
                         default=str))
        return 0
    d = _job_dict(job)
    for k in ("id", "issue", "kind", "lane", "state", "tries", "max_attempts", "attempt", "resumes", "priority",
              "depends_on", "held", "run_dir", "owner_host", "owner_pid", "device", "lease_id"):
        print(f"{k:>13}: {d[k]}")
    for k in ("created_at", "started_at", "finished_at", "lease_until"):
        print(f"{k:>13}: {_ts(d[k])}")
    print(f"{'payload':>13}: {json.dumps(job.payload, default=str)[:500]}")
    if job.result is not None:
        print(f"{'result':>13}: {json.dumps(job.result, default=str)[:2000]}")
    if job.error:
        print(f"{'error':>13}: {job.error}")
    print("events:")
    for e in events:
        print(f"  {_ts(e.at)}  #{e.attempt}  {e.from_state or '-':>9} → {e.to_state:<9} {e.owner or ''}  {e.message}")
    return 0


def cmd_cancel(args) -> int:
    with _store() as store:
        job = store.cancel(args.id, args.reason)
    print(f"job {job.id}: " + ("cancel requested; its worker stops the child" if job.state == "running"
                               else str(job.state)))
    return 0


def cmd_retry(args) -> int:
    with _store() as store:
        job = store.retry(args.id)
    print(f"job {job.id}: {job.state}")
    return 0


def cmd_logs(args) -> int:
    from jobqueue.models import FINAL

    with _store() as store:
        job = store.get(args.id)
        pos, waiting = 0, False
        while True:
            if job.run_dir and (Path(job.run_dir) / "log.txt").exists():
                with open(Path(job.run_dir) / "log.txt", "rb") as f:
                    f.seek(pos)
                    chunk = f.read()
                    pos += len(chunk)
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
            elif job.state in FINAL:
                print(f"job {job.id} has no log (state {job.state})", file=sys.stderr)
            elif not args.follow:
                print(f"job {job.id} has no log yet (state {job.state})", file=sys.stderr)
            elif not waiting:  # -f before the job started: say what it waits for, once
                print(f"job {job.id} has not started (state {job.state}); its log follows when it does "
                      "(Ctrl-C to stop)", file=sys.stderr, flush=True)
                waiting = True
            if not args.follow or job.state in FINAL:
                return 0
            time.sleep(0.5)
            job = store.get(args.id)


class NothingToRun(config.RefineryError):
    """`queue enqueue` on the gpu or cpu lane was given neither a spec nor a command (or both).

    Fix: add --spec FILE (a stage of that spec) or `-- CMD...` (any command)."""


def cmd_enqueue(args) -> int:
    from experiments.spec import spec_from_file
    from experiments.stage import stage_argv

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    payload: dict = {}
    if args.spec and cmd:
        raise NothingToRun(f"give --spec FILE or a command after --, not both (got --spec {args.spec} and "
                           f"{' '.join(cmd)[:60]!r})")
    if args.spec:
        spec_from_file(args.spec)  # a bad spec is refused now, not failed later by the job
        spec = Path(args.spec).resolve()
        stage = "replication" if args.kind == "replication" else args.kind
        payload = {"argv": stage_argv(stage, spec), "spec_file": str(spec), "stage": stage}
    elif cmd:
        payload = {"argv": cmd}
    elif args.lane != "agent":
        raise NothingToRun("nothing to run: give --spec FILE or a command after --")
    if args.lane == "agent":
        payload.update(title=args.title or f"work item ({args.kind})", body=args.body, labels=[])
    with _store() as store:
        job = store.enqueue(args.issue, args.kind, args.lane, payload, priority=args.priority, key=args.key)
    print(json.dumps(_job_dict(job), default=str) if args.json else f"job {job.id}: {job.state} ({job.lane}, "
          f"{job.kind})")
    return 0


def notes_path(settings: config.Settings, job) -> Path:
    """runs/agent/<issue>/notes.md: the agent's working notes for an item, kept across claims."""

    d = settings.runs_path / "agent" / (str(job.issue) if job.issue is not None else f"job-{job.id}")
    d.mkdir(parents=True, exist_ok=True)
    p = d / "notes.md"
    if not p.exists():
        from agent.daemon.sanitize import sanitize

        title = sanitize(job.payload.get("title", ""))  # the agent reads this file first: no hidden instructions
        item = f"issue #{job.issue}" if job.issue is not None else f"job {job.id}"
        p.write_text(f"# Working notes: {item} {title}\n\nKept across claims: write down what you "
                     "tried, what is left and where the branch is, so a restarted agent can pick up here.\n\n")
    return p


def cmd_claim(args) -> int:
    from jobqueue.proc import Owner

    settings = config.load()
    with _store() as store:
        job = store.claim(args.lane, Owner.agent(settings.host))
    if job is None:
        if args.json:
            print(json.dumps({"claimed": False}))
        else:
            print("nothing to claim", file=sys.stderr)
        return EXIT_NOTHING
    from agent.daemon.sanitize import branch_name, sanitize

    p = job.payload
    title = sanitize(p.get("title", ""))  # hidden instructions in an issue never reach the agent
    out = {"claimed": True, "job_id": job.id, "lease_id": job.lease_id, "attempt": job.attempt,
           "lease_expires_at": _iso(job.lease_until), "lease_expires_ts": job.lease_until,
           "issue": job.issue, "title": title, "body": sanitize(p.get("body", "")),
           "branch": branch_name(job.issue or job.id, title),
           "labels": list(p.get("labels", [])), "url": p.get("url"), "kind": job.kind,
           "notes_path": str(notes_path(settings, job))}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"claimed job {job.id} (lease {job.lease_id}, expires {out['lease_expires_at']}): "
              f"issue #{job.issue} {out['title']}\nbranch: {out['branch']}\nnotes: {out['notes_path']}\n\n"
              f"{out['body']}")
    return 0


def cmd_heartbeat(args) -> int:
    from jobqueue.store import LeaseLost

    with _store() as store:
        job_id, attempt = _lease(store, args.lease)
        if not store.heartbeat(job_id, attempt):
            job = store.get(job_id)
            raise LeaseLost(f"lease {job_id}.{attempt} is gone (job is {job.state} at attempt {job.attempt}); "
                            "stop and claim again")
        job = store.get(job_id)
    print(f"lease {job.lease_id} extended to {_iso(job.lease_until)}")
    return 0


def branch_name_for(job) -> str:
    from agent.daemon.sanitize import branch_name, sanitize

    return branch_name(job.issue or job.id, sanitize(job.payload.get("title", "")))


def cmd_done(args) -> int:
    from agent.redact import redact

    note = redact(args.note)  # stored in the queue database (under runs/) and posted on the issue
    with _store() as store:
        job_id, attempt = _lease(store, args.lease)
        job = store.get(job_id)
        branch = args.branch or branch_name_for(job)
        store.finish(job_id, attempt, {"note": note, "branch": branch, "verdict": "DONE",
                                       "reason": f"branch `{branch}`: {note}"}, note=note[:500])
    print(f"job {job_id}: succeeded")
    return 0


def cmd_fail(args) -> int:
    from agent.redact import redact

    with _store() as store:
        job_id, attempt = _lease(store, args.lease)
        job = store.fail(job_id, attempt, redact(args.note), retry=args.retry)
    print(f"job {job_id}: {job.state}")
    return 0


def cmd_gpu_lock(args) -> int:
    from jobqueue.gpulock import run_locked

    settings = config.load()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    device = args.device if args.device is not None else (settings.queue.gpu_devices.split(",")[0].strip() or "0")
    return run_locked(settings, device, cmd, args.wait, exec_=True)
