"""ListOps:  " max 3 min 7 2 ] 5 ] ="  →  a digit.

Operators open a list (" max", " min", " med" = lower median, " sum" = sum mod 10), " ]" closes
it, operands are digits " 0" … " 9". Knob: nesting depth d = listops_depth (1 … 4); each list
has 2–3 operands, exactly one of them a sub-list of depth d − 1 (so length grows linearly in d,
about 4d + 1 tokens). Evaluating the innermost list first needs serial steps that grow with d;
vanilla transformers fail deeper nesting while shared-layer models with a copy gate do not
(Csordás et al. 2022).
"""

from __future__ import annotations

import numpy as np

from experiments.tasks import Batch, Task, pad_rows

OPS = (" max", " min", " med", " sum")


def _apply(op: int, args: list[int]) -> int:
    if op == 0:
        return max(args)
    if op == 1:
        return min(args)
    if op == 2:
        return sorted(args)[(len(args) - 1) // 2]
    return sum(args) % 10


class ListOps(Task):
    name = "listops"
    knob = "listops_depth"
    max_knob = 4

    def symbols(self) -> list[str]:
        return list(OPS) + [" ]", " ="] + [f" {d}" for d in range(10)]

    def _expr(self, rng: np.random.Generator, depth: int, out: list[int]) -> int:
        op0, close, digit0 = 1, 1 + len(OPS), 3 + len(OPS)
        op = int(rng.integers(0, len(OPS)))
        nargs = int(rng.integers(2, 4))
        nested = int(rng.integers(0, nargs)) if depth > 1 else -1
        out.append(op0 + op)
        vals = []
        for a in range(nargs):
            if a == nested:
                vals.append(self._expr(rng, depth - 1, out))
            else:
                v = int(rng.integers(0, 10))
                out.append(digit0 + v)
                vals.append(v)
        out.append(close)
        return _apply(op, vals)

    def _generate(self, rng: np.random.Generator, levels: np.ndarray) -> Batch:
        digit0, eq = 3 + len(OPS), 2 + len(OPS)
        rows, ans = [], []
        for d in levels:
            row: list[int] = []
            ans.append(digit0 + self._expr(rng, int(d), row))
            rows.append(row + [eq])
        idx, pos = pad_rows(rows)
        return Batch(idx, pos, np.array(ans, dtype=np.int64), levels.astype(np.int64))
