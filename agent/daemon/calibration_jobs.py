"""The idle daemon builds the gate's calibration, one independent ablation at a time, over days.

When calibrate_every_s is set and the cpu lane has nothing queued, blocked, running or retrying, the next missing
unit (experiments/calibration.py: one full ablation on seeds of its own, at the calibration spec) is queued as a job
of kind `calibrate` on the cpu lane, at a priority below every idea's. Units are taken index by index across
calibrate_grades (A/A first), so every grade's count grows together: aa-0, e5-0, …, e20-0, aa-1, … A unit is
resumable (each trained run is appended to its runs.jsonl), so a stop or a crash costs at most the run in progress,
and its job key (series, grade, index) means a unit is never queued twice.

When a calibrate job has succeeded, the summary of every unit decided so far is rebuilt and written under
docs_dir/calibration/ (summary.json in the benchmark contract, power_curve.png, summary.md) through the
DocsWriter, which commits it as refinery when docs_dir is in a git repository.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import config
from jobqueue.models import LIVE, State

log = logging.getLogger("refinery.calibration")

KIND = "calibrate"
LANE = "cpu"
PRIORITY = -20  # below an idea's stages (0) and the noise floor (-10)
DEFAULT_SPEC = config.ROOT / "experiments" / "specs" / "calibration.toml"


def spec_path(settings: config.Settings) -> Path:
    p = Path(settings.daemon.calibrate_spec) if settings.daemon.calibrate_spec else DEFAULT_SPEC
    return p if p.is_absolute() else config.ROOT / p


def unit_argv(spec: Path, grade: str, index: int, units_dir: Path) -> list[str]:
    return ["{python}", "-m", "experiments.calibration", "unit", "--spec", str(spec), "--grade", grade, "--index",
            str(index), "--units-dir", str(units_dir), "--run-dir", "{run_dir}", "--docs", ""]


class CalibrationScheduler:
    def __init__(self, settings: config.Settings, store, kv, docs):
        self.settings, self.store, self.kv, self.docs = settings, store, kv, docs
        self.units_dir = settings.runs_path / "calibration"
        self._next = 0.0

    def step(self, now: float | None = None) -> None:
        d = self.settings.daemon
        now = time.time() if now is None else now
        if not d.calibrate_every_s or now < self._next:
            return
        self._next = now + min(30.0, d.calibrate_every_s)
        self._publish()
        last = self.kv.get("calibrate.last") or {}
        if now - float(last.get("at", 0)) < d.calibrate_every_s:
            return
        counts = self.store.counts().get(LANE, {})
        if any(counts.get(s, 0) for s in LIVE):
            return
        nxt = self.next_unit()
        if nxt is None:
            return
        grade, index, series = nxt
        spec = spec_path(self.settings)
        job = self.store.enqueue(None, KIND, LANE, {"argv": unit_argv(spec, grade, index, self.units_dir),
                                                    "calibrate": {"grade": grade, "index": index, "series": series,
                                                                  "spec": str(spec)}},
                                 priority=PRIORITY, key=f"calibrate-{series}-{grade}-{index}")
        self.kv.put("calibrate.last", {"at": now, "job": job.id, "grade": grade, "index": index})
        self.kv.put("calibrate.queued", {**(self.kv.get("calibrate.queued") or {}),
                                         f"calibrate-{series}-{grade}-{index}": job.id})
        log.info("calibration: unit %s-%d of series %s queued as job %d on the cpu lane", grade, index, series, job.id)

    def settings_of_series(self) -> config.Settings:
        from experiments.spec import spec_from_file

        return spec_from_file(spec_path(self.settings)).settings

    def next_unit(self) -> tuple[str, int, str] | None:
        """(grade, index, series) of the first unit neither decided nor queued; None when all are."""
        from experiments import calibration as cal

        s = self.settings_of_series()
        series = cal.series_key(s)
        done = {(u["grade"], u["index"]) for u in cal.load_units(s, self.units_dir)}
        queued = self.kv.get("calibrate.queued") or {}
        for i in range(self.settings.daemon.calibrate_per_grade):
            for g in self.settings.daemon.calibrate_grades:
                if (g, i) in done:
                    continue
                if f"calibrate-{series}-{g}-{i}" in queued:
                    continue  # queued, running, or failed for good (`refinery queue ls` says which)
                return g, i, series
        return None

    def _publish(self) -> None:
        """After a calibrate job succeeded: docs_dir/calibration/ from every unit decided so far."""
        jobs = [j for j in self.store.list(state=State.SUCCEEDED, limit=50) if j.kind == KIND]
        fresh = [j for j in jobs if not self.kv.get(f"calibrated:{j.id}")]
        if not fresh:
            return
        from experiments import calibration as cal

        s = self.settings_of_series()
        units = cal.load_units(s, self.units_dir)
        stage = self.units_dir / "publish"
        stage.mkdir(parents=True, exist_ok=True)
        out = cal.report(s, units, stage / "calibration.json", stage)
        files = {"calibration/summary.json": (stage / "summary.json").read_bytes(),
                 "calibration/power_curve.png": (stage / "power_curve.png").read_bytes(),
                 "calibration/summary.md": cal.summary_markdown(out, str(spec_path(self.settings).name)).encode()}
        self.docs.write(files, f"refinery: calibration, {len(units)} independent ablations")
        for j in fresh:
            self.kv.put(f"calibrated:{j.id}", {"at": time.time(), "units": len(units)})
        log.info("calibration: docs/calibration rebuilt from %d independent ablations", len(units))
