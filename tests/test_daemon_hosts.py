"""Two hosts, exactly once (issue #20, item 3): two real `refinery daemon` processes (host names a and b, a gpu
card "0" each) on one PostgreSQL queue and one GitHub-speaking server, with several ideas (smoke tests that FAIL,
so each idea is decided and gets a finding) and agent items. Every comment must exist once, each idea has one
finding across both hosts' document folders (only the `writer` lease holder writes them), and each card runs one
job at a time.

The two daemons share runs_dir (the spec files intake writes must be readable by the host that runs the stage:
a shared file system in production), and have document folders of their own.

Run: .venv/bin/python -m pytest tests/test_daemon_hosts.py -q -s     (slow; PostgreSQL)
"""

from __future__ import annotations

import re
import signal
from collections import Counter
from pathlib import Path

import pytest

from agent.state.tables import Leases, OutboxStore
from jobqueue.store import Store
from tests.agent_support import env_for, gh, settings_for, wait_for  # noqa: F401
from tests.chaos import COMMON, QUEUE_NOT_GATE, SPECS
from tests.signals_support import DaemonProc, kill_leftovers

MARKER = re.compile(r"<!-- refinery:(\S+?) -->")
IDEAS, ITEMS = 4, 2


def idea_body(k: int) -> str:
    return f"Idea {k}.\n\n```toml\n{COMMON}{SPECS['fail']}seed = {100 + k}\n```\n"


def findings(tmp_path: Path) -> list[Path]:
    return sorted(p for h in ("a", "b") for p in (tmp_path / h / "docs" / "findings").glob("*.md"))


@pytest.mark.slow
def test_two_daemons_on_one_postgres_queue_do_everything_once(tmp_path, pg_url, gh):  # noqa: F811
    ideas = [gh.create_issue(f"idea {k}", idea_body(k), labels=["ideas", "gpu"], author="alice") for k in range(IDEAS)]
    items = [gh.create_issue(f"fix {k}", "Please fix the thing.", labels=["bug"], author="alice") for k in range(ITEMS)]
    s = settings_for(pg_url, tmp_path, gh, gpu_devices="0", cpu_workers=1, poll_interval=1.0, heartbeat_s=0.5)
    procs = []
    try:
        for h in ("a", "b"):
            (tmp_path / h / "docs").mkdir(parents=True)
            env = env_for(s, REFINERY_HOST_NAME=h, REFINERY_DOCS_DIR=str(tmp_path / h / "docs"),
                          REFINERY_WRITER_LEASE_S="6", **QUEUE_NOT_GATE)
            procs.append(DaemonProc(env, tmp_path / f"daemon-{h}.log"))
        store = Store(s)
        ob = OutboxStore(store.engine)

        def quiet():
            for p in procs:
                p.check()
            jobs = [j for n in ideas + items for j in store.jobs_for_issue(n)]
            live = [j for j in jobs
                    if j.state in ("running", "retrying") or (j.state == "queued" and j.lane != "agent")]
            return (len(findings(tmp_path)) >= IDEAS and not live and ob.counts()["pending"] == 0
                    and all(store.jobs_for_issue(n) for n in items))

        wait_for(quiet, timeout=300, step=1.0, what="every idea decided and every write delivered")
        for p in procs:
            p.signal(signal.SIGTERM)
        assert [p.wait(60) for p in procs] == [0, 0], [p.text()[-2000:] for p in procs]
    finally:
        for p in procs:
            p.kill()
        kill_leftovers(tmp_path / "runs")
    markers = Counter(m.group(1) for n in ideas + items for c in gh.comments_of(n) for m in [MARKER.search(c["body"])]
                      if m)
    sent = {i.key for i in ob.items(state="sent") if i.kind == "comment"}
    assert max(markers.values()) == 1, [k for k, v in markers.items() if v > 1]
    assert set(markers) == sent
    per_idea = Counter(int(re.search(r"-i(\d+)-", p.name).group(1)) for p in findings(tmp_path))
    assert per_idea == Counter({n: 1 for n in ideas}), per_idea
    hosts = Counter(j.owner_host for n in ideas for j in store.jobs_for_issue(n))
    spans: dict[tuple, list] = {}
    for n in ideas:
        for j in store.jobs_for_issue(n):
            assert j.lane == "gpu" and j.state in ("succeeded", "failed"), j
            spans.setdefault((j.owner_host, j.device), []).append((j.started_at, j.finished_at))
    for card, ss in spans.items():
        ss.sort()
        assert all(a[1] <= b[0] for a, b in zip(ss, ss[1:])), (card, ss)  # one job at a time on each card
    for n in items:
        assert [j.lane for j in store.jobs_for_issue(n)] == ["agent"]
    writer = (Leases(store.engine).get("writer") or {}).get("holder", "").split("|")[0]
    print(f"\ntwo daemons: {sum(markers.values())} comments, each once; {len(per_idea)} findings (writer: {writer}); "
          f"stage jobs per host {dict(hosts)}; cards {sorted(spans)}")
