"""The stages: smoke, ablation (and its replication on fresh seeds) and full. One entry point for the queue:

    python -m experiments.stage {smoke|ablation|replication|full} --spec SPEC.json|SPEC.toml --run-dir DIR [--job-id N]

writes DIR/config.json, DIR/log.txt (preamble first), DIR/metrics.jsonl, DIR/progress.json, DIR/plots/*.png,
DIR/ckpt/ and, LAST and atomically, DIR/result.json = {verdict, reason, stage, evidence, figures, wall_s, ...}.
Exit 0 when result.json holds a verdict (PASS, FAIL, EXTEND, INCONCLUSIVE); EX_ERROR (3) when it holds ERROR (a fault of
the run, e.g. out of memory, a full disk or a corrupt checkpoint, never counted against the idea; the
queue retries it with back-off); 75 after SIGTERM (the work done so far is
kept: finished sub-runs in DIR/done.jsonl, the running full-stage run in DIR/ckpt/; rerun to resume).

SPEC.json is either {"toml": "<spec text>"} or {"spec": {flat overrides}}, optionally with "prereg",
"issue", "seed_base" (replication: fresh seeds), "control" (the ablation's control arm from another commit:
experiments/control_arm.py) — or just the flat overrides themselves.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from config import SECRET_FIELDS, RefineryError, Settings
from experiments.context import Ctx, Stopped
from experiments.runs import Run
from experiments.spec import SpecError, SpecResult, parse_spec

STAGES = ("smoke", "ablation", "replication", "full")
STAGE_MODULE = "experiments.stage"  # the entry point stage_argv names (the pipeline tests put a scripted stand-in here)
EX_TEMPFAIL = os.EX_TEMPFAIL  # 75: stopped warm, resume me
EX_ERROR = 3  # result.json says ERROR: the queue retries the job with back-off (not a verdict on the idea)


def stage_argv(stage: str, spec_file: str | Path, *extra: str) -> list[str]:
    """The one command line of a stage child, as the queue stores it: the runner fills in {python} (its own
    interpreter), {run_dir} and {job_id}. `extra`: further options (ablation: --extend-from DIR)."""
    assert stage in STAGES, stage
    return ["{python}", "-m", STAGE_MODULE, stage, "--spec", str(spec_file), "--run-dir", "{run_dir}",
            "--job-id", "{job_id}", *extra]


# --------------------------------------------------------------------------- spec loading
def load_spec(path: str | Path | None, base: Settings | None = None) -> tuple[SpecResult, dict]:
    """(parsed spec, extra fields of a JSON spec: issue, seed_base, ...)."""
    if path is None:
        return parse_spec("", base=base), {}
    text = Path(path).read_text()
    if str(path).endswith(".toml"):
        return parse_spec(text, base=base), {}
    doc = json.loads(text)
    extra = {k: doc[k] for k in ("issue", "seed_base", "prereg", "arms", "control") if k in doc}
    if "toml" in doc:
        res = parse_spec(doc["toml"], base=base)
    else:
        flat = doc.get("spec", {k: v for k, v in doc.items() if k not in extra and k != "spec"})
        import tomllib  # re-serialise the flat dict as TOML so one parser checks both forms
        lines = [f"{k} = {json.dumps(v)}" for k, v in flat.items()]
        try:
            tomllib.loads("\n".join(lines))
            res = parse_spec("\n".join(lines), base=base)
        except tomllib.TOMLDecodeError:
            res = parse_spec("", base=base)
            res.ok = False
            res.errors.append(SpecError(None, "spec", "not a flat dict of config keys", 'write {"key": value, ...}'))
    if res.prereg is None and isinstance(extra.get("prereg"), dict):
        res.prereg = extra["prereg"]
    return res, extra


# --------------------------------------------------------------------------- errors
def classify(exc: BaseException) -> str:
    """The ERROR reason for a fault of the run (never the idea's): out of memory, disk, checkpoint, crash."""
    import torch

    from experiments.corpus import CorpusError
    from refiner_model.checkpoint import CheckpointError
    from refiner_model.memory import MemoryBudgetError
    from refiner_model.precision import SkippedStepsError

    msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in msg.lower():
        return f"out of memory: {type(exc).__name__}: {msg}"
    if isinstance(exc, MemoryBudgetError):
        return f"out of memory (refused before starting): {msg}"
    if isinstance(exc, SkippedStepsError):
        return f"skipped steps past the limit: {msg}"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full: {msg}"
    if isinstance(exc, CheckpointError):
        return f"checkpoint missing or corrupt: {msg}"
    if isinstance(exc, CorpusError):
        return f"corpus unavailable: {msg}"
    return f"crash: {type(exc).__name__}: {msg}"


def check_disk(run: Run, settings: Settings) -> None:
    import shutil

    free = shutil.disk_usage(run.path).free / 1e9
    if free < settings.hardware.min_free_disk_gb:
        raise OSError(errno.ENOSPC, f"{free:.2f} GB free on {run.path} < min_free_disk_gb = "
                      f"{settings.hardware.min_free_disk_gb:g}")


# --------------------------------------------------------------------------- the stages
def run_stage(stage: str, ctx: Ctx) -> dict[str, Any]:
    from experiments import stages_impl

    fn = {"smoke": stages_impl.smoke, "ablation": stages_impl.ablation,
          "replication": stages_impl.replication, "full": stages_impl.full}[stage]
    return fn(ctx)


def execute(stage: str, settings: Settings, spec: dict, run_dir: Path | str, prereg: dict | None = None,
            seed_base: int | None = None, job_id: int | None = None, issue: int | None = None,
            progress=None, echo: bool = False, install_signals: bool = False,
            control: dict | None = None) -> tuple[int, dict[str, Any]]:
    """Run one stage into run_dir; returns (exit code, result). The result is also in run_dir/result.json
    unless the stage was stopped (exit 75)."""
    assert stage in STAGES, stage
    run = Run(run_dir, echo=echo)
    ctx = Ctx(settings, run, spec, prereg, seed_base, progress, issue, control)
    if install_signals:
        def on_term(signum, frame):
            ctx.stop_requested = True
            run.log(f"signal {signum}: warm stop requested")
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
    t0 = time.time()
    result: dict[str, Any]
    try:
        import torch

        if settings.stages.stage_threads:
            torch.set_num_threads(settings.stages.stage_threads)
        from refiner_model.precision import Precision

        prec = Precision.from_settings(settings)
        # every effective setting the stage runs with (the daemon's, passed by the queue's runner, under the
        # spec) and where each came from; never a secret
        config_doc = {"stage": stage, "job_id": job_id, "issue": issue, "spec": spec, "prereg": prereg,
                      "seed_base": ctx.seed_base,
                      "settings": {k: v for k, v in settings.flat().items() if k not in SECRET_FIELDS},
                      "settings_sources": {k: v for k, v in settings.sources if k not in SECRET_FIELDS}}
        from experiments.runs import write_json_atomic

        write_json_atomic(run.path / "config.json", config_doc)
        head = run.preamble(stage, spec, {"job_id": job_id, "device": str(prec.device), "dtype": str(prec.dtype),
                                          "dtype_reason": prec.reason, "torch_threads": torch.get_num_threads()})
        check_disk(run, settings)
        result = run_stage(stage, ctx)
        run.progress(ctx.total_units, ctx.total_units, "done", force=True)  # not a throttled tick's stale count
        result["run"] = {k: head[k] for k in ("git_sha", "dirty", "dirty_diff_sha256", "versions",
                                              "evaluation_fingerprint")}
    except Stopped:
        run.log(f"stopped warm after {time.time() - t0:.1f} s; rerun the same command to resume")
        return EX_TEMPFAIL, {"verdict": None, "stopped": True}
    except Exception as e:  # noqa: BLE001 - every fault becomes an ERROR verdict with its reason
        run.log("ERROR " + classify(e) + "\n" + traceback.format_exc())
        result = {"verdict": "ERROR", "reason": classify(e), "evidence": {"exception": type(e).__name__}}
    result.update(stage=stage, wall_s=round(time.time() - t0, 3), job_id=job_id)
    result.setdefault("figures", {})
    try:
        run.write_result(result)
    except OSError as e:
        print(f"refinery: cannot write result.json: {e}", file=sys.stderr)
        return 1, result
    run.log(f"verdict {result['verdict']}: {result.get('reason', '')}")
    return 0, result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.stage", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=STAGES)
    ap.add_argument("--spec", help="SPEC.json or SPEC.toml (default: the configured defaults)")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--job-id", type=int)
    ap.add_argument("--seed-base", type=int, help="first seed (default train.seed; replication adds 10,000)")
    args = ap.parse_args(argv)
    try:
        res, extra = load_spec(args.spec)
    except (OSError, ValueError) as e:
        res, extra = None, {"error": f"cannot read spec {args.spec}: {e}"}
    if res is None or not res.ok:
        run = Run(args.run_dir)
        reason = extra.get("error") or "invalid spec: " + "; ".join(e.text() for e in res.errors)
        run.log(reason)
        run.write_result({"verdict": "ERROR", "reason": reason, "stage": args.stage, "evidence": {},
                          "figures": {}, "wall_s": 0.0, "job_id": args.job_id})
        return EX_ERROR
    seed_base = args.seed_base if args.seed_base is not None else extra.get("seed_base")
    # under the queue, stderr already goes to log.txt: echoing the log there would write every line twice
    code, result = execute(args.stage, res.settings, res.spec, args.run_dir, prereg=res.prereg,
                           seed_base=seed_base, job_id=args.job_id, issue=extra.get("issue"),
                           echo=os.environ.get("QUEUE_RUN_DIR") is None, install_signals=True,
                           control=extra.get("control"))
    if code == 0 and result.get("verdict") == "ERROR":
        return EX_ERROR
    return code


if __name__ == "__main__":
    # run the importable module, not this __main__ copy, so Stopped and friends are one class everywhere
    from experiments.stage import main as _main
    try:
        rc = _main()
        if rc == EX_TEMPFAIL:  # warm stop: the checkpoint is on disk; skip torch's slow interpreter teardown
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)
        sys.exit(rc)
    except RefineryError as e:
        print(f"refinery: {e}", file=sys.stderr)
        sys.exit(2)
