"""The Claude credential the coder hands to the CLI: an API key or a subscription's OAuth token.

Looked for, in order: ANTHROPIC_API_KEY, CLAUDE_CODE_OAUTH_TOKEN (the daemon's environment),
coder_credential_file, $CREDENTIALS_DIRECTORY/anthropic-token (systemd's LoadCredential=). A file holds
the bare secret; a value starting `sk-ant-oat` is an OAuth token (from `claude setup-token`), anything else
an API key. The value is never printed: `source` says where it came from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import config

OAUTH_PREFIX = "sk-ant-oat"
CRED_NAME = "anthropic-token"  # systemd: LoadCredential=anthropic-token:/path


class NoClaudeCredential(config.RefineryError):
    """REFINERY_CODER=claude but no Claude credential was found.

    Fix: set ANTHROPIC_API_KEY (or CLAUDE_CODE_OAUTH_TOKEN from `claude setup-token`), or put it in a file named
    by REFINERY_CODER_CREDENTIAL_FILE, or under systemd LoadCredential=anthropic-token:/path/to/file."""


@dataclass(frozen=True)
class Credential:
    var: str  # the environment variable the CLI reads: ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN
    value: str
    source: str  # where it came from, e.g. "env:ANTHROPIC_API_KEY", "file:/etc/refinery/anthropic"

    def __repr__(self) -> str:  # never the value
        return f"Credential({self.var} from {self.source})"


def _from_file(path: str, source: str) -> Credential | None:
    try:
        value = Path(path).read_text().strip()
    except OSError:
        return None
    if not value:
        return None
    if "=" in value.splitlines()[0] and value.split("=", 1)[0].strip() in ("ANTHROPIC_API_KEY",
                                                                              "CLAUDE_CODE_OAUTH_TOKEN"):
        name, value = (x.strip() for x in value.splitlines()[0].split("=", 1))
        return Credential(name, value, source)
    return Credential("CLAUDE_CODE_OAUTH_TOKEN" if value.startswith(OAUTH_PREFIX) else "ANTHROPIC_API_KEY", value,
                      source)


def find(settings: config.Settings | None = None, env: Mapping[str, str] | None = None) -> Credential | None:
    env = os.environ if env is None else env
    for var in ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"):
        if env.get(var, "").strip():
            return Credential(var, env[var].strip(), f"env:{var}")
    path = settings.coder.coder_credential_file if settings else ""
    if path:
        return _from_file(path, f"file:{path}")
    if env.get("CREDENTIALS_DIRECTORY"):
        p = os.path.join(env["CREDENTIALS_DIRECTORY"], CRED_NAME)
        return _from_file(p, f"systemd credential {CRED_NAME} ({p})")
    return None


def require(settings: config.Settings, env: Mapping[str, str] | None = None) -> Credential:
    cred = find(settings, env)
    if cred is None:
        raise NoClaudeCredential("no Claude credential: set ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN, "
                                 "REFINERY_CODER_CREDENTIAL_FILE, or the systemd credential anthropic-token")
    return cred


def configured_secret() -> str | None:
    """The credential's value, for redaction (agent/redact.py); None when there is none."""
    try:
        settings = config.load()
    except config.ConfigError:
        settings = None
    cred = find(settings)
    return cred.value if cred else None
