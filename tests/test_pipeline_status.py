"""`refinery status`: the running job's stage, progress and ETA from its own step time, the queue, the last
results, the outbox backlog, GitHub's rate-limit state, free disk; `--json` too.

Run: .venv/bin/python -m pytest tests/test_pipeline_status.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import config
from agent.daemon.loop import status
from agent.state.tables import KeyValue, OutboxStore
from jobqueue.proc import Owner
from jobqueue.store import Store
from tests.agent_support import settings_for


def test_status_shows_progress_eta_queue_outbox_rate_and_disk(tmp_path, sqlite_url):
    s = settings_for(sqlite_url, tmp_path)
    store = Store(s)
    run = store.enqueue(5, "ablation", "cpu", {"argv": ["x"], "stage": "replication"}, key="a")
    store.enqueue(5, "full", "cpu", {"argv": ["x"], "stage": "full"}, depends_on=run.id, key="b")
    done = store.enqueue(6, "smoke", "cpu", {"argv": ["x"], "stage": "smoke"}, key="c")
    owner = Owner.current(store.host)
    j = store.claim("cpu", owner)
    assert j.id == run.id
    rd = tmp_path / "runs" / "r1"
    rd.mkdir(parents=True)
    (rd / "progress.json").write_text(json.dumps({"done": 250, "total": 1000, "what": "candidate/khop/s2",
                                                  "elapsed_s": 50.0, "eta_s": None}))
    store.set_child(j.id, j.attempt, str(rd), None, None)
    d = store.claim("cpu", owner)
    assert d.id == done.id
    store.finish(d.id, d.attempt, {"verdict": "FAIL", "reason": "no depth gain"})
    ob = OutboxStore(store.engine)
    ob.put(5, "comment", "i5/x", body="hello")
    KeyValue(store.engine).put("github.rate", {"remaining": 4321, "limit": 5000, "reset": time.time() + 600})
    st = status(s, store)
    (r,) = st["running"]
    assert r["stage"] == "replication" and r["progress"]["pct"] == 25.0 and r["host"] == store.host
    assert r["progress"]["step_s"] == 0.2 and r["progress"]["eta_s"] == 150.0  # its own measured step time
    assert [(q["stage"], q["state"]) for q in st["queue"]] == [("full", "blocked")]
    assert st["recent"][0]["verdict"] == "FAIL" and st["recent"][0]["stage"] == "smoke"
    assert st["outbox"]["pending"] == 1 and st["outbox"]["oldest_pending_s"] >= 0
    assert st["tracker"]["rate"]["remaining"] == 4321 and st["disk"]["free_gb"] > 0
    store.close()
    # the CLI, both ways
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFINERY_")}
    env.update(REFINERY_DB_URL=sqlite_url, REFINERY_RUNS_DIR=str(tmp_path / "runs"), PYTHONPATH=str(config.ROOT))
    out = subprocess.run([sys.executable, "-m", "agent", "status", "--json"], env=env, capture_output=True, text=True,
                         cwd=config.ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["running"][0]["progress"]["eta_s"] == 150.0
    text = subprocess.run([sys.executable, "-m", "agent", "status"], env=env, capture_output=True, text=True,
                          cwd=config.ROOT, timeout=60)
    assert text.returncode == 0, text.stderr
    flat = " ".join(text.stdout.split())
    assert f"replication (cpu on {store.host})" in flat and "step 250/1000 (25%), 0.2 s/step, ETA 2 min" in flat, \
        text.stdout
    assert "rate limit 4321/5000" in flat and "GB free" in flat and "1 pending" in flat
