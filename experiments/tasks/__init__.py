"""Toy tasks: generated fresh every step from a seed, each with a difficulty knob and a fixed
held-out test set; single-token r50k symbols, query last, one scored answer token.

Every task draws a batch as (idx [B,T], pos [B], ans [B], level [B]) in a *compact* vocabulary:
compact id i stands for the r50k id `task.r50k[i]` (id 0 is padding, r50k's <|endoftext|>), so a
model trained on a toy task needs only len(task.vocab) output rows instead of 50,304 (CPU speed).
`task.to_r50k(idx)` maps back, for probing a language model with its full vocabulary.

Sequences are right-padded: the scored token sits at `pos` and, under the causal mask, never
sees a pad. Difficulty is a `level` (k hops, S5 word length, ListOps nesting, operands); a
training batch mixes levels 1..max_level uniformly (a curriculum in every batch); the test set
is fixed per (task, level, size), drawn from its own seed, never from a training seed.

    from experiments.tasks import make_task
    task = make_task("khop", settings)      # knobs from config.StageConfig
    b = task.train_batch(seed=0, step=17, n=32)
    t = task.test_set()                      # the hardest in-distribution level, test_examples rows
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from config import TASK_NAMES, Settings

PAD = "<|endoftext|>"
TEST_SEED = 1_000_003  # test sets draw from default_rng([TEST_SEED, task, level]); training never uses it
DEPTH_TASKS = ("khop", "s5", "listops")
CONTROL_TASKS = ("summod", "copy")


@dataclass(frozen=True)
class Batch:
    idx: np.ndarray  # [B, T] int64 compact ids, right-padded with 0
    pos: np.ndarray  # [B] int64 index of the scored (last real) token
    ans: np.ndarray  # [B] int64 compact id of the answer
    level: np.ndarray  # [B] int64 difficulty of each row

    def __len__(self) -> int:
        return len(self.ans)


class Task:
    """One toy task. Subclasses set `name`, `knob` (the StageConfig field of the hardest level),
    `symbols()` (the r50k token strings, excluding padding) and `_generate(rng, levels)`."""

    name = ""
    knob = ""
    max_knob = 1  # largest level the generator supports

    def __init__(self, settings: Settings, level: int | None = None):
        self.settings = settings
        self.level = int(level if level is not None else settings.get(self.knob))
        assert 1 <= self.level <= self.max_knob, (self.name, self.level)

    # ---- vocabulary
    def symbols(self) -> list[str]:
        raise NotImplementedError

    @cached_property
    def vocab(self) -> list[str]:
        syms = [PAD] + self.symbols()
        assert len(set(syms)) == len(syms), f"{self.name}: duplicate symbols"
        return syms

    @cached_property
    def r50k(self) -> np.ndarray:
        """compact id -> r50k id; each symbol is checked to be exactly one r50k token."""
        from refiner_model.tokenizer import EOT, single_token

        return np.array([EOT if s == PAD else single_token(s) for s in self.vocab], dtype=np.int64)

    @cached_property
    def index(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def ids(self, strings) -> np.ndarray:
        return np.array([self.index[s] for s in strings], dtype=np.int64)

    def to_r50k(self, idx: np.ndarray) -> np.ndarray:
        return self.r50k[idx]

    def decode(self, row: np.ndarray) -> str:
        return "".join(self.vocab[i] for i in row if i != 0)

    # ---- data
    def _generate(self, rng: np.random.Generator, levels: np.ndarray) -> Batch:
        raise NotImplementedError

    def generate(self, rng: np.random.Generator, n: int, max_level: int | None = None,
                 level: int | None = None) -> Batch:
        """n rows; levels uniform on 1..max_level (default the task's hardest), or all `level`."""
        if level is not None:
            levels = np.full(n, level, dtype=np.int64)
        else:
            top = min(self.level, max_level or self.level)
            levels = rng.integers(1, top + 1, size=n)
        return self._generate(rng, levels)

    def train_batch(self, seed: int, step: int, n: int, max_level: int | None = None) -> Batch:
        """Deterministic in (seed, step): a resumed run sees the same stream."""
        rng = np.random.default_rng([seed, step, TASK_NAMES.index(self.name), 7])
        return self.generate(rng, n, max_level=max_level)

    def test_set(self, level: int | None = None, n: int | None = None) -> Batch:
        """The fixed held-out set: its own seed, the hardest level unless told."""
        level = self.level if level is None else level
        n = n or self.settings.stages.test_examples
        rng = np.random.default_rng([TEST_SEED, TASK_NAMES.index(self.name), level, self.shape_key()])
        return self.generate(rng, n, level=level)

    def shape_key(self) -> int:
        """Other knobs that change the test set (e.g. k-hop's n); part of the test seed."""
        return 0

    def floor(self, batch: Batch) -> float:
        """Accuracy of the best trivial answer (the most frequent answer in this batch)."""
        return float(np.bincount(batch.ans).max() / len(batch))


def pad_rows(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad rows of compact ids with 0; return (idx, pos of the last real token)."""
    T = max(len(r) for r in rows)
    idx = np.zeros((len(rows), T), dtype=np.int64)
    for i, r in enumerate(rows):
        idx[i, :len(r)] = r
    return idx, np.array([len(r) - 1 for r in rows], dtype=np.int64)


def make_task(name: str, settings: Settings, level: int | None = None) -> Task:
    from experiments.tasks import controls, khop, listops, s5

    classes = {"khop": khop.KHop, "s5": s5.S5, "listops": listops.ListOps, "summod": controls.SumMod,
               "copy": controls.Copy}
    if name not in classes:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(classes)}")
    return classes[name](settings, level)


def fingerprint() -> str:
    """sha256 over the task generators' source and the test seed: a changed evaluation shows."""
    from experiments.tasks import controls, khop, listops, s5

    h = hashlib.sha256(f"TEST_SEED={TEST_SEED}".encode())
    for mod in (__import__(__name__, fromlist=["x"]), khop, s5, listops, controls):
        h.update(inspect.getsource(mod).encode())
    return h.hexdigest()
