"""The S5 word problem:  [g1 … gL, =]  →  where item 1 lands after applying g1, then g2, … gL.

Each g is one of the 120 permutations of five items (r50k numbers " 100" … " 219"); the answer
is a position " 1" … " 5" (chance 20%). S5 is not solvable, so tracking the product is
NC¹-complete: a constant-depth transformer cannot do it for all L, and the depth it needs grows
with L (Liu et al. 2023, Merrill et al. 2024). Knob: L = s5_len (1 … 16).
"""

from __future__ import annotations

from itertools import permutations

import numpy as np

from experiments.tasks import Batch, Task

PERMS = np.array(list(permutations(range(5))), dtype=np.int64)  # [120, 5]: item i goes to PERMS[g, i]
ELEM_BASE = 100


class S5(Task):
    name = "s5"
    knob = "s5_len"
    max_knob = 16

    def symbols(self) -> list[str]:
        return [f" {ELEM_BASE + g}" for g in range(len(PERMS))] + [f" {i}" for i in range(1, 6)] + [" ="]

    def _generate(self, rng: np.random.Generator, levels: np.ndarray) -> Batch:
        B, Lmax = len(levels), int(levels.max())
        elem0, ans0, eq = 1, 1 + len(PERMS), 1 + len(PERMS) + 5
        g = rng.integers(0, len(PERMS), size=(B, Lmax))
        where = np.zeros(B, dtype=np.int64)  # item 1 (index 0) starts at position 0
        for j in range(Lmax):
            where = np.where(j < levels, PERMS[g[:, j], where], where)
        idx = np.zeros((B, Lmax + 1), dtype=np.int64)
        cols = np.arange(Lmax + 1)[None, :]
        idx[:, :Lmax] = np.where(cols[:, :Lmax] < levels[:, None], elem0 + g, 0)
        idx[np.arange(B), levels] = eq
        return Batch(idx, levels.astype(np.int64).copy(), ans0 + where, levels.astype(np.int64))
