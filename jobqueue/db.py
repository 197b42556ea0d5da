"""The queue database: one declarative `Base` for every table, the engine, and transactions.

SQLite (the default) is tuned for a queue that several processes write at once:

- WAL journal, so readers never block the writer and the writer never blocks readers;
- `synchronous` from config (NORMAL: a commit survives kill -9 of any process, the last
  commits may be lost on power loss; FULL: survives power loss, every commit fsyncs);
- checkpoints every sqlite_checkpoint_pages WAL pages (10,000: a committing claim rarely pays for
  one; SQLite's 1,000 cost ~15 µs a claim) and on every worker maintenance pass (Store.checkpoint),
  so under NORMAL a power loss can lose at most the commits of the last heartbeat_s;
- a busy timeout, so a locked database is waited on rather than failed;
- every write transaction opens with BEGIN IMMEDIATE. pysqlite's own deferred BEGIN takes the
  write lock at the first UPDATE; two deferred readers that both try to upgrade deadlock and
  one gets SQLITE_BUSY at once, busy timeout or not. Taking the lock at BEGIN makes writers
  queue up on the busy timeout instead. This is SQLAlchemy's documented pysqlite recipe:
  isolation_level None on the DBAPI connection + a "begin" event that emits our own BEGIN.

PostgreSQL (psycopg 3) runs at READ COMMITTED; claims use FOR UPDATE SKIP LOCKED (store.py).

Schema creation and upgrades live in migrations.py (`init_db`); other packages keep their tables on a
base of their own and make them with `migrations.create_tables`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import DeclarativeBase

import config

_READ = "refinery_read"  # execution option: this transaction only reads (plain deferred BEGIN on SQLite)


class Base(DeclarativeBase):
    """Every queue table derives from this Base (one metadata, one create_all)."""


def is_sqlite(engine_or_url) -> bool:
    url = engine_or_url if isinstance(engine_or_url, str) else str(engine_or_url.url)
    return url.startswith("sqlite")


def normalise_url(url: str) -> str:
    """postgresql:// means psycopg 3 here (SQLAlchemy's bare default would be psycopg2)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str | None = None, settings: config.Settings | None = None) -> Engine:
    """An engine for `url` (default: settings.queue_url) with the pragmas and BEGIN rules above."""
    settings = settings or config.load()
    url = normalise_url(url or settings.queue_url)
    q = settings.queue
    if not is_sqlite(url):
        return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)

    if ":memory:" not in url:
        from pathlib import Path

        Path(url.split("sqlite:///", 1)[1].split("?", 1)[0]).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": q.sqlite_busy_timeout_ms / 1000.0,
                                              "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(q.sqlite_busy_timeout_ms)}")
        mode = cur.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        assert ":memory:" in url or mode.lower() == "wal", f"SQLite refused WAL mode ({mode})"
        cur.execute(f"PRAGMA synchronous = {q.sqlite_synchronous}")
        cur.execute(f"PRAGMA wal_autocheckpoint = {int(q.sqlite_checkpoint_pages)}")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(_READ) else "BEGIN IMMEDIATE")

    return engine


@contextmanager
def write_tx(engine: Engine) -> Iterator:
    """A Core connection inside one write transaction (BEGIN IMMEDIATE on SQLite); commits on
    success, rolls back on an exception."""
    with engine.begin() as conn:
        yield conn


@contextmanager
def read_tx(engine: Engine) -> Iterator:
    """A Core connection inside a read-only transaction (deferred BEGIN: no write lock)."""
    with engine.connect().execution_options(**{_READ: True}) as conn, conn.begin():
        yield conn


class Cursor:
    """A DBAPI cursor taking `:name` SQL (the store's `_sql` rewrites it per driver), returning rows as dicts."""

    __slots__ = ("store", "cur")

    def __init__(self, store, cur):
        self.store, self.cur = store, cur

    def _run(self, sql: str, params: dict) -> None:
        self.cur.execute(self.store._sql(sql), params)

    def execute(self, sql: str, params: dict) -> None:
        """Run a statement, draining any RETURNING rows (SQLite cannot commit with a statement open)."""
        self._run(sql, params)
        if self.cur.description is not None:
            self.cur.fetchall()

    def tuples(self, sql: str, params: dict) -> list[tuple]:
        """Rows as tuples, for statements whose column list is spelled out (the hot path)."""
        self._run(sql, params)
        return self.cur.fetchall()

    def _dicts(self) -> list[dict]:
        desc = self.cur.description  # psycopg builds it anew on each access (a Column per column): read it once
        if desc is None:
            return []
        names = [d[0] for d in desc]
        return [dict(zip(names, r)) for r in self.cur.fetchall()]

    def one(self, sql: str, params: dict) -> dict | None:
        self._run(sql, params)
        rows = self._dicts()
        return rows[0] if rows else None

    def all(self, sql: str, params: dict) -> list[dict]:
        self._run(sql, params)
        return self._dicts()

    def rowcount_of(self, sql: str, params: dict) -> int:
        self._run(sql, params)
        return self.cur.rowcount


def unique_violation(e: BaseException) -> bool:
    text = str(e)
    return "UNIQUE constraint failed" in text or "duplicate key value violates unique constraint" in text


class DbClock:
    """The one clock leases are judged by. SQLite (one host): this host's. PostgreSQL (several hosts): the
    database server's, as this host's clock plus the offset measured against it (one query, again every
    clock_check_s), so a host whose clock runs ahead neither steals live jobs nor keeps a dead host's.

        clock.now(None)  # the database's time now;  clock.now(t): t, a time read from this host's clock, moved onto it
    """

    def __init__(self, engine: Engine, check_s: float = 60.0):
        self.engine, self.check_s = engine, check_s
        self.skew = 0.0  # database minus this host, seconds
        self._checked = float("-inf")
        self._lock = threading.Lock()

    def now(self, now: float | None = None) -> float:
        local = time.time() if now is None else now
        if self.engine.dialect.name != "postgresql":
            return local
        if time.monotonic() - self._checked >= self.check_s:
            self.measure()
        return local + self.skew

    def measure(self) -> float:
        with self._lock:
            try:
                with self.engine.connect() as conn:
                    t0 = time.time()
                    db = float(conn.exec_driver_sql("SELECT extract(epoch from clock_timestamp())").scalar_one())
                    t1 = time.time()
                    conn.rollback()
            except Exception:  # noqa: BLE001 - unreachable: keep the last offset; the caller's own query says why
                return self.skew
            self.skew, self._checked = db - (t0 + t1) / 2, time.monotonic()
        return self.skew
