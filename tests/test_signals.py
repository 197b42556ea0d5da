"""Signals sent to a real `python -m agent daemon` subprocess running a real full-stage job.

    first SIGTERM   warm stop: no new claims; the stage checkpoints and exits 75; its job goes back
                    to queued without using an attempt; the daemon exits 0. A restart resumes the
                    same job from that checkpoint (step > 0) and finishes it.
    second signal   cold stop: the child's whole process group is killed, the job requeued.
    SIGHUP          reload: REFINERY_ENV_FILE is read again; a new poll interval and allowlist take
                    effect at once (seen as the poll cadence on the GitHub-speaking server); settings
                    that need a restart, or a bad file, change nothing.

The warm-stop time of a running full-stage job (signal → daemon exit) is printed (-s shows it).

Run: .venv/bin/python -m pytest tests/test_signals.py -q -s     (the daemon tests are marked slow)
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import config
from agent.state.local_tables import LocalIssues
from experiments import corpus
from experiments.stage import stage_argv
from jobqueue.store import Store
from tests.agent_support import TOKEN, env_for, gh, settings_for, wait_for  # noqa: F401
from tests.signals_support import DaemonProc, NotifySocket, alive, group_members, kill_leftovers, proc_env

# The tiny full stage: r50k vocabulary (the corpus is real text), one seed, two arms of FULL_STEPS each.
FULL_SPEC = {"init_std": 0.1, "stage_threads": 1, "test_examples": 200, "full_seeds": 1, "ckpt_every": 1000,
             "eval_every": 1000, "eval_batches": 1, "seq_len": 32, "batch_size": 4, "full_probe_steps": 0,
             "r_max": 2, "r_mean": 2}
FULL_STEPS = 60
STOP_AFTER = 20  # steps done before the stop signal, so the checkpoint is well past step 0
WRITE_RESULT = [sys.executable, "-c", "import os; open(os.environ['QUEUE_RUN_DIR'] + '/result.json', 'w').write('{}')"]


# --------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "corpus"
    corpus.build(corpus.stdlib_sources(max_bytes=150_000), out, val_frac=0.2)
    return out


def full_job_env(tmp_path: Path, sqlite_url: str, corpus_dir: Path, steps: int = FULL_STEPS,
                 launcher: tuple = (), **over):
    """Settings, daemon environment and a queued full-stage job (gpu lane, as in production) on a local issue;
    `launcher`: a command line the stage's own is appended to."""
    s = settings_for(sqlite_url, tmp_path, gpu_devices="0", cpu_workers=1, poll_interval=30.0, **over)
    env = env_for(s, REFINERY_DOCS_DIR=str(tmp_path / "docs"), CREDENTIALS_DIRECTORY=str(tmp_path / "creds"))
    spec = {**FULL_SPEC, "corpus_dir": str(corpus_dir), "full_steps": steps}
    spec_file = tmp_path / "runs" / "specs" / "full.json"
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(json.dumps({"spec": spec, "issue": 1}))
    store = Store(s)
    n = LocalIssues(store.engine).create("a full run to stop", "", [], "alice")
    payload = {"argv": [*launcher, *stage_argv("full", str(spec_file))], "stage": "full", "spec_file": str(spec_file),
               "spec": spec, "title": "a full run to stop"}
    job = store.enqueue(n, "full", "gpu", payload, key="full")
    return s, env, store, job


def _stamp(log: str, pattern: str) -> float:
    """The time of the first daemon log line matching `pattern` (logging's asctime, ms resolution)."""
    m = re.search(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*" + pattern, log, re.M)
    assert m, pattern
    return time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000


def progress(job_run_dir: str | None) -> float:
    try:
        return float(json.loads((Path(job_run_dir) / "progress.json").read_text()).get("done", 0))
    except (TypeError, OSError, ValueError):
        return 0.0


def running_with_progress(store: Store, job_id: int, done: float):
    j = store.get(job_id)
    return j if j.state == "running" and j.child_pid and progress(j.run_dir) >= done else None


# --------------------------------------------------------------------------- SIGTERM: warm stop, resume
@pytest.mark.slow
def test_warm_stop_checkpoints_requeues_and_the_restart_resumes(tmp_path, sqlite_url, corpus_dir):
    s, env, store, job = full_job_env(tmp_path, sqlite_url, corpus_dir)
    d = DaemonProc(env, tmp_path / "daemon1.log")
    try:
        running = wait_for(lambda: d.check(running_with_progress(store, job.id, STOP_AFTER)), timeout=180, step=0.2,
                           what="the full stage to train a few steps")
        child = running.child_pid
        # item 6 of the issue, on the real stage child: no token or credentials, a process group of its own
        cenv = proc_env(child)
        assert "GITHUB_TOKEN" not in cenv and "CREDENTIALS_DIRECTORY" not in cenv and TOKEN not in str(cenv)
        assert os.getpgid(child) == child and os.getpgid(child) != os.getpgid(d.p.pid)
        t0 = d.signal(signal.SIGTERM)
        time.sleep(0.3)
        late = store.enqueue(None, "task", "cpu", {"argv": WRITE_RESULT}, key="late")
        assert d.wait(120) == 0, d.text()
        warm_s = time.monotonic() - t0
        print(f"\nwarm stop of a running full-stage job: {warm_s:.2f} s from SIGTERM to daemon exit")
    finally:
        d.kill()
        kill_leftovers(tmp_path / "runs")
    out = d.text()
    assert TOKEN not in out
    m = re.search(r"stopped \(warm\) in ([\d.]+) s after the signal; 1 job\(s\) were running", out)
    assert m, out
    stamps = {what: _stamp(out, pattern) for what, pattern in (("signal", r"signal 15: warm stop"),
                                                               ("reaped", rf"job {job.id} stopped"))}
    print(f"the daemon's own measure: {m.group(1)} s (signal → child exited 75 and reaped: "
          f"{stamps['reaped'] - stamps['signal']:.2f} s; then requeue and exit)")
    j = store.get(job.id)
    assert j.state == "queued" and j.tries == 0 and j.resumes == 1 and j.attempt == 1, j
    assert "exit code 75" in (j.note or ""), j.note  # the stage itself stopped warm (EX_TEMPFAIL)
    assert not group_members(child)
    assert store.get(late.id).attempt == 0  # a warm stop claims nothing new
    run = Path(j.run_dir)
    assert not (run / "result.json").exists()
    meta = json.loads((run / "ckpt" / "candidate-s0" / "meta.json").read_text())
    assert meta["step"] >= STOP_AFTER, meta
    assert f"checkpoint at step {meta['step']} on warm stop" in (run / "log.txt").read_text()

    d = DaemonProc(env, tmp_path / "daemon2.log")
    try:
        done = wait_for(lambda: d.check(store.get(job.id).state in ("succeeded", "failed") and store.get(job.id)),
                        timeout=300, step=0.5, what="the resumed job to finish")
        wait_for(lambda: store.get(late.id).state == "succeeded", timeout=60, what="the late job")
        t0 = d.signal(signal.SIGTERM)
        assert d.wait(60) == 0, d.text()
        print(f"stop of an idle daemon: {time.monotonic() - t0:.2f} s")
    finally:
        d.kill()
        kill_leftovers(tmp_path / "runs")
    assert done.state == "succeeded" and done.result["verdict"] in ("PASS", "FAIL"), (done, d.text())
    assert done.tries == 1 and done.attempt == 2  # the same job, one counted attempt: the warm stop was free
    log = (run / "log.txt").read_text()
    resumed = re.search(r"candidate/s0: resumed from candidate-s0 at step (\d+)", log)
    assert resumed and int(resumed.group(1)) == meta["step"] + 1 > 0, log
    assert log.count(f"=== job {job.id} attempt") == 2  # two executions of one job, never a second job
    assert len(store.jobs_for_issue(job.issue)) == 1
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(x).get("run") == "candidate/lm/s0"]
    assert steps == [0, FULL_STEPS - 1]  # step 0 once (before the stop), the last once (after): nothing redone
    store.close()


# --------------------------------------------------------------------------- a second signal: cold stop
HELPER_THEN_STAGE = (  # leave a SIGTERM-ignoring helper in the group (as a data-loader worker would), then exec
    "import os, subprocess, sys; "
    "h = subprocess.Popen([sys.executable, '-c', 'import signal, time; signal.signal(signal.SIGTERM, "
    "signal.SIG_IGN); time.sleep(600)']); "
    "open(os.path.join(os.environ['QUEUE_RUN_DIR'], 'helper.pid'), 'w').write(str(h.pid)); "
    "os.execv(sys.argv[1], sys.argv[1:])")


@pytest.mark.slow
def test_second_signal_kills_the_childs_process_group_and_requeues(tmp_path, sqlite_url, corpus_dir):
    s, env, store, job = full_job_env(tmp_path, sqlite_url, corpus_dir, steps=100_000,
                                      launcher=(sys.executable, "-c", HELPER_THEN_STAGE))
    d = DaemonProc(env, tmp_path / "daemon.log")
    try:
        running = wait_for(lambda: d.check(running_with_progress(store, job.id, 1)), timeout=180, step=0.2,
                           what="the full stage to start training")
        child = running.child_pid
        helper = int((Path(running.run_dir) / "helper.pid").read_text())
        assert set(group_members(child)) >= {child, helper}
        # a child too slow to checkpoint: stopped, it cannot act on the warm stop's SIGTERM
        os.kill(child, signal.SIGSTOP)
        d.signal(signal.SIGTERM)
        time.sleep(1.5)
        assert d.p.poll() is None and "stopped (warm)" not in d.text()  # the warm stop waits for the child
        t0 = d.signal(signal.SIGINT)  # the second signal: cold
        assert d.wait(30) == 0, d.text()
        print(f"\ncold stop: {time.monotonic() - t0:.2f} s from the second signal to daemon exit")
        wait_for(lambda: not group_members(child), timeout=5, what="the child's process group to be gone")
    finally:
        d.kill()
        kill_leftovers(tmp_path / "runs")
    out = d.text()
    assert "cold stop" in out and "stopped (cold)" in out, out
    j = store.get(job.id)
    assert j.state == "queued" and j.tries == 0 and j.resumes == 1, j
    assert "SIGKILL" in (j.note or ""), j.note
    assert not alive(helper)  # the helper that ignored SIGTERM went with its group
    store.close()


# --------------------------------------------------------------------------- `daemon --once` and Ctrl-C
POLITE = ("import os, signal, sys, time; "  # a stage-like child: SIGTERM → 'checkpoint' and exit 75
          "signal.signal(signal.SIGTERM, lambda *a: (open(os.environ['QUEUE_RUN_DIR'] + '/stopped', 'w'), "
          "os._exit(75))); open(os.environ['QUEUE_RUN_DIR'] + '/started', 'w'); time.sleep(60)")
STUBBORN = ("import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "open(os.environ['QUEUE_RUN_DIR'] + '/started', 'w'); time.sleep(60)")


@pytest.mark.parametrize("child, signals", [(POLITE, 1), (STUBBORN, 2)], ids=["warm", "cold"])
def test_ctrl_c_stops_daemon_once_without_leaving_its_child(tmp_path, sqlite_url, child, signals):
    s = settings_for(sqlite_url, tmp_path, gpu_devices="", cpu_workers=1)
    store = Store(s)
    job = store.enqueue(None, "task", "cpu", {"argv": [sys.executable, "-c", child]}, key="long")
    log = tmp_path / "once.log"
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, "-m", "agent", "daemon", "--once"], env=env_for(s), cwd=config.ROOT,
                             stdout=f, stderr=subprocess.STDOUT)
    try:
        j = wait_for(lambda: (store.get(job.id).run_dir and (Path(store.get(job.id).run_dir) / "started").exists()
                              and store.get(job.id)), timeout=30, what="the child to start")
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        if signals == 2:
            time.sleep(1.0)
            assert p.poll() is None  # the warm stop waits for a child that ignores SIGTERM
            p.send_signal(signal.SIGINT)
        assert p.wait(30) == 0, log.read_text()
        took = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
        kill_leftovers(tmp_path / "runs")
    assert not group_members(j.child_pid) and took < 10
    after = store.get(job.id)
    assert after.state == "queued" and after.tries == 0, after
    assert (Path(j.run_dir) / "stopped").exists() == (signals == 1)
    assert ("warm stop" if signals == 1 else "cold stop") in log.read_text()
    store.close()


# --------------------------------------------------------------------------- SIGHUP: reload
def _polls(srv) -> list[float]:
    return [e[3] for e in srv.log if e[0] == "GET" and e[1].startswith("/api/v3/repos/acme/lab/issues?")]


@pytest.mark.slow
def test_sighup_reloads_the_env_file(gh, tmp_path, sqlite_url):  # noqa: F811
    s = settings_for(sqlite_url, tmp_path, gh, gpu_devices="", cpu_workers=1, poll_interval=30.0)
    env_file = tmp_path / "refinery.env"
    env_file.write_text("# settings for the daemon\nREFINERY_POLL_INTERVAL=30\n")
    stranger = gh.create_issue("from a bot", "", labels=["ideas", "gpu"], author="helper-bot")
    notes = NotifySocket(tmp_path / "notify.sock")  # where systemd would listen (Type=notify)
    d = DaemonProc(env_for(s, REFINERY_ENV_FILE=str(env_file), REFINERY_DOCS_DIR=str(tmp_path / "docs"),
                           NOTIFY_SOCKET=str(notes.path)), tmp_path / "daemon.log")
    store = Store(s)
    try:
        wait_for(lambda: d.check(gh.comments_of(stranger)), timeout=30, what="the first poll's answer to the bot")
        assert "write access" in gh.comments_of(stranger)[0]["body"]
        time.sleep(1.0)
        assert len(_polls(gh)) == 1  # every 30 s: no second poll yet
        assert not store.jobs_for_issue(stranger)  # not trusted before the reload
        env_file.write_text("REFINERY_POLL_INTERVAL=1\nREFINERY_ALLOWLIST=helper-bot\n"
                            f"REFINERY_DB_URL=sqlite:///{tmp_path}/other.db\n")
        t_hup = time.time()
        d.signal(signal.SIGHUP)
        wait_for(lambda: len([t for t in _polls(gh) if t > t_hup]) >= 3, timeout=8,
                 what="polls every second after the reload")
        # the allowlist is live too: the bot's next labeled issue is trusted
        trusted = gh.create_issue("from a bot, after", "", labels=["ideas", "gpu"], author="helper-bot")
        wait_for(lambda: store.jobs_for_issue(trusted), timeout=20, what="the bot's idea to be queued")
        env_file.write_text("REFINERY_POLL_INTERVAL=0.1\n")  # out of range: refused, nothing changes
        d.signal(signal.SIGHUP)
        wait_for(lambda: "reload: bad configuration" in d.text(), timeout=10, what="the refused reload")
        t_bad = time.time()
        wait_for(lambda: len([t for t in _polls(gh) if t > t_bad]) >= 2, timeout=8, what="polling on at 1 s")
        d.signal(signal.SIGTERM)
        assert d.wait(30) == 0
    finally:
        d.kill()
        notes.close()
    out = d.text()
    kinds = [m.split("=")[0] for m in notes.messages if not m.startswith(("WATCHDOG", "STATUS"))]
    assert kinds == ["READY", "RELOADING", "READY", "RELOADING", "READY", "STOPPING"], notes.messages
    assert all("MONOTONIC_USEC=" in m for m in notes.messages if m.startswith("RELOADING"))
    assert re.search(r"reload: .*poll_interval 30\.0 → 1\.0 \(file:REFINERY_POLL_INTERVAL\)", out), out
    assert "allowlist () → ('helper-bot',)" in out
    assert "db_url changed but need a restart" in out and TOKEN not in out
    store.close()


# --------------------------------------------------------------------------- REFINERY_ENV_FILE
def test_env_file_wins_over_the_environment_and_names_its_source(tmp_path):
    f = tmp_path / "refinery.env"
    f.write_text("# comment\n; another\n\nREFINERY_POLL_INTERVAL = 7\nMODEL_ARCH='reasoner'\n"
                 "REFINERY_ENV_FILE=/elsewhere\n")
    s = config.load({"REFINERY_ENV_FILE": str(f), "REFINERY_POLL_INTERVAL": "3", "REFINERY_LEASE_S": "90"})
    assert s.daemon.poll_interval == 7.0 and s.model.arch == "reasoner" and s.queue.lease_s == 90.0
    assert s.source_of("poll_interval") == "file:REFINERY_POLL_INTERVAL"
    assert config.load({"REFINERY_ENV_FILE": f"-{tmp_path}/missing.env"}).daemon.poll_interval == 60.0
    with pytest.raises(config.ConfigError, match="cannot read .*missing.env"):
        config.load({"REFINERY_ENV_FILE": f"{tmp_path}/missing.env"})
    f.write_text("REFINERY_POLL_INTERVAL=5\nnot a pair\n")
    with pytest.raises(config.ConfigError, match="line 2 is not KEY=VALUE"):
        config.load({"REFINERY_ENV_FILE": str(f)})
    f.write_text("REFINERY_POL_INTERVAL=5\n")
    with pytest.raises(config.ConfigError, match='did you mean "poll_interval"'):
        config.load({"REFINERY_ENV_FILE": str(f)})


def test_ctrl_c_of_the_demo_stops_its_stage_and_leaves_the_job_queued(tmp_path):
    """`refinery demo` (make demo) interrupted by Ctrl-C: SIGINT to its terminal's process group, which its
    stage child (a session of its own) does not see. The demo stops warm as the daemon does: the child exits
    and its job waits in the demo's queue for the next demo, instead of training on, orphaned, after exit."""
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "manifest.json").write_text("{}")  # the demo then skips building one (smoke needs none)
    runs = tmp_path / "runs"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("REFINERY_") and k != "MODEL_ARCH"},
           "REFINERY_RUNS_DIR": str(runs), "REFINERY_CORPUS_DIR": str(tmp_path / "corpus"),
           "REFINERY_CPU_WORKERS": "1", "REFINERY_GPU_DEVICES": "", "PYTHONPATH": str(config.ROOT)}
    out = tmp_path / "demo.out"
    with open(out, "w") as f:
        p = subprocess.Popen([sys.executable, "-m", "agent", "demo"], env=env, cwd=config.ROOT, stdout=f,
                             stderr=subprocess.STDOUT, start_new_session=True)  # its own group, as a terminal's
    store = None
    try:
        db = runs / "demo" / "queue.db"
        wait_for(db.exists, timeout=60, what="the demo's queue")
        store = Store(settings_for(f"sqlite:///{db}", tmp_path))
        j = wait_for(lambda: next((j for j in store.list(state="running") if j.run_dir and j.child_pid
                                   and (Path(j.run_dir) / "progress.json").exists()), None),
                     timeout=120, what="the smoke stage to train")
        os.killpg(p.pid, signal.SIGINT)
        assert p.wait(60) == 130, out.read_text()
        assert not group_members(j.child_pid), "the stage outlived the demo"
        assert store.get(j.id).state == "queued" and store.get(j.id).tries == 0, store.get(j.id)
        assert "demo: stopped" in out.read_text()
        # the next demo says the earlier idea's work resumes first, and lists it, before the new idea
        with open(out, "w") as f:
            p = subprocess.Popen([sys.executable, "-m", "agent", "demo"], env=env, cwd=config.ROOT, stdout=f,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: "filed idea #2" in out.read_text(), timeout=60, what="the second demo to start")
        os.killpg(p.pid, signal.SIGINT)
        assert p.wait(60) == 130, out.read_text()
        assert "an earlier demo's idea #1 is unfinished: its stages resume first" in out.read_text()
    finally:
        if p.poll() is None:
            p.kill()
        kill_leftovers(runs)
        if store is not None:
            store.close()
