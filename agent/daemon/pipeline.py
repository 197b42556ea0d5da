"""Stage chaining: what happens to an idea after each stage is decided.

    smoke PASS        → ablation (depends on the smoke job)
    ablation PASS     → replication: the ablation again on fresh seeds (the stage adds its own seed
                        offset); a PASS is real only once it replicates
    ablation EXTEND   → extend: more seeds, once, re-tested at α/2 (the ablation stage normally
                        extends inline and never reports EXTEND; this is the fallback)
    extend PASS       → replication
    replication PASS  → full (after a 👍 from a writer on the replication's result comment when
                        full_requires_approval is on)
    full PASS         → passed: a finding, and a model card when it beats the champion
    INCONCLUSIVE      → nothing measured (experiments/ladder.py): the stage again one difficulty level on,
                        once; then the idea waits (refinery:waiting) for a person's spec — never a kill
    any FAIL          → killed: a finding, a ROADMAP graveyard line, refinery:killed
    ERROR / crash     → refinery:failed: a fault of the run, never a verdict on the idea (the queue
                        retries a crashing child with back-off; a child that reports ERROR and exits 0
                        is shown the same way)

Every step is idempotent: the next job is enqueued under a unique key (issue, kind, chain/stage)
with depends_on the job before it, every comment and label goes through the outbox under a unique
key, documents are written only when their content changes, and `advanced:<job>` in the key-value
table is set last. A restart between any two steps therefore neither loses nor repeats a stage:
`advance` simply runs again for any decided job not yet marked advanced.

Reporting (agent/reporting/report.py formats): one progress comment per idea, edited in place at most every
progress_edit_s; one result comment per stage; one finding per decided idea under
docs_dir/findings/; graveyard lines in docs_dir/ROADMAP.md. The noise floor (experiments/noise.py): when
noise_floor_every_s is set and its lane is idle, a scheduled job re-runs the control on fresh seeds
and `noise-floor` in the key-value table keeps the seed-to-seed spread per task.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import config
from agent.daemon import codeidea, edits, source
from agent.daemon.calibration_jobs import CalibrationScheduler
from agent.daemon.outbox import Outbox
from agent.reporting import report
from agent.trackers.interface import TrackerError
from experiments import ladder, noisefloor
from experiments.noise import noise_argv
from experiments.runs import error_reason, last_metrics, plot_files, read_progress
from experiments.spec import effective
from experiments.stage import stage_argv
from jobqueue.models import LIVE, State

log = logging.getLogger("refinery.pipeline")

STAGE_KIND = {"smoke": "smoke", "ablation": "ablation", "extend": "ablation", "replication": "replication",
              "full": "full"}
PIPELINE_STAGES = tuple(STAGE_KIND)
VERDICTS = ("PASS", "FAIL", "EXTEND", "INCONCLUSIVE")  # the gate's; anything else is a fault of the run
DECIDED = (State.SUCCEEDED, State.FAILED)
WINDOW = 50  # newest decided jobs per state looked at on each pass
SWEEP, SWEEP_S = 1000, 60.0  # and this many, this often (and on the first pass: nothing is missed after a restart)
RETRY_DOCS_S = 60.0  # a refused docs commit is tried again after this


def next_stage(stage: str, verdict: str) -> str | None:
    """The decision table above, for the verdicts the gate gives. None: the idea is decided."""
    table = {("smoke", "PASS"): "ablation", ("ablation", "PASS"): "replication", ("ablation", "EXTEND"): "extend",
             ("extend", "PASS"): "replication", ("replication", "PASS"): "full"}
    return table.get((stage, verdict))


def is_kill(stage: str, verdict: str) -> bool:
    """FAIL anywhere kills; so does anything short of PASS after the seed extension."""
    return verdict == "FAIL" or (verdict == "EXTEND" and stage in ("extend", "replication", "full", "smoke"))


class Pipeline:
    def __init__(self, settings: config.Settings, store, outbox: Outbox, kv, tracker=None):
        self.settings, self.store, self.outbox, self.kv, self.tracker = settings, store, outbox, kv, tracker
        self.docs = report.DocsWriter(settings)
        self.code = codeidea.CodeIdeas(settings, store, outbox, kv, tracker)  # code ideas: review, approval
        self.calibration = CalibrationScheduler(settings, store, kv, self.docs)  # idle: calibration units
        self._advanced: dict[int, float | None] = {}  # job id -> finished_at it was advanced at
        self._retry_at: dict[int, float] = {}
        self._next_approval = 0.0
        self._next_noise = 0.0
        self._next_sweep = 0.0
        self.approvals_inline = True  # serve() turns it off: the daemon's tracker thread calls approvals()

    # ------------------------------------------------------------------ the loop's entry point
    def step(self, now: float | None = None) -> int:
        """Advance every decided pipeline job not yet advanced; edit progress comments; look for
        approvals; schedule the noise floor. Returns the number of jobs advanced."""
        now = time.time() if now is None else now
        done = 0
        for job in self.store.list(state=State.RUNNING, limit=50):
            if job.issue is not None and job.payload.get("stage") in PIPELINE_STAGES:
                self._progress(job, now)
        window = WINDOW
        if now >= self._next_sweep:
            window, self._next_sweep = SWEEP, now + SWEEP_S
        for state in DECIDED:
            for job in self.store.list(state=state, limit=window):
                if not self._wants_advance(job) or self._retry_at.get(job.id, 0) > now:
                    continue
                try:
                    if job.payload.get("noise"):
                        self._noise_done(job)
                    else:
                        self.advance(job)
                    done += 1
                except config.RefineryError as e:  # a docs commit refused, say: said once a minute, retried
                    log.warning("pipeline: job %d not advanced yet (again in %.0f s): %s", job.id, RETRY_DOCS_S, e)
                    self._retry_at[job.id] = now + RETRY_DOCS_S
                except Exception:  # noqa: BLE001 - one job's bug must not stop the others; logged with its traceback
                    log.exception("pipeline: job %d could not be advanced (again in %.0f s)", job.id, RETRY_DOCS_S)
                    self._retry_at[job.id] = now + RETRY_DOCS_S
        if self.approvals_inline:
            self.approvals(now)
        self._schedule_noise(now)
        self.calibration.step(now)  # agent/daemon/calibration_jobs.py
        return done

    def _wants_advance(self, job) -> bool:
        if not (job.payload.get("noise") or (job.issue is not None and job.payload.get("stage") in PIPELINE_STAGES)):
            return False
        if self._advanced.get(job.id, -1.0) == job.finished_at:
            return False
        rec = self.kv.get(f"advanced:{job.id}")
        if rec and rec.get("finished_at", job.finished_at) == job.finished_at:
            self._advanced[job.id] = job.finished_at
            return False
        return True  # never advanced, or finished again after `queue retry`

    def _mark(self, job, **what) -> None:
        self.kv.put(f"advanced:{job.id}", {"at": time.time(), "finished_at": job.finished_at, **what})
        self._advanced[job.id] = job.finished_at

    # ------------------------------------------------------------------ one decided job
    def advance(self, job) -> None:
        stage, n = job.payload["stage"], job.issue
        result = job.result or {}
        verdict = result.get("verdict") if job.state == State.SUCCEEDED else None
        if verdict not in VERDICTS:
            self._failed(job, result)
            return
        if verdict == "INCONCLUSIVE":  # nothing measured: one step along the difficulty ladder, never a kill
            self._inconclusive(job, result)
            return
        nxt = next_stage(stage, verdict)
        killed = is_kill(stage, verdict)
        passed = stage == "full" and verdict == "PASS"
        finding = None
        if killed or passed:
            finding = self._finding(job, "PASS" if passed else "FAIL")
        if killed:
            self._graveyard(job, result, finding)
        card = self._maybe_champion(job, result, finding) if passed else None
        next_text = self._enqueue_next(job, nxt) if nxt else self._final_text(stage, verdict, killed)
        if card:
            next_text += f" It beats the champion: model card `{card}`."
        body = report.result_comment(
            issue=n, stage=stage, job_id=job.id, result=result, spec=job.payload.get("spec", {}),
            prereg=job.payload.get("prereg"), ledger=self.ledger(n), run_dir=self._display(job.run_dir),
            next_step=next_text, plots=(finding or {}).get("plots") or self._plots(job),
            finding=(finding or {}).get("url") or (finding or {}).get("path"),
            noise=self._noise_units(result, job.payload.get("spec"))) + "\n\n" + source.line(job.payload, result)
        self.outbox.comment(n, self.result_key(job), body, job.run_dir)
        codeidea.mirror(self.outbox, job, self.result_key(job), body, job.run_dir)  # and its pull request
        if killed or passed:  # a code idea's pull request: ready for review, or the finding and left open
            self.code.decided(job, verdict, passed, finding)
        status = "passed" if passed else "killed" if killed else "queued"
        self.outbox.status(n, f"i{n}/j{job.id}/{stage}/status-{status}", status)
        self._progress_final(job, f"{report.title_of(stage)} {verdict}. {next_text}")
        self._mark(job, verdict=verdict, next=nxt)

    def _inconclusive(self, job, result: dict) -> None:
        """experiments/ladder.py decides: the same stage again one ladder level on, or a wait for a person's spec."""
        n, p, stage = job.issue, dict(job.payload), job.payload["stage"]
        done = int(p.get("ladder_reruns", 0))
        plan = ladder.plan(result.get("evidence") or {}, p.get("spec", {}), done, self.settings)
        text = plan["text"]
        if plan["action"] == "rerun" and p.get("spec_file") and edits.current(self.store.engine, job):
            again = "ablation" if stage == "extend" else stage
            spec_file = str(ladder.write_spec(p["spec_file"], plan["overrides"], done + 1))
            p.update(stage=again, argv=stage_argv(again, spec_file), spec_file=spec_file, previous_job=job.id,
                     spec={**p.get("spec", {}), **plan["overrides"]}, ladder_reruns=done + 1)
            nj = self.store.enqueue(n, STAGE_KIND[again], job.lane, p, depends_on=job.id,
                                    key=f"{self.chain_key(job)}/{again}-L{done + 1}")
            text += f" Queued as job {nj.id} on the {job.lane.value} lane."
        body = report.result_comment(
            issue=n, stage=stage, job_id=job.id, result=result, spec=job.payload.get("spec", {}),
            prereg=job.payload.get("prereg"), ledger=self.ledger(n), run_dir=self._display(job.run_dir),
            next_step=text, plots=self._plots(job), finding=None,
            noise=self._noise_units(result, job.payload.get("spec")))
        self.outbox.comment(n, self.result_key(job), body, job.run_dir)
        self.outbox.status(n, f"i{n}/j{job.id}/{stage}/status-inconclusive",
                           "queued" if plan["action"] == "rerun" else "waiting")
        self._progress_final(job, f"{report.title_of(stage)} INCONCLUSIVE. {text}")
        self._mark(job, verdict="INCONCLUSIVE", next=stage if plan["action"] == "rerun" else None)

    @staticmethod
    def result_key(job) -> str:
        return f"i{job.issue}/j{job.id}/{job.payload['stage']}/result"

    def _failed(self, job, result: dict) -> None:
        """A fault of the run: the job failed for good, or the stage reported ERROR (or no verdict)."""
        n, stage = job.issue, job.payload["stage"]
        tag = f"a{job.attempt}"
        if str(job.state) == "failed":
            body = report.failed_comment(stage=stage, job_id=job.id, attempts=job.tries, error=job.error or "",
                                         run_dir=self._display(job.run_dir), ledger=self.ledger(n),
                                         reason=error_reason(job.run_dir))
        else:
            body = report.result_comment(
                issue=n, stage=stage, job_id=job.id, result={**result, "verdict": "ERROR"},
                spec=job.payload.get("spec", {}), prereg=None, ledger=self.ledger(n),
                run_dir=self._display(job.run_dir), plots=self._plots(job), finding=None,
                next_step="Nothing runs after it. This says nothing about the idea: fix the cause (the reason above "
                          "and the run's log.txt), then edit the issue body to queue the idea again.")
        body += "\n\n" + source.line(job.payload, result)
        self.outbox.comment(n, f"i{n}/j{job.id}/{stage}/failed-{tag}", body, job.run_dir)
        codeidea.mirror(self.outbox, job, f"i{n}/j{job.id}/{stage}/failed-{tag}", body, job.run_dir)
        self.outbox.status(n, f"i{n}/j{job.id}/{stage}/status-failed-{tag}", "failed")
        self._progress_final(job, f"{report.title_of(stage)} failed (a fault of the run, not a verdict).")
        self._mark(job, verdict="ERROR", next=None)

    def _final_text(self, stage: str, verdict: str, killed: bool) -> str:
        if killed:
            return "The idea is killed; its line is in the ROADMAP graveyard and its finding is written."
        return "The idea passed every stage; the full run's weights are kept and the finding is written."

    def _enqueue_next(self, job, nxt: str) -> str:
        n, p = job.issue, dict(job.payload)
        if not p.get("spec_file"):
            return "This job names no spec file (it was not queued by intake), so nothing is queued after it."
        if not edits.current(self.store.engine, job):  # the issue's spec was edited: its new chain runs instead
            return "The issue's spec was edited since this chain began, so nothing more of it is queued."
        argv = stage_argv("ablation" if nxt == "extend" else nxt, p["spec_file"],
                          *(("--extend-from", job.run_dir or "") if nxt == "extend" else ()))
        p.update(stage=nxt, argv=argv, previous_job=job.id)
        key = f"{self.chain_key(job)}/{nxt}"
        if p.get("unapproved") and nxt in ("replication", "full"):  # REFINERY_CODE_AUTO_APPROVE=cpu stops here
            p["unapproved"] = False
            self.kv.put(f"approval:{job.id}", {"issue": n, "job": job.id, "payload": p, "key": key, "kind":
                                               STAGE_KIND[nxt], "lane": job.lane.value, "comment": self.result_key(job),
                                               "what": report.title_of(nxt).lower(), "on": "an unapproved result"})
            return (f"{report.title_of(nxt)} waits: commit `{p['code']['sha'][:12]}` ran unapproved "
                    "(REFINERY_CODE_AUTO_APPROVE=cpu); a 👍 from someone with write access on this comment approves "
                    "it, and what follows is queued on the next look.")
        if nxt == "full" and self.settings.daemon.full_requires_approval:
            self.kv.put(f"approval:{job.id}", {"issue": n, "job": job.id, "payload": p, "key": key,
                                               "lane": job.lane.value, "comment": self.result_key(job)})
            return ("Full training waits for approval: someone with write access reacts 👍 to this comment, and "
                    "it is queued on the next look (every poll interval).")
        nj = self.store.enqueue(n, STAGE_KIND[nxt], job.lane, p, depends_on=job.id, key=key)
        return f"{report.title_of(nxt)} queued as job {nj.id} on the {job.lane.value} lane."

    @staticmethod
    def chain_key(job) -> str:
        """The key shared by every stage of one idea's spec (intake's `spec-<hash>`)."""
        base = (job.dedupe or "").split(":", 2)[-1] if getattr(job, "dedupe", None) else ""
        return base.split("/")[0] or f"j{job.id}"

    def approvals(self, now: float) -> None:
        """Look for approvals when due (every poll_interval). A tracker call: serve() makes it from its tracker
        thread, never from the loop that heartbeats."""
        if now >= self._next_approval:
            self._next_approval = now + self.settings.daemon.poll_interval
            self._approvals()
            self.code.step()

    def _approvals(self) -> None:
        """full_requires_approval: start a waiting full run once a writer reacted 👍 to the result comment."""
        if self.tracker is None:  # full runs (full_requires_approval) and ideas held by power (agent/intake.py)
            return
        for key in self.kv.keys("approval:"):
            want = self.kv.get(key)
            if not want or want.get("done"):
                continue
            n = want["issue"]
            try:
                approvers = self.tracker.approvals(n, want["comment"])
            except TrackerError as e:  # GitHub unavailable: look again next time
                log.info("approvals for #%d: %s", n, e)
                return
            if not approvers:
                continue
            kind = want.get("kind", "full")
            nj = self.store.enqueue(n, kind, want["lane"], want["payload"], depends_on=want["job"], key=want["key"])
            base = f"i{n}/j{want['job']}/full" if kind == "full" else f"i{n}/{want['key']}"
            on, what = want.get("on", "the replication's result"), want.get("what", "full training")
            self.outbox.comment(n, f"{base}/approved", f"Approved by @{approvers[0]} (👍 on {on}): {what} queued "
                                f"as job {nj.id} on the {want['lane']} lane.")
            self.outbox.status(n, f"{base}/status-approved", "queued")
            self.kv.put(key, {**want, "done": True, "by": approvers[0], "full_job": nj.id})

    # ------------------------------------------------------------------ documents
    def chain(self, job) -> list:
        """The jobs of this idea's spec, oldest first, following previous_job back from `job`."""
        out, seen, cur = [job], {job.id}, job
        while cur.payload.get("previous_job") and cur.payload["previous_job"] not in seen:
            cur = self.store.get(cur.payload["previous_job"])
            seen.add(cur.id)
            out.append(cur)
        return list(reversed(out))

    def _finding(self, job, verdict: str) -> dict:
        """One finding per decided idea: every stage's statistics, plots copied next to it."""
        cached = self.kv.get(f"finding:{job.id}")
        if cached:
            return cached
        n, date = job.issue, report.date_of(job.finished_at)
        title = job.payload.get("title") or f"issue {n}"
        name = f"findings/{date}-i{n}-{report.slugify(title)}.md"
        owner = self.kv.get(f"finding-name:{name}")
        if owner and owner != self.chain_key(job):  # another spec of the same issue, same day
            name = name[:-3] + f"-j{job.id}.md"
        stages, files, plot_rel = [], {}, []
        for j in self.chain(job):
            if j.state != State.SUCCEEDED or not j.result:
                continue
            plots = []
            for src in plot_files(j.run_dir):
                rel = f"plots/i{n}-j{j.id}-{src.name}"  # relative to the finding
                files[f"findings/{rel}"] = src.read_bytes()
                plots.append(rel)
            if j.id == job.id:
                plot_rel = plots
            stages.append({"stage": j.payload.get("stage", j.kind), "job": j.id, "result": j.result,
                           "run_dir": self._display(j.run_dir), "plots": plots})
        text = report.finding_markdown(date=date, issue=n, title=title, verdict=verdict,
                                       decided_at=job.payload["stage"], stages=stages,
                                       spec=job.payload.get("spec", {}), prereg=job.payload.get("prereg"),
                                       issue_url=job.payload.get("url"),
                                       noise=self._noise_units(job.result or {}, job.payload.get("spec")),
                                       prereg_sha256=job.payload.get("prereg_sha256"))
        files[name] = text.encode()
        self.kv.put(f"finding-name:{name}", self.chain_key(job))
        self.docs.write(files, f"refinery: {verdict} for #{n}: {title[:60]}")
        sha = self.docs.last_sha
        path = self._display(str(self.docs.root / name))
        plots = [self.docs.url(f"findings/{p}", sha) or self._display(str(self.docs.root / "findings" / p))
                 for p in plot_rel]
        rec = {"path": path, "name": name, "url": self.docs.url(name, sha), "plots": plots, "commit": sha}
        self.kv.put(f"finding:{job.id}", rec)
        return rec

    def _graveyard(self, job, result: dict, finding: dict | None) -> None:
        n = job.issue
        rec = self.kv.get(f"graveyard:{n}")
        if rec and rec.get("job") == job.id:
            return
        stage, date = job.payload["stage"], report.date_of(job.finished_at)
        why = f"killed at {stage} ({result.get('verdict')}): {result.get('reason', '')}" + codeidea.graveyard_note(job)
        line = report.graveyard_line(date=date, issue=n, title=job.payload.get("title") or f"issue {n}", why=why,
                                     finding_rel=(finding or {}).get("name", ""))
        self.docs.write({"ROADMAP.md": self.docs.roadmap_with(line)}, f"refinery: #{n} to the graveyard")
        self.kv.put(f"graveyard:{n}", {"date": date, "job": job.id, "stage": stage, "spec": job.payload.get("spec", {}),
                                       "deltas": report.deltas_of(result) or self._last_deltas(job),
                                       "title": job.payload.get("title"), "reason": result.get("reason", ""),
                                       "finding": (finding or {}).get("path")})

    def _last_deltas(self, job) -> dict[str, float]:
        for j in reversed(self.chain(job)):
            d = report.deltas_of(j.result or {})
            if d:
                return d
        return {}

    def _maybe_champion(self, job, result: dict, finding: dict | None) -> str | None:
        """A model card when the full run beats the champion's validation loss; returns its path."""
        loss = (result.get("evidence") or {}).get("mean_candidate")
        best = self.kv.get("champion") or {}
        if best.get("job") == job.id:
            return best.get("path")
        if loss is None or (best.get("val_loss") is not None and loss >= best["val_loss"]):
            return None
        spec = job.payload.get("spec", {})
        run = Path(job.run_dir or "/nonexistent")
        ckpts = sorted(p for p in run.glob("ckpt/candidate-s*") if (p / "state.pt").is_file())
        cdir = Path(spec.get("corpus_dir") or self.settings.stages.corpus_dir)
        cdir = cdir if cdir.is_absolute() else config.ROOT / cdir
        manifest = cdir / "manifest.json"
        name = f"{spec.get('arch', 'model')}-i{job.issue}-j{job.id}"
        card = report.registry_card(name=name, date=report.date_of(job.finished_at), issue=job.issue, spec=spec,
                                    result=result, ckpt=ckpts[0] if ckpts else None,
                                    data_manifest=json.loads(manifest.read_text()) if manifest.exists() else None,
                                    data_dir=self._display(str(cdir)), archive_dir=self.settings.daemon.archive_dir,
                                    finding=(finding or {}).get("name"))
        self.docs.write({f"registry/{name}.md": card.encode()}, f"refinery: new champion {name} (#{job.issue})")
        path = self.docs.url(f"registry/{name}.md", self.docs.last_sha) or \
            self._display(str(self.docs.root / "registry" / f"{name}.md"))
        self.kv.put("champion", {"val_loss": loss, "name": name, "job": job.id, "issue": job.issue,
                                 "run_dir": job.run_dir, "card": f"registry/{name}.md", "path": path})
        return path

    # ------------------------------------------------------------------ progress
    def ledger(self, issue: int) -> dict[str, Any]:
        """Device-minutes per lane, wall time and stages run, for one idea."""
        dev: dict[str, float] = {}
        stages, first, last = [], None, None
        now = time.time()
        for j in self.store.jobs_for_issue(issue):
            if j.payload.get("stage") not in PIPELINE_STAGES:
                continue
            first = j.created_at if first is None else min(first, j.created_at)
            if j.started_at:
                end = j.finished_at or now
                dev[j.lane.value] = dev.get(j.lane.value, 0.0) + max(0.0, end - j.started_at) / 60
                last = end if last is None else max(last, end)
            if str(j.state) in DECIDED:
                stages.append(j.payload["stage"])
        return {"device_min": dev, "wall_min": max(0.0, (last or 0) - (first or 0)) / 60 if last else 0.0,
                "stages": stages, "coder": self.kv.get(f"coder.ledger:{issue}")}  # coder: spend and turns

    def _history(self, issue: int) -> list[str]:
        out = []
        for j in self.store.jobs_for_issue(issue):
            if j.payload.get("stage") in PIPELINE_STAGES and str(j.state) in DECIDED:
                v = (j.result or {}).get("verdict") if j.state == State.SUCCEEDED else "failed"
                secs = (j.finished_at or 0) - (j.started_at or j.finished_at or 0)
                out.append(f"{j.payload['stage']} {v} ({report.fmt_s(secs)})")
        return out

    def _progress(self, job, now: float) -> None:
        """One progress comment per idea, edited in place (at most every progress_edit_s)."""
        n = job.issue
        last = self.kv.get(f"progress-at:{n}") or 0
        if now - last < self.settings.daemon.progress_edit_s or not job.run_dir:
            return
        p = read_progress(job.run_dir)
        if p is None:
            return
        body = report.progress_comment(stage=job.payload["stage"], job_id=job.id, progress=p,
                                       metrics=last_metrics(Path(job.run_dir)), lane=job.lane.value,
                                       history=self._history(n))
        self._put_progress(n, body)
        self.kv.put(f"progress-at:{n}", now)

    def _put_progress(self, n: int, body: str) -> None:
        key = f"i{n}/progress"
        if not self.outbox.comment(n, key, body):
            self.outbox.edit(n, key, body)

    def _progress_final(self, job, text: str) -> None:
        """Once a stage is decided, the progress comment stops showing its last percentage."""
        n = job.issue
        if self.outbox.store.get(f"i{n}/progress") is None:
            return
        hist = self._history(n)
        self.outbox.edit(n, f"i{n}/progress", f"**Progress** — {text}\n\nStages so far: {'; '.join(hist)}")

    # ------------------------------------------------------------------ the noise floor
    def _schedule_noise(self, now: float) -> None:
        """When noise_floor_every_s is set and its lane has been idle: one control re-run on fresh seeds."""
        d = self.settings.daemon
        if not d.noise_floor_every_s or now < self._next_noise:
            return
        self._next_noise = now + min(30.0, d.noise_floor_every_s)
        last = self.kv.get("noise-floor.last") or {}
        if now - float(last.get("at", 0)) < d.noise_floor_every_s:
            return
        lane = d.noise_floor_lane
        if lane == "gpu" and not self.settings.queue.gpu_devices.strip():
            return  # no gpu lane on this host
        counts = self.store.counts().get(lane, {})
        if any(counts.get(s, 0) for s in LIVE):
            return
        rnd = int(last.get("round", 0)) + 1
        spec_file = self.settings.runs_path / "specs" / f"noise-{rnd}.json"
        spec_file.parent.mkdir(parents=True, exist_ok=True)
        # the newest idea's spec whose floor is unmeasured, else the operator's
        specs = [noisefloor.settings_of(j.payload["spec"], self.settings) for j in self.store.list(limit=50)
                 if j.issue is not None and j.payload.get("spec") and j.payload.get("stage") in PIPELINE_STAGES]
        pick = noisefloor.wanted(self.kv.get("noise-floors") or {}, specs) or self.settings
        flat = {k: v for k, v in effective(pick).items() if k in config.FIELD_SECTION}
        spec_file.write_text(json.dumps({"spec": flat}, indent=1, sort_keys=True, default=str) + "\n")
        argv = noise_argv(str(spec_file), d.noise_floor_seeds, rnd)
        job = self.store.enqueue(None, "task", lane, {"argv": argv, "noise": True, "stage": "noise", "round": rnd},
                                 priority=-10, key=f"noise-{rnd}")
        self.kv.put("noise-floor.last", {"at": now, "round": rnd, "job": job.id})
        log.info("noise floor: round %d queued as job %d on the %s lane", rnd, job.id, lane)

    def _noise_done(self, job) -> None:
        """Pool this round's per-task spread into `noise-floor` ({task: σ in points})."""
        res = job.result or {}
        if job.state == State.SUCCEEDED and res.get("tasks"):
            hist = (self.kv.get("noise-floor.history") or [])[-19:]
            hist.append({"round": job.payload.get("round"), "job": job.id, "at": job.finished_at,
                         "tasks": {t: {"std": v["std"], "values": v["values"]} for t, v in res["tasks"].items()}})
            pooled: dict[str, list[float]] = {}
            for h in hist:
                for t, v in h["tasks"].items():
                    pooled.setdefault(t, []).append(float(v["std"]))
            floor = {t: (sum(s * s for s in v) / len(v)) ** 0.5 for t, v in pooled.items()}
            self.kv.put("noise-floor.history", hist)
            self.kv.put("noise-floors", noisefloor.add(self.kv.get("noise-floors") or {}, res, job.finished_at))
            self.kv.put("noise-floor", {t: round(s, 4) for t, s in floor.items() if s > 0})
            log.info("noise floor: %s", {t: round(s, 2) for t, s in floor.items()})
        else:
            log.warning("noise floor: job %d %s: %s", job.id, job.state, (job.error or res.get("reason") or "")[-300:])
        self._mark(job, verdict=res.get("verdict"))

    def _noise_units(self, result: dict, spec: dict | None = None) -> dict[str, float] | None:
        """Δ / σ only where the noise floor was measured for this spec's fingerprint (experiments/noisefloor.py)."""
        if not spec:
            return None
        return noisefloor.units(report.deltas_of(result), self.kv.get("noise-floors") or {},
                                noisefloor.settings_of(spec, self.settings))

    # ------------------------------------------------------------------ helpers
    def _plots(self, job) -> list[str]:
        return [self._display(str(p)) for p in plot_files(job.run_dir)]

    def _display(self, path: str | None) -> str:
        if not path:
            return "(none)"
        try:
            return str(Path(path).resolve().relative_to(config.ROOT))
        except ValueError:
            return str(path)


def waiting_approvals(kv) -> list[dict]:
    """Full runs that wait for a writer's 👍 (full_requires_approval): [{issue, job, comment}]."""
    out = []
    for key in kv.keys("approval:"):
        want = kv.get(key) or {}
        if want and not want.get("done"):
            out.append({"issue": want["issue"], "job": want["job"], "comment": want["comment"]})
    return out
