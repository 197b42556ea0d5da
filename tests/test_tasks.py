"""Toy tasks: determinism, single-token symbols, answers, held-out sets.

Run: .venv/bin/python -m pytest tests/test_tasks.py
"""

from __future__ import annotations

from itertools import permutations

import numpy as np
import pytest

import config
from experiments.tasks import DEPTH_TASKS, TEST_SEED, fingerprint, make_task
from refiner_model.tokenizer import decode, encode

ALL = ("khop", "s5", "listops", "summod", "copy")


@pytest.fixture(scope="module")
def settings():
    return config.load({})


@pytest.mark.parametrize("name", ALL)
def test_symbols_are_single_r50k_tokens_and_distinct(settings, name):
    task = make_task(name, settings)
    ids = task.r50k
    assert len(set(ids.tolist())) == task.vocab_size
    for s, i in zip(task.vocab[1:], ids[1:]):
        assert encode(s) == [int(i)] and decode([int(i)]) == s


@pytest.mark.parametrize("name", ALL)
def test_stream_is_deterministic_and_fresh_per_step(settings, name):
    task = make_task(name, settings)
    a, b = task.train_batch(3, 10, 64), task.train_batch(3, 10, 64)
    assert np.array_equal(a.idx, b.idx) and np.array_equal(a.ans, b.ans)
    c = task.train_batch(3, 11, 64)
    assert not np.array_equal(a.idx, c.idx)
    assert a.level.min() >= 1 and a.level.max() <= task.level
    # the scored token is the last real one: nothing but padding after it, the query last
    for row, p in zip(a.idx, a.pos):
        assert row[p] != 0 and (row[p + 1:] == 0).all()


@pytest.mark.parametrize("name", ALL)
def test_test_set_fixed_large_and_not_a_training_batch(settings, name):
    task = make_task(name, settings)
    t1, t2 = task.test_set(), task.test_set()
    assert len(t1) >= 2000 and np.array_equal(t1.idx, t2.idx)
    assert (t1.level == task.level).all()
    train = task.train_batch(TEST_SEED, 0, 2000)
    assert not np.array_equal(train.idx[:50, :3], t1.idx[:50, :3])
    assert task.floor(t1) < 0.5  # no trivial answer solves it


def _khop_answer(row_syms, n):
    k = int(row_syms[0])
    f = {}
    for tok in row_syms[1:-1]:
        v = int(tok) - 100
        f[v // n] = v % n
    x = "abcdefghijklmnop".index(row_syms[-1])
    for _ in range(k):
        x = f[x]
    return " " + "abcdefghijklmnop"[x]


def test_khop_answers_by_hand(settings):
    task = make_task("khop", settings)
    b = task.generate(np.random.default_rng(0), 200)
    for row, a in zip(b.idx, b.ans):
        syms = [task.vocab[i].strip() for i in row]
        assert _khop_answer(syms, task.n) == task.vocab[a]
    # one token per pair: [k, p1 … pn, x]
    assert b.idx.shape[1] == task.n + 2


def test_khop_copy_floor_matches_theory(settings):
    s = settings.replace({"khop_k": 4, "khop_n": 8})
    task = make_task("khop", s)
    t = task.test_set()
    x = t.idx[:, -1]  # answering x
    assert task.copy_floor(4) == 0.375
    assert abs((x == t.ans).mean() - 0.375) < 0.04


def test_s5_answers_by_hand(settings):
    task = make_task("s5", settings)
    perms = list(permutations(range(5)))
    b = task.generate(np.random.default_rng(1), 100)
    for row, a, lv in zip(b.idx, b.ans, b.level):
        where = 0
        for tok in row[:lv]:
            where = perms[int(task.vocab[tok]) - 100][where]
        assert task.vocab[a] == f" {where + 1}"


def test_listops_answers_by_eval(settings):
    task = make_task("listops", settings.replace({"listops_depth": 4}))
    ops = {"max": max, "min": min, "med": lambda a: sorted(a)[(len(a) - 1) // 2], "sum": lambda a: sum(a) % 10}
    b = task.generate(np.random.default_rng(2), 100)
    for row, a, p in zip(b.idx, b.ans, b.pos):
        toks = [task.vocab[i].strip() for i in row[:p]]
        stack: list[list] = []
        for t in toks:
            if t in ops:
                stack.append([t])
            elif t == "]":
                op, *args = stack.pop()
                v = ops[op](args)
                if stack:
                    stack[-1].append(v)
            else:
                stack[-1].append(int(t))
        assert task.vocab[a] == f" {v}"


def test_controls(settings):
    sm = make_task("summod", settings)
    b = sm.generate(np.random.default_rng(3), 50)
    for row, a, lv in zip(b.idx, b.ans, b.level):
        assert int(sm.vocab[a]) == sum(int(sm.vocab[i]) for i in row[:lv]) % settings.stages.summod_p
    cp = make_task("copy", settings.replace({"khop_k": 4}))
    b = cp.generate(np.random.default_rng(4), 50)
    assert (b.level == 1).all() and cp.level == 1
    for row, a in zip(b.idx, b.ans):
        assert _khop_answer([cp.vocab[i].strip() for i in row], cp.n) == cp.vocab[a]


def test_depth_tasks_have_levels_and_fingerprint_is_stable(settings):
    assert set(DEPTH_TASKS) <= set(config.TASK_NAMES)
    assert fingerprint() == fingerprint() and len(fingerprint()) == 64


def test_level_cap_scales_to_rbar_so_extra_passes_must_hold(settings):
    """A batch at depth r holds levels up to ceil(level·r/r̄); at r ≥ r̄ every level, so for k-hop a draw of
    r = 4 with k = 2 trains the loop to keep its answer for the two passes it does not need."""
    from experiments.train import level_cap

    s = settings.replace({"khop_k": 2, "r_min": 1, "r_max": 4, "r_mean": 2})
    khop = make_task("khop", s)
    assert [level_cap(khop, r, s) for r in (1, 2, 3, 4)] == [1, None, None, None]
    deep = settings.replace({"khop_k": 4, "r_min": 1, "r_max": 4, "r_mean": 4})
    assert [level_cap(make_task("khop", deep), r, deep) for r in (1, 2, 3, 4)] == [1, 2, 3, None]
    assert level_cap(khop, 1, s.replace({"level_by_depth": False})) is None
    assert level_cap(khop, 1, s.replace({"arch": "stack"})) is None
    batch = khop.train_batch(seed=1, step=0, n=256, max_level=level_cap(khop, 1, s))
    assert set(batch.level.tolist()) == {1}
