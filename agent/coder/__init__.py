"""agent.coder: Claude Code, run headless by the daemon on agent-lane items (REFINERY_CODER=claude).

May import: config, agent.state, agent.trackers, agent.redact, agent.daemon.sanitize, jobqueue. Never agent.cli.
"""
