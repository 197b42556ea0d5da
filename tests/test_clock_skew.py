"""Leases judged by one clock (issue #20, item 4): on PostgreSQL lease expiry and recovery use the database's
clock, so a host whose clock runs ahead never takes over live jobs, while a dead host's jobs are still taken over.

Host a (a true clock) runs two jobs; host b starts with its clock moved 5 minutes ahead by libfaketime (the Debian
package `faketime`; .ci/run installs it) and waits well past the lease: neither job moves. Then host a is killed
(SIGKILL): b takes over the job a left running once its lease expires, and finishes it.

Without libfaketime the test skips locally and fails in CI (REFINERY_REQUIRE_FAKETIME=1, set by .ci/run).

Run: .venv/bin/python -m pytest tests/test_clock_skew.py -q -s     (slow; PostgreSQL)
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time

import pytest

from jobqueue.store import Store
from tests.agent_support import env_for, settings_for, wait_for
from tests.signals_support import DaemonProc, kill_leftovers

SKEW_S = 300.0
LEASE_S = 6.0


def libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1") + glob.glob("/usr/lib/faketime/libfaketime.so.1"))
    if not found:
        if os.environ.get("REFINERY_REQUIRE_FAKETIME") == "1":
            pytest.fail("libfaketime is required (REFINERY_REQUIRE_FAKETIME=1) but missing: apt-get install faketime")
        pytest.skip("libfaketime missing (apt-get install faketime); CI installs it and requires this test")
    return found[0]


def _held(release) -> list[str]:
    code = (f"import os, time\nwhile not os.path.exists({str(release)!r}): time.sleep(0.2)\n"
            "open(os.environ['QUEUE_RUN_DIR'] + '/result.json', 'w').write('{}')")
    return [sys.executable, "-c", code]


@pytest.mark.slow
def test_a_clock_five_minutes_ahead_steals_nothing_and_a_dead_host_is_still_taken_over(tmp_path, pg_url):
    lib = libfaketime()
    s = settings_for(pg_url, tmp_path, cpu_workers=2, heartbeat_s=0.5, lease_s=LEASE_S, poll_interval=5.0)
    store = Store(s)
    jobs = [store.enqueue(None, "task", "cpu", {"argv": _held(tmp_path / f"release-{k}")}, key=f"held-{k}")
            for k in range(2)]
    env_a = env_for(s, REFINERY_HOST_NAME="a")
    env_b = env_for(s, REFINERY_HOST_NAME="b", REFINERY_CPU_WORKERS="1", LD_PRELOAD=lib, FAKETIME=f"+{int(SKEW_S)}s",
                    FAKETIME_DONT_RESET="1", FAKETIME_DONT_FAKE_MONOTONIC="1")  # the wall clock runs ahead
    ahead = float(subprocess.run([sys.executable, "-c", "import time; print(time.time())"], env=env_b,
                                 capture_output=True, text=True, check=True).stdout) - time.time()
    assert abs(ahead - SKEW_S) < 30, f"libfaketime did not move the clock: {ahead:.1f} s"
    a = DaemonProc(env_a, tmp_path / "daemon-a.log")
    b = None
    try:
        wait_for(lambda: a.check(all(store.get(j.id).state == "running" for j in jobs)), timeout=60, step=0.2,
                 what="host a running both jobs")
        b = DaemonProc(env_b, tmp_path / "daemon-b.log")
        time.sleep(3 * LEASE_S)  # b (5 minutes ahead) looks at a's leases for three lease lengths
        b.check()
        now = [store.get(j.id) for j in jobs]
        assert all(j.state == "running" and j.owner_host == "a" and j.attempt == 1 for j in now), now
        (tmp_path / "release-0").touch()
        wait_for(lambda: store.get(jobs[0].id).state == "succeeded", timeout=60, what="job 1 finished on a")
        a.p.kill()  # host a dies with job 2 running
        a.wait(10)
        wait_for(lambda: b.check((lambda j: j.state == "running" and j.owner_host == "b")(store.get(jobs[1].id))),
                 timeout=90, step=0.2, what="host b taking over the dead host's job")
        (tmp_path / "release-1").touch()
        wait_for(lambda: b.check(store.get(jobs[1].id).state == "succeeded"), timeout=60, what="job 2 done on b")
    finally:
        for d in (a, b):
            if d is not None:
                d.kill()
        kill_leftovers(tmp_path / "runs")
    j0, j1 = store.get(jobs[0].id), store.get(jobs[1].id)
    hist0 = [e.message for e in store.events(j0.id)]
    assert (j0.owner_host, j0.attempt) == ("a", 1) and not any("expired" in (m or "") for m in hist0), hist0
    assert j1.owner_host == "b" and j1.state == "succeeded"
    print(f"\nclock {ahead:.0f} s ahead on host b: live jobs kept by a; the dead host's job taken over by b "
          f"(attempt {j1.attempt})")
