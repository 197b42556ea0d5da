"""agent.trackers: where issues come from and comments go to.

    interface.py       the Tracker protocol every tracker implements, its records (Issue, Comment, Poll),
                       the comment marker and the trust rule (who may start work)
    github_tracker.py  GitHub through PyGithub: conditional polling, the rate limit, the outage path
    github_pulls.py    a code idea's pull request: review and merge approvals, marking it ready for review
    local_tracker.py   the embedded default: issues in the queue database (`refinery issue ...`)
    factory.py         make_tracker(settings): the one the settings name

May import: config, agent.state (their durable state), agent.redact. Never the daemon or the CLI.
"""
