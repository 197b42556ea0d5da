"""agent: the daemon. Trackers (GitHub via PyGithub; a local one, the embedded default),
intake and trust, the scheduler loop (APScheduler), the outbox, reporting (comments,
findings, registry, roadmap) and the `refinery` command line.

Imports everything else; nothing imports agent.
"""
