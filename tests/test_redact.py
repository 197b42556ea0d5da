"""Redaction is cheap (issue #20, item 7): the configured secret is read once, and again on SIGHUP (the daemon's
reload) or when a variable naming it changes, never on every log record; a rotated token stays masked.

Run: .venv/bin/python -m pytest tests/test_redact.py -q
"""

from __future__ import annotations

import logging

from agent import redact
from agent.daemon.loop import Daemon
from tests.agent_support import settings_for

OLD, NEW = "plain-secret-one-0123", "plain-secret-two-4567"  # not token-shaped: only the configured value masks them


def _filtered(text: str) -> str:
    rec = logging.LogRecord("t", logging.INFO, __file__, 1, "%s", (text,), None)
    redact.RedactingFilter().filter(rec)
    return rec.getMessage()


def test_the_secret_is_read_once_and_again_on_reload(tmp_path, monkeypatch, sqlite_url):
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    monkeypatch.delenv("REFINERY_ENV_FILE", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text(OLD + "\n")
    monkeypatch.setenv("REFINERY_TOKEN_FILE", str(token_file))
    assert _filtered(f"auth {OLD}") == f"auth {redact.MASK}"
    token_file.write_text(NEW + "\n")  # rotated on disk: not read again per record
    for _ in range(1000):
        assert _filtered(f"auth {NEW}") == f"auth {NEW}"
    d = Daemon(settings_for(sqlite_url, tmp_path))
    d.reload()  # SIGHUP: the secrets are read again
    assert _filtered(f"auth {NEW}") == f"auth {redact.MASK}"
    assert redact.redact(f"old {OLD}") == f"old {redact.MASK}"  # the rotated-out token stays masked
    other = tmp_path / "other"
    other.write_text("plain-secret-three-89ab\n")
    monkeypatch.setenv("REFINERY_TOKEN_FILE", str(other))  # a variable naming the token changed: read again
    assert redact.redact("x plain-secret-three-89ab") == f"x {redact.MASK}"
