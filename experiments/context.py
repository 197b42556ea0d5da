"""What a running stage holds: its settings, run directory, spec, seeds, a stop flag and a progress hook.

Shared by the stage entry point (stage.py) and the stages themselves (stages_impl.py, lm.py).
"""

from __future__ import annotations

from collections.abc import Callable

from config import Settings
from experiments.runs import Run

REPLICATION_SEED_OFFSET = 10_000  # replication seeds never overlap the ablation's (base … base + 2n)


class Stopped(Exception):  # noqa: N818 - a control-flow signal, not an error
    """SIGTERM arrived: the stage saved what it had and exits 75 (resume me)."""


class Ctx:
    """What a stage needs: settings, the run directory, a stop flag and a progress hook."""

    def __init__(self, settings: Settings, run: Run, spec: dict, prereg: dict | None = None,
                 seed_base: int | None = None, progress: Callable[[float, float, str], None] | None = None,
                 issue: int | None = None, control: dict | None = None):
        self.settings, self.run, self.spec, self.prereg = settings, run, spec, prereg
        self.control = control  # the ablation's control arm from another commit (experiments/control_arm.py)
        self.seed_base = settings.train.seed if seed_base is None else seed_base
        self.issue = issue
        self.stop_requested = False
        self._progress = progress
        self.done_units, self.total_units = 0.0, 1.0

    def check_stop(self) -> None:
        if self.stop_requested:
            raise Stopped()

    def tick(self, done: float, what: str = "") -> None:
        self.done_units = done
        self.run.progress(done, self.total_units, what)
        if self._progress:
            self._progress(done, self.total_units, what)

def seeds_for(ctx: Ctx, n: int, offset: int = 0) -> list[int]:
    return seeds_for_base(ctx.seed_base + offset, n)


def seeds_for_base(first: int, n: int) -> list[int]:
    """The stage's seed rule: n consecutive seeds from `first` (experiments/verify.py re-derives with it)."""
    return [first + i for i in range(n)]
