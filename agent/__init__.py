"""agent: the daemon and the `refinery` command line, in rooms:

    daemon/     the service: the loop (loop.py), intake and trust (intake.py, sanitize.py, graveyard.py),
                stage chaining (pipeline.py), the outbox's sender (outbox.py)
    trackers/   where issues come from: the Tracker interface, GitHub (PyGithub), the local tracker
    state/      the agent's tables in the queue database: outbox, intake memory, key-value, local issues
    reporting/  what refinery writes back: comments, findings, model cards, the roadmap (report.py),
                and the commits of those documents (gitdocs.py)
    ops/        operating the box: systemd (service.py, sdnotify.py), the storage tiers (archive.py)
    coder/      running Claude Code headless on agent-lane items
    cli/        `refinery ...`: one module per command group, and the demo
    redact.py   secrets never leave: applied to every log handler and every outgoing body
    bench.py    python -m agent.bench: what polling GitHub costs

Imports config, refiner_model, experiments and jobqueue; nothing imports agent. Inside, the rooms
import downwards: cli → daemon → (reporting, trackers, ops) → state → redact.
"""
