"""How an idle worker waits for work without polling the queue's tables.

PostgreSQL: LISTEN on NOTIFY_CHANNEL_<schema>; a trigger (migrations.py) NOTIFYs, at commit, on every row
that becomes claimable (per schema, so queues in other schemas of one database do not wake each other).
SQLite: `PRAGMA data_version`, which other connections' commits bump, re-read every idle_poll_s — a read
of shared memory, no lock, so waiting workers never slow the writers. Neither backs off: a job enqueued
after hours of quiet is seen as fast as one enqueued mid-burst.
"""

from __future__ import annotations

import time

NOTIFY_CHANNEL = "refinery_jobs"  # migrations.py's notify trigger sends on it, Waiter listens


class Waiter:
    """One connection kept for waiting (opened on first use, reopened after the server went away)."""

    def __init__(self, url: str, engine, idle_poll_s: float):
        self.url, self.engine, self.idle_poll_s = url, engine, idle_poll_s
        self.sqlite = url.startswith("sqlite")
        self._conn = None

    def wait(self, timeout: float) -> bool:
        """Block until the queue changes or `timeout` passes; True if woken."""
        deadline = time.monotonic() + timeout
        try:
            if self._conn is None:
                self._conn = self._open()
            if not self.sqlite:
                return any(True for _ in self._conn.notifies(timeout=max(0.0, timeout), stop_after=1))
            first = self._conn.execute("PRAGMA data_version").fetchone()[0]
            while time.monotonic() < deadline:
                time.sleep(min(self.idle_poll_s, max(0.0, deadline - time.monotonic())))
                if self._conn.execute("PRAGMA data_version").fetchone()[0] != first:
                    return True
            return False
        except Exception:  # noqa: BLE001 - the server went away: reconnect next time, wait out the timeout
            self.close()
            time.sleep(max(0.0, deadline - time.monotonic()))
            return False

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass

    def _open(self):
        if self.sqlite:
            import sqlite3

            return sqlite3.connect(self.url.split("sqlite:///", 1)[1].split("?", 1)[0], isolation_level=None,
                                   check_same_thread=False)
        import psycopg
        import psycopg.sql

        cargs, cparams = self.engine.dialect.create_connect_args(self.engine.url)
        conn = psycopg.connect(*cargs, **cparams, autocommit=True)
        schema = conn.execute("SELECT current_schema()").fetchone()[0]  # the trigger's TG_TABLE_SCHEMA
        conn.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(f"{NOTIFY_CHANNEL}_{schema}")))
        return conn
