"""`refinery verify FINDING.md`: every number in a finding and in its issue's comments, re-derived from the runs.

For each stage of the finding, its run directory is re-derived (experiments/verify.py: the per-seed records,
decided again by the gate of the evaluation fingerprint the run recorded). The finding is then written again by the
same formatter that wrote it (report.finding_markdown) from the re-derived results, the run's config.json prereg and
the pre-registration hash recomputed from it; the two texts are aligned line by line on their words (numbers set
aside) and every number, hash and verdict is compared. The comments are checked the same way where they state what a
run decided: each result comment's verdict line, evidence table, pre-registration score and run line; the first
comment's pre-registration hash and effective spec. Whatever a comment says that no run artifact holds (the cost so
far, what is queued next) is counted as not re-derivable, never as verified.

A mismatch names where (the finding's line, or the comment's key), what the document says and what the artifacts
give. result.json is checked too: a verdict or number it records that the per-seed records do not give is a mismatch.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import config
from agent.reporting import report
from experiments import verify as rv

HEX = r"(?<![0-9A-Za-z])(?=[0-9a-f]*[a-f])[0-9a-f]{12,}(?![0-9A-Za-z])"
TOKEN = re.compile(HEX + r"|[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
TITLE_STAGE = {v: k for k, v in report.STAGE_TITLE.items()}
STAGE_HEAD = re.compile(r"^## (.+): ([A-Z]+)$")
RUN_LINE = re.compile(r"^Run `([^`]*)` · job (\d+) · wall")
RESULT_KEY = re.compile(r"<!-- refinery:(i\d+/j(\d+)/([a-z]+)/(?:result|failed-a\d+)) -->")
COMMENT_RUN = re.compile(r"Run directory: `([^`]*)` · job (\d+)")
HASH_LINE = re.compile(r"Pre-registration sha256: `([0-9a-f]{64})`")


@dataclass
class Report:
    finding: str
    mismatches: list[str] = field(default_factory=list)
    numbers_checked: int = 0
    lines_checked: int = 0
    comments_checked: int = 0
    not_derivable: int = 0  # comment lines with numbers no artifact holds (cost, queue)
    runs: list[dict] = field(default_factory=list)  # {stage, run_dir, how, verdict}
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def tokens(line: str) -> tuple[str, list[str]]:
    """(the line with every number and hash replaced by #, those numbers and hashes in order)."""
    return TOKEN.sub("#", line), TOKEN.findall(line)


def _same(a: str, b: str) -> bool:
    if re.fullmatch(HEX, a) or re.fullmatch(HEX, b):
        return a == b
    return rv.same_number(a, b)


def compare_lines(doc: list[str], expected: list[str], where: str, rep: Report,
                  extra_ok: bool = False) -> None:
    """Align doc with expected on their skeletons; every number of an aligned pair must agree. Expected lines the
    document lacks are mismatches; document lines the artifacts do not give are mismatches too, unless extra_ok
    (a comment: counted as not re-derivable)."""
    od, oe = _table_order(doc), _table_order(expected)
    doc, expected = [doc[k] for k in od], [expected[k] for k in oe]
    sd, se = [tokens(x) for x in doc], [tokens(x) for x in expected]
    sm = difflib.SequenceMatcher(None, [s for s, _ in se], [s for s, _ in sd], autojunk=False)
    for op, e0, e1, d0, d1 in sm.get_opcodes():
        if op == "equal":
            for i, j in zip(range(e0, e1), range(d0, d1)):
                rep.lines_checked += 1
                got, want = sd[j][1], se[i][1]
                rep.numbers_checked += len(want)
                bad = [(a, b) for a, b in zip(got, want) if not _same(a, b)]
                if bad:
                    rep.mismatches.append(f"{where} line {od[j] + 1}: says {', '.join(a for a, _ in bad)} where the "
                                          f"artifacts give {', '.join(b for _, b in bad)}\n    document:  "
                                          f"{doc[j].strip()[:300]}\n    re-derived: {expected[i].strip()[:300]}")
            continue
        pairs = list(zip(range(e0, e1), range(d0, d1))) if op == "replace" else []
        for i, j in pairs:
            rep.mismatches.append(f"{where} line {od[j] + 1} differs from what the artifacts give\n    document:  "
                                  f"{doc[j].strip()[:300]}\n    re-derived: {expected[i].strip()[:300]}")
        for i in range(e0 + len(pairs), e1):
            if expected[i].strip():
                rep.mismatches.append(f"{where}: lacks a line the artifacts give: {expected[i].strip()[:300]}")
        for j in range(d0 + len(pairs), d1):
            if not sd[j][1]:
                continue
            if extra_ok:
                rep.not_derivable += 1
            else:
                rep.mismatches.append(f"{where} line {od[j] + 1}: a line no artifact gives: {doc[j].strip()[:300]}")


def _table_order(lines: list[str]) -> list[int]:
    """Line indices with each table's rows (after its header and separator) sorted by their first cell: a result
    read back from the queue's JSON column may list its tasks in another order than the gate wrote them."""
    order, i = [], 0
    while i < len(lines):
        if not lines[i].startswith("|"):
            order.append(i)
            i += 1
            continue
        j = i
        while j < len(lines) and lines[j].startswith("|"):
            j += 1
        head = list(range(i, min(i + 2, j)))
        order += head + sorted(range(i + len(head), j), key=lambda k: lines[k].split("|")[1].strip())
        i = j
    return order


# --------------------------------------------------------------------------- the finding
@dataclass
class Finding:
    path: Path
    lines: list[str]
    verdict: str
    title: str
    issue: int
    date: str
    issue_url: str | None
    prereg_sha256: str | None
    sections: list[dict]  # {stage, job, run_dir, plots}
    spec: dict
    noise: dict[str, float] | None


def parse_finding(path: Path) -> Finding:
    try:
        text = path.read_text()
    except OSError as e:
        raise rv.VerifyError(f"cannot read {path} ({e.strerror or e}): name a finding under docs/findings/") from e
    lines = text.splitlines()
    m = re.match(r"^# ([A-Z]+): (.*) \(#(\d+)\)$", lines[0] if lines else "")
    if not m:
        raise rv.VerifyError(f"{path} does not open with '# VERDICT: title (#N)': it is not a refinery finding")
    head = {k.strip(): v.strip() for k, v in (ln[2:].split(":", 1) for ln in lines[1:12]
                                              if ln.startswith("- ") and ":" in ln)}
    sections, cur = [], None
    for i, ln in enumerate(lines):
        h = STAGE_HEAD.match(ln)
        if h and h.group(1) in TITLE_STAGE:
            cur = {"stage": TITLE_STAGE[h.group(1)], "plots": [], "line": i + 1}
            sections.append(cur)
        elif ln.startswith("## "):
            cur = None
        elif cur is not None and (r := RUN_LINE.match(ln)):
            cur.update(run_dir=r.group(1), job=int(r.group(2)))
        elif cur is not None and (p := re.match(r"^!\[[^\]]*\]\(([^)]+)\)$", ln)):
            cur["plots"].append(p.group(1))
    for s in sections:
        if "run_dir" not in s:
            raise rv.VerifyError(f"{path} line {s['line']}: the {s['stage']} section names no run directory")
    spec = _json_block(lines, "## Spec")
    noise = None
    for ln in lines:
        if ln.startswith("Δ in units of the control's"):
            noise = {t: float(v) for t, v in re.findall(r"(\w+) ([-+]\d+(?:\.\d+)?)σ", ln)}
    h = head.get("pre-registration sha256", "")
    url = head.get("issue", "")
    return Finding(path, lines, m.group(1), m.group(2), int(m.group(3)), head.get("date", ""),
                   None if url == f"#{m.group(3)}" else url, h if re.fullmatch(r"[0-9a-f]{64}", h) else None,
                   sections, spec if isinstance(spec, dict) else {}, noise)


def _json_block(lines: list[str], heading: str) -> Any:
    try:
        i = lines.index(heading)
        start = lines.index("```json", i) + 1
        end = lines.index("```", start)
        return json.loads("\n".join(lines[start:end]))
    except (ValueError, json.JSONDecodeError):
        return None


def verify(path: str | Path, comments: list | None = None) -> Report:
    """Re-derive every number of the finding at `path` (and of `comments`, the issue's, when given)."""
    f = parse_finding(Path(path))
    rep = Report(str(path))
    runs = {}
    for s in f.sections:
        run = runs[s["run_dir"]] = rv.rederive(s["run_dir"])
        rep.runs.append({"stage": s["stage"], "job": s["job"], "run_dir": s["run_dir"], "how": run["how"],
                         "verdict": run["result"].get("verdict")})
        for m in rv.result_mismatches(run):
            rep.mismatches.append(f"{s['run_dir']}/{m}")
    prereg = next((runs[s["run_dir"]]["config"].get("prereg") for s in reversed(f.sections)
                   if runs[s["run_dir"]]["config"].get("prereg")), None)
    digest = rv.prereg_hash(prereg)
    if f.prereg_sha256 is None and digest:
        rep.notes.append("the finding shows no pre-registration hash (accepted before hashing); the runs' prereg "
                         f"hashes to {digest}")
        digest = None
    stages = [{"stage": s["stage"], "job": s["job"], "result": runs[s["run_dir"]]["result"], "run_dir": s["run_dir"],
               "plots": s["plots"]} for s in f.sections]
    if stages:
        expected = report.finding_markdown(
            date=f.date, issue=f.issue, title=f.title, verdict=f.verdict, decided_at=stages[-1]["stage"],
            stages=stages, spec=f.spec, prereg=prereg, issue_url=f.issue_url, noise=f.noise, prereg_sha256=digest)
        compare_lines(f.lines, expected.splitlines(), Path(path).name, rep)
        _check_title_verdict(f, stages[-1], rep)
    if f.noise:
        rep.notes.append("the Δ/σ line uses the noise floor measured at the time (the daemon's key-value table, no run "
                         "artifact): shown, not re-derived")
    first = runs[f.sections[0]["run_dir"]] if f.sections else None
    if comments is not None:
        _verify_comments(comments, f, runs, digest or f.prereg_sha256, first, rep)
    return rep


def _check_title_verdict(f: Finding, last: dict, rep: Report) -> None:
    """The finding's verdict follows from the last stage's: PASS only after a full PASS, FAIL after a kill."""
    v, stage = last["result"].get("verdict"), last["stage"]
    killed = v == "FAIL" or (v == "EXTEND" and stage != "ablation")  # the pipeline's is_kill
    want = "PASS" if (stage == "full" and v == "PASS") else "FAIL" if killed else None
    if want != f.verdict:
        rep.mismatches.append(f"{f.path.name} line 1: the finding says {f.verdict}, but its last stage ({stage}) "
                              f"re-derives to {v}, which makes the idea {want or 'not yet decided'}")


# --------------------------------------------------------------------------- the comments
def _body(c) -> str:
    return c.body if hasattr(c, "body") else str(c.get("body", ""))


def _verify_comments(comments: list, f: Finding, runs: dict, digest: str | None, first: dict | None,
                     rep: Report) -> None:
    hashes = []
    for c in comments:
        body = _body(c)
        key = RESULT_KEY.search(body)
        hm = HASH_LINE.search(body)
        if hm:
            hashes.append(hm.group(1))
            rep.comments_checked += 1
            if first is not None and "```toml" in body:
                _check_spec_comment(body, first["config"].get("spec") or {}, rep)
        if not key:
            continue
        rm = COMMENT_RUN.search(body)
        if not rm:
            continue
        run_dir, job = rm.group(1), int(rm.group(2))
        if run_dir not in runs:
            try:
                runs[run_dir] = rv.rederive(run_dir)
            except rv.VerifyError as e:
                rep.mismatches.append(f"comment {key.group(1)}: cannot re-derive its run ({e})")
                continue
        rep.comments_checked += 1
        compare_lines(body.splitlines(), _expected_comment(runs[run_dir], key.group(3), job, run_dir),
                      f"comment {key.group(1)}", rep, extra_ok=True)
    if digest and hashes and any(h != digest for h in hashes):
        rep.mismatches.append(f"the first comment's pre-registration sha256 {hashes[0]} is not the hash of the prereg "
                              f"the runs recorded ({digest})")
    if f.prereg_sha256 and hashes and hashes[0] != f.prereg_sha256:
        rep.mismatches.append(f"the finding's pre-registration sha256 {f.prereg_sha256} is not the first comment's "
                              f"({hashes[0]}): the pre-registration changed after acceptance")
    if f.prereg_sha256 and not hashes:
        rep.notes.append("no comment shows the pre-registration hash (the first comment was not found)")


def _expected_comment(run: dict, stage: str, job: int, run_dir: str) -> list[str]:
    """The lines of a result comment that the run's artifacts give (result_comment's own formatting)."""
    res = run["result"]
    verdict = res.get("verdict") or "ERROR"
    if verdict == "ERROR":
        head = (f"**{report.title_of(stage)}: failed** (ERROR: a fault of the run, not a verdict on the idea) — "
                f"{res.get('reason', '')}")
    else:
        head = f"**{report.title_of(stage)}: {verdict}** — {res.get('reason', '')}"
    out = [" ".join(head.split())]
    table = report.evidence_table(res)
    out += table.splitlines() if table else []
    prereg = run["config"].get("prereg")
    score = report.prereg_score(prereg, res)
    if score and stage in ("ablation", "extend", "replication") and verdict != "ERROR":
        out += score.splitlines()
    out.append(f"Run directory: `{run_dir}` · job {job} · code {report.code_of(res)} · "
               f"wall {float(res.get('wall_s') or 0):.0f} s")
    return out


def _check_spec_comment(body: str, spec: dict, rep: Report) -> None:
    """The first comment's effective spec against the spec the first run recorded (config.json)."""
    m = re.search(r"```toml\n(.*?)\n```", body, re.S)
    if not m:
        return
    try:
        shown = tomllib.loads(m.group(1))
    except tomllib.TOMLDecodeError as e:
        rep.mismatches.append(f"the first comment's effective spec does not parse ({e})")
        return
    for k, v in shown.items():
        if k in config.FIELD_SECTION and k in spec:
            for msg in rv.compare(v, spec[k], k):
                rep.mismatches.append(f"the first comment's effective spec: {msg.replace('recorded', 'says')} "
                                      "(config.json of the first run)")
            rep.numbers_checked += 1


def text(rep: Report) -> str:
    """What `refinery verify` prints."""
    lines = [f"verify {rep.finding}"]
    for r in rep.runs:
        lines.append(f"  {r['stage']} (job {r['job']}): {r['verdict']} — {r['how']}")
    lines.append(f"  {rep.numbers_checked} numbers on {rep.lines_checked} lines checked; {rep.comments_checked} "
                 f"comments read" + (f"; {rep.not_derivable} comment lines hold numbers no artifact gives (cost, "
                                     "queue), not checked" if rep.not_derivable else ""))
    lines += [f"  note: {n}" for n in rep.notes]
    if rep.ok:
        lines.append("OK: every number re-derives from the run artifacts")
    else:
        lines.append(f"MISMATCH: {len(rep.mismatches)}")
        lines += [f"  - {m}" for m in rep.mismatches]
    return "\n".join(lines)
