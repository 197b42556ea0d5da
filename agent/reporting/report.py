"""Reporting: what refinery writes back about an idea.

Pure formatting — the progress comment, one result comment per decided stage, the finding, the
graveyard line, the model card — plus DocsWriter, which puts documents under docs_dir and commits
them through agent/reporting/gitdocs.py when docs_dir is inside a git repository (refinery's author only,
never a user's staged or modified files).

A result comment opens with the verdict (`**Ablation: PASS** — reason`), then the evidence table
(per-seed values, Δ with its CI, p-values), Δ in units of the measured noise floor, the score
against the issue's [prereg], the idea's cost so far, what happens next, the plots (linked when the
docs commit was pushed, named otherwise), the run directory, job and code version, and the
effective spec folded away. Comments stay well under GitHub's 65,536 characters (the outbox cuts
anything longer, pointing at the full text on disk); the raw evidence goes to the finding.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import config
from agent.reporting import gitdocs

STAGE_TITLE = {"smoke": "Smoke test", "ablation": "Ablation", "extend": "Ablation (extended seeds)",
               "replication": "Replication", "full": "Full training", "noise": "Noise floor"}
EVIDENCE_MAX_CHARS = 200_000  # raw evidence kept in a finding


def slugify(text: str, n: int = 48) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:n].rstrip("-") or "idea"


def today() -> str:
    return dt.date.today().isoformat()


def date_of(t: float | None) -> str:
    """The local date of an epoch time (a decision's date stays the same when it is re-done later)."""
    return dt.date.fromtimestamp(t).isoformat() if t else today()


def title_of(stage: str) -> str:
    return STAGE_TITLE.get(stage, stage)


def _pts(x: Any) -> str:
    return "–" if x is None else f"{x:.1f}" if isinstance(x, (int, float)) else str(x)


def _prob(x: Any) -> str:
    """A probability such as P(candidate > control): two decimals, so 24/25 = 0.96 never reads as 1.0."""
    return "–" if x is None else f"{x:.2f}"


def _p(x: Any) -> str:
    if x is None:
        return "–"
    return f"{x:.2e}" if 0 < x < 1e-4 else f"{x:.4f}"


def _signed(x: Any, digits: int = 1) -> str:
    return "–" if x is None else f"{x:+.{digits}f}"


# --------------------------------------------------------------------------- evidence
def evidence_table(result: dict[str, Any]) -> str:
    """Markdown table of a stage's evidence: per task (ablation, replication), the loss comparison
    (full), or the checks (smoke). '' when the result carries none (an ERROR)."""
    ev = result.get("evidence") or {}
    tasks = ev.get("tasks") or {}
    if isinstance(tasks, dict) and tasks:
        rows = ["| task | role | candidate per seed | control per seed | Δ [95% CI] | MW p | Holm p | "
                "P(cand > ctrl) | clears |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        order = sorted(tasks, key=lambda k: (not (isinstance(tasks[k], dict) and "clears" in tasks[k]),
                                             list(tasks).index(k)))  # depth tasks first, the control last
        for name in order:
            t = tasks[name]
            if not isinstance(t, dict) or "delta" not in t:
                continue
            ci = t.get("delta_ci") or [None, None]
            role = "depth" if "clears" in t else "control"
            clears = ("yes" if t.get("clears") else "no") if "clears" in t else "–"
            rows.append(f"| {name} | {role} | {', '.join(_pts(v) for v in t.get('candidate', []))} | "
                        f"{', '.join(_pts(v) for v in t.get('control', []))} | {_signed(t['delta'])} "
                        f"[{_signed(ci[0])}, {_signed(ci[1])}] | {_p(t.get('mannwhitney_p'))} | "
                        f"{_p(t.get('holm_p'))} | {_prob(t.get('p_superiority'))} | {clears} |")
        tail = []
        if ev.get("clearing_tasks") is not None:
            tail.append(f"Clearing depth tasks: {', '.join(ev['clearing_tasks']) or 'none'}; rank-{ev.get('u')} "
                        f"Holm p = {_p(ev.get('rank_u_p'))} (α = {ev.get('alpha')}); control task "
                        f"{'healthy' if ev.get('control_ok') else 'not healthy'}"
                        + ("; after the seed extension" if ev.get("extended") else "") + ".")
        return "\n".join(rows) + ("\n\n" + " ".join(tail) if tail else "")
    if "val_loss_candidate" in ev:
        out = ("| arm | val loss per seed | mean |\n| --- | --- | --- |\n"
               f"| candidate | {', '.join(f'{v:.4f}' for v in ev['val_loss_candidate'])} | "
               f"{ev.get('mean_candidate', 0):.4f} |\n"
               f"| control | {', '.join(f'{v:.4f}' for v in ev['val_loss_control'])} | "
               f"{ev.get('mean_control', 0):.4f} |\n\nloss gap {ev.get('loss_gap', 0):+.4f} nats")
        if ev.get("loss_gap_ci"):
            out += f" [{ev['loss_gap_ci'][0]:+.4f}, {ev['loss_gap_ci'][1]:+.4f}]"
        if ev.get("p_superiority") is not None:
            out += f", P(candidate lower) {_prob(ev['p_superiority'])}"
        if ev.get("welch_p") is not None:
            out += f" (Welch p = {_p(ev['welch_p'])})"
        if ev.get("depth_curve_mean"):
            curve = ", ".join(f"r={r}: {v:.1f}" for r, v in zip(ev.get("depth_curve_r") or [], ev["depth_curve_mean"]))
            out += f"; depth probe {curve}"
        return out + "."
    checks = ev.get("checks") if isinstance(ev.get("checks"), dict) else ev
    rows = [(k, v) for k, v in checks.items() if isinstance(v, dict) and "ok" in v]
    if rows:
        return "| check | result | detail |\n| --- | --- | --- |\n" + "\n".join(
            f"| {k} | {'ok' if v['ok'] else 'FAILED'} | {v.get('detail', '')} |" for k, v in rows)
    return ""


def deltas_of(result: dict[str, Any], depth_only: bool = True) -> dict[str, float]:
    """{task: Δ} of an ablation-like result (the depth tasks: the gate marks them with `clears`)."""
    tasks = (result.get("evidence") or {}).get("tasks") or {}
    return {t: float(v["delta"]) for t, v in tasks.items() if isinstance(v, dict) and v.get("delta") is not None
            and (not depth_only or "clears" in v)}


def noise_line(noise: dict[str, float] | None) -> str:
    if not noise:
        return ""
    return ("Δ in units of the control's measured seed-to-seed spread (noise floor): "
            + ", ".join(f"{t} {d:+.1f}σ" for t, d in noise.items()) + ".")


def prereg_score(prereg: dict | None, result: dict[str, Any]) -> str:
    """Score the outcome against the issue's pre-registration ([prereg] table)."""
    if not prereg:
        return ""
    task = prereg.get("primary_task")
    t = ((result.get("evidence") or {}).get("tasks") or {}).get(task) if task else None
    lines = ["**Pre-registration.** " + (f"Hypothesis: {prereg['hypothesis']}" if prereg.get("hypothesis") else "")]
    if t and "delta" in t and prereg.get("expected_delta") is not None:
        exp, got = float(prereg["expected_delta"]), t["delta"]
        ci = t.get("delta_ci") or [got, got]
        inside = ci[0] <= exp <= ci[1]
        lines.append(f"Predicted Δ on {task}: {exp:+.1f} points; observed {got:+.1f} [{ci[0]:+.1f}, {ci[1]:+.1f}] — "
                     + ("the prediction lies inside the CI." if inside else
                        "the prediction lies outside the CI " + ("(better than predicted)." if got > exp
                                                                  else "(worse than predicted).")))
    elif task:
        lines.append(f"Primary task {task}: not measured at this stage.")
    if prereg.get("kill_if"):
        lines.append(f"Kill criterion as registered: {prereg['kill_if']} — verdict {result.get('verdict')}.")
    return "\n".join(lines)


def ledger_table(ledger: dict[str, Any]) -> str:
    lanes = ", ".join(f"{lane} lane {m:.1f} device-min" for lane, m in sorted(ledger.get("device_min", {}).items()))
    coder = ledger.get("coder") or {}  # the coder's spend and turns on this idea (agent/coder/deliver.py)
    if coder.get("sessions"):
        lanes = (lanes + ", " if lanes else "") + f"coder ${coder['usd']:.2f} over {coder['turns']} turns"
    return (f"**Cost so far.** {lanes or 'no device time yet'}; wall {ledger.get('wall_min', 0):.1f} min; "
            f"stages run: {', '.join(ledger.get('stages', [])) or 'none'}.")


def _plot_refs(plots: list[str]) -> str:
    """Plots as links (a URL) or file names."""
    refs = [f"[{Path(p).name}]({p})" if p.startswith(("http://", "https://")) else f"`{p}`" for p in plots]
    return "Plots: " + ", ".join(refs)


def code_of(result: dict[str, Any]) -> str:
    run = result.get("run") or {}
    sha = run.get("git_sha") or "unknown"
    return sha[:12] + (" (dirty tree)" if run.get("dirty") else "")


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    return json.dumps(str(v))


def spec_lines(spec: dict, given: Iterable[str] = ()) -> list[str]:
    """The effective spec as TOML lines that parse back as a spec: values derived from the fields (dims,
    r_eval_effective) are not spec keys, so they are shown as comments instead of as assignments."""
    given = set(given)
    return [(f"{k} = {toml_value(v)}" + ("  # from the issue" if k in given else "")) if k in config.FIELD_SECTION
            else f"# {k} = {toml_value(v)}  (derived, not a spec key)" for k, v in spec.items()]


def _spec_block(spec: dict) -> str:
    return ("<details><summary>Effective spec</summary>\n\n```toml\n"
            + "\n".join(spec_lines(spec)) + "\n```\n</details>")


def result_comment(*, issue: int, stage: str, job_id: int, result: dict[str, Any], spec: dict, prereg: dict | None,
                   ledger: dict, run_dir: str, next_step: str, plots: list[str], finding: str | None,
                   noise: dict | None = None) -> str:
    """The comment for one decided stage; the verdict is in the first line."""
    verdict = result.get("verdict") or "ERROR"
    if verdict == "ERROR":
        head = (f"**{title_of(stage)}: failed** (ERROR: a fault of the run, not a verdict on the idea) — "
                f"{result.get('reason', '')}")
    else:
        head = f"**{title_of(stage)}: {verdict}** — {result.get('reason', '')}"
    lines = [" ".join(head.split()), ""]
    table = evidence_table(result)
    if table:
        lines += [table, ""]
    if noise:
        lines += [noise_line(noise), ""]
    score = prereg_score(prereg, result)
    if score and stage in ("ablation", "extend", "replication"):  # the stages that measure the prediction
        lines += [score, ""]
    lines += [ledger_table(ledger), "", f"**Next.** {next_step}", ""]
    if plots:
        lines.append(_plot_refs(plots))
    if finding:
        lines.append(f"Finding: {finding if finding.startswith('http') else '`' + finding + '`'}")
    lines += [f"Run directory: `{run_dir}` · job {job_id} · code {code_of(result)} · "
              f"wall {float(result.get('wall_s') or 0):.0f} s", "", _spec_block(spec)]
    return "\n".join(lines)


def failed_comment(*, stage: str, job_id: int, attempts: int, error: str, run_dir: str, ledger: dict,
                   reason: str = "") -> str:
    """A job that failed for good: a fault of the run (crash, out of memory, wall limit), not a verdict.
    reason: the ERROR reason the stage wrote in result.json, when it wrote one (it leads the comment)."""
    text = (error or "").strip()
    if len(text) > 3000:  # the log's tail, from a line boundary (not from the middle of a line)
        text = text[-3000:]
        text = text[text.find("\n") + 1:] if "\n" in text else text
    why = f": {reason.strip()}" if reason and reason.strip() else "."
    return (f"**{title_of(stage)}: failed** (an error of the run, not a verdict on the idea) after {attempts} "
            f"attempt(s){why}\n\n```\n{text}\n```\n\n{ledger_table(ledger)}\n\n"
            f"Run directory: `{run_dir}` · job {job_id}. `refinery queue retry {job_id}` runs it again "
            "(and the stages after it).")


def progress_comment(*, stage: str, job_id: int, progress: dict, metrics: dict | None, lane: str,
                     history: list[str]) -> str:
    """The one progress comment of an idea (edited in place)."""
    total = progress.get("total") or 0
    pct = 100 * (progress.get("done") or 0) / total if total else 0.0
    eta = progress.get("eta_s")
    line = (f"**Progress** — {title_of(stage)} (job {job_id}, {lane} lane): step {progress.get('done', 0):.0f} of "
            f"{total:.0f} ({pct:.0f}%)" + (f" · {progress['what']}" if progress.get("what") else "")
            + f" · elapsed {fmt_s(progress.get('elapsed_s'))}" + (f" · ETA {fmt_s(eta)}" if eta is not None else ""))
    out = [line]
    if metrics:
        shown = {k: v for k, v in metrics.items() if k in ("run", "step", "loss", "val_loss", "r1", "rbar", "r2bar",
                                                          "tokens_per_s")}
        out.append("Last metrics: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                for k, v in shown.items()))
    if history:
        out += ["", "Stages so far: " + "; ".join(history)]
    return "\n".join(out)


def fmt_s(s: float | None) -> str:
    if s is None:
        return "–"
    s = float(s)
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


# --------------------------------------------------------------------------- documents
def finding_markdown(*, date: str, issue: int, title: str, verdict: str, decided_at: str,
                     stages: list[dict[str, Any]], spec: dict, prereg: dict | None, issue_url: str | None,
                     noise: dict | None = None, prereg_sha256: str | None = None) -> str:
    """One idea, one conclusion: the verdict in the title, then every stage's statistics.
    stages: [{stage, job, result, run_dir, plots (paths relative to the finding)}], oldest first.
    prereg_sha256: the pre-registration's hash taken on acceptance (the first comment shows it too)."""
    outcome = "passed every stage" if verdict == "PASS" else f"killed at the {title_of(decided_at).lower()}"
    last = stages[-1]["result"] if stages else {}
    head = [f"# {verdict}: {title} (#{issue})", "",
            f"- date: {date}", f"- issue: {issue_url or '#' + str(issue)}",
            f"- outcome: **{verdict}** — {outcome}: {' '.join(str(last.get('reason', '')).split())}",
            f"- stages: {', '.join(s['stage'] + ' ' + str(s['result'].get('verdict')) for s in stages)}",
            f"- code: {(last.get('run') or {}).get('git_sha', 'unknown')}",
            f"- evaluation fingerprint: {(last.get('run') or {}).get('evaluation_fingerprint', 'unknown')}",
            f"- pre-registration sha256: {prereg_sha256 or 'none (no [prereg] table, or accepted before hashing)'}",
            "- verify: `refinery verify` this file (every number re-derived from the run directories)", ""]
    score = prereg_score(prereg, next((s["result"] for s in reversed(stages)
                                       if (s["result"].get("evidence") or {}).get("tasks")), last))
    if score:
        head += [score, ""]
    if noise:
        head += [noise_line(noise), ""]
    for s in stages:
        res = s["result"]
        head += [f"## {title_of(s['stage'])}: {res.get('verdict')}", "",
                 " ".join(str(res.get("reason", "")).split()), "",
                 f"Run `{s['run_dir']}` · job {s['job']} · wall {float(res.get('wall_s') or 0):.0f} s", "",
                 evidence_table(res) or "(no statistics)", ""]
        if s.get("plots"):
            head += [f"![{Path(p).stem}]({p})" for p in s["plots"]] + [""]
    raw = {s["stage"]: (s["result"].get("evidence") or {}) for s in stages}
    head += ["## Raw evidence", "", "```json", json.dumps(raw, indent=1, sort_keys=True,
                                                          default=str)[:EVIDENCE_MAX_CHARS], "```", "",
             "## Spec", "", "```json", json.dumps(spec, indent=1, sort_keys=True, default=str), "```", ""]
    return "\n".join(head)


def graveyard_line(*, date: str, issue: int, title: str, why: str, finding_rel: str) -> str:
    why = " ".join(why.split())[:240].replace("|", "/")
    link = f" · [finding]({finding_rel})" if finding_rel else ""
    return f"- {date} · #{issue} · {' '.join(title.split())} · {why}{link}\n"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def registry_card(*, name: str, date: str, issue: int, spec: dict, result: dict[str, Any], ckpt: Path | None,
                  data_manifest: dict | None, data_dir: str, archive_dir: str, finding: str | None = None) -> str:
    """The model card of a new champion: config, data (with its sha256), metrics, weights, how to load."""
    state = ckpt / "state.pt" if ckpt else None
    sha = sha256_file(state) if state and state.is_file() else "unavailable"
    ev = result.get("evidence") or {}
    man = data_manifest or {}
    metrics = {k: ev.get(k) for k in ("mean_candidate", "mean_control", "loss_gap", "val_loss_candidate",
                                      "val_loss_control", "depth_curve_r", "depth_curve_mean") if k in ev}
    flat = {k: v for k, v in spec.items() if k in config.FIELD_SECTION}
    archived = (f"{archive_dir} (the cold tier, checksummed)" if archive_dir else
                "no archive tier configured (REFINERY_ARCHIVE_DIR); the run directory is the only copy")
    return "\n".join([
        f"# {name}", "", f"Champion since {date}, from issue #{issue}: validation loss "
        f"{ev.get('mean_candidate', float('nan')):.4f} nats (control {ev.get('mean_control', float('nan')):.4f})."
        + (f" Finding: [{Path(finding).name}](../findings/{Path(finding).name})." if finding else ""), "",
        "## Config", "", "```json", json.dumps(flat, indent=1, sort_keys=True, default=str), "```", "",
        "## Data", "", f"- corpus: `{data_dir}` ({man.get('tokenizer', '?')}, {man.get('documents', '?')} documents, "
        f"tokens {json.dumps(man.get('tokens', {}))})",
        *[f"- {split}.bin sha256: `{h}`" for split, h in sorted((man.get("bin_sha256") or {}).items())], "",
        "## Metrics", "", "```json", json.dumps(metrics, indent=1, sort_keys=True, default=str), "```", "",
        "## Weights", "", f"- checkpoint: `{ckpt}`", f"- state.pt sha256: `{sha}`",
        f"- archived copy: {archived}", "",
        "## Load", "", "```python", "import config",
        "from refiner_model.checkpoint import load_checkpoint", "from refiner_model.model import build_model", "",
        "settings = config.load().replace(CONFIG)  # CONFIG: the JSON above",
        "model = build_model(settings)", f"meta = load_checkpoint({str(ckpt or 'CKPT_DIR')!r}, model)", "```", ""])


def web_base(settings: config.Settings) -> str | None:
    """https://github.com/OWNER/NAME (or the Enterprise host) when the tracker is GitHub; else None."""
    d = settings.daemon
    if d.tracker != "github" or not d.github_repo:
        return None
    api = d.github_api_url.rstrip("/")
    host = "https://github.com" if "api.github.com" in api else re.sub(r"/api/v3$", "", api)
    return f"{host}/{d.github_repo}"


class DocsWriter:
    """Writes findings, registry cards and roadmap lines under docs_dir; commits them (refinery's
    author, only these paths) when docs_dir is inside a git repository and git_commit is on."""

    def __init__(self, settings: config.Settings):
        self.settings = settings
        d = Path(settings.daemon.docs_dir)
        self.root = d if d.is_absolute() else config.ROOT / d
        self.last_sha: str | None = None  # the last commit made (None: not a repo, or nothing changed)
        self.last_top: Path | None = None
        self.last_rel: Path | None = None

    def repo(self) -> tuple[Path | None, Path]:
        """(repository top, docs_dir relative to it), or (None, docs_dir) when not committing."""
        if not (self.settings.daemon.git_commit and self.root.exists() and gitdocs.is_repo(self.root)):
            return None, self.root
        top = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=self.root, capture_output=True,
                                  text=True).stdout.strip())
        return top, self.root.resolve().relative_to(top.resolve())

    def branch(self, top: Path) -> str:
        """The default branch documents are committed to (gitdocs.default_branch), whatever HEAD is."""
        return gitdocs.default_branch(top, self.settings.coder.coder_base, self.settings.coder.git_remote)

    def current(self, name: str) -> bytes | None:
        """A document as it is now: committed on the default branch (committing), else on disk."""
        top, rel = self.repo()
        if top is not None:
            return gitdocs.read_committed(top, self.branch(top), (rel / name).as_posix())
        p = self.root / name
        return p.read_bytes() if p.is_file() else None

    def write(self, files: dict[str, bytes], message: str) -> list[Path]:
        """files: {path relative to docs_dir: content}. Files whose content is already there are skipped
        (so doing a step again never makes an empty commit). Returns the absolute paths written."""
        self.root.mkdir(parents=True, exist_ok=True)
        files = {k: v for k, v in files.items() if self.current(k) != v}
        self.last_sha = None
        if not files:
            return []
        top, rel = self.repo()
        self.last_top, self.last_rel = top, rel
        if top is None:
            out = []
            for name, data in files.items():
                p = self.root / name
                p.parent.mkdir(parents=True, exist_ok=True)
                tmp = p.with_name(f".{p.name}.tmp")
                tmp.write_bytes(data)
                tmp.replace(p)
                out.append(p)
            return out
        self.last_sha = gitdocs.commit_files(top, {str(rel / k): v for k, v in files.items()}, message,
                                             self.settings.daemon.git_author, push=self.settings.daemon.git_push,
                                             branch=self.branch(top))
        return [self.root / k for k in files]

    def url(self, rel: str, sha: str | None) -> str | None:
        """A web link to a committed document, only when commits are pushed and the tracker is GitHub."""
        base = web_base(self.settings)
        if not (sha and base and self.settings.daemon.git_push and self.last_rel is not None):
            return None
        return f"{base}/blob/{sha}/{(self.last_rel / rel).as_posix()}"

    def roadmap_with(self, line: str) -> bytes:
        """ROADMAP.md with `line` appended to the graveyard (the rest untouched; never twice)."""
        now = self.current("ROADMAP.md")
        text = now.decode() if now is not None else "# Roadmap\n\n## Graveyard\n\n"
        if line.strip() in text:
            return text.encode()
        if "## Graveyard" not in text:
            text = text.rstrip("\n") + "\n\n## Graveyard\n\n"
        start = text.index("## Graveyard")
        nxt = re.search(r"^## ", text[start + 3:], re.MULTILINE)
        if nxt is None:  # the graveyard is the last section: append at the end, the rest byte for byte
            return (text + ("" if text.endswith("\n") else "\n") + line).encode()
        end = start + 3 + nxt.start()  # insert after the section's last line, before the next heading
        body = text[:end].rstrip("\n")
        return (body + "\n" + line + "\n" + text[end:]).encode()
