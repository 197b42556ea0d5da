"""Chaos: a real daemon against the GitHub-speaking server, faults injected, killed with SIGKILL at random
moments and restarted, while ideas are filed. Afterwards nothing may be lost and nothing duplicated.

    python -m tests.chaos [--ideas 8] [--kills 6] [--seed 1] [--budget 300] [--dir DIR] [--json PATH]
                          [--hosts 2 --db-url postgresql://...]   (two daemons, two host names, one queue)

What runs: `python -m agent daemon` (a subprocess, as under systemd) with the github tracker pointed at
tests/ghserver.py, polling every second, both lanes working (gpu lane through the GPU lock, on the
CPU). Ideas are filed at random times on either lane with tiny specs: most are smoke tests that FAIL
in seconds, some PASS the smoke test and go on to a seconds-long ablation (and wherever the gate
sends them). A fault thread keeps arming one-shot faults on random routes: 5xx answered before or
after GitHub acted (an ambiguous write), 429 with Retry-After, connection resets before or after,
and now and then an exhausted primary rate limit. The daemon is SIGKILLed `kills` times at random
moments (its stage children live on, orphaned, until the next daemon's recovery kills their
groups) and restarted after a random pause. Then the faults stop and the last daemon runs until
the queue and the outbox are quiet, and gets a warm stop (SIGTERM), which must exit 0.

Counted at the end:
    stages      (issue, stage) pairs that have a job; each must have exactly ONE job row (a rerun
                after a kill is the same job), recorded succeeded exactly once (its events), and the
                pipeline's next stage must exist when the verdict calls for one
    executions  child starts (the runner's "=== job N attempt" lines): reruns = executions - jobs
    comments    refinery's comments on the server, by marker: every comment the outbox holds must
                be there exactly once, and nothing else
    lost        ideas without a job, stages not run to completion, a missing next stage,
                outbox items undelivered (pending or dead), comments missing on the server
    duplicated  a second job for an (issue, stage), a completion recorded twice, a marker found twice
    stuck       jobs left running (or queued) at the end

A daemon's SIGKILL counts against the running job's attempts (jobqueue's recover: the owner is
gone), so max_attempts is raised here: six kills must not fail a stage for good.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import config
from agent.daemon.pipeline import next_stage
from agent.state.tables import KeyValue, OutboxStore
from experiments import corpus
from jobqueue.store import Store
from tests.agent_support import REPO, TOKEN, env_for, settings_for
from tests.ghserver import GitHubServer
from tests.signals_support import kill_leftovers

MARKER = re.compile(r"<!-- refinery:(\S+?) -->")  # agent.trackers.interface.marker(key)
COMMON = ("stage_threads = 1\ntest_examples = 100\ntasks = [\"khop\"]\nkhop_k = 1\nr_max = 2\nr_mean = 2\n"
          "ablation_steps = 10\nablation_seeds = 2\nsummod_len = 2\nfull_steps = 10\nfull_seeds = 1\n"
          "full_probe_steps = 0\neval_batches = 1\nckpt_every = 1000\neval_every = 1000\n")
# The queue is under test with these specs, not the gate: the tiny one-task, two-seed specs must be able to PASS (or
# power before spending holds every idea before it runs), and a copy control that 10 steps cannot teach must not be
# an ERROR retried until the attempts run out. The operator's gate settings, as the daemons' environment.
QUEUE_NOT_GATE = {"REFINERY_PASS_MIN_TASKS": "1", "REFINERY_ALPHA": "0.5", "REFINERY_CONTROL_MIN_ACC": "0",
                  "REFINERY_CONTROL_MAX_DELTA": "100"}
SPECS = {  # smoke FAILs in seconds (one batch cannot be overfit in 3 steps) / PASSes (then an ablation)
    "fail": "smoke_steps = 5\nsmoke_overfit_steps = 3\nsmoke_overfit_loss = 0.01\nbatch_size = 8\n",
    "pass": "init_std = 0.1\nsmoke_steps = 30\nsmoke_overfit_steps = 60\nbatch_size = 16\n",
}
ROUTES = [("GET", r"/issues$"), ("GET", r"/issues/\d+$"), ("GET", r"/issues/\d+/comments$"),
          ("POST", r"/issues/\d+/comments$"), ("PATCH", r"/issues/comments/\d+$"), ("POST", r"/issues/\d+/labels$"),
          ("DELETE", r"/issues/\d+/labels/"), ("GET", r"/collaborators/"), ("GET", r"/issues/\d+/events$"),
          ("GET", r"/labels/")]
LIVE = ("queued", "blocked", "running", "retrying")


@dataclass
class Chaos:
    ideas: int = 8
    kills: int = 6
    seed: int = 1
    budget_s: float = 300.0  # the whole run, filing to the end of the quiet phase
    workdir: Path | None = None
    hosts: int = 1  # daemons at once, each its own host name (two: PostgreSQL, one shared queue and outbox)
    db_url: str | None = None  # the queue database ('' / None: SQLite under the work directory)
    kill_gap: tuple = (2.0, 10.0)  # seconds a daemon lives before its SIGKILL
    restart_gap: tuple = (0.0, 2.0)  # seconds before the next one starts (orphans run on meanwhile)
    out: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        self.rng = random.Random(self.seed)
        self.work = Path(self.workdir or tempfile.mkdtemp(prefix="refinery-chaos-"))
        self.srv = GitHubServer(repo=REPO, token=TOKEN, base_path="/api/v3").start()
        self.srv.add_collaborator("alice", "write")
        self.dropped = 0  # client connections cut by a SIGKILLed daemon (the server sees a reset)
        serve_error = self.srv.httpd.handle_error

        def handle_error(request, client_address):
            if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
                self.dropped += 1
            else:
                serve_error(request, client_address)

        self.srv.httpd.handle_error = handle_error
        runs = self.work / "runs"
        cdir = runs / "corpus"
        corpus.build(corpus.stdlib_sources(max_bytes=60_000), cdir, val_frac=0.2)  # only if an idea gets to full
        db_url = self.db_url or f"sqlite:///{self.work}/queue.db"
        self.settings = settings_for(db_url, self.work, self.srv, poll_interval=1.0,
                                     gpu_devices="0", cpu_workers=1, heartbeat_s=0.5, lease_s=10.0,
                                     github_backoff_s=0.2, max_rate_limit_wait_s=3.0, github_timeout_s=3.0,
                                     write_interval_s=0.0)
        self.env = env_for(self.settings, REFINERY_DOCS_DIR=str(self.work / "docs"), REFINERY_MAX_ATTEMPTS="10",
                           REFINERY_RETRY_BACKOFF_S="1", REFINERY_STOP_TIMEOUT_S="60", REFINERY_PROGRESS_EDIT_S="3",
                           REFINERY_CANCEL_GRACE_S="5", **QUEUE_NOT_GATE)
        self.common = COMMON + f'corpus_dir = "{cdir}"\n'
        self.filed: dict[int, str] = {}  # issue -> kind
        self.stop_faults = threading.Event()
        self.daemons: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def _start_daemon(self, host: str = "chaos-0") -> subprocess.Popen:
        log = self.work / f"daemon-{len(self.daemons)}.log"
        with open(log, "ab") as f:
            p = subprocess.Popen([sys.executable, "-m", "agent", "daemon"], cwd=config.ROOT,
                                 env={**self.env, "REFINERY_HOST_NAME": host},
                                 stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
        self.daemons.append(p)
        self.logs.append(log)
        return p

    # ------------------------------------------------------------------ the threads
    def _file_ideas(self, window: float) -> None:
        at = sorted(self.rng.uniform(0.0, window) for _ in range(self.ideas))
        kinds = ["pass" if i % 4 == 1 else "fail" for i in range(self.ideas)]  # a quarter go on to an ablation
        self.rng.shuffle(kinds)
        t0, per_kind = time.monotonic(), Counter()
        for i, (t, kind) in enumerate(zip(at, kinds)):
            time.sleep(max(0.0, t0 + t - time.monotonic()))
            lane = ("cpu", "gpu")[per_kind[kind] % 2]  # each kind on both lanes
            per_kind[kind] += 1
            body = f"Idea {i} ({kind}).\n\n```toml\n{self.common}{SPECS[kind]}```\n"
            n = self.srv.create_issue(f"chaos idea {i} {kind}", body, labels=["ideas", lane], author="alice")
            self.filed[n] = kind

    def _faults(self) -> None:
        rng = random.Random(self.seed + 1)
        while not self.stop_faults.wait(rng.uniform(0.2, 0.9)):
            method, path = rng.choice(ROUTES)
            kind = rng.choices(["5xx", "429", "reset", "primary"], weights=[5, 3, 3, 1])[0]
            write = method != "GET"
            if kind == "5xx":
                f = self.srv.fail(method, path, rng.choice([500, 502, 503]), after=write and rng.random() < 0.5,
                              message="chaos:5xx")
            elif kind == "429":
                f = self.srv.fail(method, path, 429, headers={"retry-after": str(rng.choice([1, 2]))},
                              message="chaos:429")
            elif kind == "reset":
                f = self.srv.fail(method, path, reset=True, after=write and rng.random() < 0.5, message="chaos:reset")
            elif time.time() > self.srv.exhausted_until + 5:
                self.srv.exhaust(reset_in=rng.uniform(1.0, 2.5))
                self.primary += 1
                continue
            else:
                continue
            self.armed.append(f)

    # ------------------------------------------------------------------ the run
    def run(self) -> dict:
        self._setup()
        self.primary, self.armed = 0, []
        start = time.monotonic()
        store = Store(self.settings)
        filer = threading.Thread(target=self._file_ideas, args=(sum(self.kill_gap) / 2 * self.kills * 0.6,),
                                 daemon=True)
        faults = threading.Thread(target=self._faults, daemon=True)
        live = {f"chaos-{h}": self._start_daemon(f"chaos-{h}") for h in range(self.hosts)}
        filer.start()
        faults.start()
        kills = restarts = 0
        try:
            for _ in range(self.kills):
                time.sleep(self.rng.uniform(*self.kill_gap))
                self._alive(live)
                host = self.rng.choice(sorted(live))
                os.kill(live[host].pid, signal.SIGKILL)
                live[host].wait(30)
                kills += 1
                time.sleep(self.rng.uniform(*self.restart_gap))
                live[host] = self._start_daemon(host)
                restarts += 1
            filer.join()
            self.stop_faults.set()
            faults.join()
            with self.srv.lock:
                self.srv.faults.clear()  # the quiet phase: GitHub answers again
            self.srv.exhausted_until = 0.0
            quiet_at = time.monotonic()
            deadline = start + self.budget_s
            while not self._settled(store):
                self._alive(live)
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            settled_s = time.monotonic() - quiet_at
            for p in live.values():
                p.send_signal(signal.SIGTERM)
            final_exit = max(p.wait(90) for p in live.values())
        finally:
            self.stop_faults.set()
            for p in self.daemons:
                if p.poll() is None:
                    p.kill()
                    p.wait(10)
            kill_leftovers(self.work / "runs")
            self.srv.stop()
        out = self._count(store)
        store.close()
        out.update(hosts=self.hosts, kills=kills, restarts=restarts,
                   final_exit=final_exit, settled_s=round(settled_s, 1),
                   wall_s=round(time.monotonic() - start, 1), workdir=str(self.work), seed=self.seed,
                   faults=self._fault_counts(), dropped=self.dropped)
        out["ok"] = (out["lost"] == 0 and out["duplicated"] == 0 and out["stuck"] == 0 and final_exit == 0
                     and kills >= 1 and out["token_leaks"] == 0)
        self.out = out
        return out

    def _alive(self, live: dict) -> None:
        for host, p in live.items():
            if p.poll() is not None:
                raise RuntimeError(f"the daemon {host} died on its own (exit {p.returncode}): see the logs in "
                                   f"{self.work}")

    def _settled(self, store: Store) -> bool:
        if len(self.filed) < self.ideas:
            return False
        jobs = store.list(limit=10_000)
        by_issue = {j.issue for j in jobs}
        if any(n not in by_issue for n in self.filed) or any(j.state in LIVE for j in jobs):
            return False
        kv = KeyValue(store.engine)
        if any(j.payload.get("stage") and j.state in ("succeeded", "failed") and not kv.get(f"advanced:{j.id}")
               for j in jobs):
            return False
        return OutboxStore(store.engine).counts()["pending"] == 0

    # ------------------------------------------------------------------ the counts
    def _count(self, store: Store) -> dict:
        jobs = [j for j in store.list(limit=10_000) if j.issue in self.filed]
        kv, ob = KeyValue(store.engine), OutboxStore(store.engine)
        problems: list[str] = []
        lost = duplicated = 0
        per_stage = Counter((j.issue, j.payload.get("stage", j.kind)) for j in jobs)
        for (n, stage), c in per_stage.items():
            if c > 1:
                duplicated += c - 1
                problems.append(f"#{n} {stage}: {c} jobs")
        for n in self.filed:
            if not any(j.issue == n for j in jobs):
                lost += 1
                problems.append(f"#{n}: no job")
        executions = 0
        for j in jobs:
            done = sum(1 for e in store.events(j.id) if e.to_state == "succeeded")
            if j.run_dir and (Path(j.run_dir) / "log.txt").exists():
                executions += len(re.findall(rf"^=== job {j.id} attempt ", (Path(j.run_dir) / "log.txt").read_text(),
                                             re.M))
            if done > 1:
                duplicated += done - 1
                problems.append(f"job {j.id}: completion recorded {done} times")
            if j.state != "succeeded" or done == 0:
                lost += 1
                problems.append(f"job {j.id} (#{j.issue} {j.payload.get('stage')}): {j.state}: {(j.error or '')[:200]}")
                continue
            nxt = next_stage(j.payload.get("stage", ""), str((j.result or {}).get("verdict")))
            if nxt and not self.settings.daemon.full_requires_approval and per_stage[(j.issue, nxt)] == 0:
                lost += 1
                problems.append(f"job {j.id} (#{j.issue}): verdict {j.result.get('verdict')} but no {nxt} job")
            if not kv.get(f"advanced:{j.id}"):
                lost += 1
                problems.append(f"job {j.id}: never advanced")
        items = [i for i in ob.items(limit=100_000) if i.issue in self.filed]
        undelivered = [i for i in items if i.state != "sent"]
        lost += len(undelivered)
        problems += [f"outbox {i.key}: {i.state} ({i.last_error})" for i in undelivered]
        on_server = Counter()
        unmarked = 0
        for n in self.filed:
            for c in self.srv.comments_of(n):
                keys = MARKER.findall(c["body"])
                unmarked += not keys
                on_server.update(keys[-1:])
        wanted = {i.key for i in items if i.kind == "comment"}
        missing = sorted(k for k in wanted if on_server[k] == 0)
        twice = sorted(k for k, c in on_server.items() if c > 1)
        stray = sorted(k for k in on_server if k not in wanted)
        lost += len(missing)
        duplicated += sum(on_server[k] - 1 for k in twice) + len(stray) + unmarked
        problems += [f"comment {k}: missing on the server" for k in missing]
        problems += [f"comment {k}: {on_server[k]} times on the server" for k in twice]
        problems += [f"comment {k}: on the server but not in the outbox" for k in stray]
        stuck = sum(1 for j in store.list(limit=10_000) if j.state in LIVE)
        texts = [p.read_text(errors="replace") for p in self.logs]
        leaks = sum(TOKEN in t for t in texts)
        recovered = sum(len(re.findall(r"requeued: lease lost or owner gone", t)) for t in texts)
        return {"ideas": len(self.filed), "ideas_pass_smoke": sum(1 for k in self.filed.values() if k == "pass"),
                "stages": len(per_stage), "jobs": len(jobs), "executions": executions,
                "reruns": executions - len(jobs), "recovered": recovered, "comments": sum(on_server.values()),
                "lost": lost,
                "duplicated": duplicated, "stuck": stuck, "token_leaks": leaks,
                "verdicts": dict(Counter(f"{j.payload.get('stage')}:{(j.result or {}).get('verdict')}" for j in jobs)),
                "problems": problems[:50]}

    def _fault_counts(self) -> dict:
        """Faults that hit a request, by kind (the armed ones no request met are left out)."""
        hits = Counter()
        for f in self.armed:
            hits[f.message.split(":")[-1]] += f.hits
        return dict(hits, primary_rate_limit=self.primary)


def summary(out: dict) -> str:
    f = out.get("faults", {})
    lines = [
        f"chaos (seed {out['seed']}): kills {out['kills']}, restarts {out['restarts']}, ideas {out['ideas']}, "
        f"stages {out['stages']}, comments {out['comments']}, lost {out['lost']}, duplicated {out['duplicated']}",
        f"  jobs {out['jobs']}, child executions {out['executions']} (reruns after kills {out['reruns']}; "
        f"{out['recovered']} recoveries of a dead daemon's job), stuck {out['stuck']}, token leaks "
        f"{out['token_leaks']}, final warm stop exit {out['final_exit']}",
        f"  faults that hit a request: {', '.join(f'{k} {v}' for k, v in sorted(f.items())) or 'none'}; "
        f"connections cut by the kills {out.get('dropped', 0)}",
        f"  verdicts {out['verdicts']}; quiet after {out['settled_s']} s; wall {out['wall_s']} s; {out['workdir']}",
    ]
    lines += [f"  PROBLEM: {p}" for p in out["problems"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.splitlines()[0])
    ap.add_argument("--ideas", type=int, default=8)
    ap.add_argument("--kills", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--budget", type=float, default=300.0, help="seconds for the whole run")
    ap.add_argument("--dir", type=Path, help="work directory (default: a new temporary one, kept)")
    ap.add_argument("--json", type=Path, help="write the counts here too")
    ap.add_argument("--hosts", type=int, default=1, help="daemons at once (2: give --db-url a PostgreSQL URL)")
    ap.add_argument("--db-url", help="the queue database (default: SQLite in the work directory)")
    a = ap.parse_args(argv)
    c = Chaos(ideas=a.ideas, kills=a.kills, seed=a.seed, budget_s=a.budget, workdir=a.dir, hosts=a.hosts,
              db_url=a.db_url)
    out = c.run()
    print(summary(out))
    if a.json:
        a.json.write_text(json.dumps(out, indent=1, sort_keys=True))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
