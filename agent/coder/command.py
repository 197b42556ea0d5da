"""The Claude Code CLI as the coder runs it: which binary, its version, the command line, the settings
file refinery writes per run, the HOME it owns, and the allow-listed environment.

    cli = find_cli(settings)                       # CliMissing / CliVersion with the one line that fixes it
    plan = build(settings, cli, cred, item)        # argv, env, settings file written, prompt
    subprocess.Popen(plan.argv, cwd=item.worktree, env=plan.env, ...)

The session gets these tools and nothing else: Read, Edit, Write, Glob, Grep and Bash. Permission rules
(`--permission-mode dontAsk`: what is not allowed is denied, there is no TTY to ask on) let it edit inside its
worktree and its notes file, run the project's tests and lint, and use git locally (add, commit, status,
diff, log, show). `git push`, network tools and the GPU lock are denied. `--setting-sources user` with
HOME a directory refinery owns, plus `--settings FILE` written per run and `--strict-mcp-config`, so a
branch cannot bring hooks, permissions or MCP servers of its own choosing. The environment holds the
Claude credential and nothing secret besides: no GitHub token, no database URL, no systemd credentials.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import config

PKG = "@anthropic-ai/claude-code"
TOOLS = "Read,Edit,Write,Glob,Grep,Bash"
# what the session may run (Bash rules match whole commands; `*` stands for any rest of the line)
BASH_ALLOW = ("git add *", "git commit *", "git status*", "git diff*", "git log*", "git show*", "git rm *",
              "git mv *", "git restore *", "git stash*", "make test*", "make lint*", "ls*", "cat *", "head *",
              "tail *", "wc *", "grep *", "find *", "mkdir *", ".venv/bin/python -m pytest*",
              ".venv/bin/ruff check*", "python -m pytest*", "ruff check*")
BASH_DENY = ("git push*", "git remote*", "git config*", "git worktree*", "git checkout*", "git switch*",
             "git reset --hard*", "curl*", "wget*", "ssh*", "scp*", "nc *", "nvidia-smi*", "refinery*",
             "sudo*", "rm -rf /*")
ENV_PASS = ("PATH", "LANG", "LANGUAGE", "TZ", "TERM", "LC_ALL", "LC_CTYPE", "NODE_EXTRA_CA_CERTS",
            "ANTHROPIC_BASE_URL", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY")
ENV_FIXED = {"DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
             "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "CUDA_VISIBLE_DEVICES": "", "GIT_TERMINAL_PROMPT": "0",
             "GIT_CONFIG_NOSYSTEM": "1", "CI": "1"}


class CliMissing(config.RefineryError):
    """The Claude Code CLI is not installed where refinery looks.

    Fix: `make setup` (runs `npm ci`, installing the pinned version into node_modules/), or point
    REFINERY_CLAUDE_BIN at a `claude` binary. Agent-lane items wait queued meanwhile."""


class CliVersion(config.RefineryError):
    """The Claude Code CLI's version is not the one refinery is tested against.

    Fix: `make setup` installs the pinned version (package.json); REFINERY_CLAUDE_VERSION=any accepts any."""


@dataclass(frozen=True)
class Cli:
    path: str
    version: str


def pinned_version() -> str | None:
    try:
        return json.loads((config.ROOT / "package.json").read_text())["dependencies"][PKG]
    except (OSError, ValueError, KeyError):
        return None


def cli_path(settings: config.Settings) -> str:
    c = settings.coder
    if c.claude_bin:
        return c.claude_bin
    local = config.ROOT / "node_modules" / ".bin" / "claude"
    return str(local) if local.exists() else (shutil.which("claude") or str(local))


def find_cli(settings: config.Settings) -> Cli:
    """The CLI and its version; CliMissing or CliVersion (each one line saying how to fix it)."""
    path = cli_path(settings)
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL, env={"PATH": os.environ.get("PATH", ""), **ENV_FIXED})
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CliMissing(f"the Claude Code CLI is not runnable at {path} ({type(e).__name__}): run `make setup` "
                         f"(npm ci installs {PKG}@{pinned_version()}) or set REFINERY_CLAUDE_BIN") from None
    m = re.search(r"\d+\.\d+\.\d+", out.stdout)
    if out.returncode != 0 or not m:
        raise CliMissing(f"{path} --version failed (exit {out.returncode}): run `make setup` or set "
                         "REFINERY_CLAUDE_BIN")
    want = settings.coder.claude_version or pinned_version()
    if want and want != "any" and m.group(0) != want:
        raise CliVersion(f"{path} is Claude Code {m.group(0)}, refinery is tested against {want}: run `make setup` "
                         f"(npm ci) or set REFINERY_CLAUDE_VERSION=any")
    return Cli(path, m.group(0))


def git_identity(settings: config.Settings) -> dict[str, str]:
    m = re.fullmatch(r"\s*(.*?)\s*<([^>]+)>\s*", settings.coder.coder_git_author)
    name, email = (m.group(1), m.group(2)) if m else (settings.coder.coder_git_author, "coder@refinery.invalid")
    return {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email, "GIT_COMMITTER_NAME": name,
            "GIT_COMMITTER_EMAIL": email}


def session_env(settings: config.Settings, cred, home: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The CLI's environment: allow-listed names, the Claude credential, HOME, a git identity; no other secret."""
    base = os.environ if base is None else base
    env = {k: v for k, v in base.items() if k in ENV_PASS or k.startswith("LC_")}
    env.update(ENV_FIXED)
    env.update(git_identity(settings))
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_CACHE_HOME=str(home / ".cache"),
               TMPDIR=str(home / "tmp"), GIT_CONFIG_GLOBAL=str(home / ".gitconfig"))
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    if cred is not None:
        env[cred.var] = cred.value
    return env


def permissions(worktree: Path, notes: Path) -> dict:
    wt = str(worktree.resolve())
    inside = [f"{tool}(/{wt}/**)" for tool in ("Read", "Edit", "Write")]
    notes_rules = [f"{tool}(/{notes.resolve()})" for tool in ("Read", "Edit", "Write")]
    return {"allow": [*inside, *notes_rules, "Glob", "Grep", *(f"Bash({c})" for c in BASH_ALLOW)],
            "deny": ["WebFetch", "WebSearch", *(f"Bash({c})" for c in BASH_DENY)],
            "defaultMode": "dontAsk"}


def write_settings(path: Path, worktree: Path, notes: Path) -> Path:
    """The run's settings file: its permissions, no hooks, no MCP, nothing the branch chose."""
    doc = {"permissions": permissions(worktree, notes), "hooks": {}, "enableAllProjectMcpServers": False,
           "includeCoAuthoredBy": False, "cleanupPeriodDays": 365}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


@dataclass
class Item:
    """What one run is about (made by the driver from the claimed job)."""

    issue: int
    title: str  # sanitized
    body: str  # sanitized
    branch: str
    worktree: Path
    notes: Path
    attempt_dir: Path
    labels: tuple = ()
    session_id: str = ""
    resume: bool = False
    resume_why: str = ""
    protected: tuple = ()
    extra: dict = field(default_factory=dict)


def prompt(settings: config.Settings, item: Item) -> str:
    c = settings.coder
    protected = ", ".join(item.protected) or "none"
    if item.resume:
        return (f"refinery stopped this session earlier ({item.resume_why}) and resumes it now. Read the notes file "
                f"{item.notes} first, then continue the work on issue #{item.issue} where it stopped; do not redo what "
                f"is already committed on `{item.branch}`. The definition of done is unchanged.")
    return f"""You are run by refinery to work issue #{item.issue} in this git worktree ({item.worktree}), on the \
branch `{item.branch}` (already checked out; stay on it).

Read the notes file first: {item.notes}. It outlives this session; keep it current as you go (what you tried, \
what is left, decisions and why), so a resumed session can pick up.

Done means, and refinery checks each itself after you exit:
1. your change is committed on `{item.branch}` (at least one new commit; `git add` + `git commit`), and the \
worktree is clean;
2. `{c.coder_check_cmd}` passes in this worktree;
3. the diff touches none of these protected paths: {protected}.
Do not push (refinery pushes and opens the pull request), do not use the GPU, do not use the network.
Finish with a short summary of what changed and how it was tested.

The issue (sanitized text):

# {item.title}

{item.body}
"""


@dataclass(frozen=True)
class Plan:
    argv: list[str]
    env: dict[str, str]
    settings_file: Path


def build(settings: config.Settings, cli: Cli, cred, item: Item, home: Path) -> Plan:
    c = settings.coder
    sfile = write_settings(item.attempt_dir / "settings.json", item.worktree, item.notes)
    argv = [cli.path, "-p", prompt(settings, item), "--output-format", "stream-json", "--verbose",
            "--tools", TOOLS, "--permission-mode", "dontAsk", "--settings", str(sfile),
            "--setting-sources", "user", "--strict-mcp-config", "--max-turns", str(c.coder_max_turns)]
    if c.coder_max_usd > 0:
        argv += ["--max-budget-usd", f"{c.coder_max_usd:g}"]
    if c.coder_model:
        argv += ["--model", c.coder_model]
    argv += ["--resume", item.session_id] if item.resume else ["--session-id", item.session_id]
    return Plan(argv, session_env(settings, cred, home), sfile)


def shown(argv: list[str]) -> str:
    """The command line as `refinery coder check` prints it (the prompt shortened)."""
    out = list(argv)
    if "-p" in out:
        i = out.index("-p") + 1
        out[i] = "'<prompt: " + str(len(out[i])) + " chars>'"
    return " ".join(out)
