"""Queue benchmark: claims/s, enqueue/s and enqueue→start latency on SQLite and PostgreSQL.

    python -m jobqueue.bench [--quick] [--json PATH] [--pg URL]

- claims/s with 1, 2, 4 and 8 worker processes: a prefilled lane drained with no-op jobs, each
  claimed, "run" (nothing) and finished by the store (no child process). Two protocols:
  `merged` = Store.finish_and_claim (the worker's path on a busy cpu lane: one transaction per
  job; the figure the targets use), `separate` = claim() then finish() (two transactions per
  job), `batch10` = finish_many_and_claim with 10 jobs a transaction (pgqueuer's batching; the
  worker claims every free cpu slot in one transaction the same way).
- enqueue/s with the same process counts (Store.enqueue with a dedupe key: one transaction each).
- enqueue → start latency: one idle worker process waiting as Worker.idle does with nothing running, in
  Store.wait_for_job (PostgreSQL: LISTEN/NOTIFY, and the enqueue hands the job over in its own commit;
  SQLite: PRAGMA data_version polled every idle_poll_s, then a claim), a producer enqueueing one
  job at a time; "start" = the worker holds the claimed job (a real job's child process adds its
  own spawn time). Measured right after activity (a 20 ms gap between jobs; one backend at a time) and
  after idle: 7 more lanes per backend (own database, own waiting worker) left alone 300 s, then sampled
  once each, 1 s apart (--quick: 3 lanes, 10 s). Each sample also times the enqueue call and the start
  call (the claim; on a hand-over, taking the row from the notification), and a quiet curve gives the
  p50 after 0.02, 0.1, 0.3, 1 and 3 s of a quiet machine: a queue that backed off would keep getting
  slower with the gap.
- double_claims / lost_jobs over every drain: each job's claims are counted by the claimers.

Each figure is the median of 3 runs (--quick: 1). SQLite synchronous level: settings (NORMAL).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import config

PG_DEFAULT = os.environ.get("REFINERY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
WORKER_COUNTS = (1, 2, 4, 8)


# --------------------------------------------------------------------------- databases
class Databases:
    """Fresh SQLite files and PostgreSQL schemas, cleaned up at the end."""

    def __init__(self, pg_admin: str | None):
        self.tmp = Path(tempfile.mkdtemp(prefix="jobqueue-bench-"))
        self.pg_admin, self.schemas = pg_admin, []

    def url(self, backend: str) -> str:
        if backend == "sqlite":
            return f"sqlite:///{self.tmp}/{uuid.uuid4().hex[:8]}.db"
        import psycopg

        schema = "bench_" + uuid.uuid4().hex[:10]
        with psycopg.connect(self.pg_admin, autocommit=True) as c:
            c.execute(f'CREATE SCHEMA "{schema}"')
        self.schemas.append(schema)
        return self.pg_admin.replace("postgresql://", "postgresql+psycopg://", 1) + \
            f"?options=-csearch_path%3D{schema}"

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)
        if self.schemas:
            import psycopg

            with psycopg.connect(self.pg_admin, autocommit=True) as c:
                for s in self.schemas:
                    c.execute(f'DROP SCHEMA IF EXISTS "{s}" CASCADE')


def _settings(url: str) -> config.Settings:
    return config.load().replace({"db_url": url, "host_name": "bench", "lease_s": 600.0})


# --------------------------------------------------------------------------- worker processes
def _drain(url: str, mode: str, barrier, out_q) -> None:
    from jobqueue.proc import Owner
    from jobqueue.store import Store

    store = Store(_settings(url))
    owner = Owner.current("bench")
    store.counts()  # connect before the clock starts
    barrier.wait()
    t0, got = time.perf_counter(), []
    job = None
    if mode == "batch10":  # claim 10, "run" them, finish them and claim 10 more in one transaction
        batch: list = []
        while True:
            batch, lost = store.finish_many_and_claim([(j.id, j.attempt, {}) for j in batch], "cpu", owner, 10)
            assert not lost
            got += [j.id for j in batch]
            if not batch and not store.counts().get("cpu", {}).get("queued"):
                break
        out_q.put((t0, time.perf_counter(), got))
        store.close()
        return
    while True:
        if mode == "merged" and job is not None:
            job = store.finish_and_claim(job.id, job.attempt, {}, "cpu", owner)
        else:
            if job is not None:
                store.finish(job.id, job.attempt, {})
            job = store.claim("cpu", owner)
        if job is None:
            if not store.counts().get("cpu", {}).get("queued"):  # empty, not just rows locked by others
                break
            continue
        got.append(job.id)
    out_q.put((t0, time.perf_counter(), got))
    store.close()


def _enqueue(url: str, n: int, tag: str, barrier, out_q) -> None:
    from jobqueue.store import Store

    store = Store(_settings(url))
    store.counts()
    barrier.wait()
    t0 = time.perf_counter()
    for i in range(n):
        store.enqueue(None, "task", "cpu", {}, key=f"{tag}-{i}")
    out_q.put((t0, time.perf_counter(), n))
    store.close()


def _in_procs(target, args_for, n: int) -> list:
    ctx = mp.get_context("spawn")
    barrier, q = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args_for(i), barrier, q)) for i in range(n)]
    for p in procs:
        p.start()
    out = [q.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
    return out


def claims_run(dbs: Databases, backend: str, workers: int, n_jobs: int, mode: str, tally: dict) -> float:
    from jobqueue.store import Store

    url = dbs.url(backend)
    with Store(_settings(url)) as store:
        for i in range(0, n_jobs, 5000):
            store.enqueue_many("task", "cpu", [{}] * min(5000, n_jobs - i))
        ids = {j.id for j in store.list(limit=n_jobs + 1)}
    out = _in_procs(_drain, lambda i: (url, mode), workers)
    claimed: dict[int, int] = {}
    for _, _, got in out:
        for j in got:
            claimed[j] = claimed.get(j, 0) + 1
    tally["double_claims"] += sum(1 for c in claimed.values() if c > 1)
    tally["jobs"] += len(ids)
    with Store(_settings(url)) as store:  # lost: never claimed, or claimed but not recorded as succeeded
        succeeded = store.counts().get("cpu", {}).get("succeeded", 0)
    tally["lost_jobs"] += max(len(ids - set(claimed)), len(ids) - succeeded)
    start, end = min(o[0] for o in out), max(o[1] for o in out)
    return len(claimed) / (end - start)


def enqueue_run(dbs: Databases, backend: str, workers: int, n_jobs: int) -> float:
    from jobqueue.store import Store

    url = dbs.url(backend)
    Store(_settings(url)).close()  # schema made before the clock
    per = max(1, n_jobs // workers)
    out = _in_procs(_enqueue, lambda i: (url, per, f"p{i}"), workers)
    return sum(o[2] for o in out) / (max(o[1] for o in out) - min(o[0] for o in out))


# --------------------------------------------------------------------------- latency
def _latency_worker(url: str, ready, out_q) -> None:
    from jobqueue.proc import Owner
    from jobqueue.store import Store

    store = Store(_settings(url))
    owner = Owner.current("bench")
    ready.set()
    while True:
        t_claim = time.time()
        job = store.claim("cpu", owner)
        if job is None:  # wait as the worker does with nothing running: offering to take the next job
            job = store.wait_for_job("cpu", owner, 1.0)
            if job is None:
                continue
            t_claim = time.time() - store.take_s  # handed over: the start call is the take (wake.py)
        t = time.time()
        if job.payload.get("stop"):
            break
        out_q.put((job.payload["phase"], (t - job.payload["t0"]) * 1000.0, (t - t_claim) * 1000.0))
        store.finish(job.id, job.attempt, {})
    store.close()


class _Lane:
    """One lane for latency samples: its own database, one worker process waiting on it, this process enqueueing."""

    def __init__(self, dbs: Databases, backend: str):
        from jobqueue.store import Store

        self.url = dbs.url(backend)
        self.store = Store(_settings(self.url))
        ctx = mp.get_context("spawn")
        self.ready, self.q = ctx.Event(), ctx.Queue()
        self.proc = ctx.Process(target=_latency_worker, args=(self.url, self.ready, self.q))
        self.proc.start()

    def sample(self, phase: str) -> tuple[float, float, float]:
        """(enqueue → start, the enqueue call, the start call) in ms."""
        t0 = time.time()
        self.store.enqueue(None, "task", "cpu", {"t0": t0, "phase": phase})
        enqueue_ms = (time.time() - t0) * 1000.0
        _, total_ms, claim_ms = self.q.get(timeout=30)
        return total_ms, enqueue_ms, claim_ms

    def close(self) -> None:
        self.store.enqueue(None, "task", "cpu", {"stop": True})
        self.proc.join(30)
        self.store.close()


def latency(dbs: Databases, backends: list[str], active_n: int, idle_s: float, idle_n: int,
            quiet: tuple[tuple[float, int], ...]) -> dict:
    """Mid-activity: active_n samples per backend (20 ms apart), one backend at a time so they do not share the
    CPU. After idle: idle_n more lanes per backend, each with its own database and waiting worker, run one
    job, then left alone for idle_s and sampled once, 1 s apart, interleaved across backends: idle_n samples
    for one wait. (Without that first job a sample also pays for its connections' first statements: on
    PostgreSQL the idle p50 then measured 8.9 ms.) Then the quiet curve: the p50 after each (gap_s, n) of
    `quiet` with the machine otherwise quiet, on the mid-activity lane, one backend at a time: whether a
    slower start after idle comes from the queue (it would keep growing with the gap) or from the machine
    (it levels off within a second). Every sample also times the enqueue call and the start call (the claim,
    or the take of a hand-over)."""
    lanes = {b: [_Lane(dbs, b) for _ in range(idle_n + 1)] for b in backends}
    out: dict = {b: {"active": [], "idle": []} for b in backends}
    curve: dict = {b: {} for b in backends}
    try:
        for lane in (x for ls in lanes.values() for x in ls):
            lane.ready.wait(60)
            lane.sample("warm")  # each lane has worked once (a daemon's connections have): idle, not cold
        t_idle = time.monotonic()
        for b in backends:
            for _ in range(active_n):
                time.sleep(0.02)  # the worker is back in its wait
                out[b]["active"].append(lanes[b][0].sample("active"))
        order = [(b, i) for i in range(1, idle_n + 1) for b in backends]
        for j, (b, i) in enumerate(order):
            time.sleep(max(0.0, t_idle + idle_s + j - time.monotonic()))
            out[b]["idle"].append(lanes[b][i].sample("idle"))
        for b in backends:
            for gap, n in quiet:
                xs = []
                for _ in range(n):
                    time.sleep(gap)
                    xs.append(lanes[b][0].sample("quiet"))
                curve[b][f"{gap:g}"] = _summary(xs)
    finally:
        for lane in (x for ls in lanes.values() for x in ls):
            lane.close()
    return {b: {**{k: _summary(v, samples=k == "idle") for k, v in d.items()}, "quiet_curve": curve[b]}
            for b, d in out.items()}


def _summary(xs: list[tuple[float, float, float]], samples: bool = False) -> dict:
    total = [x[0] for x in xs]
    return {"p50_ms": statistics.median(total), "p99_ms": _pct(total, 99), "n": len(xs),
            "enqueue_call_p50_ms": statistics.median(x[1] for x in xs),
            "start_call_p50_ms": statistics.median(x[2] for x in xs),
            **({"samples_ms": [round(x, 3) for x in total]} if samples else {})}


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


# --------------------------------------------------------------------------- report
def fsync_ms(directory: Path, n: int = 50) -> float:
    """Median fdatasync of a 4 KiB write here: what a durable commit costs on this disk right now."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    ts = []
    try:
        for _ in range(n):
            os.write(fd, b"x" * 4096)
            t = time.perf_counter()
            os.fdatasync(fd)
            ts.append((time.perf_counter() - t) * 1000.0)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(ts)


def device() -> str:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.node()}: {os.cpu_count()} cores {cpu}, {platform.system()} {platform.release()}"


def versions(pg_admin: str | None) -> dict:
    import sqlite3

    import psycopg
    import sqlalchemy

    v = {"python": platform.python_version(), "sqlalchemy": sqlalchemy.__version__, "psycopg": psycopg.__version__,
         "sqlite": sqlite3.sqlite_version}
    if pg_admin:
        with psycopg.connect(pg_admin) as c:
            v["postgresql"] = c.execute("SHOW server_version").fetchone()[0]
    return v


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jobqueue.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small runs, one repeat, 5 s idle (about a minute)")
    ap.add_argument("--json", default=str(config.ROOT / "runs" / "bench" / "jobqueue.json"))
    ap.add_argument("--pg", default=PG_DEFAULT, help="PostgreSQL admin URL ('' to skip PostgreSQL)")
    ap.add_argument("--only", choices=("throughput", "latency"), help="one half of the benchmark (its targets only)")
    a = ap.parse_args(argv)
    settings = config.load()
    pg = a.pg or None
    if pg:
        try:
            import psycopg

            psycopg.connect(pg, connect_timeout=3).close()
        except Exception as e:  # noqa: BLE001 - no server: SQLite figures only
            print(f"PostgreSQL unreachable ({e}); SQLite only")
            pg = None
    backends = ["sqlite"] + (["pg"] if pg else [])
    reps = 1 if a.quick else 3
    n_jobs = {"sqlite": 2000 if a.quick else 10000, "pg": 1000 if a.quick else 4000}
    n_enq = {"sqlite": 1000 if a.quick else 4000, "pg": 500 if a.quick else 2000}
    counts = (1, 4) if a.quick else WORKER_COUNTS
    idle_s, idle_n, active_n = (5.0, 3, 100) if a.quick else (300.0, 7, 400)
    quiet = ((0.02, 10), (1.0, 3)) if a.quick else ((0.02, 40), (0.1, 30), (0.3, 20), (1.0, 15), (3.0, 8))

    dbs = Databases(pg)
    tally = {"double_claims": 0, "lost_jobs": 0, "jobs": 0}
    figures: dict = {"claims_per_s": {}, "claims_per_s_separate": {}, "claims_per_s_batch10": {}, "enqueue_per_s": {},
                     "latency": {},
                     "sqlite_synchronous": settings.queue.sqlite_synchronous, "idle_s": idle_s, "repeats": reps,
                     "jobs_per_drain": n_jobs}
    t_start = time.time()
    figures["loadavg_start"] = os.getloadavg()  # the machine is shared: say how busy it was
    figures["fsync_ms_p50_start"] = fsync_ms(dbs.tmp)
    try:
        for b in backends if a.only != "latency" else ():
            for w in counts:
                key = f"{b}_{w}w"
                figures["claims_per_s"][key] = statistics.median(
                    claims_run(dbs, b, w, n_jobs[b], "merged", tally) for _ in range(reps))
                figures["claims_per_s_separate"][key] = statistics.median(
                    claims_run(dbs, b, w, n_jobs[b] // 2, "separate", tally) for _ in range(reps))
                figures["claims_per_s_batch10"][key] = statistics.median(
                    claims_run(dbs, b, w, n_jobs[b], "batch10", tally) for _ in range(reps))
                figures["enqueue_per_s"][key] = statistics.median(
                    enqueue_run(dbs, b, w, n_enq[b]) for _ in range(reps))
                print(f"{key}: claims/s {figures['claims_per_s'][key]:.0f} (separate "
                      f"{figures['claims_per_s_separate'][key]:.0f}, batches of 10 "
                      f"{figures['claims_per_s_batch10'][key]:.0f}), enqueue/s {figures['enqueue_per_s'][key]:.0f}",
                      flush=True)
        if a.only != "throughput":
            figures["latency"] = latency(dbs, backends, active_n, idle_s, idle_n, quiet)
    finally:
        dbs.close()
    figures.update(tally)
    figures["wall_s"] = round(time.time() - t_start, 1)
    figures["loadavg_end"] = os.getloadavg()
    figures["fsync_ms_p50_end"] = fsync_ms(Path(tempfile.gettempdir()))

    def p50(b: str) -> float:  # the worse of "right after activity" and "after idle"
        lat = figures["latency"][b]
        return max(lat["active"]["p50_ms"], lat["idle"]["p50_ms"])

    targets = []
    if a.only != "latency":
        targets.append({"name": "claims_per_s_sqlite_1w", "value": figures["claims_per_s"]["sqlite_1w"],
                        "target": 8000, "unit": "jobs/s", "op": ">="})
        if pg:
            targets.append({"name": "claims_per_s_pg_4w", "value": figures["claims_per_s"]["pg_4w"], "target": 2000,
                            "unit": "jobs/s", "op": ">="})
    if a.only != "throughput":
        for b, goal in (("sqlite", 5), ("pg", 3)) if pg else (("sqlite", 5),):
            targets.append({"name": f"enqueue_to_start_p50_ms_{b}", "value": p50(b), "target": goal, "unit": "ms",
                            "op": "<="})
    targets += [{"name": "double_claims", "value": tally["double_claims"], "target": 0, "unit": "jobs", "op": "=="},
                {"name": "lost_jobs", "value": tally["lost_jobs"], "target": 0, "unit": "jobs", "op": "=="}]
    for t in targets:
        v, g = t["value"], t["target"]
        t["met"] = bool(v >= g if t["op"] == ">=" else v <= g if t["op"] == "<=" else v == g)
    doc = {"device": device(), "versions": versions(pg), "figures": figures, "targets": targets,
           "notes": ("claims/s: no-op jobs claimed and finished by the store, no child process; merged = finish and "
                     "next claim in one transaction (the worker's busy-lane path; the targets use it); separate = two "
                     "transactions; batch10 = 10 jobs a transaction. "
                     f"Latency 'idle' samples follow {idle_s:g} s of idle" + (" (--quick; the full run idles 300 s)"
                                                                           if a.quick else "") + ".")}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(doc, indent=2) + "\n")
    _print(doc)
    print(f"wrote {a.json}")
    return 0


def _print(doc: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    f = doc["figures"]
    con = Console()
    t = Table(title=f"jobqueue bench (jobs/s) — {doc['device']}")
    names = ("claims_per_s", "claims_per_s_separate", "claims_per_s_batch10", "enqueue_per_s")
    for c in ("backend_workers", "claims merged", "claims separate", "claims batch10", "enqueue"):
        t.add_column(c, justify="right")
    for key in f["claims_per_s"]:
        t.add_row(key, *(f"{f[n][key]:,.0f}" for n in names))
    if f["claims_per_s"]:
        con.print(t)
    lat = f.get("latency", {})
    lt = Table(title="enqueue → start p50 ms (enqueue call + start call: the claim, or the take of a hand-over)")
    lt.add_column("phase")
    for b in lat:
        lt.add_column(b, justify="right")
    for phase in ("active", "idle", *next(iter(lat.values()), {}).get("quiet_curve", {})):
        name = {"active": "mid-activity", "idle": f"after {f['idle_s']:g} s idle"}.get(phase, f"after {phase} s quiet")
        cells = [x[phase] if phase in x else x["quiet_curve"][phase] for x in lat.values()]
        lt.add_row(name, *(f"{c['p50_ms']:.2f} ({c['enqueue_call_p50_ms']:.2f} + {c['start_call_p50_ms']:.2f})"
                           for c in cells))
    if lat:
        con.print(lt)
    tt = Table(title="targets")
    for c in ("name", "value", "target", "unit", "met"):
        tt.add_column(c)
    for x in doc["targets"]:
        tt.add_row(x["name"], f"{x['value']:,.2f}", f"{x['op']} {x['target']}", x["unit"], "yes" if x["met"] else "NO")
    con.print(tt)
    con.print(f"load average {f['loadavg_start'][0]:.1f} → {f['loadavg_end'][0]:.1f}; fdatasync p50 "
              f"{f['fsync_ms_p50_start']:.2f} → {f['fsync_ms_p50_end']:.2f} ms; SQLite synchronous="
              f"{f['sqlite_synchronous']}; {doc['notes']}")


if __name__ == "__main__":
    raise SystemExit(main())
