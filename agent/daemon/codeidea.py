"""Ideas that need code: issue → the coder's branch → a writer's 👍 on one exact commit → stages from that commit.

    intake(it, issue, lane, h, held)   # intake.py: `ideas` + a lane + `code` → one agent-lane item for the coder,
                                       # the spec (the issue's ```toml block) as its target (agent/coder/ideacheck.py)
    CodeIdeas(...).step()              # the pipeline's step, every poll interval: offer, watch, approve, enqueue
    mirror(outbox, job, key, body)     # a stage's result comment goes to the pull request too
    CodeIdeas.decided(job, ...)        # pipeline.py: passed every stage → the PR ready for review with the finding;
                                       # killed → the PR gets the finding and stays open
    graveyard_note(job)                # the branch and SHA a killed code idea leaves behind

The trust boundary. Code an agent wrote runs in a stage only after a person with write access approves one
exact commit: refinery posts a "ready for review" comment naming the branch's head SHA (key
`i<n>/code-<sha12>/review`); a 👍 on it from a writer (Tracker.approvals: the same trust rule as intake, so a
reader's 👍 does nothing) approves that SHA, recorded in the key-value table (`code:<issue>`); so does a writer's
approving review of the pull request left on that commit, or merging the pull request at that commit
(agent/trackers/github_pulls.py). The branch's head
is read again every poll (fetched from the remote when there is one): a commit pushed after an approval gets a
new ready-for-review comment and needs a new 👍; only the newest offered commit can be approved. A branch whose
dependency files (source.DEP_FILES) differ from its merge-base is refused with a comment (merge it first: the
stages run in the daemon's environment). REFINERY_CODE_AUTO_APPROVE=cpu lets a cpu-lane idea's smoke and
ablation run unapproved (said on the issue); what comes after waits for a 👍 (pipeline.py's approval).

On approval: the read-only tree of the SHA (jobqueue/srctree.py), the spec parsed by that tree's own parser
(the branch may add the setting it names), the spec file {"toml", "issue", "prereg", "control"} (the stage
re-parses it in the tree), then `smoke` enqueued with payload source = that SHA and `code` = {branch, sha, pr}.
Every later stage copies the payload, so all of them run from that SHA. `[code] control = "base"`: the
merge-base's tree too, the spec as that tree knows it (ideacheck.control_spec: settings the branch added are
left out, and said), in the spec file's "control" and the payload's control_source; the ablation runs its
control arm there (experiments/control_arm.py). Each step also prunes unused pinned trees (src_keep_days) and
stops watching the records of issues intake saw closed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time

import config
from agent.coder import ideacheck
from agent.coder import worktree as wtree
from agent.daemon import source
from agent.state.tables import IntakeMemory
from agent.trackers import github_pulls
from agent.trackers.interface import TrackerError
from experiments.spec import extract_toml_block
from experiments.stage import stage_argv
from jobqueue import srctree
from jobqueue.models import LIVE, State

log = logging.getLogger("refinery.codeidea")
WINDOW = 50  # newest succeeded jobs looked at for delivered code ideas


def intake(it, issue, lane: str, h: str, held: bool) -> str:
    """`ideas` + lane + `code`: one agent-lane item whose target is the spec."""
    n = issue.number
    text, _ = extract_toml_block(issue.body)
    payload = {"title": issue.title, "body": issue.body, "labels": list(issue.labels), "types": ["ideas", "code"],
               "url": issue.url, "idea": {"lane": lane, "toml": text or ""}}
    job = it.store.enqueue(n, "agent", "agent", payload, key="agent")
    if held:
        it.store.hold_issue(n)
    auto = it.settings.coder.code_auto_approve == "cpu" and lane == "cpu"
    it.outbox.comment(n, f"i{n}/j{job.id}/agent/queued", (
        f"Queued for the coder as job {job.id}: a code idea for the {lane} lane. The coder writes it on a branch; "
        "the branch is done when the spec parses there, the project's checks pass there and a smoke stage of the "
        "spec passes on the CPU there. Then a draft pull request and a ready-for-review comment: a 👍 on that "
        "comment from someone with write access approves that one commit, and every stage runs from it."
        + (" **REFINERY_CODE_AUTO_APPROVE=cpu is set**: this idea's smoke test and ablation will run on the cpu "
           "lane before anyone approves; later stages wait for a 👍." if auto else "")
        + (" It is on hold while this issue is blocked." if held else "")))
    it.outbox.status(n, f"i{n}/j{job.id}/agent/status-queued", "queued")
    it.memory.put(n, status="agent", body_hash=h)
    return "code idea"


def pr_number(url: str | None) -> int | None:
    m = re.search(r"/pull/(\d+)$", url or "")
    return int(m.group(1)) if m else None


def mirror(outbox, job, key: str, body: str, run_dir=None) -> None:
    """A code idea's stage comment goes to its pull request too (GitHub: a pull request is an issue)."""
    pr = (job.payload.get("code") or {}).get("pr")
    if pr:
        outbox.comment(pr, f"{key}/pr{pr}", body, run_dir)


def control_text(control: dict | None, sha: str) -> str:
    """What the approval comment says about the ablation's control arm."""
    if not control:
        return f"The ablation's control arm is the reasoner at the same commit `{sha[:12]}`."
    left = (f" Settings the merge-base does not have are left out of that arm: {', '.join(control['dropped'])}."
            if control.get("dropped") else "")
    return (f'The ablation\'s control arm (`[code] control = "base"`) is the same spec run from the branch\'s '
            f"merge-base `{control['sha'][:12]}` (its own read-only worktree), so the ablation measures the code "
            f"change itself.{left}")


def graveyard_note(job) -> str:
    code = job.payload.get("code") or {}
    if not code.get("branch"):
        return ""
    return f"; branch `{code['branch']}` at `{code['sha'][:12]}` kept" + (f" (PR #{code['pr']})" if code.get("pr")
                                                                          else "")


class CodeIdeas:
    def __init__(self, settings: config.Settings, store, outbox, kv, tracker=None):
        self.settings, self.store, self.outbox, self.kv, self.tracker = settings, store, outbox, kv, tracker
        self.memory = IntakeMemory(kv.engine)  # intake's record of each issue: a closed one is watched no more

    # ------------------------------------------------------------------ the pipeline's step
    def step(self) -> None:
        self.prune_sources()
        for job in self.store.list(state=State.SUCCEEDED, lane="agent", limit=WINDOW):
            if job.payload.get("idea") and job.issue is not None:
                rec = self.kv.get(f"code:{job.issue}")
                if not rec or rec.get("job") != job.id:
                    self._delivered(job)
        for key in self.kv.keys("code:"):
            rec = self.kv.get(key)
            if rec and not rec.get("closed") and (self.memory.get(rec["issue"]) or {}).get("state") == "closed":
                rec["closed"] = time.time()  # the issue was closed: its branch is watched no more
                self._put(rec)
                log.info("code idea #%s: the issue is closed; its branch is no longer watched", rec["issue"])
            if rec and not rec.get("closed"):
                try:
                    if rec.get("ready") == "pending":
                        self._mark_ready(rec)
                    self._watch(rec)
                except TrackerError as e:  # GitHub unavailable: look again next time
                    log.info("code idea #%s: %s", rec["issue"], e)
                    return
                except config.RefineryError as e:
                    log.warning("code idea #%s: %s", rec["issue"], e)

    def prune_sources(self) -> list[str]:
        """Pinned source trees (runs/src/<sha>/) unused for src_keep_days that no live job names go."""
        def keep() -> set[str]:
            out = set()
            for state in LIVE:
                for j in self.store.list(state=state, limit=100_000):
                    out |= {(j.payload.get(k) or {}).get("sha") for k in ("source", "control_source")}
            return out - {None}
        gone = srctree.prune(self.settings, keep)
        if gone:
            log.info("pinned sources: removed %d unused tree(s): %s", len(gone), ", ".join(g[:12] for g in gone))
        return gone

    def _delivered(self, job) -> None:
        res, n = job.result or {}, job.issue
        idea = job.payload["idea"]
        text, code = ideacheck.split_code_table(idea.get("toml", ""))
        rec = {"issue": n, "job": job.id, "branch": res.get("branch"), "pr_url": res.get("pr_url"),
               "pr": pr_number(res.get("pr_url")), "lane": idea["lane"], "toml": text,
               "control": ideacheck.control_of(code) or "reasoner", "title": job.payload.get("title"),
               "url": job.payload.get("url"), "offers": {}, "head": None, "approved": {}, "queued": {}}
        self.kv.put(f"code:{n}", rec)
        self._offer(rec, res.get("head"))

    def _put(self, rec: dict) -> None:
        self.kv.put(f"code:{rec['issue']}", rec)

    def branch_head(self, rec: dict) -> str | None:
        """The branch's head now: fetched from the remote when it has one, else the local branch."""
        repo, b, remote = wtree.repo_of(self.settings), rec["branch"], self.settings.coder.git_remote
        if self.settings.daemon.tracker == "github" and wtree.git(repo, "remote", check=False):
            token = config.read_github_token(settings=self.settings)
            env = {"REFINERY_PUSH_TOKEN": token} if token else {}
            wtree.git(repo, "-c", "credential.helper=", "-c", f"credential.helper={wtree.HELPER}", "fetch",
                      "--quiet", remote, f"+refs/heads/{b}:refs/remotes/{remote}/{b}", env=env, check=False)
            got = wtree.git(repo, "rev-parse", "--verify", "--quiet", f"refs/remotes/{remote}/{b}^{{commit}}",
                            check=False)
            if got:
                return got
        return wtree.git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{b}^{{commit}}", check=False) or None

    def _offer(self, rec: dict, sha: str | None) -> None:
        """A ready-for-review comment for `sha`: a writer's 👍 on it approves exactly this commit."""
        if not sha or sha in rec["offers"]:
            return
        n, key = rec["issue"], f"i{rec['issue']}/code-{sha[:12]}/review"
        again = bool(rec["offers"])
        where = f"the draft pull request {rec['pr_url']} (branch `{rec['branch']}`)" if rec.get("pr_url") else \
            f"the branch `{rec['branch']}`"
        auto = self._auto(rec)
        self.outbox.comment(n, key, (
            f"**Ready for review** — {where} at commit `{sha}`."
            + (" New commits were pushed after the last offer: an earlier approval does not cover them." if again
               else "")
            + "\n\nReact 👍 to this comment (someone with write access) to approve exactly this commit: the smoke "
            f"test, then the ablation, run from it on the {rec['lane']} lane. A 👍 from anyone else does nothing; "
            "commits pushed later need a new 👍 on the comment refinery posts for them."
            + (f" Control arm: `{rec['control']}`." if rec["control"] != "reasoner" else "")
            + ("\n\nREFINERY_CODE_AUTO_APPROVE=cpu is set: the cpu lane's smoke and ablation of this commit run "
               "unapproved." if auto else "")))
        self.outbox.status(n, f"{key}/status", "review")
        rec["offers"][sha] = key
        rec["head"] = sha
        self._put(rec)
        log.info("code idea #%d: commit %s offered for review", n, sha[:12])

    def _auto(self, rec: dict) -> bool:
        return self.settings.coder.code_auto_approve == "cpu" and rec["lane"] == "cpu"

    def _watch(self, rec: dict) -> None:
        head = self.branch_head(rec)
        if head and head != rec["head"]:
            self._offer(rec, head)
        sha = rec["head"]
        if not sha or sha in rec["queued"] or sha in rec.get("refused", {}):
            return
        approvers = self.tracker.approvals(rec["issue"], rec["offers"][sha]) if self.tracker is not None else []
        if approvers:
            self.start(rec, sha, by=approvers[0])
            return
        if rec.get("pr") and self.tracker is not None:  # a writer's approving review on this commit, or its merge
            on_pr = [(login, how) for login, at, how in github_pulls.pull_approvals(self.tracker, rec["pr"])
                     if at == sha]
            if on_pr:
                self.start(rec, sha, by=on_pr[0][0], how=on_pr[0][1])
                return
        if self._auto(rec):
            self.start(rec, sha, by=None)

    # ------------------------------------------------------------------ approved: the smoke test from that SHA
    def start(self, rec: dict, sha: str, by: str | None, how: str = "react") -> None:
        n, s = rec["issue"], self.settings
        t0 = time.time()
        repo = wtree.repo_of(s)
        rec.setdefault("refused", {})
        base_src = source.pin(s)
        base = source.merge_base(repo, base_src["sha"], sha) if base_src.get("sha") else None
        deps = source.dep_changes(repo, base, sha) if base else []
        if deps:
            self._refuse(rec, sha, f"the branch changes {', '.join(deps)}: stages run in the daemon's environment, "
                                   "so a change of dependencies must be merged first (and the daemon's environment "
                                   "rebuilt); then file the idea again, or push a commit that leaves them as they are")
            return
        tree = srctree.ensure(repo, sha, s)
        parsed = ideacheck.parse_in(tree, rec["toml"])
        if not parsed.get("ok"):
            self._refuse(rec, sha, "the spec does not parse at this commit: " + "; ".join(parsed["errors"])[:1500])
            return
        control = None
        if rec["control"] == "base":  # the ablation's control arm: the same spec from the merge-base's tree
            if not base:
                self._refuse(rec, sha, '`[code] control = "base"` needs the merge-base, and stages here are not '
                                       "pinned (REFINERY_STAGE_SOURCE=checkout, or no git repository)")
                return
            base_tree = srctree.ensure(repo, base, s)
            known = ideacheck.control_spec(base_tree, parsed.get("given") or {})
            if not known.get("ok"):
                self._refuse(rec, sha, f"the spec does not parse at the merge-base `{base[:12]}` (the control arm "
                                       "of `control = \"base\"`): " + "; ".join(known["errors"])[:1500])
                return
            control = {"what": "base", "sha": base, "repo": str(repo), "ref": f"merge-base of {rec['branch']} and "
                       f"{base_src.get('ref')}", "tree": str(base_tree), "spec": known["spec"],
                       "dropped": known["dropped"]}
        spec_key = hashlib.sha256(f"{sha}\n{rec['toml']}".encode()).hexdigest()[:16]
        spec_file = s.runs_path / "specs" / f"i{n}-code-{sha[:12]}-{spec_key}.json"
        spec_file.parent.mkdir(parents=True, exist_ok=True)
        spec_file.write_text(json.dumps({"toml": rec["toml"], "issue": n, "title": rec.get("title"),
                                         "prereg": parsed.get("prereg"), "control": control}, indent=2) + "\n")
        payload = {"argv": stage_argv("smoke", str(spec_file)), "stage": "smoke", "spec_file": str(spec_file),
                   "spec": parsed["spec"], "given": parsed["given"], "prereg": parsed.get("prereg"),
                   "title": rec.get("title"), "url": rec.get("url"),
                   "source": source.pin_commit(s, sha, rec["branch"]), "control_source": control,
                   "code": {"branch": rec["branch"], "sha": sha, "pr": rec.get("pr"), "approved_by": by,
                            "approved_how": how if by else None},
                   "unapproved": by is None}
        job = self.store.enqueue(n, "smoke", rec["lane"], payload, key=f"code-{sha[:12]}")
        rec["approved"][sha] = by or "auto (REFINERY_CODE_AUTO_APPROVE=cpu)"
        rec["queued"][sha] = job.id
        rec.setdefault("timing", {})[sha] = {"approved_seen": t0, "enqueued": time.time()}
        self._put(rec)
        means = {"react": "👍 on the ready-for-review comment", "review": "an approving review of the pull request "
                 "on this commit", "merge": "merging the pull request at this commit"}[how]
        who = f"Approved by @{by} ({means})" if by else \
            "Not approved: REFINERY_CODE_AUTO_APPROVE=cpu runs the cpu lane's smoke and ablation unapproved"
        body = (f"{who}: commit `{sha}` of `{rec['branch']}`. The smoke test is queued as job {job.id} on the "
                f"{rec['lane']} lane and runs from that commit's read-only worktree; so does every later stage."
                + " " + control_text(control, sha))
        self.outbox.comment(n, f"i{n}/code-{sha[:12]}/approved", body)
        if rec.get("pr"):
            self.outbox.comment(rec["pr"], f"i{n}/code-{sha[:12]}/approved/pr{rec['pr']}", body)
        self.outbox.status(n, f"i{n}/code-{sha[:12]}/status-approved", "queued")
        log.info("code idea #%d: commit %s approved by %s; smoke job %d", n, sha[:12], by or "auto", job.id)

    def _refuse(self, rec: dict, sha: str, why: str) -> None:
        n = rec["issue"]
        rec["refused"][sha] = why
        self._put(rec)
        self.outbox.comment(n, f"i{n}/code-{sha[:12]}/refused", f"Commit `{sha[:12]}` of `{rec['branch']}` was "
                            f"approved, but nothing runs from it: {why}.")
        self.outbox.status(n, f"i{n}/code-{sha[:12]}/status-refused", "waiting")
        log.warning("code idea #%d: commit %s refused: %s", n, sha[:12], why[:200])

    # ------------------------------------------------------------------ decided: the pull request learns the outcome
    def decided(self, job, verdict: str, passed: bool, finding: dict | None) -> None:
        """A code idea passed every stage (its pull request is marked ready for review, on the next step) or was
        killed (the pull request gets the finding and stays open for the person to close)."""
        code = job.payload.get("code") or {}
        rec = self.kv.get(f"code:{job.issue}")
        if not code.get("sha") or not rec or (rec.get("outcome") or {}).get("job") == job.id:
            return
        link = (finding or {}).get("url") or (finding or {}).get("path") or "(not written)"
        rec["outcome"] = {"job": job.id, "sha": code["sha"], "stage": job.payload["stage"], "verdict": verdict,
                          "passed": passed, "finding": link}
        if passed:
            rec["ready"] = "pending"
        self._put(rec)
        pr, n, sha = code.get("pr"), job.issue, code["sha"]
        if pr and not passed:
            self.outbox.comment(pr, f"i{n}/code-{sha[:12]}/killed/pr{pr}", (
                f"**The idea of #{n} was killed** at the {job.payload['stage']} stage ({verdict}), measured from "
                f"commit `{sha}`. Finding: {link}\n\nThe branch `{code['branch']}` is kept and this pull request is "
                "left open: close it, or push a change and approve the new commit."))

    def _mark_ready(self, rec: dict) -> None:
        out = rec["outcome"]
        pr, n, sha = rec.get("pr"), rec["issue"], out["sha"]
        ready = github_pulls.mark_ready(self.tracker, pr) if pr and self.tracker is not None else False
        rec["ready"] = "done" if ready else "none"
        self._put(rec)
        if pr:
            self.outbox.comment(pr, f"i{n}/code-{sha[:12]}/passed/pr{pr}", (
                f"**The idea of #{n} passed every stage**, measured from commit `{sha}`. Finding: {out['finding']}"
                + ("\n\nThis pull request is marked ready for review." if ready else "")))
        log.info("code idea #%d: passed; pull request %s %s", n, pr, "ready for review" if ready else "left as is")
