"""Controls, where constant depth suffices: an effect of the loop here means the instrument is broken.

- summod:  [d1 … dL, =] → (Σ d) mod p, digits " 0" … " 9", answers " 0" … " {p−1}". Knob: L.
  Abelian: one attention layer can average, an MLP reads the residue (no serial composition).
- copy (lookup): [1, p1 … pn, x] → f(x), k-hop's one-token-per-pair format with k = 1: one attention hop
  by content. (Positional copy, "[s1 … sn, i] → s_i", was not learned at the tiny preset: RoPE makes
  absolute-index retrieval hard, so it measured the model's position handling rather than nothing.)
"""

from __future__ import annotations

import numpy as np

from experiments.tasks import Batch, Task
from experiments.tasks.khop import KHop


class SumMod(Task):
    name = "summod"
    knob = "summod_len"
    max_knob = 64

    def symbols(self) -> list[str]:
        p = self.settings.stages.summod_p
        answers = [f" {v}" for v in range(10, p)]  # " 0" … " 9" are the digits already
        return [f" {d}" for d in range(10)] + answers + [" ="]

    def shape_key(self) -> int:
        return self.settings.stages.summod_p

    def _generate(self, rng: np.random.Generator, levels: np.ndarray) -> Batch:
        p = self.settings.stages.summod_p
        B, Lmax = len(levels), int(levels.max())
        eq = self.vocab_size - 1
        d = rng.integers(0, 10, size=(B, Lmax))
        live = np.arange(Lmax)[None, :] < levels[:, None]
        total = np.where(live, d, 0).sum(axis=1) % p
        idx = np.zeros((B, Lmax + 1), dtype=np.int64)
        idx[:, :Lmax] = np.where(live, 1 + d, 0)
        idx[np.arange(B), levels] = eq
        return Batch(idx, levels.astype(np.int64).copy(), (1 + total).astype(np.int64), levels.astype(np.int64))


class Copy(KHop):
    """Lookup: the k-hop format with k = 1 always, [1, p1 … pn, x] → f(x). One attention hop suffices."""

    name = "copy"

    def __init__(self, settings, level: int | None = None):
        super().__init__(settings, 1)
