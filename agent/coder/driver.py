"""The Coder the daemon steps (REFINERY_CODER=claude): claims agent-lane items, runs each in a thread of
its own, heartbeats their leases, stops them, and decides what each ending means.

    coder = Coder(settings, store, outbox, kv, tracker_name)
    coder.step(now)          # main loop: heartbeat, reap, claim up to coder_workers items (unless paused)
    coder.warm_stop()        # SIGINT to every session; each item is requeued without an attempt, its session kept
    coder.cold_stop()        # SIGKILL to every session (requeued the same way)
    coder.drain(deadline)    # wait for the item threads

One item (Run.work, in its thread): the worktree runs/agent/<issue>/wt on agent/i<issue>-<slug> (a retry
reuses it), the notes file, the session (a new id, or `--resume` of the kept one when its transcript is
there), supervision (session.py) with the progress comment edited in place, then:

    warm stop ............ requeued, no attempt spent; resumed at the next start
    401/403 .............. the coder pauses as a whole (one log line, `refinery status`) until the credential
                           changes or `refinery coder check` passes; requeued, no attempt spent, no comment
    429/529 .............. requeued after coder_backoff_s (doubling), no attempt spent
    the day's cap ........ requeued; the coder pauses until the next UTC midnight
    anything else ........ the checks (checks.py); all pass → delivered (deliver.py), job succeeded;
                           one fails → a comment saying which and why, failed attempt (retried with back-off,
                           the same session resumed); past the item's spend cap → failed for good

State kept per item in runs/agent/<issue>/coder.json (session id, start commit, verified head, delivered).
A kill -9 of the daemon leaves the job running under a dead owner: the next start's recovery requeues it
without an attempt (and kills the orphaned CLI's group); the item resumes the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from pathlib import Path

import config
from agent.coder import checks as chk
from agent.coder import command, credential, deliver, ideacheck
from agent.coder import worktree as wtree
from agent.coder.session import Limits, Session, SessionEnd
from agent.daemon.sanitize import branch_name, sanitize
from agent.redact import redact
from jobqueue.models import Job, Lane
from jobqueue.proc import Owner
from jobqueue.store import LeaseLost, Store

log = logging.getLogger("refinery.coder")
PAUSE_KEY = "coder.pause"


def agent_root(settings: config.Settings) -> Path:
    return settings.runs_path / "agent"


def home_dir(settings: config.Settings) -> Path:
    h = agent_root(settings) / "home"
    h.mkdir(parents=True, exist_ok=True)
    return h


def cred_fingerprint(cred) -> str:
    return hashlib.sha256(cred.value.encode()).hexdigest()[:12] if cred else ""


def notes_file(item_dir: Path, issue: int, title: str) -> Path:
    """runs/agent/<issue>/notes.md, the same file `refinery queue claim` hands an outside agent."""
    p = item_dir / "notes.md"
    if not p.exists():
        item_dir.mkdir(parents=True, exist_ok=True)
        p.write_text(f"# Working notes: issue #{issue} {title}\n\nKept across claims: write down what you tried, "
                     "what is left and where the branch is, so a restarted agent can pick up here.\n\n")
    return p


def transcript_exists(home: Path, session_id: str) -> bool:
    return any((home / ".claude" / "projects").glob(f"*/{session_id}.jsonl"))


class Coder:
    def __init__(self, settings: config.Settings, store: Store, outbox, kv, tracker_name: str):
        self.settings, self.store, self.outbox, self.kv, self.tracker_name = settings, store, outbox, kv, tracker_name
        self.owner = Owner.current(settings.host)
        self.runs: dict[int, Run] = {}
        self.stopping: str | None = None
        self.cli: command.Cli | None = None
        self._cli_checked = 0.0
        self._next_beat = 0.0
        self._said: str | None = None

    @property
    def busy(self) -> bool:
        return bool(self.runs)

    # ------------------------------------------------------------------ pause
    def pause(self, kind: str, why: str, until: float | None, fingerprint: str = "") -> None:
        cur = self.kv.get(PAUSE_KEY) or {}
        if cur.get("why") != why:
            log.error("coder paused: %s", why) if kind == "auth" else log.warning("coder paused: %s", why)
        self.kv.put(PAUSE_KEY, {"kind": kind, "why": why, "until": until, "fingerprint": fingerprint,
                                "at": time.time()})

    def paused(self, now: float) -> dict | None:
        p = self.kv.get(PAUSE_KEY)
        if not p:
            return None
        if p.get("kind") == "auth":
            if cred_fingerprint(credential.find(self.settings)) != p.get("fingerprint"):
                log.info("coder: the Claude credential changed; resuming")
                self.kv.delete(PAUSE_KEY)
                return None
            return p
        if p.get("until") is not None and now >= p["until"]:
            self.kv.delete(PAUSE_KEY)
            return None
        return p

    def _ready(self, now: float) -> bool:
        """The CLI is there in the right version, a credential is set, the day's cap not reached."""
        if self.cli is None or now - self._cli_checked > self.settings.coder.coder_cli_recheck_s:
            self._cli_checked = now
            try:
                self.cli = command.find_cli(self.settings)
            except (command.CliMissing, command.CliVersion) as e:
                self.cli = None
                self.pause("cli", str(e), now + self.settings.coder.coder_cli_recheck_s)
                return False
        if credential.find(self.settings) is None:
            self.pause("credential", str(credential.NoClaudeCredential.__doc__.split("\n\n")[1].strip()),
                       now + self.settings.coder.coder_cli_recheck_s)
            return False
        cap = self.settings.coder.coder_usd_per_day
        if cap > 0 and deliver.spent_today(self.kv, now) >= cap:
            self.pause("day", f"the day's spend cap ${cap:.2f} is reached; items wait queued",
                       deliver.next_midnight(now))
            return False
        return True

    # ------------------------------------------------------------------ the daemon's step
    def step(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        did = False
        for job_id, run in list(self.runs.items()):
            if not run.thread.is_alive():
                run.thread.join()
                del self.runs[job_id]
                did = True
        if self.runs and now >= self._next_beat:
            self._next_beat = now + self.settings.queue.heartbeat_s
            for run in list(self.runs.values()):
                if not run.done and not self.store.heartbeat(run.job.id, run.job.attempt, now):
                    log.warning("coder: job %s lease taken over; stopping its session", run.job.id)
                    run.lost()
        if self.stopping is not None or self.paused(now) is not None:
            return did
        free = self.settings.coder.coder_workers - len(self.runs)
        if free <= 0 or not self._ready(now):
            return did
        for job in self.store.claim_many(Lane.AGENT, self.owner, free, now=now):
            run = Run(self, job)
            self.runs[job.id] = run
            run.thread.start()
            did = True
        return did

    def warm_stop(self) -> None:
        self.stopping = "warm"
        for run in list(self.runs.values()):
            run.stop("stop")

    def cold_stop(self) -> None:
        self.stopping = "cold"
        for run in list(self.runs.values()):
            run.stop("stop", kill=True)

    def drain(self, deadline: float) -> None:
        for run in list(self.runs.values()):
            run.thread.join(max(0.0, deadline - time.time()))
        self.step(time.time())


class Run:
    """One claimed item, worked in its own thread."""

    def __init__(self, coder: Coder, job: Job):
        self.coder, self.job = coder, job
        self.settings = coder.settings
        self.session: Session | None = None
        self.done = False
        self._stop: tuple[str, bool] | None = None
        self.thread = threading.Thread(target=self.main, daemon=True, name=f"coder-job-{job.id}")
        n = job.issue if job.issue is not None else job.id
        self.n = n
        self.dir = agent_root(self.settings) / str(n)
        self.base_key = f"i{n}/j{job.id}/agent"
        self.timeline: dict[str, float] = {"claimed": job.started_at or time.time()}  # refinery's own overhead
        self.adir: Path | None = None

    def mark(self, what: str) -> None:
        self.timeline[what] = time.time()
        if self.adir is not None:
            (self.adir / "timeline.json").write_text(json.dumps(self.timeline, indent=2) + "\n")

    # ------------------------------------------------------------------ control (from the main thread)
    def stop(self, reason: str, kill: bool = False) -> None:
        self._stop = (reason, kill)
        if self.session is not None:
            self.session.kill(reason) if kill else self.session.stop(reason)

    def lost(self) -> None:
        self.stop("lost", kill=True)

    # ------------------------------------------------------------------ state
    def load(self) -> dict:
        try:
            return json.loads((self.dir / "coder.json").read_text())
        except (OSError, ValueError):
            return {}

    def save(self, state: dict) -> None:
        tmp = self.dir / "coder.json.tmp"
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.dir / "coder.json")

    # ------------------------------------------------------------------ the work
    def main(self) -> None:
        try:
            self.work()
        except LeaseLost as e:
            log.warning("coder: job %s: %s", self.job.id, e)
        except Exception as e:  # noqa: BLE001 - one item's fault must not stop the daemon; the job records it
            log.exception("coder: job %s failed", self.job.id)
            self._fail(f"refinery's coder failed: {type(e).__name__}: {redact(str(e))}", [], "", 0.0, retry=True)
        finally:
            self.done = True

    def work(self) -> None:
        s, job, c = self.settings, self.job, self.coder
        p = job.payload
        title, body = sanitize(p.get("title", "")), sanitize(p.get("body", ""))
        if p.get("idea"):  # a code idea: its spec is the target (ideacheck.py)
            body += ideacheck.target_text({"toml": sanitize(p["idea"].get("toml", ""))})
        labels = tuple(p.get("labels", []))
        branch = branch_name(self.n, title)
        self.dir.mkdir(parents=True, exist_ok=True)
        state = self.load()
        repo = wtree.repo_of(s)
        base_name = state.get("base_branch") or wtree.base_branch(repo, s)
        base = state.get("base") or wtree.base_commit(repo, base_name)
        wt, start = wtree.ensure(repo, self.dir / "wt", branch, base)
        start = state.get("start") or start
        state.update(base_branch=base_name, base=base, start=start, branch=branch, worktree=str(wt))
        self.save(state)
        notes = notes_file(self.dir, self.n, title)
        home = home_dir(s)
        adir = self.adir = self.dir / str(job.attempt)
        adir.mkdir(parents=True, exist_ok=True)
        if state.get("verified") and state["verified"].get("head") == wtree.head(wt):
            return self._deliver(state, wt, start, branch, [chk.Check(**x) for x in state["verified"]["checks"]],
                                 None)
        cred = credential.require(s)
        sid = state.get("session_id")
        resume = bool(sid) and transcript_exists(home, sid)
        item = command.Item(issue=self.n, title=title, body=body, branch=branch, worktree=wt, notes=notes,
                            attempt_dir=adir, labels=labels, session_id=sid if resume else str(uuid.uuid4()),
                            resume=resume, resume_why=state.get("last_end", "a restart"),
                            protected=s.coder.coder_protected)
        plan = command.build(s, c.cli or command.find_cli(s), cred, item, home)
        led = deliver.item_ledger(c.kv, self.n)
        cap, day_cap = s.coder.coder_max_usd, s.coder.coder_usd_per_day
        limits = Limits(max_turns=s.coder.coder_max_turns, wall_s=s.coder.coder_wall_s,
                        silence_s=s.coder.coder_silence_s, grace_s=s.coder.coder_grace_s,
                        usd_left=(cap - led["usd"]) if cap > 0 else float("inf"),
                        day_usd_left=(day_cap - deliver.spent_today(c.kv)) if day_cap > 0 else float("inf"),
                        api_retries=s.coder.coder_api_retries, usd_per_tok_in=s.coder.coder_usd_per_mtok_in / 1e6,
                        usd_per_tok_out=s.coder.coder_usd_per_mtok_out / 1e6)
        state.update(session_id=item.session_id)
        self.save(state)
        (adir / "command.txt").write_text(redact(command.shown(plan.argv)) + "\n")
        log.info("coder: job %s (#%s) attempt %s: %s session %s on %s", job.id, self.n, job.attempt,
                 "resuming" if resume else "starting", item.session_id, branch)
        session = self.session = Session(plan.argv, plan.env, wt, adir, limits, item.session_id)
        if self._stop is not None:  # a stop came before the session existed
            return self._requeue("stopped before the session started", 0.0)
        try:
            session.start()
            self.mark("cli_started")
        except OSError as e:
            raise command.CliMissing(f"cannot start {plan.argv[0]}: {e}: run `make setup` or set "
                                     "REFINERY_CLAUDE_BIN") from None
        if self._stop is not None:
            session.kill(self._stop[0]) if self._stop[1] else session.stop(self._stop[0])
        c.store.set_child(job.id, job.attempt, str(self.dir), session.pid, session.pid_start)
        end = self._supervise(session)
        self.mark("cli_exited")
        led = deliver.add_to_ledger(c.kv, self.n, end.usd, end.turns, end.wall_s)
        state = self.load()
        state.update(session_id=end.session_id or item.session_id, last_end=end.detail)
        self.save(state)
        (adir / "end.json").write_text(json.dumps({k: v for k, v in end.__dict__.items() if k != "result"},
                                                  indent=2, default=str) + "\n")
        log.info("coder: job %s session ended: %s; %d turns, $%.4f, %.1f s", job.id, end.detail, end.turns, end.usd,
                 end.wall_s)
        self._decide(end, state, wt, start, branch, labels, home, adir, led)

    def _supervise(self, session: Session) -> SessionEnd:
        s, job = self.settings, self.job
        key = f"i{self.n}/coder-progress"
        last_edit, said = 0.0, None
        while not session.poll(time.time()):
            now = time.time()
            if now - last_edit >= s.daemon.progress_edit_s:
                text = deliver.progress_comment(job.id, job.attempt, session.turns, session.usd, session.last_tool,
                                                now - session.started, "working")
                if text != said:
                    if not self.coder.outbox.comment(self.n, key, text):
                        self.coder.outbox.edit(self.n, key, text)
                    said, last_edit = text, now
            time.sleep(0.1)
        end = session.end()
        self.coder.outbox.edit(self.n, key, deliver.progress_comment(job.id, job.attempt, end.turns, end.usd,
                                                                     end.last_tool, end.wall_s, end.detail))
        return end

    # ------------------------------------------------------------------ decisions
    def _decide(self, end: SessionEnd, state: dict, wt: Path, start: str, branch: str, labels: tuple, home: Path,
                adir: Path, led: dict) -> None:
        c, s = self.coder, self.settings
        if end.reason == "lost":
            return
        if end.reason == "stop":
            return self._requeue(f"{end.detail}; session {end.session_id} kept", 0.0)
        if end.reason == "auth":
            c.pause("auth", f"the Claude API refused the credential ({end.api_status}, from "
                            f"{credential.find(s).source if credential.find(s) else 'nowhere'}): fix it, then "
                            "`refinery coder check`", None, cred_fingerprint(credential.find(s)))
            return self._requeue(f"credential refused ({end.api_status}); the coder is paused", 0.0)
        if end.reason == "busy":
            n = int(state.get("busy", 0))
            state["busy"] = n + 1
            self.save(state)
            delay = min(s.coder.coder_backoff_max_s, s.coder.coder_backoff_s * 2 ** n)
            log.warning("coder: job %s: the API answered %s; backing off %.0f s (no attempt spent)", self.job.id,
                        end.api_status, delay)
            return self._requeue(f"API {end.api_status}: backing off {delay:.0f} s", delay)
        if end.reason == "day":
            c.pause("day", f"the day's spend cap ${s.coder.coder_usd_per_day:.2f} is reached; items wait queued",
                    deliver.next_midnight(time.time()))
            return self._requeue("the day's spend cap was reached", 0.0)
        state["busy"] = 0
        checks = chk.run_all(end.result, wt, start, s, labels, home, adir / "check.log")
        if self.job.payload.get("idea"):  # a code idea: the spec parses there and its CPU smoke passes there
            checks += ideacheck.idea_checks(self.job.payload["idea"], wt, self.n, s, chk.check_env(home), adir) \
                if all(x.ok for x in checks) else [chk.Check("spec", False, "not run: an earlier check failed")]
        if end.reason != "exit":
            checks.insert(0, chk.Check("session", False, end.detail))
        if all(x.ok for x in checks):
            state["verified"] = {"head": wtree.head(wt), "checks": chk.as_dicts(checks)}
            self.save(state)
            return self._deliver(state, wt, start, branch, checks, end)
        first = next(x for x in checks if not x.ok)
        why = first.detail.splitlines()[0] if first.detail else first.name
        if first.name == "check":
            why += "\n\n```\n" + "\n".join(first.detail.splitlines()[1:])[-1500:] + "\n```"
        over = s.coder.coder_max_usd > 0 and led["usd"] >= s.coder.coder_max_usd
        if over:
            why += f" (the item's spend cap ${s.coder.coder_max_usd:.2f} is spent: no retry)"
        self._fail(f"{first.name}: {why}", checks, end.last_text, end.usd, retry=not over)

    def _requeue(self, reason: str, delay: float) -> None:
        self.coder.store.requeue(self.job.id, self.job.attempt, redact(reason), count_attempt=False, delay=delay)

    def _fail(self, why: str, checks: list, last_words: str, usd: float, retry: bool) -> None:
        job, s = self.job, self.settings
        again = retry and job.tries < job.max_attempts
        delay = s.queue.retry_backoff_s * 2 ** (job.tries - 1)
        led = deliver.item_ledger(self.coder.kv, self.n)
        text = deliver.failed_comment(job.id, job.tries, job.max_attempts, delay if again else None, why, checks,
                                      last_words, usd, led, str(self.dir))
        key = f"{self.base_key}/retry-a{job.attempt}" if again else f"{self.base_key}/failed"
        self.coder.outbox.comment(self.n, key, text)
        self.coder.store.fail(job.id, job.attempt, redact(why), retry=retry)

    def _deliver(self, state: dict, wt: Path, start: str, branch: str, checks: list, end: SessionEnd | None) -> None:
        c, s, job = self.coder, self.settings, self.job
        stat = wtree.diffstat(wt, start)
        turns = end.turns if end else 0
        usd = end.usd if end else 0.0
        wall = end.wall_s if end else 0.0
        summary = end.last_text if end else ""
        led = deliver.item_ledger(c.kv, self.n)
        pr_url = None
        if c.tracker_name == "github":
            token = config.read_github_token(settings=s)
            try:
                wtree.push(wtree.repo_of(s), s.coder.git_remote, branch, token)
                _, pr_url = deliver.open_pull_request(
                    s, token or "", branch, state["base_branch"], f"#{self.n}: {job.payload.get('title', '')}"[:200],
                    deliver.pr_body(self.n, summary, checks, led["turns"], led["usd"], led["wall_s"], stat))
            except (wtree.GitFailed, deliver.DeliveryFailed) as e:
                log.warning("coder: job %s: delivery failed, retried later: %s", job.id, e)
                return self._requeue(f"delivery failed: {e}", s.coder.coder_backoff_s)
        self.mark("delivered")
        state.update(delivered=True, pr_url=pr_url)
        self.save(state)
        result = {"verdict": "DONE", "branch": branch, "pr_url": pr_url, "checks": chk.as_dicts(checks),
                  "turns": turns, "usd": usd, "wall_s": wall, "diffstat": stat, "head": wtree.head(wt),
                  "session_id": state.get("session_id"), "ledger": led,
                  "reason": f"branch `{branch}`" + (f", draft PR {pr_url}" if pr_url else "")}
        c.outbox.comment(self.n, f"{self.base_key}/result",
                         deliver.done_comment(job.id, branch, pr_url, checks, turns, usd, wall, stat, led))
        c.outbox.status(self.n, f"{self.base_key}/status-done", "review")
        c.store.finish(job.id, job.attempt, result, note=f"branch {branch} delivered")
        log.info("coder: job %s delivered: %s", job.id, pr_url or branch)
