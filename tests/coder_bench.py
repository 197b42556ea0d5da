"""The coder's own overhead on the happy path, measured: `python -m tests.coder_bench [--runs 5] [--json PATH]`.

Each run: a `tools` item on the GitHub tracker (the GitHub-speaking server), the pinned Claude Code CLI against
the scripted Messages API (write, commit, done), the check `sh check.sh`, the push to a local bare remote, the
draft pull request. Printed: claim → CLI start (worktree, notes, settings file, spawn) and CLI exit → PR opened
(the checks, the push, the pull request), each the median over the runs, from the timeline refinery writes
(runs/agent/<issue>/<attempt>/timeline.json), plus the CLI's own session time for scale.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    from agent.coder.command import find_cli
    from agent.coder.driver import Coder
    from agent.daemon.outbox import Outbox
    from agent.state.tables import KeyValue, OutboxStore
    from jobqueue.store import Store
    from tests.agent_support import REPO, TOKEN
    from tests.anthropic_server import AnthropicServer
    from tests.coder_support import KEY, absolute, coder_settings, happy_script, make_checkout, worktree_of
    from tests.ghserver import GitHubServer

    tmp = Path(tempfile.mkdtemp(prefix="coder-bench-"))
    gh = GitHubServer(repo=REPO, token=TOKEN, base_path="/api/v3").start()
    anth = AnthropicServer(key=KEY).start()
    os.environ.update(GITHUB_TOKEN=TOKEN, ANTHROPIC_API_KEY=KEY, ANTHROPIC_BASE_URL=anth.url)
    repo, _ = make_checkout(tmp)
    s = coder_settings(f"sqlite:///{tmp}/queue.db", tmp, repo, gh)
    store = Store(s)
    coder = Coder(s, store, Outbox(s, OutboxStore(store.engine)), KeyValue(store.engine), "github")
    rows = []
    for i in range(a.runs):
        n = gh.create_issue(f"Say hi {i}", "hello.txt should say hi.", labels=["tools"], author="alice")
        job = store.enqueue(n, "agent", "agent", {"title": f"Say hi {i}", "body": "hello.txt should say hi.",
                                                  "labels": ["tools"]}, key="agent")
        anth.script = absolute(happy_script(), worktree_of(s, n))
        while str(store.get(job.id).state) not in ("succeeded", "failed") or coder.busy:
            coder.step(time.time())
            time.sleep(0.02)
        assert str(store.get(job.id).state) == "succeeded", store.get(job.id).error
        t = json.loads(next((tmp / "runs" / "agent" / str(n)).glob("*/timeline.json")).read_text())
        rows.append({"claim_to_cli_s": t["cli_started"] - t["claimed"], "cli_s": t["cli_exited"] - t["cli_started"],
                     "exit_to_pr_s": t["delivered"] - t["cli_exited"]})
    med = {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}
    out = {"cli_version": find_cli(s).version, "runs": a.runs, "median_s": med, "raw": rows,
           "device": f"{os.cpu_count()} CPU cores"}
    print(f"coder overhead, median of {a.runs} (Claude Code {out['cli_version']}, {out['device']}):")
    print(f"  claim → CLI start     {med['claim_to_cli_s']:.3f} s")
    print(f"  CLI exit → PR opened  {med['exit_to_pr_s']:.3f} s   (checks, push, draft PR)")
    print(f"  the CLI's session     {med['cli_s']:.3f} s   (3 scripted turns; for scale)")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    store.close()
    gh.stop()
    anth.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
