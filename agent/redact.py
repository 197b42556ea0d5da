"""Redaction: GitHub tokens and the Claude credential never leave the process in a log line, a comment, an
exception message or a file under runs/. Applied to every log handler and every outgoing body.

Cheap: the configured secrets are read once (config.load, the token file, the coder's credential) and again only
when an environment variable naming them changes or on refresh() (the daemon's SIGHUP), not on every log record."""

from __future__ import annotations

import logging
import os
import re
import threading

import config

# ghp_ (classic PAT), gho_ (OAuth), ghu_ (user-to-server), ghs_ (server-to-server), ghr_ (refresh),
# github_pat_ (fine-grained PAT)
# sk-ant-... (Anthropic API keys and Claude Code OAuth tokens, agent/coder/credential.py)
TOKEN_RE = re.compile(r"\b(?:gh[opusr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|sk-ant-[A-Za-z0-9_-]{20,})")
MASK = "[REDACTED]"


_SOURCES = ("GITHUB_TOKEN", "REFINERY_TOKEN_FILE", "REFINERY_ENV_FILE", "CREDENTIALS_DIRECTORY", "ANTHROPIC_API_KEY",
            "CLAUDE_CODE_OAUTH_TOKEN", "REFINERY_CODER_CREDENTIAL_FILE")
_lock = threading.Lock()
_cache: dict = {"key": None, "tokens": ()}  # the secrets read for this key of _SOURCES, longest first


def redact(text: str) -> str:
    """text with every token-shaped string and the configured token itself masked. The token is read once
    (and again when one of the environment variables naming it changes, or on refresh(): SIGHUP), never per call."""
    if not text:
        return text
    for token in _tokens():
        text = text.replace(token, MASK)
    return TOKEN_RE.sub(MASK, text)


def _tokens() -> tuple[str, ...]:
    key = tuple(os.environ.get(k) for k in _SOURCES)
    if _cache["key"] != key:
        with _lock:
            if _cache["key"] != key:
                _read(key)
    return _cache["tokens"]


def _read(key: tuple) -> None:
    known = set(_cache["tokens"])  # a rotated token stays masked: it may still be in an old message
    for token in (configured_token(), claude_secret()):
        if token and len(token) >= 8:
            known.add(token)
    _cache["tokens"] = tuple(sorted(known, key=len, reverse=True))
    _cache["key"] = key


def refresh() -> None:
    """Read the secrets again (SIGHUP: a rotated token file, a changed REFINERY_ENV_FILE)."""
    with _lock:
        _read(tuple(os.environ.get(k) for k in _SOURCES))


def claude_secret() -> str | None:
    """The coder's Claude credential (agent/coder/credential.py), whatever its shape."""
    from agent.coder.credential import configured_secret  # the coder's rules for where the credential lives

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
