"""`refinery service install [--user]`: the systemd unit, rendered with this checkout's paths.

The templates live in systemd/ (refinery.service for the system manager, refinery-user.service
for `systemctl --user`); @NAMES@ in them are filled in here. The unit runs the installed
`refinery daemon` binary itself (no shell wrapper), as Type=notify with a watchdog
(agent/ops/sdnotify.py), stops it with SIGINT (a warm stop) and gives it stop_timeout_s to
checkpoint, passes the GitHub token as a credential, and sandboxes it with ProtectSystem=strict
while leaving runs/, docs/, the repository's .git (findings commits) and the archive writable.
systemd/README.md explains each choice.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TextIO

import config
from config import RefineryError

UNIT_NAME = "refinery.service"
TEMPLATES = {False: "refinery.service", True: "refinery-user.service"}
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
SYSTEM_ETC = Path("/etc/refinery")  # refinery.env and github-token for the system unit
_PLACEHOLDER = re.compile(r"@[A-Z_]+@")
_UNSAFE = re.compile(r"[\s\"'\\;$`]|[\x00-\x1f]")  # characters a unit-file path may not carry unquoted


class ServiceError(RefineryError):
    """The systemd unit could not be rendered or installed.

    Fix: for a system unit run `sudo refinery service install` (it writes /etc/systemd/system);
    without root use `refinery service install --user`. Paths with spaces or quotes cannot go
    into the unit: move the checkout (or the archive) to a plain path.
    """


def user_unit_dir(env: dict | None = None) -> Path:
    env = os.environ if env is None else env
    base = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "systemd" / "user"


def user_etc(env: dict | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "refinery"


def find_binary() -> Path:
    """The `refinery` console script of the environment we run in (the checkout's .venv)."""
    candidates = [Path(sys.executable).parent / "refinery", config.ROOT / ".venv" / "bin" / "refinery"]
    which = shutil.which("refinery")
    candidates += [Path(which)] if which else []
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c.absolute()
    raise ServiceError("no installed `refinery` binary found (looked next to this Python and in .venv/bin); "
                       "run `make` or `.venv/bin/pip install -e .` first")


def default_user(repo: Path) -> str:
    """Who the system unit runs as: the sudo caller, else the owner of the checkout."""
    if os.geteuid() == 0 and os.environ.get("SUDO_USER"):
        return os.environ["SUDO_USER"]
    try:
        return pwd.getpwuid(repo.stat().st_uid).pw_name
    except KeyError:
        return str(repo.stat().st_uid)


def git_dir(repo: Path) -> Path | None:
    """The repository's shared git directory (findings commits write there), if it is a git checkout."""
    if (repo / ".git").is_dir():
        return repo / ".git"
    try:
        out = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-common-dir"], cwd=repo,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None


def _path(p: Path | str, what: str) -> str:
    s = str(Path(p).absolute())
    if _UNSAFE.search(s):
        raise ServiceError(f"{what} {s!r} contains a space, quote or control character; "
                           "a unit file cannot carry it unquoted")
    return s.replace("%", "%%")  # systemd specifier escape


def data_dirs(repo: Path, settings: config.Settings) -> tuple[Path, Path]:
    """runs/ and docs/ as the settings place them (runs_dir, docs_dir; relative = under the checkout)."""
    runs = getattr(settings.queue, "runs_dir", "runs") or "runs"
    docs = getattr(settings.daemon, "docs_dir", "docs") or "docs"
    return repo / runs, repo / docs  # an absolute setting replaces repo


def sqlite_dir(repo: Path, settings: config.Settings) -> Path | None:
    """The directory of a SQLite queue outside runs/ (SQLite writes its -wal and -shm files beside the
    database, so the directory must be writable); None for PostgreSQL, in-memory or a queue under runs/."""
    url = settings.queue_url
    if not url.startswith("sqlite:///") or ":memory:" in url:
        return None
    d = (repo / url.split("sqlite:///", 1)[1].split("?", 1)[0]).parent  # relative: to the checkout (the unit's cwd)
    runs = data_dirs(repo, settings)[0]
    return None if d.absolute().is_relative_to(runs.absolute()) else d


def writable_paths(repo: Path, archive_dir: str, settings: config.Settings) -> list[str]:
    """ReadWritePaths=: runs/ and docs/ (must exist), a SQLite queue's directory outside runs/, .git (findings
    commits), the archive ('-' = may be absent, so an unmounted archive disk does not stop the daemon from
    starting)."""
    runs, docs = data_dirs(repo, settings)
    out = [_path(runs, "runs_dir"), _path(docs, "docs_dir")]
    db = sqlite_dir(repo, settings)
    if db is not None:
        out.append(_path(db, "the queue database's directory"))
    g = git_dir(repo)
    if g is not None:
        out.append(_path(g, "the git directory"))
    if archive_dir:
        out.append("-" + _path(archive_dir, "archive_dir"))
    return out


def unit_settings(env_file: Path | str) -> config.Settings:
    """The settings the installed daemon will see: the environment, then the unit's own environment file
    (the unit sets REFINERY_ENV_FILE=-ENVFILE, so its lines win and a missing file is no error). Read here so
    that a REFINERY_ARCHIVE_DIR put in that file, as the next steps suggest, reaches ReadWritePaths=."""
    return config.load({**os.environ, "REFINERY_ENV_FILE": f"-{env_file}"})


def render_unit(user: bool, repo: Path | str | None = None, binary: Path | str | None = None,
                run_as: str | None = None, archive_dir: str | None = None, credential: Path | str | None = None,
                env_file: Path | str | None = None, settings: config.Settings | None = None) -> str:
    """The unit file text for this checkout. user=True renders the `systemctl --user` variant."""
    repo = Path(repo or config.ROOT).absolute()
    etc = user_etc() if user else SYSTEM_ETC
    settings = settings or unit_settings(env_file or etc / "refinery.env")
    archive = settings.daemon.archive_dir if archive_dir is None else archive_dir
    if archive and not Path(archive).is_absolute():
        archive = str(repo / archive)
    values = {
        "REPO": _path(repo, "the checkout"),
        "BIN": _path(binary or find_binary(), "the refinery binary"),
        "ENVFILE": _path(env_file or etc / "refinery.env", "the environment file"),
        "CREDENTIAL": _path(credential or etc / "github-token", "the token file"),
        "STOP_TIMEOUT": f"{int(round(settings.daemon.stop_timeout_s))}s",
        "WATCHDOG": f"{int(round(settings.daemon.watchdog_s))}s",
        "RW_PATHS": " ".join(writable_paths(repo, archive, settings)),
    }
    if not user:
        name = run_as or default_user(repo)
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?", name):
            raise ServiceError(f"User={name!r} is not a valid user name")
        values["USER"] = name
    text = (config.ROOT / "systemd" / TEMPLATES[user]).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    left = _PLACEHOLDER.findall(text)
    if left:
        raise ServiceError(f"template {TEMPLATES[user]} has unfilled placeholders: {', '.join(sorted(set(left)))}")
    return text


def next_steps(user: bool, unit_path: Path, credential: Path, env_file: Path) -> str:
    """The commands to run after install, as text."""
    sc, sudo = ("systemctl --user", "") if user else ("systemctl", "sudo ")
    journal = "journalctl --user -u refinery -f" if user else "journalctl -u refinery -f"
    lines = [
        f"Wrote {unit_path}.",
        "",
        "1. Put the GitHub token in the credential file (paste it, then Ctrl-D; it never touches your shell history):",
        f"     {sudo}sh -c 'umask 077; cat > {credential}'",
        "   The daemon reads it from $CREDENTIALS_DIRECTORY/github-token; stages never see it.",
        f"2. Put settings in {env_file} (one REFINERY_*=value per line), for example:",
        "     REFINERY_TRACKER=github",
        "     REFINERY_GITHUB_REPO=owner/name",
        "     REFINERY_ARCHIVE_DIR=/mnt/cold/refinery   # then re-run this install: the archive must be writable",
        "3. Start it:",
        f"     {sudo}{sc} daemon-reload",
        f"     {sudo}{sc} enable --now refinery",
        f"     {sc} status refinery; {journal}",
    ]
    if user:
        lines += ["4. Keep it running while you are logged out:", "     loginctl enable-linger $USER"]
    lines += ["Reload settings: systemctl reload (SIGHUP). Stop: systemctl stop (a warm stop; jobs resume on start)."]
    return "\n".join(lines)


def install(user: bool, print_only: bool = False, unit_dir: Path | str | None = None, etc_dir: Path | str | None = None,
            out: TextIO | None = None, **render_kw) -> Path | None:
    """Write the unit (and an empty 0600 token file if none exists), then print the next commands.
    print_only: print the unit instead and write nothing."""
    out = out or sys.stdout
    etc = Path(etc_dir) if etc_dir else (user_etc() if user else SYSTEM_ETC)
    credential, env_file = etc / "github-token", etc / "refinery.env"
    render_kw.setdefault("credential", credential)
    render_kw.setdefault("env_file", env_file)
    if render_kw.get("settings") is None:
        render_kw["settings"] = unit_settings(render_kw["env_file"])
    text = render_unit(user, **render_kw)
    if print_only:
        out.write(text)
        return None
    unit_dir = Path(unit_dir) if unit_dir else (user_unit_dir() if user else SYSTEM_UNIT_DIR)
    unit_path = unit_dir / UNIT_NAME
    repo = Path(render_kw.get("repo") or config.ROOT).absolute()
    try:
        settings = render_kw["settings"]
        for d in (*data_dirs(repo, settings), sqlite_dir(repo, settings)):
            if d is not None:
                d.mkdir(parents=True, exist_ok=True)  # ReadWritePaths= entries must exist or the unit fails to start
        unit_dir.mkdir(parents=True, exist_ok=True)
        etc.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not credential.exists():
            fd = os.open(credential, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)  # empty = no token (the local tracker needs none); LoadCredential= needs the file
        tmp = unit_path.with_name(UNIT_NAME + ".tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, unit_path)
    except PermissionError as e:
        raise ServiceError(f"cannot write {e.filename}: permission denied; run `sudo {Path(sys.argv[0]).name} "
                           "service install` or install the user unit with --user") from e
    out.write(next_steps(user, unit_path, Path(render_kw["credential"]), Path(render_kw["env_file"])) + "\n")
    return unit_path


def analyze_verify(unit_text: str, work_dir: Path, user: bool = False) -> tuple[int, str] | None:
    """Run `systemd-analyze verify` on the text (saved as work_dir/refinery.service): (rc, the lines about
    this unit). None when the tool is not installed."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        return None
    path = Path(work_dir) / UNIT_NAME
    path.write_text(unit_text)
    env = dict(os.environ)
    if user:
        rt = Path(work_dir) / "xdg-runtime"
        rt.mkdir(mode=0o700, exist_ok=True)
        if not Path(env.get("XDG_RUNTIME_DIR") or "/nonexistent").is_dir():
            env["XDG_RUNTIME_DIR"] = str(rt)  # the user manager's verify needs a runtime directory
    cmd = [tool, *(["--user"] if user else []), "verify", "--man=no", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    ours = [ln for ln in (proc.stdout + proc.stderr).splitlines() if UNIT_NAME in ln or str(path) in ln]
    return proc.returncode, "\n".join(ours)
