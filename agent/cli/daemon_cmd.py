"""`refinery daemon [--once]` and `refinery status [--json]`.

Each command is one small `_add_*` function registered in `register`, so more (demo, ...) slot in
beside them. Flags mirror REFINERY_* settings (named in --help); a flag wins over the environment.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import config
from jobqueue.states import State


def register(sub) -> None:
    _add_daemon(sub)
    _add_status(sub)
    _add_demo(sub)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the main job on embedded defaults: file an example idea in the local "
                       "tracker and run it through smoke → ablation → … until it is decided (CPU, tiny preset)")
    p.set_defaults(func=lambda args: __import__("agent.cli.demo", fromlist=["run"]).run())


def _settings(args, **flags) -> config.Settings:
    """config.load() with the flags that were given applied on top (source: flag)."""
    settings = config.load()
    given = {k: v for k, v in flags.items() if v is not None}
    return settings.replace(given, source="flag") if given else settings


def setup_logging(verbose: bool = False) -> None:
    """One stderr handler with the token redaction filter (every handler gets it)."""
    from agent.redact import RedactingFilter

    root = logging.getLogger()
    if any(getattr(h, "_refinery", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    handler._refinery = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for h in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in h.filters):
            h.addFilter(RedactingFilter())
    for noisy in ("apscheduler", "urllib3", "github"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# --------------------------------------------------------------------------- daemon
def _add_daemon(sub) -> None:
    p = sub.add_parser("daemon", help="the service: poll the tracker, run the queue, report (--once: one pass)",
                       description="Poll the issue tracker every poll_interval, take in labeled issues, run the "
                       "queue's gpu/cpu lanes and deliver comments. SIGTERM/SIGINT: warm stop; twice: cold stop. "
                       "SIGHUP: reload settings (environment and REFINERY_ENV_FILE).")
    p.add_argument("--once", action="store_true", help="poll once, drain what is runnable, deliver the outbox, "
                   "exit 0 (GitHub waits bounded by REFINERY_ONCE_TIMEOUT_S)")
    p.add_argument("--tracker", choices=("local", "github"), help="REFINERY_TRACKER")
    p.add_argument("--repo", help="REFINERY_GITHUB_REPO (owner/name)")
    p.add_argument("--api-url", help="REFINERY_GITHUB_API_URL")
    p.add_argument("--poll-interval", type=float, help="REFINERY_POLL_INTERVAL (seconds)")
    p.add_argument("--db-url", help="REFINERY_DB_URL")
    p.add_argument("--json", action="store_true", help="--once: print the summary as JSON")
    p.set_defaults(func=_daemon)


def _daemon(args) -> int:
    from agent.daemon.loop import Daemon

    setup_logging(getattr(args, "verbose", False))
    settings = _settings(args, tracker=args.tracker, github_repo=args.repo, github_api_url=args.api_url,
                         poll_interval=args.poll_interval, db_url=args.db_url)
    d = Daemon(settings)
    if not args.once:
        return d.serve()
    summary = d.once()
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        dec = ", ".join(f"{v} {k}" for k, v in sorted(summary["decisions"].items())) or (
            "the poll failed" if summary["error"] else "nothing new")
        print(f"refinery: polled {settings.daemon.tracker} ({dec}); outbox: {summary['outbox_pending']} pending, "
              f"{summary['outbox_dead']} dead; {summary['wall_s']} s")
    if summary["github"]:
        print(f"refinery: {summary['github']} (undelivered writes stay in the outbox)")
    if summary["error"]:
        print(f"refinery: the poll failed: {summary['error']}")
    return 0


# --------------------------------------------------------------------------- status
def _add_status(sub) -> None:
    p = sub.add_parser("status", help="lanes, the running job with progress and ETA, the queue, recent results, "
                       "the outbox and the tracker's rate-limit state")
    p.add_argument("--json", action="store_true", help="machine-readable")
    p.add_argument("--db-url", help="REFINERY_DB_URL")
    p.set_defaults(func=_status)


def _ago(t: float | None) -> str:
    if not t:
        return "-"
    s = max(0, time.time() - t)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.1f}h ago"


def _status(args) -> int:
    from agent.daemon.loop import status

    settings = _settings(args, db_url=args.db_url)
    st = status(settings)
    if args.json:
        print(json.dumps(st, sort_keys=True, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    con = Console()
    lanes = Table(title="lanes", pad_edge=False)  # eight columns in 80: no padding at the table's edges
    for col in ("lane", *State):
        lanes.add_column(col, justify="left" if col == "lane" else "right")
    for lane, c in sorted(st["lanes"].items()):
        lanes.add_row(lane, *[str(c.get(s, 0)) for s in State])
    con.print(lanes)
    for r in st["running"]:
        p = r["progress"] or {}
        prog = ""
        if p.get("total"):
            prog = f" step {p.get('done', 0):.0f}/{p['total']:.0f} ({p.get('pct') or 0:.0f}%)"
            if p.get("step_s"):
                prog += f", {p['step_s']:.3g} s/step"
            if p.get("eta_s") is not None:
                prog += f", ETA {_dur(p['eta_s'])}"
            if p.get("what"):
                prog += f" · {p['what']}"
        issue = "" if r["issue"] is None else f" #{r['issue']}"
        where = f" on {r['host']}" + (f" gpu {r['device']}" if r.get("device") is not None else "") \
            if r.get("host") else ""
        con.print(f"running: job {r['id']}{issue} {r.get('stage', r['kind'])} ({r['lane']}{where}), started "
                  f"{_ago(r['started_at'])}{prog}  {r['run_dir'] or ''}")
    if st["queue"]:
        q = Table(title="queue")
        for col in ("job", "issue", "stage", "lane", "state", "note"):
            q.add_column(col)
        for j in st["queue"]:
            q.add_row(str(j["id"]), str(j["issue"] or "-"), j.get("stage", j["kind"]), j["lane"], j["state"],
                      j["note"] or "")
        con.print(q)
    if st["recent"]:
        rt = Table(title="recent results")
        for col in ("job", "issue", "stage", "state", "verdict", "finished"):
            rt.add_column(col)
        for j in st["recent"]:
            rt.add_row(str(j["id"]), str(j["issue"] or "-"), j.get("stage", j["kind"]), j["state"], j["verdict"] or "",
                       _ago(j["finished_at"]))
        con.print(rt)
    ob, tr = st["outbox"], st["tracker"]
    oldest = f" (oldest {_dur(ob['oldest_pending_s'])})" if ob.get("oldest_pending_s") else ""
    con.print(f"outbox: {ob['pending']} pending{oldest}, {ob['sent']} sent, {ob['dead']} dead")
    for item in ob["dead_items"]:
        con.print(f"  dead: {item['key']}: {item['error']}")
    line = f"tracker: {tr['name']}" + (f" {tr['repo']}" if tr["repo"] else "")
    if tr.get("rate"):
        r = tr["rate"]
        reset = time.strftime("%H:%M", time.localtime(r.get("reset") or 0))
        line += f"; rate limit {r.get('remaining')}/{r.get('limit')}, resets {reset}"
    if tr.get("blocked") and tr["blocked"].get("until", 0) > time.time():
        b = tr["blocked"]
        line += f"; waiting until {time.strftime('%H:%M:%S', time.localtime(b['until']))}: {b['why']}"
    con.print(line)
    disk = st.get("disk") or {}
    if disk:
        low = " — LOW: stages refuse to start" if disk["free_gb"] < disk["min_free_gb"] else ""
        con.print(f"disk: {disk['free_gb']:.1f} GB free of {disk['total_gb']:.0f} GB at {disk['path']}{low}")
    pipe = st.get("pipeline") or {}
    for a in pipe.get("waiting_approval") or []:
        con.print(f"waiting for a 👍: #{a['issue']} (full training after job {a['job']})")
    if pipe.get("noise_floor"):
        con.print("noise floor (σ, points): " + ", ".join(f"{t} {v:.2f}" for t, v in pipe["noise_floor"].items()))
    if pipe.get("champion"):
        c = pipe["champion"]
        con.print(f"champion: {c.get('name')} (#{c.get('issue')}, val loss {c.get('val_loss', 0):.4f})")
    from agent.coder.status import status_lines

    for line in status_lines(st.get("coder") or {}):
        con.print(line, markup=False)
    return 0


def _dur(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"
