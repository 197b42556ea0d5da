"""`python -m agent.bench [--quick] [--json PATH]`: what polling GitHub costs, and how fast a label starts work.

Against the local GitHub-speaking server (tests/ghserver.py) holding a repository with 500 open
issues (a history: one update a minute), with the real `refinery daemon` as a child process:

  idle_requests_per_hour   requests counted against the rate limit per hour by an idle daemon
                           polling every 60 s (poll_interval's default): the requests of measured
                           idle polls, per poll, times 60. Measured twice: a long-running daemon,
                           and separate `daemon --once` runs (a fresh process each; the ETag and the
                           `since` cursor come from the database). The worse of the two is the figure.
                           Target ≤ 10. For scale: PyGithub's defaults (`get_issues()`, 30 a page,
                           no ETag) are measured on the same server: one full read per poll.
  label_to_start_s         a label applied on GitHub → the job's start (claimed and launched by the
                           worker), the worst of several samples at a random phase of the poll
                           cycle. Target ≤ poll_interval + 2 s.

The first poll (a full read of the open issues) is reported apart: it is paid once per database.

Dev-only dependency: the GitHub-speaking server is the test suite's (tests/ghserver.py), taken from a
checkout, never installed; so this benchmark runs from a clone (as `make bench` does), not from a wheel.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import config

N_ISSUES = 500
REAL_POLL_S = 60.0  # the per-hour figures are for the default poll interval


def _env(tmp: Path, url: str, token: str, poll: float) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFINERY_")}
    env.update(REFINERY_DB_URL=f"sqlite:///{tmp / 'queue.db'}", REFINERY_RUNS_DIR=str(tmp / "runs"),
               REFINERY_TRACKER="github", REFINERY_GITHUB_REPO="acme/lab", REFINERY_GITHUB_API_URL=url,
               REFINERY_POLL_INTERVAL=str(poll), REFINERY_WRITE_INTERVAL_S="0.2", REFINERY_GPU_DEVICES="",
               REFINERY_CPU_WORKERS="1", GITHUB_TOKEN=token, PYTHONPATH=str(config.ROOT))
    return env


def _wait(cond, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        out = cond()
        if out:
            return out
        time.sleep(0.05)
    raise TimeoutError(f"benchmark: timed out waiting for {what}")


def _issue_polls(srv) -> int:
    """Polls seen by the server: first pages of the issue list (later pages carry page=N)."""
    return sum(1 for e in srv.log if e[0] == "GET" and "/issues?" in e[1] and not re.search(r"[?&]page=", e[1]))


def naive_requests_per_poll(srv, token: str) -> int:
    """One poll with PyGithub's defaults: get_issues() iterated (30 a page), no ETag."""
    from github import Auth, Github

    before = srv.counted
    gh = Github(auth=Auth.Token(token), base_url=srv.url)
    sum(1 for _ in gh.get_repo("acme/lab").get_issues(state="open"))
    return srv.counted - before


def run(quick: bool) -> dict:
    try:  # the dev-only dependency named in the docstring: imported here so nothing else in agent/ needs tests/
        from tests.ghserver import GitHubServer
    except ImportError as e:
        raise config.RefineryError(f"agent.bench needs the test suite's GitHub-speaking server ({e}); "
                                   "run it from a clone of the repository, where tests/ghserver.py is") from e

    token = "ghp_" + "B3nchmark" * 4
    poll = 3.0 if quick else 10.0
    idle_window = 10.0 if quick else 120.0
    once_runs = 4 if quick else 10
    samples = 3 if quick else 6
    srv = GitHubServer(repo="acme/lab", token=token, base_path="/api/v3").start()
    srv.add_collaborator("mona", "admin")
    t0 = time.time() - N_ISSUES * 60 - 3600
    for i in range(N_ISSUES):
        srv.create_issue(f"issue {i}", "words", labels=["question"] if i % 5 else [], at=t0 + i * 60, author="mona")
    figures: dict = {"issues_open": N_ISSUES, "poll_interval_measured_s": poll}
    figures["naive_requests_per_poll"] = naive_requests_per_poll(srv, token)
    figures["naive_requests_per_hour"] = figures["naive_requests_per_poll"] * 3600 / REAL_POLL_S
    with tempfile.TemporaryDirectory(prefix="refinery-bench-") as d:
        tmp = Path(d)
        env = _env(tmp, srv.url, token, poll)
        # ---- long-running daemon: first poll, then idle polls
        srv.reset_counts()
        proc = subprocess.Popen([sys.executable, "-m", "agent", "daemon"], env=env, cwd=config.ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _wait(lambda: _issue_polls(srv) >= 1, 60, "the first poll")
            _wait(lambda: _issue_polls(srv) >= 3, 60, "two more polls")  # the first poll + the cursor's URL once
            figures["first_poll_requests"] = srv.counted
            srv.reset_counts()
            time.sleep(idle_window)
            polls = _issue_polls(srv)
            figures["daemon_idle_polls"] = polls
            figures["daemon_idle_counted"] = srv.counted
            figures["daemon_idle_304"] = srv.not_modified
            figures["daemon_idle_requests_per_hour"] = srv.counted / max(polls, 1) * 3600 / REAL_POLL_S
            # ---- label → start, on the same daemon
            from jobqueue.store import Store

            s = config.load({"REFINERY_DB_URL": env["REFINERY_DB_URL"]})
            lat = []
            with Store(s) as store:
                for k in range(samples):
                    time.sleep(random.uniform(0, poll))  # a random phase of the poll cycle
                    n = srv.create_issue(f"idea {k}", "```toml\nr_max = 4\n```\n", author="mona")
                    time.sleep(1.1)  # the issue's own creation is not the trigger: its label is
                    labeled = time.time()
                    srv.add_label(n, "ideas", actor="mona")
                    srv.add_label(n, "cpu", actor="mona")
                    job = _wait(lambda n=n: [j for j in store.jobs_for_issue(n) if j.started_at], poll + 30,
                                "the job to start")[0]
                    lat.append(job.started_at - labeled)
                    store.cancel(job.id, "benchmark: started, that is all it measures")
                    _wait(lambda job=job: str(store.get(job.id).state) == "cancelled", 60, "the cancel")
            figures["label_to_start_samples_s"] = [round(x, 3) for x in lat]
            figures["label_to_start_mean_s"] = sum(lat) / len(lat)
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        # ---- separate --once runs (fresh processes; the cursor and ETag live in the database)
        for _ in range(2):  # deliver what the samples left, then read back the daemon's own writes once
            warm = subprocess.run([sys.executable, "-m", "agent", "daemon", "--once"], env=env, cwd=config.ROOT,
                                  capture_output=True, text=True, timeout=300)
            if warm.returncode != 0:
                raise RuntimeError(f"daemon --once failed: {warm.stderr[-2000:]}")
        srv.reset_counts()
        per_run, walls = [], []
        for _ in range(once_runs):
            before = srv.counted
            t = time.time()
            r = subprocess.run([sys.executable, "-m", "agent", "daemon", "--once"], env=env, cwd=config.ROOT,
                               capture_output=True, text=True, timeout=300)
            walls.append(time.time() - t)
            if r.returncode != 0:
                raise RuntimeError(f"daemon --once failed: {r.stderr[-2000:]}")
            per_run.append(srv.counted - before)
        figures["once_runs"] = once_runs
        figures["once_counted_per_run"] = per_run
        figures["once_wall_s_mean"] = sum(walls) / len(walls)
        figures["once_requests_per_hour"] = sum(per_run) / once_runs * 3600 / REAL_POLL_S
    srv.stop()
    idle = max(figures["daemon_idle_requests_per_hour"], figures["once_requests_per_hour"])
    worst = max(figures["label_to_start_samples_s"])
    targets = [
        {"name": "idle_requests_per_hour", "value": idle, "target": 10, "unit": "requests/h", "met": idle <= 10},
        {"name": "label_to_start_s", "value": round(worst, 3), "target": poll + 2, "unit": "s",
         "met": worst <= poll + 2},
    ]
    return {"device": platform.node() + " (" + platform.machine() + ", CPU; network: 127.0.0.1)",
            "versions": _versions(), "figures": figures, "targets": targets, "quick": quick}


def _versions() -> dict:
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    for pkg in ("PyGithub", "requests", "urllib3", "APScheduler", "SQLAlchemy"):
        try:
            out[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - a missing package is reported, not fatal
            out[pkg] = "missing"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m agent.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a run under a minute (shorter windows, fewer samples)")
    ap.add_argument("--json", default=str(config.ROOT / "runs" / "bench" / "agent.json"))
    args = ap.parse_args(argv)
    out = run(args.quick)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"agent benchmark ({'quick' if args.quick else 'full'}) → {path}")
    for col in ("name", "value", "target", "unit", "met"):
        t.add_column(col)
    for row in out["targets"]:
        met = "yes" if row["met"] else "NO"
        t.add_row(row["name"], f"{row['value']:.3g}", f"≤ {row['target']:g}", row["unit"], met)
    f = Table(title="figures")
    f.add_column("figure")
    f.add_column("value")
    for k, v in out["figures"].items():
        f.add_row(k, f"{v:.3g}" if isinstance(v, float) else str(v))
    con = Console()
    con.print(t)
    con.print(f)
    return 0 if all(r["met"] for r in out["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
