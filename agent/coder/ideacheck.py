"""Code ideas (`ideas` + a lane + `code`): the issue's TOML spec is the coder's target.

    text, code = split_code_table(toml)        # the spec without its [code] table, and that table
    target_text(idea)                          # what the prompt adds: the spec, and what "done" means for it
    parse_in(tree, text, env)                  # the spec parsed by THAT tree's experiments.spec (a child process)
    control_spec(tree, given)                  # control = "base": the spec as the merge-base's tree knows it
    idea_checks(idea, wt, settings, env, dir)  # the coder's extra checks: `spec` parses there, `smoke` passes there

A branch that adds a setting makes a spec valid only in its own tree, so every parse of a code idea's spec runs
in the tree it is for: `python -c` with that tree as cwd and only PYTHONPATH entry (the daemon's config would
call the new key unknown). The smoke check runs `python -m experiments.stage smoke` of the spec on the CPU in
the worktree (CUDA hidden, within coder_smoke_s) and wants the verdict PASS.

The [code] table (not a config section) says how the idea is measured: `control = "base"` runs the ablation's
control arm from the branch's merge-base (agent/daemon/codeidea.py); it is taken out before the spec is parsed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import config
from agent.coder.checks import Check
from agent.redact import redact

CODE_TABLE = re.compile(r"^\s*\[\s*code\s*\]\s*(#.*)?$")
TABLE = re.compile(r"^\s*\[")
CONTROLS = ("reasoner", "base")
PARSE = ("import json, sys\nfrom experiments.spec import parse_spec\nr = parse_spec(sys.stdin.read())\n"
         "print(json.dumps({'ok': r.ok, 'errors': [e.text() for e in r.errors], 'spec': r.spec, 'given': r.given, "
         "'prereg': r.prereg}, default=str))")
FIELDS = "import json, config\nprint(json.dumps({'fields': sorted(config.FIELD_SECTION)}))"


def split_code_table(text: str) -> tuple[str, dict]:
    """(the spec without its [code] table, that table as a dict: {} when absent or unreadable)."""
    out, code_lines, inside = [], [], False
    for line in (text or "").splitlines():
        if CODE_TABLE.match(line):
            inside = True
            continue
        if inside and TABLE.match(line):
            inside = False
        (code_lines if inside else out).append(line)
    try:
        code = tomllib.loads("\n".join(code_lines))
    except tomllib.TOMLDecodeError:
        code = {"error": "the [code] table is not valid TOML"}
    return "\n".join(out) + ("\n" if out else ""), code


def control_of(code: dict) -> str | None:
    """The control the [code] table asks for, or None when it names none we know."""
    c = code.get("control", "reasoner")
    return c if c in CONTROLS else None


def target_text(idea: dict) -> str:
    return (f"\n\n---\nThis is a code idea: the target is this spec (the issue's ```toml block). The branch is done "
            f"when (besides the checks above) the spec parses in this worktree (every key it names exists in "
            f"config.py, with its unit and range) and a smoke stage of it passes on the CPU here "
            f"(`.venv/bin/python -m experiments.stage smoke --spec SPEC.toml --run-dir /tmp/smoke`). Add the setting "
            f"and the code behind it; a person reviews the commit, then refinery measures exactly that commit.\n\n"
            f"```toml\n{idea.get('toml', '').strip()}\n```\n")


def tree_env(tree: Path, base: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in base.items() if not k.startswith("REFINERY_")}
    env.update(PYTHONPATH=str(tree), CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def _in_tree(tree: Path, code: str, text: str, base_env: dict[str, str] | None, timeout: float) -> dict:
    env = tree_env(tree, dict(os.environ) if base_env is None else base_env)
    try:
        p = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, input=text, capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "errors": [f"reading the spec in {tree} took over {timeout:g} s"]}
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {"ok": False, "errors": ["the tree's experiments.spec could not run: " + redact(" | ".join(tail))]}
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"ok": False, "errors": ["the tree's parser printed no result"]}


def parse_in(tree: Path, text: str, base_env: dict[str, str] | None = None, timeout: float = 120.0) -> dict:
    """{ok, errors, spec, given, prereg} from the tree's own parser; ok False with the reason on any failure."""
    return _in_tree(tree, PARSE, text, base_env, timeout)


def control_spec(tree: Path, given: dict, base_env: dict[str, str] | None = None, timeout: float = 120.0) -> dict:
    """`[code] control = "base"`: the spec as the merge-base's tree knows it. {ok, errors, spec (the given keys
    that tree has), dropped (those it has not: the branch added them)}, checked by that tree's own parser."""
    fields = _in_tree(tree, FIELDS, "", base_env, timeout)
    if "fields" not in fields:
        return {"ok": False, "errors": fields.get("errors") or ["the merge-base named no settings"]}
    spec = {k: v for k, v in given.items() if k in fields["fields"]}
    parsed = parse_in(tree, "".join(f"{k} = {json.dumps(v)}\n" for k, v in spec.items()), base_env, timeout)
    return {**parsed, "spec": spec, "dropped": sorted(set(given) - set(spec))}


def run_smoke(tree: Path, spec_text: str, issue: int, out: Path, env: dict[str, str], limit_s: float) -> Check:
    out.mkdir(parents=True, exist_ok=True)
    spec_file = out / "idea-spec.json"
    spec_file.write_text(json.dumps({"toml": spec_text, "issue": issue}) + "\n")
    run_dir = out / "smoke"
    with open(out / "smoke.log", "wb") as log:
        p = subprocess.Popen([sys.executable, "-m", "experiments.stage", "smoke", "--spec", str(spec_file),
                              "--run-dir", str(run_dir)], cwd=tree, env=tree_env(tree, env), stdout=log,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            p.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            return Check("smoke", False, f"the CPU smoke stage of the spec ran over coder_smoke_s = {limit_s:g} s")
    try:
        res = json.loads((run_dir / "result.json").read_text())
    except (OSError, ValueError):
        res = {}
    verdict = res.get("verdict")
    if verdict != "PASS":
        tail = (out / "smoke.log").read_text(errors="replace")[-800:] if (out / "smoke.log").exists() else ""
        return Check("smoke", False, redact(f"the CPU smoke stage of the spec gave {verdict or 'no verdict'} (exit "
                                            f"{p.returncode}): {res.get('reason', '')}\n{tail}"))
    return Check("smoke", True, f"the CPU smoke stage of the spec passed in {res.get('wall_s', 0):.1f} s")


def idea_checks(idea: dict, wt: Path, issue: int, settings: config.Settings, env: dict[str, str],
                out: Path) -> list[Check]:
    text, code = split_code_table(idea.get("toml", ""))
    if control_of(code) is None:
        return [Check("spec", False, f"[code] control = {code.get('control')!r} is not one of "
                                     f"{', '.join(CONTROLS)}" if "error" not in code else code["error"]),
                Check("smoke", False, "not run: the spec does not parse")]
    parsed = parse_in(wt, text, env)
    if not parsed.get("ok"):
        return [Check("spec", False, "the spec does not parse in the worktree: " + "; ".join(parsed["errors"])[:800]),
                Check("smoke", False, "not run: the spec does not parse")]
    given = ", ".join(sorted(parsed.get("given") or {})) or "no keys"
    return [Check("spec", True, f"the spec parses in the worktree ({given})"),
            run_smoke(wt, text, issue, out, env, settings.coder.coder_smoke_s)]
