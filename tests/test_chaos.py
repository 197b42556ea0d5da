"""The chaos test (tests/chaos.py) as a slow pytest: a daemon against the GitHub-speaking server with
injected 5xx, 429 and connection resets, SIGKILLed at random moments and restarted while ideas are
filed; nothing may be lost or duplicated and nothing left running. Six ideas and five kills, bounded
to about three minutes on two cores (a 240 s budget caps the run; the counts are printed with -s);
`python -m tests.chaos` runs the larger default (eight ideas, six kills). The same run with two daemons (two
host names) on one PostgreSQL queue is the second test (about 75 s on a quiet machine).

Run: .venv/bin/python -m pytest tests/test_chaos.py -q -s      (or by hand: python -m tests.chaos)
"""

from __future__ import annotations

import pytest

from tests.chaos import Chaos, summary


@pytest.mark.slow
def test_kill_9_chaos_loses_and_duplicates_nothing(tmp_path):
    out = Chaos(ideas=6, kills=5, seed=2, budget_s=240.0, workdir=tmp_path).run()
    print("\n" + summary(out))
    assert out["kills"] >= 5 and out["restarts"] == out["kills"] and out["ideas"] == 6
    assert out["lost"] == 0 and out["duplicated"] == 0 and out["stuck"] == 0, summary(out)
    assert out["stages"] >= out["ideas"] and out["comments"] >= 2 * out["ideas"]
    assert out["final_exit"] == 0 and out["token_leaks"] == 0
    assert sum(v for k, v in out["faults"].items() if k != "primary_rate_limit") > 0


@pytest.mark.slow
@pytest.mark.postgres
def test_kill_9_chaos_with_two_daemons_on_one_postgres_queue(tmp_path, pg_url):
    """Issue #20: two daemons (two host names) share one PostgreSQL queue and outbox; either is SIGKILLed at random
    and restarted. The same counts must hold across both: nothing lost, nothing done or said twice."""
    out = Chaos(ideas=6, kills=5, seed=2, budget_s=240.0, workdir=tmp_path, hosts=2, db_url=pg_url).run()
    print("\n" + summary(out))
    assert out["hosts"] == 2 and out["kills"] >= 5 and out["restarts"] == out["kills"] and out["ideas"] == 6
    assert out["lost"] == 0 and out["duplicated"] == 0 and out["stuck"] == 0, summary(out)
    assert out["stages"] >= out["ideas"] and out["comments"] >= 2 * out["ideas"]
    assert out["final_exit"] == 0 and out["token_leaks"] == 0
