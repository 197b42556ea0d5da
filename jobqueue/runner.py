"""The child-process runner: one job = one child process in a process group of its own.

    start()      run_dir = runs/<YYYYMMDD-HHMMSS>-i<issue>-<kind>-<job>/ (made on the first start,
                 kept across resumes), argv from payload["argv"] with {job_id} {run_dir} {attempt}
                 {python} filled in, output appended to run_dir/log.txt, an allow-listed
                 environment (no GITHUB_TOKEN, no CREDENTIALS_DIRECTORY, no database URL) plus
                 QUEUE_JOB_ID, QUEUE_JOB_ATTEMPT, QUEUE_RUN_DIR (and QUEUE_LOCK_DIR for gpu jobs), and the
                 daemon's effective settings as REFINERY_<FIELD> values (settings_env: REFINERY_ENV_FILE's
                 lines and a SIGHUP reload included, config.SECRET_FIELDS left out), so the child's
                 config.load() sees what the daemon runs with and a stage's spec applies over it;
                 gpu jobs run under the GPU lock (gpulock --exec) with CUDA_VISIBLE_DEVICES set
    terminate()  SIGTERM to the whole group; the worker sends SIGKILL after cancel_grace_s
    outcome()    what the exit means for the job (below)

A pinned job (payload["source"] = {"repo", "sha", "ref"}) runs from the read-only tree of that commit
(jobqueue/srctree.py: runs/src/<sha>/, its cwd and only PYTHONPATH entry); any other from the daemon's
checkout. payload["control_source"] (a code idea's `control = "base"`): that commit's tree is made too.
log.txt's start line says which.

Exit code and result file decide: 0 with run_dir/result.json → succeeded with that JSON (an ad hoc
`task` without one: succeeded, {"exit_code": 0}; a stage must write one); 75 (EX_TEMPFAIL: "stopped
warm, checkpoint written, resume me") → requeued, the attempt not counted; anything else → failed with
the tail of the log (retried while attempts remain).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import config
from jobqueue import gpulock, srctree
from jobqueue.models import Job, Lane
from jobqueue.proc import start_time

EX_TEMPFAIL = os.EX_TEMPFAIL  # 75: "try again later" (sysexits.h)
LOG_TAIL_CHARS = 3000

# The child's environment: these names, plus names with these prefixes, minus anything secret.
ENV_ALLOW = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM", "SHELL", "PYTHONPATH",
             "PYTHONHASHSEED", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "CUDA_HOME", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
             "MODEL_ARCH")
ENV_ALLOW_PREFIXES = ("LC_", "REFINERY_", "TORCH_", "PYTORCH_", "CUBLAS_", "CUDNN_", "NCCL_", "TIKTOKEN_")
ENV_DENY = ("GITHUB_TOKEN", "GH_TOKEN", "CREDENTIALS_DIRECTORY", "REFINERY_DB_URL", "REFINERY_TOKEN_FILE",
            "REFINERY_ENV_FILE")
ENV_DENY_WORDS = ("TOKEN", "SECRET", "PASSWORD", "CREDENTIAL", "API_KEY")


class RunnerError(config.RefineryError):
    """A job could not be started (no argv in its payload, or the program does not exist).
    Fix: enqueue it with payload {"argv": [...]} naming a program on PATH."""


def _known_refinery_name(name: str) -> bool:
    """REFINERY_* names pass only if config knows them (the child's config.load() rejects others)."""
    if not name.startswith(config.ENV_PREFIX):
        return True
    return name in config.NON_FIELD_ENV or name[len(config.ENV_PREFIX):].lower() in config.FIELD_SECTION


def _passes(name: str) -> bool:
    return name not in ENV_DENY and not any(w in name.upper() for w in ENV_DENY_WORDS)


def settings_env(settings: config.Settings) -> dict[str, str]:
    """The daemon's effective settings as the child's environment: REFINERY_PROFILE, and REFINERY_<FIELD> for
    every field not at its default or its profile's value (values, not a path: a pinned stage runs another
    commit's code). Secrets never: config.SECRET_FIELDS and any name the deny lists catch."""
    env = {"REFINERY_PROFILE": settings.hardware.profile}
    for key, src in settings.sources:
        if key in config.SECRET_FIELDS or key == "profile" or src.startswith("profile:"):
            continue
        name = config.ENV_PREFIX + key.upper()
        if name not in ENV_DENY:  # a known field, not a secret (loss_chunk_tokens is no token)
            env[name] = config.env_value(settings.get(key))
    return env


def child_env(job: Job, run_dir: Path, device: str | None, base: dict[str, str] | None = None,
              lock_dir: Path | None = None, settings: config.Settings | None = None) -> dict[str, str]:
    base = os.environ if base is None else base
    env = {k: v for k, v in base.items()
           if (k in ENV_ALLOW or k.startswith(ENV_ALLOW_PREFIXES)) and _passes(k) and _known_refinery_name(k)}
    if settings is not None:  # what the daemon runs with wins over its process environment (a reload changed it)
        env.update(settings_env(settings))
    env.update(QUEUE_JOB_ID=str(job.id), QUEUE_JOB_ATTEMPT=str(job.attempt), QUEUE_RUN_DIR=str(run_dir),
               PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="" if device is None else str(device))
    if lock_dir is not None:
        env["QUEUE_LOCK_DIR"] = str(lock_dir)
    return env


def wall_limit(job: Job, settings: config.Settings) -> float:
    """The job's wall-time limit: payload["wall_s"], else per kind from config."""
    q = settings.queue
    if job.payload.get("wall_s"):
        return float(job.payload["wall_s"])
    return {"smoke": q.wall_smoke_s, "ablation": q.wall_ablation_s, "replication": q.wall_ablation_s,
            "full": q.wall_full_s}.get(job.kind, q.wall_task_s)


def wall_setting(job: Job) -> str:
    if job.payload.get("wall_s"):
        return 'payload["wall_s"]'
    return "REFINERY_WALL_" + {"replication": "ABLATION"}.get(job.kind, job.kind).upper() + "_S" \
        if job.kind in ("smoke", "ablation", "replication", "full") else "REFINERY_WALL_TASK_S"


def new_run_dir(job: Job, settings: config.Settings, now: float) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    name = f"{stamp}-i{job.issue}-{job.kind}-{job.id}" if job.issue is not None else f"{stamp}-{job.kind}-{job.id}"
    return settings.runs_path / name


@dataclass
class Child:
    job: Job
    proc: subprocess.Popen
    run_dir: Path
    device: str | None
    started: float          # wall clock, the `now` of the step that started it
    wall_s: float
    start_time: str         # /proc start time of the group leader (orphan clean-up)
    stop_reason: str | None = None  # cancel | wall | stop | lost
    term_at: float | None = None
    killed: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def terminate(self, reason: str, now: float) -> None:
        """SIGTERM to the group, once; the first reason given sticks."""
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.term_at is None:
            self.term_at = now
            self.signal_group(signal.SIGTERM)

    def kill(self, reason: str | None = None) -> None:
        if self.stop_reason is None and reason:
            self.stop_reason = reason
        self.killed = True
        self.signal_group(signal.SIGKILL)


def start(job: Job, settings: config.Settings, device: str | None, now: float) -> Child:
    """Start `job`'s child (see module docstring). Raises RunnerError if it cannot start."""
    argv = job.payload.get("argv")
    if not argv or not isinstance(argv, list):
        raise RunnerError(f"job {job.id} has no payload['argv'] to run")
    run_dir, moved = _run_dir(job, settings, now)
    fill = {"job_id": str(job.id), "run_dir": str(run_dir), "attempt": str(job.attempt), "python": sys.executable}
    argv = [_fill(str(a), fill) for a in argv]
    if job.lane == Lane.GPU:
        argv = [sys.executable, "-m", "jobqueue.gpulock", "--device", str(device), "--wait", "5", "--exec", "--",
                *argv]
    (run_dir / "result.json").unlink(missing_ok=True)  # a result left by an earlier attempt must not count
    cwd, where = _source(job, settings)
    with open(run_dir / "log.txt", "ab") as log:
        if moved:
            log.write(f"=== job {job.id}: its run directory {job.run_dir} is not writable on {settings.host} "
                      f"(another host's path?); continuing in this one\n".encode())
        log.write(f"=== job {job.id} attempt {job.attempt} started {time.strftime('%Y-%m-%d %H:%M:%S')} "
                  f"on {settings.host}{f' gpu {device}' if device is not None else ''}: "
                  f"{' '.join(argv)}\n=== from {where}\n".encode())
        log.flush()
        env = child_env(job, run_dir, device, lock_dir=gpulock.lock_path(settings, "0").parent
                        if device is not None else None, settings=settings)
        if cwd != config.ROOT:
            env["PYTHONPATH"] = str(cwd)  # that commit's code and nothing else of ours
        try:
            proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True, close_fds=True)
        except OSError as e:
            raise RunnerError(f"job {job.id}: cannot start {argv[0]}: {e}") from e
    return Child(job=job, proc=proc, run_dir=run_dir, device=device, started=now,
                 wall_s=wall_limit(job, settings), start_time=start_time(proc.pid))


def _source(job: Job, settings: config.Settings) -> tuple[Path, str]:
    """(the child's working directory, where that is in words): the read-only tree of payload["source"]["sha"]
    (jobqueue/srctree.py) for a pinned job, else the daemon's checkout as it is."""
    src = job.payload.get("source") or {}
    if not src.get("sha"):
        why = src.get("why") or "no commit recorded"
        return config.ROOT, f"the checkout {config.ROOT} as it is (not pinned: {why})"
    try:
        tree = srctree.ensure(Path(src.get("repo") or config.ROOT), src["sha"], settings)
    except srctree.SourceError as e:
        raise RunnerError(f"job {job.id}: its pinned source {src['sha'][:12]} could not be made: {e}") from e
    where = f"commit {src['sha']} ({src.get('ref') or 'pinned'}), read-only tree {tree}"
    ctl = job.payload.get("control_source") or {}
    if ctl.get("sha"):  # the ablation's control arm from another commit (experiments/control_arm.py): its tree too
        try:
            other = srctree.ensure(Path(ctl.get("repo") or src.get("repo") or config.ROOT), ctl["sha"], settings)
        except srctree.SourceError as e:
            raise RunnerError(f"job {job.id}: its control arm's source {ctl['sha'][:12]} could not be made: {e}") from e
        where += f"; the control arm from commit {ctl['sha']} ({ctl.get('what', 'base')}), read-only tree {other}"
    return tree, where


def _run_dir(job: Job, settings: config.Settings, now: float) -> tuple[Path, bool]:
    """(the job's run directory, made if missing; whether it moved). A job taken over from another host keeps
    that host's run directory when this host can write there (a shared path); where it cannot (that host's
    runs/ does not exist here, or is read-only), the job continues in a new one under this host's runs/."""
    if job.run_dir:
        run_dir = Path(job.run_dir)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            if os.access(run_dir, os.W_OK):
                return run_dir, False
        except OSError:
            pass
    run_dir = new_run_dir(job, settings, now)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, bool(job.run_dir)


def _fill(arg: str, fill: dict[str, str]) -> str:
    for k, v in fill.items():
        arg = arg.replace("{" + k + "}", v)  # only these placeholders: other braces stay as they are
    return arg


def log_tail(run_dir: Path, chars: int = LOG_TAIL_CHARS) -> str:
    """The last `chars` bytes of the run's log.txt, from a line boundary (a cut line would start mid-word)."""
    try:
        with open(run_dir / "log.txt", "rb") as f:
            f.seek(0, os.SEEK_END)
            start = max(0, f.tell() - chars)
            f.seek(start)
            data = f.read()
    except OSError:
        return ""
    if start > 0 and b"\n" in data[:-1]:  # drop the partial first line (keep it when it is the only one)
        data = data[data.index(b"\n") + 1:]
    return data.decode(errors="replace")


@dataclass(frozen=True)
class Outcome:
    action: str              # succeeded | resume | failed | cancelled | timeout | stopped
    result: dict | None = None
    error: str = ""


def outcome(child: Child) -> Outcome:
    """What the child's exit means; call after it exited (proc.returncode set)."""
    rc = child.proc.returncode
    result = None
    if rc == 0:
        try:
            result = json.loads((child.run_dir / "result.json").read_text())
        except (OSError, ValueError):
            result = None
    how = f"exit code {rc}" if rc >= 0 else f"killed by signal {signal.Signals(-rc).name}"
    if rc == 0 and isinstance(result, dict):
        return Outcome("succeeded", result)
    if rc == 0 and result is None and child.job.kind == "task":  # an ad hoc command: its exit code is its result
        return Outcome("succeeded", {"exit_code": 0})
    if child.stop_reason == "cancel":
        return Outcome("cancelled", error=f"cancelled while running ({how})")
    if child.stop_reason == "wall":
        return Outcome("timeout", error=f"wall-time limit of {child.wall_s:g} s exceeded ({wall_setting(child.job)}); "
                                        f"stopped ({how})\n--- log tail ---\n{log_tail(child.run_dir)}")
    if child.stop_reason == "stop":
        return Outcome("stopped", error=f"stopped by the worker ({how})")
    if rc == EX_TEMPFAIL:
        return Outcome("resume", error="stopped warm (exit 75): resumes from its checkpoint")
    if rc == 0:
        why = "exited 0 without result.json" if result is None else "result.json is not a JSON object"
        return Outcome("failed", error=f"{why}\n--- log tail ---\n{log_tail(child.run_dir)}")
    if not child.run_dir.is_dir():  # its log went with it: say so rather than show an empty tail
        return Outcome("failed", error=f"{how}; its run directory {child.run_dir} was removed while it ran "
                                       "(a retry starts it again from nothing)")
    return Outcome("failed", error=f"{how}\n--- log tail ---\n{log_tail(child.run_dir)}")
