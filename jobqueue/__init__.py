"""jobqueue: the durable queue. Tables and states, the store (the only module with SQL), atomic
claims with leases and fencing tokens, the gpu/cpu/agent lanes, the GPU file lock, the
child-process runner (a pinned job's child runs from a read-only worktree of its commit: srctree.py),
crash recovery and schema migrations. SQLite by default, PostgreSQL to scale
out. Nothing of GitHub, issues or comments: the agent keeps its own tables (agent/state/).

Imports only `config`. Named jobqueue, not queue: a package called `queue` would shadow the
standard library's `queue`, which urllib3 (and so PyGithub) imports.
"""
