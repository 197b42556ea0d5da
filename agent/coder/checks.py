"""The evidence: after the CLI exits, refinery checks the work itself, trusting neither its exit code nor
its words. Each check is a Check(name, ok, detail); all of them go into the item's result.

    result      the result event is `success` and not `is_error`
    commits     the branch has at least one new commit
    clean       the worktree has no uncommitted change
    protected   the diff touches no protected path (coder_protected: PATH, DIR/ or FILE::Class), unless the
                issue carries coder_protected_label
    check       coder_check_cmd passes in the worktree within coder_check_s (own process group, an allow-listed
                environment without secrets; the daemon's .venv and token cache are lent to the worktree while
                pyproject.toml and constraints.txt are unchanged, so a check does not reinstall torch)

The cheap checks run first; the check command runs only when they pass (its tail is the failure's detail).
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import config
from agent.coder import worktree as wtree
from agent.redact import redact
from jobqueue.runner import ENV_ALLOW, ENV_DENY, ENV_DENY_WORDS

DEP_FILES = ("pyproject.toml", "constraints.txt")
LENT = (".venv", "runs/cache", "node_modules")  # what a worktree borrows from the daemon's checkout
CHECK_TAIL_CHARS = 2000


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""

    def line(self) -> str:
        return f"{'✅' if self.ok else '❌'} {self.name}" + (f" — {self.detail}" if self.detail else "")


def as_dicts(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]


def check_result(result: dict | None) -> Check:
    if result is None:
        return Check("result", False, "the CLI printed no result event")
    ok = result.get("subtype") == "success" and not result.get("is_error")
    return Check("result", ok, f"subtype {result.get('subtype')}, is_error {bool(result.get('is_error'))}")


def check_commits(wt: Path, start: str) -> Check:
    commits = wtree.new_commits(wt, start)
    if not commits:
        return Check("commits", False, "no proof of work: the branch has no new commit")
    return Check("commits", True, f"{len(commits)} new commit(s)")


def check_clean(wt: Path) -> Check:
    left = wtree.dirty(wt)
    return Check("clean", not left, "worktree clean" if not left else
                 f"{len(left)} uncommitted change(s): " + ", ".join(x[3:] for x in left[:5]))


def class_span(source: str, name: str) -> tuple[int, int] | None:
    """First and last line of top-level class `name` in Python `source`."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            return first, node.end_lineno or node.lineno
    return None


def touched_protected(wt: Path, start: str, protected: tuple) -> list[str]:
    files = wtree.changed_files(wt, start)
    hits = []
    for entry in protected:
        path, _, symbol = entry.partition("::")
        if symbol:
            if path not in files:
                continue
            span = class_span(wtree.file_at(wt, start, path), symbol)
            lines = wtree.changed_lines(wt, start, path)
            if span is None or any(span[0] <= n <= span[1] for n in lines):
                hits.append(entry)
        elif path.endswith("/"):
            hits += [f for f in files if f.startswith(path)]
        elif path in files:
            hits.append(path)
    return sorted(set(hits))


def check_protected(wt: Path, start: str, settings: config.Settings, labels: tuple) -> Check:
    c = settings.coder
    hits = touched_protected(wt, start, c.coder_protected)
    if not hits:
        return Check("protected", True, "no protected path touched")
    if c.coder_protected_label and c.coder_protected_label in labels:
        return Check("protected", True, f"touches {', '.join(hits)}, allowed by the label "
                                        f"`{c.coder_protected_label}`")
    return Check("protected", False, f"refused: the diff touches protected path(s) {', '.join(hits)} (never change "
                                     f"the gate in the same change as an idea; the label "
                                     f"`{c.coder_protected_label}` allows it)")


def lend_environment(wt: Path, home: Path) -> list[str]:
    """Symlink the daemon's .venv, runs/cache and node_modules into the worktree while the dependency files
    are the same (so `make` finds its install stamp and does not reinstall). Returns what was lent."""
    src = config.ROOT
    same = all((wt / f).exists() == (src / f).exists() and
               (not (wt / f).exists() or (wt / f).read_bytes() == (src / f).read_bytes()) for f in DEP_FILES)
    lent = []
    if not same:
        return lent
    for name in LENT:
        target, link = src / name, wt / name
        if target.exists() and not link.exists() and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(target.resolve())
            lent.append(name)
    if lent:  # keep the links out of `git status` (the worktree's own exclude file, not a tracked file)
        exclude = Path(wtree.git(wt, "rev-parse", "--git-path", "info/exclude"))
        exclude = exclude if exclude.is_absolute() else wt / exclude
        exclude.parent.mkdir(parents=True, exist_ok=True)
        have = exclude.read_text().splitlines() if exclude.exists() else []
        with open(exclude, "a") as f:
            for name in lent:
                if f"/{name}" not in have:
                    f.write(f"/{name}\n")
    return lent


def check_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if (k in ENV_ALLOW or k.startswith("LC_")) and k not in ENV_DENY
           and not any(w in k.upper() for w in ENV_DENY_WORDS) and not k.startswith("REFINERY_")}
    env.update(HOME=str(home), CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    return env


def run_check(wt: Path, settings: config.Settings, home: Path, log_path: Path) -> Check:
    c = settings.coder
    lent = lend_environment(wt, home)
    t0 = time.time()
    with open(log_path, "wb") as log:
        p = subprocess.Popen(["/bin/sh", "-c", c.coder_check_cmd], cwd=wt, env=check_env(home),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
        try:
            out, _ = p.communicate(timeout=c.coder_check_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate()
            timed_out = True
        finally:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        text = redact(out.decode(errors="replace"))
        log.write(text.encode())
    took = time.time() - t0
    tail = text[-CHECK_TAIL_CHARS:]
    note = f" (borrowed {', '.join(lent)})" if lent else ""
    if timed_out:
        return Check("check", False, f"`{c.coder_check_cmd}` ran over its {c.coder_check_s:g} s limit{note}\n{tail}")
    if p.returncode != 0:
        return Check("check", False, f"`{c.coder_check_cmd}` failed (exit {p.returncode}, {took:.1f} s){note}\n{tail}")
    return Check("check", True, f"`{c.coder_check_cmd}` passed in {took:.1f} s{note}")


def run_all(result: dict | None, wt: Path, start: str, settings: config.Settings, labels: tuple, home: Path,
            log_path: Path) -> list[Check]:
    checks = [check_result(result), check_commits(wt, start), check_clean(wt),
              check_protected(wt, start, settings, labels)]
    if all(c.ok for c in checks):
        checks.append(run_check(wt, settings, home, log_path))
    else:
        checks.append(Check("check", False, "not run: an earlier check failed"))
    return checks
