"""Many processes hammering claims: every job is claimed and finished exactly once (SQLite and PostgreSQL).

    .venv/bin/python -m pytest tests/test_queue_claims.py -q
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from jobqueue.models import State
from jobqueue.store import Store
from tests.queue_support import ROOT, proc_env, queue_env, settings_for

N_JOBS, N_PROCS = 400, 4


def test_n_processes_claim_each_job_exactly_once(db_url, tmp_path):
    env = queue_env(db_url, tmp_path)
    store = Store(settings_for(env))
    ids = [store.enqueue(None, "task", "cpu", {"n": i}).id for i in range(N_JOBS)]
    outs = [tmp_path / f"claims{i}.json" for i in range(N_PROCS)]
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-m", "tests.queue_support", "hammer", "--out", str(o), "--go",
                               str(go)], cwd=ROOT, env=proc_env(env)) for o in outs]
    deadline = time.time() + 120
    while not all(Path(f"{o}.ready").exists() for o in outs) and time.time() < deadline:
        time.sleep(0.05)
    go.touch()  # all connected: start together
    for p in procs:
        assert p.wait(120) == 0
    claims = Counter(j for o in outs for j in json.loads(o.read_text()))
    assert sorted(claims) == sorted(ids), "lost jobs"
    assert max(claims.values()) == 1, f"double claims: {[j for j, n in claims.items() if n > 1]}"
    assert store.counts()["cpu"] == {State.SUCCEEDED.value: N_JOBS}
    assert sum(1 for o in outs if json.loads(o.read_text())) >= 2  # the work really was shared
    store.close()
