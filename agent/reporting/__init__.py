"""agent.reporting: what refinery writes back about an idea.

    report.py   issue comments (queued, progress, stage results), findings, model cards, the roadmap's
                graveyard line
    gitdocs.py  commit those documents through a private index, never touching a user's work

May import: config, agent.redact. Never the daemon, the trackers or the CLI.
"""
