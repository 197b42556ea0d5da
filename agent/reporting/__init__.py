"""agent.reporting: what refinery writes back about an idea.

    report.py   issue comments (queued, progress, stage results), findings, model cards, the roadmap's
                graveyard line
    gitdocs.py  commit those documents through a private index, never touching a user's work
    verify_report.py  `refinery verify`: a finding and its comments checked number by number against the runs

May import: config, agent.redact, experiments (verify_report.py: the runs and the gate). Never the daemon, the
trackers or the CLI.
"""
