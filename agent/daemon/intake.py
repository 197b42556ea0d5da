"""Intake: a changed issue in, at most one decision out. The label contract, trust, the spec.

Labels (DESIGN.md): a type (`ideas`, `architecture`, `tools`, `optimization`, `documentation`,
`bug`) and, for ideas, a lane (`gpu` | `cpu`). `ideas` + lane → the experiment pipeline, first
stage `smoke` on that lane, every stage from the default branch's commit recorded now (source.py);
`ideas` + lane + `code` → the coder writes the idea first, a writer approves one commit, the stages run
from it (codeidea.py); any other type → one agent-lane work item. `blocked`, or a body line
`blocked by #N` with #N open, holds the issue's queued jobs (a running stage finishes); refinery
lifts a `blocked by` hold itself when #N closes. refinery changes only its own refinery:* labels,
and only through the outbox.

Trust: work starts only when the author has write access (collaborator permission write,
maintain or admin) or is on the allowlist, and whoever applied the type and lane labels (the
issue's events) passes the same test. Bots are refused unless allowlisted. Anyone else gets at
most one polite comment, and nothing runs.

Spec: the body's ```toml block is parsed by experiments.spec (config.py's own validation).
Invalid → one comment listing each error with its line and a suggestion, refinery:invalid,
nothing enqueued. Valid → the effective spec is echoed in the first comment and `smoke` is
enqueued exactly once per distinct effective spec (Store.enqueue's key is the spec's hash).
Intake acts on a body once: an unchanged body never re-triggers, an edited one does (edits.py: an edited spec's
new chain replaces the old one, which is cancelled; an agent item is one per distinct body).

Every step is idempotent (enqueue by key, outbox by key, memory last), so a crash anywhere
between them is repaired by processing the issue again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass

import config
from agent.daemon import codeidea, edits, graveyard, source
from agent.daemon.outbox import Outbox
from agent.reporting.report import spec_lines
from agent.state.tables import IntakeMemory, KeyValue
from agent.trackers.interface import TRUSTED_PERMISSIONS, Issue, Tracker, TrackerUnavailable
from experiments import noisefloor
from experiments.spec import spec_from_issue
from experiments.stage import stage_argv
from experiments.verify import prereg_hash
from jobqueue.models import LIVE

log = logging.getLogger("refinery.intake")

TYPE_LABELS = ("ideas", "architecture", "tools", "optimization", "documentation", "bug")
LANE_LABELS = ("gpu", "cpu")
CODE = "code"  # ideas + a lane + code: the coder writes the idea first (agent/daemon/codeidea.py)
BLOCKED = "blocked"
BLOCKED_BY = re.compile(r"^\s*(?:[-*]\s*)?blocked\s+by\s+((?:#\d+[\s,;and]*)+)", re.IGNORECASE | re.MULTILINE)
PERMISSION_TTL_S = 600.0


def blockers_of(body: str, number: int) -> list[int]:
    """Issue numbers named on `blocked by #N` lines (several allowed: `blocked by #3, #4`)."""
    found = {int(m) for line in BLOCKED_BY.findall(body or "") for m in re.findall(r"#(\d+)", line)}
    return sorted(found - {number})


def body_hash(body: str) -> str:
    return hashlib.sha256((body or "").replace("\r\n", "\n").strip().encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Trust:
    ok: bool
    who: str = ""  # the login that failed
    why: str = ""


class Intake:
    def __init__(self, settings: config.Settings, store, tracker: Tracker, outbox: Outbox, memory: IntakeMemory):
        self.settings, self.store, self.tracker, self.outbox, self.memory = settings, store, tracker, outbox, memory
        self._perm: dict[str, tuple[float, str]] = {}

    # ------------------------------------------------------------------ entry point
    def process(self, issue: Issue) -> str:
        """Act on one changed issue; returns a short word saying what was decided (for logs, tests)."""
        if issue.is_pr:
            return "pull request"
        mem = self.memory.get(issue.number) or {}
        if issue.state == "closed":
            if mem.get("state") != "closed":
                self._closed(issue)
                self.memory.put(issue.number, state="closed", labels=list(issue.labels))
            return "closed"
        types = [lab for lab in TYPE_LABELS if lab in issue.labels]
        lane = next((lab for lab in LANE_LABELS if lab in issue.labels), None)
        if not types:
            self.memory.put(issue.number, state="open", labels=list(issue.labels))
            return "not ours"
        held = self._hold(issue, mem)
        h = body_hash(issue.body)
        done = mem.get("status") in ("enqueued", "invalid", "agent")
        if done and mem.get("body_hash") == h:
            return "unchanged"
        if "ideas" in types and not lane:
            self.memory.put(issue.number, status="no lane", state="open", labels=list(issue.labels))
            return "no lane"
        code = "ideas" in types and CODE in issue.labels
        trust = self.check_trust(issue, (["ideas", lane] + [CODE] * code) if "ideas" in types else types[:1])
        if not trust.ok:
            self._untrusted(issue, mem, trust)
            return "untrusted"
        if code:  # the coder writes it first; stages run from the commit a writer approves (codeidea.py)
            return codeidea.intake(self, issue, lane, h, held)
        if "ideas" in types:
            return self._idea(issue, lane, h, held)
        return self._agent_item(issue, types, h, held)

    # ------------------------------------------------------------------ trust
    def permission(self, login: str) -> str:
        hit = self._perm.get(login)
        if hit and time.time() - hit[0] < PERMISSION_TTL_S:
            return hit[1]
        perm = self.tracker.permission(login)
        self._perm[login] = (time.time(), perm)
        return perm

    def login_trusted(self, login: str, is_bot: bool = False) -> Trust:
        if login in self.settings.daemon.allowlist:
            return Trust(True)
        if is_bot or login.endswith("[bot]"):
            return Trust(False, login, "is a bot (bots need to be on the allowlist)")
        perm = self.permission(login)
        if perm in TRUSTED_PERMISSIONS:
            return Trust(True)
        return Trust(False, login, f"has {perm!r} access (write, maintain or admin needed)")

    def check_trust(self, issue: Issue, trigger_labels: list[str]) -> Trust:
        t = self.login_trusted(issue.author, issue.author_is_bot)
        if not t.ok:
            return Trust(False, t.who, "opened the issue but " + t.why)
        for label in trigger_labels:
            actor = self.tracker.label_actor(issue.number, label) or issue.author
            if actor != issue.author:
                t = self.login_trusted(actor)
                if not t.ok:
                    return Trust(False, actor, f"applied the label `{label}` but {t.why}")
        return Trust(True)

    def _untrusted(self, issue: Issue, mem: dict, trust: Trust) -> None:
        if not mem.get("noted_untrusted"):
            self.outbox.comment(issue.number, f"i{issue.number}/untrusted", (
                "Thanks for the idea! refinery runs work only for issues opened and labeled by people with "
                f"write access to this repository (or on its allowlist). @{trust.who} {trust.why}, so nothing "
                "will run. A maintainer can re-apply the label to start it."))
        self.memory.put(issue.number, status="untrusted", noted_untrusted=True, state="open",
                        labels=list(issue.labels))
        log.info("intake: #%d untrusted: %s %s", issue.number, trust.who, trust.why)

    # ------------------------------------------------------------------ holds
    def _hold(self, issue: Issue, mem: dict) -> bool:
        """Apply `blocked` and `blocked by #N` (open blockers only); returns whether held."""
        named = blockers_of(issue.body, issue.number)
        if named == list(mem.get("blockers") or []) and mem.get("body_hash") == body_hash(issue.body):
            open_blockers = named  # already checked; closed ones were removed when they closed
        else:
            open_blockers = [b for b in named if self._is_open(b)]
        held = BLOCKED in issue.labels or bool(open_blockers)
        if held:
            self.store.hold_issue(issue.number)
        elif mem.get("held"):
            self.store.release_issue(issue.number)
        self.memory.put(issue.number, blockers=open_blockers, held=held, state="open", labels=list(issue.labels))
        return held

    def _is_open(self, number: int) -> bool:
        mem = self.memory.get(number)
        if mem and mem.get("state") == "closed":
            return False
        try:
            return self.tracker.get_issue(number).state == "open"
        except TrackerUnavailable:
            raise
        except Exception:  # noqa: BLE001 - a blocker that does not exist does not block
            return False

    def lift(self, closed: int) -> list[int]:
        """#closed closed: drop it from every `blocked by` list; release issues with none left."""
        released = []
        for n in self.memory.waiting_on(closed):
            mem = self.memory.get(n) or {}
            rest = [b for b in mem.get("blockers") or [] if b != closed]
            still = BLOCKED in (mem.get("labels") or []) or bool(rest)
            self.memory.put(n, blockers=rest, held=still)
            if not still:
                self.store.release_issue(n)
                released.append(n)
                if self.store.jobs_for_issue(n):
                    self.outbox.comment(n, f"i{n}/unblocked-{closed}", f"#{closed} is closed: the hold is lifted "
                                        "and this issue's work may run.")
        return released

    # ------------------------------------------------------------------ closing
    def _closed(self, issue: Issue) -> None:
        n = issue.number
        live = [j for j in self.store.jobs_for_issue(n) if str(j.state) in LIVE]
        for j in live:
            self.store.cancel(j.id, f"issue #{n} was closed")
        if live:
            lines = "\n".join(f"- job {j.id} ({j.kind}, {j.lane} lane) was {j.state}" for j in live)
            self.outbox.comment(n, f"i{n}/closed-cancel-{max(j.id for j in live)}",
                                f"The issue was closed, so refinery cancelled its work:\n{lines}\n\n"
                                "A running stage is stopped (warm, then killed); its run directory is kept.")
            self.outbox.status(n, f"i{n}/closed-cancel-{max(j.id for j in live)}/status", "cancelled")
        self.lift(n)

    # ------------------------------------------------------------------ work
    def _idea(self, issue: Issue, lane: str, h: str, held: bool) -> str:
        n = issue.number
        res = spec_from_issue(issue.body, base=self.settings)
        if not res.ok:
            errors = "\n".join(f"- {e.text()}" for e in res.errors)
            self.outbox.comment(n, f"i{n}/spec-{h[:12]}/invalid", (
                "The spec in this issue's ```toml block has errors, so nothing was queued:\n\n"
                f"{errors}\n\nEdit the issue body to fix them; refinery reads it again on the next poll."))
            self.outbox.status(n, f"i{n}/spec-{h[:12]}/status", "invalid")
            self.memory.put(n, status="invalid", body_hash=h)
            return "invalid"
        spec_key = hashlib.sha256(json.dumps(res.spec, sort_keys=True, default=str).encode()).hexdigest()[:16]
        spec_file = self.settings.runs_path / "specs" / f"i{n}-{spec_key}.json"
        spec_file.parent.mkdir(parents=True, exist_ok=True)
        # experiments.stage reads {"spec": flat config keys, "prereg", "issue"}: every effective spec field,
        # so the child's environment cannot change what runs; derived values (dims) are left out
        flat = {k: v for k, v in res.spec.items() if k in config.FIELD_SECTION}
        doc = {"issue": n, "title": issue.title, "given": res.given, "spec": flat, "prereg": res.prereg}
        tmp = spec_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
        tmp.replace(spec_file)
        payload = {"argv": stage_argv("smoke", str(spec_file)), "stage": "smoke", "spec_file": str(spec_file),
                   "spec": res.spec, "given": res.given, "prereg": res.prereg, "title": issue.title, "url": issue.url,
                   "source": source.pin(self.settings),  # every stage of this spec runs from this commit
                   "prereg_sha256": prereg_hash(res.prereg)}  # hashed on acceptance (experiments/verify.py)
        if self._power_hold(n, h, spec_key, res, payload, lane):  # experiments/power.py: nothing queued yet
            self.memory.put(n, spec_key=spec_key)
            edits.supersede(self, n, spec_key)  # the older spec's chain, if any, is not this issue's any more
            return "waiting"
        job = self.store.enqueue(n, "smoke", lane, payload, key=f"spec-{spec_key}")
        self.memory.put(n, spec_key=spec_key)  # first: the pipeline queues no next stage of an older chain
        edits.supersede(self, n, spec_key)  # an edited spec: the older chain's live jobs are cancelled
        if held:
            self.store.hold_issue(n)
        self._graveyard_check(n, spec_key, res.spec, held)
        self.outbox.comment(n, f"i{n}/j{job.id}/smoke/queued", queued_comment(issue, job.id, lane, res, held)
                            + "\n\n" + source.line(job.payload))
        self.outbox.status(n, f"i{n}/j{job.id}/smoke/status-queued", "queued")
        self.memory.put(n, status="enqueued", body_hash=h, spec_key=spec_key)
        log.info("intake: #%d → smoke job %d on %s", n, job.id, lane)
        return "enqueued"

    def _power_hold(self, n: int, h: str, spec_key: str, res, payload: dict, lane: str) -> bool:
        """Power before spending: a spec that cannot PASS, or whose pre-registered effect its allowed seeds cannot
        see at its measured noise floor, gets one comment with the numbers and waits for an edited spec (a new
        body: processed afresh) or a writer's 👍 on that comment (Pipeline._approvals queues the smoke test)."""
        from experiments import power  # scipy: loaded when an idea arrives, not at every daemon or CLI start

        kv = KeyValue(self.store.engine)
        primary = (res.prereg or {}).get("primary_task") or res.settings.stages.tasks[0]
        chk = power.check(res.settings, res.prereg,
                          noisefloor.floor_for(kv.get("noise-floors") or {}, res.settings, primary))
        if chk["ok"]:
            return False
        key = f"i{n}/spec-{spec_key}/power"
        self.outbox.comment(n, key, chk["text"] + prereg_line(payload["prereg_sha256"]))
        kv.put(f"approval:power-{spec_key}", {"issue": n, "job": None, "kind": "smoke", "payload": payload,
                                               "key": f"spec-{spec_key}", "lane": lane, "comment": key,
                                               "what": "the smoke test", "on": "the power comment"})
        self.outbox.status(n, f"{key}/status", "waiting")
        self.memory.put(n, status="enqueued", body_hash=h, spec_key=spec_key)
        return True

    def _graveyard_check(self, n: int, spec_key: str, spec: dict, held: bool = False) -> None:
        """Comment when the idea resembles a killed one (agent/daemon/graveyard.py); it still runs (unless held)."""
        note = graveyard.note_for(self.settings, KeyValue(self.store.engine), n, spec, held=held)
        if note:
            self.outbox.comment(n, f"i{n}/spec-{spec_key}/graveyard", note)

    def _agent_item(self, issue: Issue, types: list[str], h: str, held: bool) -> str:
        n = issue.number
        payload = {"title": issue.title, "body": issue.body, "labels": list(issue.labels), "types": types,
                   "url": issue.url}
        key, replaced = edits.agent_item(self, issue, h)  # one item per distinct body; a waiting older one cancelled
        job = self.store.enqueue(n, "agent", "agent", payload, key=key)
        if held:
            self.store.hold_issue(n)
        self.outbox.comment(n, f"i{n}/j{job.id}/agent/queued", (
            f"Queued for the coding agent as job {job.id} (agent lane; type: {', '.join(types)})."
            + (" It is on hold while this issue is blocked." if held else "")
            + ("".join(f" The body was edited, so job {j.id}, which had not started, is cancelled: this one "
                       "carries the new text." for j in replaced))))
        self.outbox.status(n, f"i{n}/j{job.id}/agent/status-queued", "queued")
        self.memory.put(n, status="agent", body_hash=h)
        return "agent item"


def queued_comment(issue: Issue, job_id: int, lane: str, res, held: bool) -> str:
    lines = spec_lines(res.spec, res.given)
    hold = " It is on hold while this issue is blocked." if held else ""
    return (f"Queued the smoke test as job {job_id} on the {lane} lane.{hold}\n\n"
            "The effective spec (defaults filled in):\n\n```toml\n" + "\n".join(lines) + "\n```"
            + prereg_line(prereg_hash(res.prereg)))


def prereg_line(digest: str | None) -> str:
    """The pre-registration's hash in the idea's first comment (`refinery verify` checks the finding against it)."""
    return f"\n\nPre-registration sha256: `{digest}` (its [prereg] table, hashed on acceptance)." if digest else ""
