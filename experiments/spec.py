"""The spec schema: a TOML document whose keys are `config.py` fields, plus an optional [prereg].

    r_max = 8                       # flat keys, or grouped under [model] / [train] / [stages]
    [stages]
    khop_k = 4
    [prereg]                        # pre-registration, written before anything runs
    hypothesis = "the gate lets the loop hold its answer once found"
    primary_task = "khop"
    expected_delta = 15             # points, refiner − reasoner on the primary task
    kill_if = "Δ < 5 points on khop"

`parse_spec(text)` returns the effective spec (defaults filled in) or every error, each with its
line, key, what was wrong and a suggestion. Validation is config.py's own (`coerce`, `suggest`,
`Settings.replace`), so a spec and an environment variable are checked by the same code. A spec
may set model, train and stages fields only: hardware, queue, daemon and the gate's thresholds are
the operator's, not an idea's (a spec that could lower the bar would make the gate meaningless).
The daemon's intake calls this same function on the ```toml block of an issue body.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import config
from config import FIELD_SECTION, ConfigError, RefineryError, Settings

SPEC_SECTIONS = ("model", "train", "stages")
# Names people reach for that difflib cannot map (a looped model's vocabulary, not config's)
ALIASES = {"n_refine": "r_max", "n_loops": "r_max", "loops": "r_mean", "n_iter": "r_mean", "depth": "r_mean",
           "recurrence": "r_mean", "learning_rate": "lr", "model": "arch", "architecture": "arch",
           "steps": "ablation_steps", "seeds": "ablation_seeds", "size": "preset", "hops": "khop_k",
           # nanoGPT's names
           "n_embd": "d_model", "n_head": "n_heads", "d_ff": "d_mlp", "n_layer": "r_mean", "n_layers": "r_mean"}
PREREG_KEYS = {"hypothesis": str, "primary_task": str, "expected_delta": (int, float), "kill_if": str}


class SpecInvalid(RefineryError):
    """An idea's spec has unknown keys, wrong types or out-of-range values (each listed with its line).

    Fix: change the named lines as suggested; `refinery config` lists every key with its range.
    """


@dataclass(frozen=True)
class SpecError:
    line: int | None  # 1-based line in the text given (plus line_offset), None when unknown
    key: str
    message: str
    suggestion: str = ""

    def text(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        hint = f" — {self.suggestion}" if self.suggestion else ""
        return f"{where}{self.key}: {self.message}{hint}"


@dataclass
class SpecResult:
    ok: bool
    spec: dict[str, Any] = field(default_factory=dict)  # effective flat spec: every spec-section field
    settings: Settings | None = None
    prereg: dict[str, Any] | None = None
    errors: list[SpecError] = field(default_factory=list)
    given: dict[str, Any] = field(default_factory=dict)  # the keys the author wrote, coerced

    def error_text(self) -> str:
        return "\n".join(e.text() for e in self.errors)


def _key_lines(text: str) -> dict[tuple[str, str], int]:
    """(table, key) -> 1-based line of its assignment. tomllib keeps no positions, so scan lines."""
    out: dict[tuple[str, str], int] = {}
    table = ""
    for no, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        m = re.match(r"^\[\s*([A-Za-z0-9_.\-]+)\s*\]", s)
        if m:
            table = m.group(1)
            out.setdefault((table, ""), no)
            continue
        m = re.match(r'^["\']?([A-Za-z0-9_\-]+)["\']?\s*=', s)
        if m:
            out.setdefault((table, m.group(1)), no)
    return out


def _line_of(lines: dict, key: str) -> int | None:
    for (_, k), no in lines.items():
        if k == key:
            return no
    return None


def spec_fields() -> list[str]:
    return [k for k, sec in FIELD_SECTION.items() if sec in SPEC_SECTIONS]


def effective(settings: Settings) -> dict[str, Any]:
    """The flat effective spec: every model/train/stages field, tuples as lists (JSON-ready)."""
    out = {k: settings.get(k) for k in spec_fields()}
    out = {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
    out["dims"] = settings.dims
    out["r_eval_effective"] = settings.r_eval
    return out


def parse_spec(text: str, base: Settings | None = None, line_offset: int = 0) -> SpecResult:
    """Parse a spec. `base` defaults to config.load() (defaults < profile < environment);
    `line_offset` shifts reported lines (the spec's first line within an issue body, minus one)."""
    errors: list[SpecError] = []

    def err(line, key, message, suggestion=""):
        errors.append(SpecError(line + line_offset if line else None, key, message, suggestion))

    try:
        doc = tomllib.loads(text or "")
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        line = int(m.group(1)) if m else (len(text.splitlines()) if "end of document" in str(e) else None)
        # tomllib counts lines within the block; ours count within the issue body, so keep only its column
        col = re.search(r"\(at line \d+, column (\d+)\)", str(e))
        why = re.sub(r"\s*\(at (?:line \d+, column \d+|end of document)\)", "", str(e))
        err(line, "toml", f"not valid TOML: {why}" + (f" (column {col.group(1)})" if col else ""),
            'write key = value, strings in "quotes", lists as ["a", "b"]')
        return SpecResult(False, errors=errors)
    lines = _key_lines(text)
    flat: dict[str, Any] = {}
    where: dict[str, int | None] = {}
    prereg = None
    for key, value in doc.items():
        if key == "prereg":
            if not isinstance(value, dict):
                err(_line_of(lines, key), key, "must be a table", "write [prereg] on its own line, then its keys")
            else:
                prereg = _check_prereg(value, lines, err)
        elif key in SPEC_SECTIONS and isinstance(value, dict):
            for k, v in value.items():
                if k in FIELD_SECTION and FIELD_SECTION[k] != key:
                    err(lines.get((key, k)), k, f"belongs to [{FIELD_SECTION[k]}], not [{key}]",
                        f"move it under [{FIELD_SECTION[k]}] or write it before any table")
                    continue
                flat[k], where[k] = v, lines.get((key, k))
        elif isinstance(value, dict) and key in config.SECTIONS:  # [gate], [queue], ...: the operator's
            err(lines.get((key, "")), f"[{key}]", f"holds {key} settings, which a spec may not change",
                "remove the table; the operator sets them in the environment (REFINERY_<FIELD>)")
        elif isinstance(value, dict):
            hint = config.suggest_choice(key, SPEC_SECTIONS + ("prereg",))
            err(lines.get((key, "")), f"[{key}]", "unknown table", hint)
        else:
            flat[key], where[key] = value, lines.get(("", key))
    base = base or config.load()
    given: dict[str, Any] = {}
    for key, value in flat.items():
        line = where.get(key)
        if key not in FIELD_SECTION:
            err(line, key, "unknown key", f'did you mean "{ALIASES[key]}"?' if key in ALIASES else config.suggest(key))
        elif FIELD_SECTION[key] not in SPEC_SECTIONS:
            err(line, key, f"is a {FIELD_SECTION[key]} setting, which a spec may not change",
                "remove it; the operator sets it in the environment (REFINERY_" + key.upper() + ")")
        else:
            try:
                given[key] = config.coerce(key, value)
            except ConfigError as e:
                for p in e.problems:
                    err(line, key, p.message, p.suggestion)
    settings = None
    if not any(e.key in given for e in errors):  # cross-field rules too, even when other keys were bad
        try:
            settings = base.replace(given, sources={k: f"spec line {where.get(k)}" for k in given}, source="spec")
        except ConfigError as e:
            for p in e.problems:
                err(where.get(p.key) or _line_of(lines, p.key), p.key, p.message, p.suggestion)
    if prereg:
        pt, tasks = prereg.get("primary_task"), (settings or base).stages.tasks
        if pt and pt not in tasks:
            err(lines.get(("prereg", "primary_task")), "prereg.primary_task", f"{pt!r} is not one of the "
                f"ablation's depth tasks ({', '.join(tasks)})", config.suggest_choice(pt, tasks))
    if errors:
        return SpecResult(False, errors=errors, prereg=prereg, given=given)
    return SpecResult(True, spec=effective(settings), settings=settings, prereg=prereg, given=given)


def spec_from_file(path: str | Path | None, base: Settings | None = None) -> SpecResult:
    """The spec in a .toml file (None: the defaults), or SpecInvalid naming the file and every problem."""
    if path is None:
        return parse_spec("", base)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise SpecInvalid(f"cannot read spec file {path} ({e.strerror}): give the path of a .toml spec, "
                          "e.g. experiments/specs/demo.toml") from None
    res = parse_spec(text, base)
    if not res.ok:
        raise SpecInvalid(f"{path}: " + "; ".join(e.text() for e in res.errors))
    return res


def _check_prereg(table: dict, lines: dict, err) -> dict:
    out = {}
    for k, v in table.items():
        line = lines.get(("prereg", k))
        if k not in PREREG_KEYS:
            err(line, f"prereg.{k}", "unknown key", config.suggest_choice(k, tuple(PREREG_KEYS)))
        elif not isinstance(v, PREREG_KEYS[k]) or isinstance(v, bool):
            kind = "a number of points" if k == "expected_delta" else "text in quotes"
            err(line, f"prereg.{k}", f"{v!r} is not {kind}", f"write {k} as {kind}")
        else:
            out[k] = v
    if out and "hypothesis" not in out:
        err(lines.get(("prereg", "")), "prereg.hypothesis", "missing", 'add hypothesis = "what you expect and why"')
    return out


_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*toml\s*$", re.IGNORECASE)


def extract_toml_block(issue_body: str) -> tuple[str | None, int]:
    """The first ```toml fenced block of an issue body: (its text, the 1-based body line of its
    first line). (None, 0) when there is none. Pass line_offset = first_line - 1 to parse_spec."""
    lines = (issue_body or "").splitlines()
    for i, line in enumerate(lines):
        m = _FENCE.match(line)
        if not m:
            continue
        fence = m.group(2)
        body = []
        for line2 in lines[i + 1:]:
            if line2.strip().startswith(fence[0] * len(fence)) and set(line2.strip()) == {fence[0]}:
                return "\n".join(body) + "\n", i + 2
            body.append(line2)
        return "\n".join(body) + "\n", i + 2  # unclosed fence: take the rest
    return None, 0


def spec_from_issue(issue_body: str, base: Settings | None = None) -> SpecResult:
    """No block: the defaults of the configured architecture (an empty spec)."""
    text, first = extract_toml_block(issue_body)
    return parse_spec(text or "", base=base, line_offset=max(first - 1, 0))
