"""`refinery demo`: the main job on embedded defaults, from a fresh clone.

Local tracker, SQLite (runs/demo/queue.db), CPU, the `tiny` preset. It files one example idea
in the local tracker — a question with its TOML spec and a [prereg] table — runs the daemon
until the idea is decided, and prints what happened: each stage with its verdict and time,
the comments, the finding's path. Findings go under runs/demo/docs/, so a demo never commits
into your repository. A second run reuses the corpus and the queue and files a new idea.
"""

from __future__ import annotations

import getpass
import time
from pathlib import Path

import config

DEMO_TITLE = "Does the refiner's gate beat the plain loop on ListOps and k-hop at r̄?"
LIVE_STATES = ("queued", "blocked", "running", "retrying")


def demo_settings() -> config.Settings:
    base = config.load()
    demo_dir = base.runs_path / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    return base.replace({"tracker": "local", "db_url": f"sqlite:///{demo_dir / 'queue.db'}",
                         "docs_dir": str(demo_dir / "docs"), "git_commit": False, "poll_interval": 1.0,
                         "write_interval_s": 0.0, "progress_edit_s": 5.0}, source="demo")


# The demo's budget: experiments/specs/demo.toml is the depth positive control; the demo asks its question
# as written (two depth tasks, the gate's minimum, and the control). A replacement here would cut it down
# for a slower machine; each must match exactly once.
DEMO_BUDGET: dict[str, str] = {}


def demo_body() -> str:
    spec = (config.ROOT / "experiments" / "specs" / "demo.toml").read_text()
    for old, new in DEMO_BUDGET.items():
        assert spec.count(old) == 1, f"experiments/specs/demo.toml no longer has the line {old!r}"
        spec = spec.replace(old, new)
    return ("The looped model's extra depth should help most when the task needs several steps. Does the "
            "refiner's gated, timed loop beat the plain loop (the reasoner) on ListOps and k-hop when both are "
            "read at r̄, on the tiny preset and this machine's CPU?\n\n```toml\n" + spec.strip() + "\n```\n")


def ensure_corpus(console, settings: config.Settings) -> None:
    from experiments import corpus

    out = Path(settings.stages.corpus_dir)
    out = out if out.is_absolute() else config.ROOT / out
    if (out / "manifest.json").exists():
        return
    console.print("[dim]demo: building the offline corpus (Python's own sources) for the full stage[/dim]")
    corpus.build(corpus.stdlib_sources(), out)


def run(console=None) -> int:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from agent.daemon.loop import Daemon
    from agent.state.local_tables import LocalIssues

    console = console or Console()
    settings = demo_settings()
    console.print("[bold]refinery demo[/bold]: local tracker, SQLite, CPU, tiny preset")
    console.print(f"  queue {settings.queue_url}\n  documents {settings.daemon.docs_dir}")
    from agent.ops.archive import require_stage_disk

    require_stage_disk(settings, settings.runs_path)  # too little room: say so now, not wait on a queued stage
    ensure_corpus(console, settings)
    daemon = Daemon(settings)
    issues = LocalIssues(daemon.store.engine)
    me = getpass.getuser()
    if issues.permission(me) == "none":
        issues.grant(me, "admin")
    # an interrupted demo left work queued: it runs first (one cpu lane), so show it rather than stall silently
    earlier = sorted({j.issue for st in LIVE_STATES for j in daemon.store.list(state=st, limit=50)
                      if j.issue is not None})
    if earlier:
        console.print(f"an earlier demo's idea {', '.join(f'#{n}' for n in earlier)} is unfinished: its stages "
                      "resume first")
    number = issues.create(DEMO_TITLE, demo_body(), ["ideas", "cpu"], me)
    console.print(f"filed idea #{number} in the local tracker: {DEMO_TITLE}")
    t0 = time.time()
    seen: dict[int, tuple[str, float]] = {}

    def table() -> Table:
        t = Table(title=f"idea #{number} · {time.time() - t0:.0f} s")
        for col in ("job", "idea", "stage", "state", "progress", "verdict"):
            t.add_column(col)
        for j in sorted((j for n in (*earlier, number) for j in daemon.store.jobs_for_issue(n)), key=lambda j: j.id):
            prog = ""
            if j.state == "running" and j.run_dir:
                prog = _progress(Path(j.run_dir))
            t.add_row(str(j.id), f"#{j.issue}", j.payload.get("stage", j.kind), str(j.state), prog,
                      str((j.result or {}).get("verdict", "")))
        return t

    # Ctrl-C (SIGINT) or SIGTERM: a warm stop as the daemon's (a second one: cold), never a stage left running
    with daemon._stop_signals(), Live(table(), console=console, refresh_per_second=2) as live:
        while not daemon.stop_event.is_set():
            daemon.tick()  # poll, intake, run the lanes, chain stages (the daemon's pipeline), deliver
            daemon.deliver(max_items=50)
            live.update(table())
            jobs = daemon.store.jobs_for_issue(number)
            for j in jobs:
                if j.state in ("succeeded", "failed") and j.id not in seen:
                    seen[j.id] = ((j.result or {}).get("verdict") or str(j.state),
                                  (j.finished_at or time.time()) - (j.started_at or time.time()))
            if jobs and not any(j.state in LIVE_STATES for j in jobs) and all(
                    daemon.kv.get(f"advanced:{j.id}") for j in jobs if j.state in ("succeeded", "failed")):
                break
            time.sleep(0.2)
        if daemon.stop_event.is_set():
            daemon.drain_stop()  # the running stage checkpoints and exits 75; its job goes back to the queue
    if daemon.stop_event.is_set():
        console.print(f"demo: stopped; idea #{number}'s work stays queued in {settings.queue_url} and resumes at the "
                      "next `refinery demo`")
        return 130
    daemon.deliver(max_items=100)
    _summary(console, daemon, issues, number, seen, time.time() - t0, settings)
    return 0


def _progress(run_dir: Path) -> str:
    from experiments.runs import read_progress

    p = read_progress(run_dir)
    if p is None:
        return "starting"
    pct = 100 * p.get("done", 0) / max(p.get("total", 1), 1e-9)
    eta = p.get("eta_s")
    return f"{pct:.0f}% {p.get('what', '')}" + (f" ETA {eta:.0f}s" if eta else "")


def _summary(console, daemon, issues, number: int, seen: dict, wall: float, settings) -> None:
    from rich.table import Table

    t = Table(title=f"idea #{number}: what happened ({wall:.0f} s)")
    for col in ("job", "stage", "verdict", "time"):
        t.add_column(col)
    for j in sorted(daemon.store.jobs_for_issue(number), key=lambda j: j.id):
        verdict, secs = seen.get(j.id, (str(j.state), 0.0))
        t.add_row(str(j.id), j.payload.get("stage", j.kind), verdict, f"{secs:.0f} s")
    console.print(t)
    issue = issues.get(number)
    console.print(f"labels: {', '.join(issue['labels'])}")
    console.print(f"comments on #{number} (`refinery issue show {number}` with REFINERY_DB_URL={settings.queue_url}):")
    for c in issues.comments(number):
        first = c["body"].strip().splitlines()[0] if c["body"].strip() else ""
        console.print(f"  - {first[:140]}")
    docs = Path(settings.daemon.docs_dir)
    findings = sorted((docs / "findings").glob(f"*-i{number}-*.md")) if (docs / "findings").exists() else []
    for f in findings:
        console.print(f"finding: {f}")
    if (docs / "ROADMAP.md").exists() and f"#{number} " in (docs / "ROADMAP.md").read_text():
        console.print(f"graveyard: {docs / 'ROADMAP.md'}")
