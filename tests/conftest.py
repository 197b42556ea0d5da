"""Shared fixtures. Run everything: `make test`; the fast subset: `make test-fast` (both over TEST_WORKERS
pytest-xdist workers; every test owns its temporary directory, PostgreSQL schema and server ports).

`db_url` runs a test twice: against a fresh SQLite file and against the real PostgreSQL
server (127.0.0.1:5432, database `test`), each PostgreSQL test in a schema of its own that
is dropped afterwards. With REFINERY_REQUIRE_POSTGRES=1 (CI) an unreachable server fails
the run instead of skipping, and a run in which no postgres test passed fails too.
"""

from __future__ import annotations

import os
import uuid

import pytest

PG_ADMIN = os.environ.get("REFINERY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("REFINERY_REQUIRE_POSTGRES") == "1"
_pg_passed = 0


def _pg_connect():
    import psycopg

    return psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)


@pytest.fixture(scope="session")
def pg_available() -> bool:
    try:
        _pg_connect().close()
        return True
    except Exception as e:  # noqa: BLE001 - any failure means "no server"
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL is required (REFINERY_REQUIRE_POSTGRES=1) but unreachable: {e}")
        return False


@pytest.fixture
def pg_url(pg_available):
    """A SQLAlchemy URL pointing at a fresh schema of the test database (dropped afterwards)."""
    if not pg_available:
        pytest.skip("PostgreSQL not reachable on 127.0.0.1:5432")
    schema = "t_" + uuid.uuid4().hex[:12]
    with _pg_connect() as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    base = PG_ADMIN.replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{base}?options=-csearch_path%3D{schema}"
    with _pg_connect() as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path}/queue.db"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """The same test against SQLite and PostgreSQL (one contract suite for both backends)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/queue.db"
    return request.getfixturevalue("pg_url")


def pytest_runtest_logreport(report):
    global _pg_passed
    if report.when == "call" and report.passed and "postgres" in report.keywords:
        _pg_passed += 1


# The files of the longest tests (a minute or more each on 2 cores, `pytest --durations=30`), longest first.
LONGEST_FIRST = ("test_e2e.py", "test_slow_github.py", "test_chaos.py", "test_code_ideas_e2e.py",
                 "test_daemon_hosts.py", "test_stages.py", "test_signals.py", "test_clock_skew.py")


def pytest_collection_modifyitems(config, items):
    """The slow tests first, the longest of them first (a stable sort): `make test` deals tests to pytest-xdist
    workers in turn, so each worker starts on a long one and no two-minute test is left for the run's tail."""
    def key(item):
        name = item.path.name
        return (item.get_closest_marker("slow") is None,
                LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST))

    items.sort(key=key)


def pytest_sessionfinish(session, exitstatus):
    if hasattr(session.config, "workerinput"):
        return  # an xdist worker: the controller sees every worker's reports and judges the whole run
    if REQUIRE_PG and exitstatus == 0 and session.testscollected and _pg_passed == 0 \
            and not session.config.option.markexpr:
        print("\nCI: no postgres test passed (were they skipped?) — failing the run")
        session.exitstatus = 1
