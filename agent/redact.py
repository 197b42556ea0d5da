"""Redaction: GitHub tokens and the Claude credential never leave the process in a log line, a comment, an exception
message or a file under runs/. Applied to every log handler and every outgoing body."""

from __future__ import annotations

import logging
import re

import config

# ghp_ (classic PAT), gho_ (OAuth), ghu_ (user-to-server), ghs_ (server-to-server), ghr_ (refresh),
# github_pat_ (fine-grained PAT)
# sk-ant-... (Anthropic API keys and Claude Code OAuth tokens, agent/coder/credential.py)
TOKEN_RE = re.compile(r"\b(?:gh[opusr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|sk-ant-[A-Za-z0-9_-]{20,})")
MASK = "[REDACTED]"


def redact(text: str) -> str:
    """text with every token-shaped string and the configured token itself masked."""
    if not text:
        return text
    for token in (configured_token(), claude_secret()):
        if token and len(token) >= 8:
            text = text.replace(token, MASK)
    return TOKEN_RE.sub(MASK, text)


def claude_secret() -> str | None:
    """The coder's Claude credential (agent/coder/credential.py), whatever its shape."""
    from agent.coder.credential import configured_secret

    return configured_secret()


def configured_token() -> str | None:
    """The token this process would use: GITHUB_TOKEN, REFINERY_TOKEN_FILE (environment or REFINERY_ENV_FILE)
    or the systemd credential, as the tracker reads it."""
    try:
        settings = config.load()
    except config.ConfigError:  # a bad setting elsewhere must not switch redaction off
        settings = None
    return config.read_github_token(settings=settings)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message (install on every handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = ()
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
