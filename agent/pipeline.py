"""Stage chaining: what happens to an idea after each stage is decided.

    smoke PASS        → ablation
    ablation PASS     → replication on fresh seeds (a PASS is real only once it replicates)
    ablation EXTEND   → extend: more seeds, once, re-tested at α/2
    extend PASS       → replication
    replication PASS  → full (after a 👍 from a writer when full_requires_approval)
    full PASS         → passed; a model card when it beats the champion
    any FAIL          → killed: finding, graveyard line, refinery:killed
    ERROR / crash     → the queue retries with back-off; when tries run out, refinery:failed
                        (a fault of the run, never a verdict on the idea)

Every step is idempotent: the next job is enqueued under a unique key, every comment and label
goes through the outbox under a unique key, documents are rewritten only when they change. A
restart between any two steps therefore neither loses nor repeats a stage; `advance` simply
runs again for any decided job not yet marked advanced.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import config
from agent import report
from agent.intake import stage_argv
from agent.outbox import Outbox, runs_dir

log = logging.getLogger("refinery.pipeline")

STAGE_KIND = {"smoke": "smoke", "ablation": "ablation", "extend": "ablation", "replication": "ablation",
              "full": "full"}
PIPELINE_STAGES = tuple(STAGE_KIND)


def next_stage(stage: str, verdict: str) -> str | None:
    """The decision table above, for the verdicts the gate gives. None: the idea is decided."""
    table = {("smoke", "PASS"): "ablation", ("ablation", "PASS"): "replication", ("ablation", "EXTEND"): "extend",
             ("extend", "PASS"): "replication", ("replication", "PASS"): "full"}
    return table.get((stage, verdict))


class Pipeline:
    def __init__(self, settings: config.Settings, store, outbox: Outbox, kv, tracker=None):
        self.settings, self.store, self.outbox, self.kv, self.tracker = settings, store, outbox, kv, tracker
        self.docs = report.DocsWriter(settings)

    # ------------------------------------------------------------------ the loop's entry point
    def step(self, now: float | None = None) -> int:
        """Advance every decided pipeline job not yet advanced; edit progress comments. Returns jobs advanced."""
        now = time.time() if now is None else now
        done = 0
        for job in self.store.list(limit=10_000):
            if job.issue is None or job.payload.get("stage") not in PIPELINE_STAGES:
                continue
            if job.state == "running":
                self._progress(job, now)
            elif job.state in ("succeeded", "failed") and not self.kv.get(f"advanced:{job.id}"):
                try:
                    self.advance(job)
                    done += 1
                except config.RefineryError as e:  # a docs commit refused, say: retried next pass
                    log.warning("pipeline: job %d not advanced yet: %s", job.id, e)
        self._approvals()
        return done

    # ------------------------------------------------------------------ one decided job
    def advance(self, job) -> None:
        stage, n = job.payload["stage"], job.issue
        if job.state == "failed":
            self.outbox.comment(n, f"i{n}/j{job.id}/{stage}/failed", (
                f"**{report.STAGE_TITLE.get(stage, stage)}: failed** (an error of the run, not a verdict on the idea) "
                f"after {job.attempt - job.attempt_base} attempt(s).\n\n```\n{(job.error or '')[-3000:]}\n```\n\n"
                f"Run directory: `{job.run_dir}`. `refinery queue retry {job.id}` runs it again."), job.run_dir)
            self.outbox.status(n, f"i{n}/j{job.id}/{stage}/status-failed", "failed")
            self.kv.put(f"advanced:{job.id}", {"at": time.time(), "state": "failed"})
            return
        result = job.result or {}
        verdict = result.get("verdict") or "ERROR"
        nxt = next_stage(stage, verdict)
        if stage == "full" and verdict == "PASS":
            nxt = None
        finding = None
        if verdict in ("PASS", "FAIL") and stage != "smoke" or verdict == "FAIL":
            finding = self._finding(job, stage, result)
        if verdict == "FAIL" or (stage == "extend" and verdict != "PASS"):
            self._graveyard(job, result, finding)
        next_text = self._enqueue_next(job, nxt) if nxt else self._final_text(stage, verdict)
        body = report.result_comment(
            issue=n, stage=stage, job_id=job.id, result=result, spec=job.payload.get("spec", {}),
            prereg=job.payload.get("prereg"), ledger=self.ledger(n), run_dir=self._display(job.run_dir),
            next_step=next_text, plots=self._plots(job), finding=finding, noise=self._noise_units(result))
        self.outbox.comment(n, f"i{n}/j{job.id}/{stage}/result", body, job.run_dir)
        status = ("queued" if nxt else "passed" if verdict == "PASS" else "killed" if verdict in ("FAIL", "EXTEND")
                  else "failed")
        self.outbox.status(n, f"i{n}/j{job.id}/{stage}/status-{status}", status)
        if stage == "full" and verdict == "PASS":
            self._maybe_champion(job, result)
        self.kv.put(f"advanced:{job.id}", {"at": time.time(), "verdict": verdict, "next": nxt})

    def _final_text(self, stage: str, verdict: str) -> str:
        if verdict == "PASS":
            return "The idea passed every stage; the full run's weights are kept."
        if verdict == "ERROR":
            return "The run reported an ERROR (a fault of the run, not a verdict): fix and `refinery queue retry`."
        return "The idea is killed; its line is in the ROADMAP graveyard."

    def _enqueue_next(self, job, nxt: str) -> str:
        n, p = job.issue, dict(job.payload)
        extra: list[str] = []
        if nxt == "extend":
            extra = ["--extend-from", job.run_dir or ""]
        argv = stage_argv("replication" if nxt == "replication" else "ablation" if nxt == "extend" else nxt,
                          p["spec_file"]) + extra
        p.update(stage=nxt, argv=argv, previous_job=job.id)
        base_key = (job.dedupe or "").split(":", 2)[-1] or f"j{job.id}"
        key = base_key.split("/")[0] + "/" + nxt
        if nxt == "full" and self.settings.daemon.full_requires_approval:
            self.kv.put(f"approval:{n}", {"job": job.id, "payload": p, "key": key, "lane": str(job.lane.value)})
            return ("The full run waits for approval: a person with write access reacts 👍 to this comment.")
        nj = self.store.enqueue(n, STAGE_KIND[nxt], job.lane, p, depends_on=job.id, key=key)
        return f"{report.STAGE_TITLE[nxt]} queued as job {nj.id} on the {job.lane.value} lane."

    def _approvals(self) -> None:
        """full_requires_approval: start a waiting full run once a writer reacted 👍 to the result comment."""
        if not self.settings.daemon.full_requires_approval or self.tracker is None:
            return
        for key in self.kv.keys("approval:") if hasattr(self.kv, "keys") else []:
            want = self.kv.get(key)
            if not want or want.get("done"):
                continue
            n = int(key.split(":")[1])
            approvers = self.tracker.approvals(n, f"i{n}/j{want['job']}/replication/result")
            if approvers:
                nj = self.store.enqueue(n, "full", want["lane"], want["payload"], depends_on=want["job"],
                                        key=want["key"])
                self.outbox.comment(n, f"i{n}/j{nj.id}/full/approved",
                                    f"Approved by @{approvers[0]}: full training queued as job {nj.id}.")
                self.kv.put(key, {**want, "done": True})

    # ------------------------------------------------------------------ documents
    def _finding(self, job, stage: str, result: dict) -> str:
        n, date = job.issue, report.today()
        title = job.payload.get("title") or f"issue {n}"
        name = f"findings/{date}-i{n}-{report.slugify(stage + '-' + title)}.md"
        existing = self.kv.get(f"finding:{job.id}")
        if existing:
            return existing
        text = report.finding_markdown(date=date, issue=n, title=title, stage=stage, result=result,
                                       spec=job.payload.get("spec", {}), prereg=job.payload.get("prereg"),
                                       run_dir=self._display(job.run_dir), plots=self._plots(job, rel_to_docs=True),
                                       issue_url=job.payload.get("url"))
        files = {name: text.encode()}
        for src, dst in self._plot_files(job, date):
            files[dst] = src.read_bytes()
        self.docs.write(files, f"refinery: {result.get('verdict')} for #{n} ({stage})")
        rel = str(Path(self.settings.daemon.docs_dir) / name)
        self.kv.put(f"finding:{job.id}", rel)
        return rel

    def _graveyard(self, job, result: dict, finding: str | None) -> None:
        n = job.issue
        if self.kv.get(f"graveyard:{n}"):
            return
        finding_rel = str(Path(finding).relative_to(self.settings.daemon.docs_dir)) if finding else ""
        line = report.graveyard_line(date=report.today(), issue=n, title=job.payload.get("title") or f"issue {n}",
                                     why=f"{job.payload['stage']} {result.get('verdict')}: {result.get('reason', '')}",
                                     finding_rel=finding_rel)
        self.docs.write({"ROADMAP.md": self.docs.roadmap_with(line)}, f"refinery: #{n} to the graveyard")
        deltas = {t: v.get("delta") for t, v in ((result.get("evidence") or {}).get("tasks") or {}).items()
                  if isinstance(v, dict)}
        self.kv.put(f"graveyard:{n}", {"date": report.today(), "spec": job.payload.get("spec", {}),
                                       "deltas": deltas, "finding": finding})

    def _maybe_champion(self, job, result: dict) -> None:
        loss = (result.get("evidence") or {}).get("mean_candidate")
        best = self.kv.get("champion") or {}
        if loss is None or (best.get("val_loss") is not None and loss >= best["val_loss"]):
            return
        run = Path(job.run_dir or "")
        ckpts = sorted(run.glob("**/ckpt/*.pt")) + sorted(run.glob("**/*.pt"))
        manifest = runs_dir(self.settings) / "corpus" / "manifest.json"
        name = f"refiner-i{job.issue}-j{job.id}"
        card = report.registry_card(name=name, date=report.today(), issue=job.issue, spec=job.payload.get("spec", {}),
                                    result=result, ckpt=ckpts[0] if ckpts else None,
                                    data_manifest=json.loads(manifest.read_text()) if manifest.exists() else None,
                                    archive_dir=self.settings.daemon.archive_dir)
        self.docs.write({f"registry/{name}.md": card.encode()}, f"refinery: new champion {name}")
        self.kv.put("champion", {"val_loss": loss, "name": name, "job": job.id, "run_dir": job.run_dir})

    # ------------------------------------------------------------------ helpers
    def ledger(self, issue: int) -> dict[str, Any]:
        """Device-minutes per lane, wall time and stages run, for one idea."""
        dev: dict[str, float] = {}
        stages, first, last = [], None, None
        for j in self.store.jobs_for_issue(issue):
            if j.started_at:
                end = j.finished_at or time.time()
                dev[j.lane.value] = dev.get(j.lane.value, 0.0) + (end - j.started_at) / 60
                first = j.created_at if first is None else min(first, j.created_at)
                last = end if last is None else max(last, end)
            if j.state in ("succeeded", "failed"):
                stages.append(j.payload.get("stage", j.kind))
        return {"device_min": dev, "wall_min": ((last or 0) - (first or 0)) / 60, "stages": stages}

    def _progress(self, job, now: float) -> None:
        """One progress comment per idea, edited in place (at most every progress_edit_s)."""
        n = job.issue
        last = self.kv.get(f"progress-at:{n}") or 0
        if now - last < self.settings.daemon.progress_edit_s or not job.run_dir:
            return
        prog = Path(job.run_dir) / "progress.json"
        try:
            p = json.loads(prog.read_text())
        except (OSError, ValueError):
            return
        pct = 100 * p.get("done", 0) / max(p.get("total", 1), 1e-9)
        eta = p.get("eta_s")
        body = (f"**Progress** — {report.STAGE_TITLE.get(job.payload['stage'], job.payload['stage'])} (job {job.id}): "
                f"{pct:.0f}% · {p.get('what', '')} · elapsed {p.get('elapsed_s', 0):.0f} s"
                + (f" · ETA {eta:.0f} s" if eta is not None else ""))
        key = f"i{n}/progress"
        if self.outbox.comment(n, key, body):
            pass
        else:
            self.outbox.edit(n, key, body)
        self.kv.put(f"progress-at:{n}", now)

    def _plots(self, job, rel_to_docs: bool = False) -> list[str]:
        run = Path(job.run_dir or "")
        pngs = sorted(run.glob("plots/*.png"))
        if rel_to_docs:
            return [f"plots/i{job.issue}-j{job.id}-{p.name}" for p in pngs]
        return [self._display(str(p)) for p in pngs]

    def _plot_files(self, job, date: str) -> list[tuple[Path, str]]:
        run = Path(job.run_dir or "")
        return [(p, f"findings/plots/i{job.issue}-j{job.id}-{p.name}") for p in sorted(run.glob("plots/*.png"))]

    def _noise_units(self, result: dict) -> dict[str, float] | None:
        floor = self.kv.get("noise-floor") or {}
        tasks = (result.get("evidence") or {}).get("tasks") or {}
        out = {t: v["delta"] / floor[t] for t, v in tasks.items()
               if isinstance(v, dict) and "delta" in v and floor.get(t)}
        return out or None

    def _display(self, path: str | None) -> str:
        if not path:
            return "(none)"
        try:
            return str(Path(path).resolve().relative_to(config.ROOT))
        except ValueError:
            return str(path)
