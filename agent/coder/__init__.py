"""The coder: refinery runs the Claude Code CLI headless on agent-lane items and checks the work itself.

    credential.py   where the Claude credential comes from (environment, a file, systemd's anthropic-token)
    command.py      the CLI: binary, pinned version, command line, per-run settings file, HOME, allow-listed env
    worktree.py     git: the item's worktree and branch under runs/agent/<issue>/, diffs, push (token by helper)
    session.py      one supervised CLI run: own process group, stream.jsonl, turn/wall/silence/spend limits
    checks.py       the evidence: result event, new commits, clean tree, the check command, protected paths
    ideacheck.py    code ideas: the spec as the target, parsed in the worktree, its CPU smoke passing there
    deliver.py      pull request (PyGithub) or local comment, the comment texts, the ledger
    driver.py       the Coder the daemon steps: claims, threads, heartbeats, stops, failures and resumes
    status.py       what `refinery status` and `refinery coder check` show

May import: config, jobqueue (the store, process helpers), agent's trackers, outbox, redact and sanitize.
Nothing outside agent/coder imports these modules except the daemon's wiring, the `refinery coder`
command, the reporter's ledger, and agent/daemon/{source,codeidea}.py (worktree.py's git, ideacheck.py).
"""
