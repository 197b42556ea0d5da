"""agent.state: the agent's durable state, in the queue's database but not in the queue's schema.

    base.py          AgentBase (the agent tables' declarative base) and ensure_tables(engine)
    tables.py        the outbox, intake's memory per issue, a small key-value table (OutboxStore,
                     IntakeMemory, KeyValue)
    local_tables.py  the local tracker's issues, comments, label events and collaborators (LocalIssues)

All of the agent's SQL lives here; the daemon, the trackers and the CLI call these classes.
May import: config, jobqueue (the engine and transactions). Nothing else in agent/.
"""
