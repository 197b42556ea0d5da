"""Pointer chasing (k-hop), one token per pair:  [k, p1 … pn, x]  →  f^k(x).

f is a random permutation of n symbols (" a" … " p"); pair token p_i stands for "a_i → f(a_i)"
(the r50k numbers " 100" … " 355", one per ordered pair), the pairs come shuffled, the hop
count k is a digit token first, the start symbol x last. Format matters: with each pair as two
tokens a d = 64 model stayed at chance for k = 1 after 8,000 steps; with one token per pair it
learns k = 1 in about 1,000 steps.

Why depth should help: under the causal mask one attention layer can follow one pointer (x
attends to the pair whose source is x), so k hops want about k attention layers; pointer
doubling needs each pair to see its successor pair, which the causal mask hides half the time.

Copy floor: answering x scores P(f^k(x) = x) = (number of divisors d of k with d ≤ n)/n for a
uniform permutation (each cycle length d ≤ n holds one point in expectation): 0.375 for k = 4, n = 8.
"""

from __future__ import annotations

import numpy as np

from experiments.tasks import Batch, Task

LETTERS = [" " + c for c in "abcdefghijklmnop"]  # 16 single r50k tokens
PAIR_BASE = 100  # " 100" … " 355": every number below 362 is one r50k token


class KHop(Task):
    name = "khop"
    knob = "khop_k"
    max_knob = 8

    @property
    def n(self) -> int:
        return self.settings.stages.khop_n

    def symbols(self) -> list[str]:
        n = self.n
        hops = [f" {k}" for k in range(1, self.max_knob + 1)]  # " 1" … " 8"
        pairs = [f" {PAIR_BASE + a * n + b}" for a in range(n) for b in range(n)]
        return LETTERS[:n] + hops + pairs

    def shape_key(self) -> int:
        return self.n

    def _generate(self, rng: np.random.Generator, levels: np.ndarray) -> Batch:
        B, n = len(levels), self.n
        letter0, hop0 = 1, 1 + n  # compact ids: pad, letters, hop digits, pairs
        pair0 = hop0 + self.max_knob
        perm = rng.permuted(np.tile(np.arange(n), (B, 1)), axis=1)  # f: [B, n]
        order = rng.permuted(np.tile(np.arange(n), (B, 1)), axis=1)  # shown order of the pairs
        src = order
        dst = np.take_along_axis(perm, src, axis=1)
        x = rng.integers(0, n, size=B)
        y = x.copy()
        rows = np.arange(B)
        for j in range(int(levels.max())):  # y = f^k(x), per row k = levels
            y = np.where(j < levels, perm[rows, y], y)
        idx = np.concatenate([(hop0 + levels - 1)[:, None], pair0 + src * n + dst, (letter0 + x)[:, None]], axis=1)
        pos = np.full(B, n + 1, dtype=np.int64)
        return Batch(idx.astype(np.int64), pos, (letter0 + y).astype(np.int64), levels.astype(np.int64))

    def copy_floor(self, k: int) -> float:
        """P(f^k(x) = x): the score of answering x."""
        return sum(1 for d in range(1, self.n + 1) if k % d == 0) / self.n
