"""The GPU file lock: runs/locks/gpu<N>.lock, taken by everything that touches card N.

The queue's gpu lane holds it (besides the database's one-running-job-per-device index) and so
does `refinery gpu-lock -- CMD...`, so a manual training run and the daemon never share the
card. It is a `filelock` lock (flock(2) on Unix): the kernel drops it when the holder dies, so
a crash never leaves a stale lock behind.

The runner starts a gpu job as `python -m jobqueue.gpulock --device N --exec -- ARGV...`: the
lock is taken, its descriptor made inheritable, and ARGV exec'd in the same process. The job
itself then holds the lock for as long as it (or a descendant keeping the descriptor) lives,
even if the worker that started it is killed. Busy beyond --wait: exit 75 (EX_TEMPFAIL, the
queue's "resume me later" code).

A sidecar file gpu<N>.holder names the holder (pid, command, since) for error messages. The
runner passes its lock directory in QUEUE_LOCK_DIR, so a worker whose runs_dir came from a flag
and its jobs always agree on the file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import filelock

import config

EX_TEMPFAIL = os.EX_TEMPFAIL  # 75: "try again later" (sysexits.h)


def lock_path(settings: config.Settings, device: str) -> Path:
    d = Path(os.environ["QUEUE_LOCK_DIR"]) if os.environ.get("QUEUE_LOCK_DIR") else settings.runs_path / "locks"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"gpu{device}.lock"


def holder(settings: config.Settings, device: str) -> str:
    """Who holds the lock, as far as the sidecar file knows ('' if unknown)."""
    try:
        h = json.loads(lock_path(settings, device).with_suffix(".holder").read_text())
        return f"pid {h['pid']} since {time.strftime('%H:%M:%S', time.localtime(h['since']))}: {h['cmd']}"
    except (OSError, ValueError, KeyError):
        return ""


def _write_holder(settings: config.Settings, device: str, argv: list[str]) -> None:
    side = lock_path(settings, device).with_suffix(".holder")
    tmp = side.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"pid": os.getpid(), "cmd": " ".join(argv)[:300], "since": time.time()}))
    tmp.replace(side)


def gpu_lock(settings: config.Settings, device: str) -> filelock.FileLock:
    """The lock object; `with gpu_lock(s, "0"):` or `.acquire(timeout=...)`."""
    return filelock.FileLock(str(lock_path(settings, device)), thread_local=False)


def is_free(settings: config.Settings, device: str) -> bool:
    """True if nobody holds card `device` right now (a probe: taken and released at once)."""
    lock = gpu_lock(settings, device)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        return False
    lock.release()
    return True


def _acquire(settings: config.Settings, device: str, wait_s: float, quiet: bool) -> filelock.FileLock:
    lock = gpu_lock(settings, device)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        if wait_s == 0:
            raise
        if not quiet:
            who = holder(settings, device)
            print(f"gpu-lock: waiting for GPU {device}" + (f" (held by {who})" if who else ""), file=sys.stderr)
        lock.acquire(timeout=wait_s)  # negative: forever
    return lock


def run_locked(settings: config.Settings, device: str, argv: list[str], wait_s: float = -1, exec_: bool = False,
               quiet: bool = False) -> int:
    """Run argv under GPU `device`'s lock; its exit code, or 75 when the card stayed busy.
    exec_: replace this process (the lock's descriptor is inherited); else run argv as a child."""
    if not argv:
        raise config.ConfigError([config.Problem("gpu-lock", "no command given", "refinery gpu-lock -- CMD ARGS")])
    try:
        lock = _acquire(settings, device, wait_s, quiet)
    except filelock.Timeout:
        who = holder(settings, device)
        print(f"gpu-lock: GPU {device} is busy" + (f" (held by {who})" if who else "") +
              "; exit 75 (try again later)", file=sys.stderr)
        return EX_TEMPFAIL
    _write_holder(settings, device, argv)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES", device))
    if exec_:
        fd = lock._context.lock_file_fd  # filelock keeps the flock'd descriptor here
        assert fd is not None, "filelock reported the lock held without a descriptor"
        os.set_inheritable(fd, True)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execvpe(argv[0], argv, env)
        except OSError as e:  # e names the last PATH entry tried (b'/bin/CMD'): say the command and the cause
            print(f"gpu-lock: cannot run {argv[0]}: {e.strerror}{_not_found_hint(argv[0], e)}", file=sys.stderr)
            return 127
    try:
        return subprocess.run(argv, env=env).returncode
    except OSError as e:
        print(f"gpu-lock: cannot run {argv[0]}: {e.strerror}{_not_found_hint(argv[0], e)}", file=sys.stderr)
        return 127
    finally:
        lock.release()


def _not_found_hint(cmd: str, e: OSError) -> str:
    if e.errno != 2:
        return ""
    return " (check the path)" if "/" in cmd else " (not on PATH: give its full path)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobqueue.gpulock", description="run a command under the GPU lock")
    p.add_argument("--device", default=None, help="GPU id (default: the first of REFINERY_GPU_DEVICES)")
    p.add_argument("--wait", type=float, default=-1, help="seconds to wait for the card; -1 forever, 0 not at all")
    p.add_argument("--exec", dest="exec_", action="store_true", help="exec the command in this process")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    settings = config.load()
    device = a.device if a.device is not None else (settings.queue.gpu_devices.split(",")[0].strip() or "0")
    return run_locked(settings, device, cmd, a.wait, a.exec_)


if __name__ == "__main__":
    sys.exit(main())
