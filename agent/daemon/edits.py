"""Edited issues: what an edited body does to the work already queued or running for it.

    supersede()   an idea whose spec changed: the new spec's chain is queued (intake), then every live job of an
                  older chain of that issue is cancelled — a running stage is stopped warm (SIGTERM: it writes
                  its checkpoint and exits 75; its worker kills the group after cancel_grace_s), queued and
                  blocked ones at once — with one comment saying so (its outbox key names the new chain)
    agent_item()  an agent item: one job per distinct body (the dedupe key is the body's hash), so a body
                  changed after its item ended makes a new item; a body edited while its item still waits
                  cancels that one, and the new item carries the new text; a running item finishes with the
                  text it started with, the new one queued beside it
    current()     whether a job's chain is still its issue's current spec (the pipeline queues no next stage
                  of a superseded chain, whatever raced with the cancel)
"""

from __future__ import annotations

import logging

from agent.state.tables import IntakeMemory
from jobqueue.errors import IllegalTransition
from jobqueue.models import LIVE, State

log = logging.getLogger("refinery.intake")


def chain_of(job) -> str:
    """The chain key of a job (intake's `spec-<hash>`, shared by its stages): the dedupe key's first part."""
    base = (job.dedupe or "").split(":", 2)[-1] if getattr(job, "dedupe", None) else ""
    return base.split("/")[0]


def supersede(intake, n: int, spec_key: str) -> list:
    """Cancel the live jobs of `n`'s older chains (not `spec-<spec_key>`, not agent items); one comment. Returns
    the jobs cancelled."""
    chain = f"spec-{spec_key}"
    old = [j for j in intake.store.jobs_for_issue(n)
           if str(j.state) in LIVE and str(j.lane) != "agent" and chain_of(j).startswith("spec-")
           and chain_of(j) != chain]
    done = []
    for j in old:
        try:
            done.append((j, intake.store.cancel(j.id, f"the spec of issue #{n} was edited: chain {chain} "
                                                      "replaces it")))
        except IllegalTransition:  # it finished meanwhile
            continue
    if done:
        lines = "\n".join(f"- job {j.id} ({j.kind}, {j.lane} lane) was {j.state}"
                          + (": its stage is stopped warm (checkpoint kept), then cancelled"
                             if str(j.state) == State.RUNNING else ": cancelled") for j, _ in done)
        intake.outbox.comment(n, f"i{n}/{chain}/superseded", (
            "The spec in this issue was edited, so refinery queued the new spec's chain and cancelled the old "
            f"one's work:\n{lines}\n\nThe old runs' directories are kept."))
        log.info("intake: #%d edited: %d job(s) of the older spec cancelled", n, len(done))
    return [j for j, _ in done]


def current(engine, job) -> bool:
    """False when the job's issue has moved on to another spec (intake memory's spec_key) than its chain's."""
    chain = chain_of(job)
    if job.issue is None or not chain.startswith("spec-"):
        return True
    mem = IntakeMemory(engine).get(job.issue) or {}
    return not mem.get("spec_key") or chain == f"spec-{mem['spec_key']}"


def agent_item(intake, issue, h: str) -> tuple[str, list]:
    """(the dedupe key of this body's agent item, the waiting items of other bodies cancelled for it)."""
    key = f"agent-{h[:16]}"
    cancelled = []
    for j in intake.store.jobs_for_issue(issue.number):
        if str(j.lane) != "agent" or j.dedupe and j.dedupe.endswith(":" + key):
            continue
        if str(j.state) in (State.QUEUED, State.BLOCKED, State.RETRYING):
            try:
                intake.store.cancel(j.id, f"issue #{issue.number}'s body was edited before this item ran: "
                                          "a new item carries the new text")
                cancelled.append(j)
            except IllegalTransition:
                continue
    return key, cancelled
