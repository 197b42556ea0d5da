"""agent.daemon: the service itself.

    loop.py       Daemon: poll the tracker, take in changed issues, run the queue's workers, deliver the
                  outbox, commit documents; warm and cold stops, SIGHUP reload; status() for `refinery status`
    intake.py     a changed issue in, at most one decision out: the label contract, trust, the spec
    edits.py      edited issues: an edited spec's new chain cancels the old one; an agent item per distinct body
    sanitize.py   issue text cleaned before a coding agent reads it; the agent's branch name
    graveyard.py  before a new idea spends device time, its resemblance to killed ones
    pipeline.py   stage chaining: what happens to an idea after each stage is decided
    source.py     which commit an idea's stages run from (recorded at enqueue; every stage runs pinned)
    codeidea.py   ideas that need code: the coder's branch, a writer's 👍 on one exact commit, stages from it
    outbox.py     Outbox (writes go to the database first) and Sender (delivers them, idempotently)
    calibration_jobs.py  an idle cpu lane builds the gate's calibration: `calibrate` units, docs/calibration/

May import: agent.state, agent.trackers, agent.reporting, agent.ops, agent.redact, and the lower packages;
of agent.coder, the wiring only (loop.py), worktree.py (git: source.py, codeidea.py) and ideacheck.py.
Never agent.cli.
"""
