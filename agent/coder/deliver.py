"""Delivering checked work, the texts the coder posts, and its ledger.

GitHub tracker: the branch is pushed to REFINERY_GIT_REMOTE (the token through a credential helper, see
worktree.push) and a draft pull request is opened with PyGithub (one per branch: an open one is reused and
its body updated), then the issue gets a comment with the link and the label `refinery:review`. Local
tracker: the branch stays in the local repository; the issue gets the same comment with the branch.

Every text goes through agent/redact.py (the outbox redacts again).

The ledger (the queue database's key-value table): `coder.ledger:<issue>` {usd, turns, sessions, wall_s} per
item, `coder.day:<YYYY-MM-DD>` the UTC day's spend; the reporter shows the item's beside device-minutes.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import config
from agent.coder.checks import Check
from agent.redact import redact


class DeliveryFailed(config.RefineryError):
    """The checked branch could not be pushed or its pull request opened.

    Fix: read the message (the remote REFINERY_GIT_REMOTE, the token's contents:write and pull_requests:write
    permissions); the item is tried again later and goes straight to delivery (its checks are kept)."""


def open_pull_request(settings: config.Settings, token: str, branch: str, base: str, title: str,
                      body: str) -> tuple[int, str]:
    """A draft pull request for `branch` (an open one is reused and its body updated): (number, html_url)."""
    from github import Auth, Github, GithubException

    d = settings.daemon
    gh = Github(auth=Auth.Token(token), base_url=d.github_api_url.rstrip("/"),
                timeout=max(1, round(d.github_timeout_s)), retry=None, user_agent="refinery-coder")
    try:
        repo = gh.get_repo(d.github_repo, lazy=True)
        owner = d.github_repo.split("/")[0]
        body = redact(body)
        for pr in repo.get_pulls(state="open", head=f"{owner}:{branch}"):
            pr.edit(body=body)
            return pr.number, pr.html_url
        pr = repo.create_pull(base=base, head=branch, title=redact(title), body=body, draft=True)
        return pr.number, pr.html_url
    except GithubException as e:
        msg = e.data.get("message", "") if isinstance(e.data, dict) else str(e.data)
        raise DeliveryFailed(redact(f"GitHub answered {e.status} to the pull request for {branch}: {msg}")) from None
    except Exception as e:  # noqa: BLE001 - network errors of any kind: the item waits and tries again
        raise DeliveryFailed(redact(f"the pull request for {branch} could not be opened: {type(e).__name__}: {e}")
                             ) from None
    finally:
        gh.close()


def money(usd: float) -> str:
    return f"${usd:.2f}"


def fmt_s(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600} h {s % 3600 // 60} min" if s >= 3600 else f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"


def checks_block(checks: list[Check]) -> str:
    return "\n".join(f"- {c.line().splitlines()[0]}" for c in checks)


def pr_body(issue: int, summary: str, checks: list[Check], turns: int, usd: float, wall_s: float,
            diffstat: str) -> str:
    return (f"Written by Claude Code, run by refinery for #{issue}; checked by refinery. A draft: it waits for a "
            f"person's review.\n\n**Summary (the session's last words)**\n\n{summary.strip() or '(none)'}\n\n"
            f"**Checks**\n\n{checks_block(checks)}\n\n**Cost** {turns} turns, {money(usd)}, {fmt_s(wall_s)} "
            f"wall\n\n```\n{diffstat}\n```\n\nRefs #{issue}")


def done_comment(job_id: int, branch: str, pr_url: str | None, checks: list[Check], turns: int, usd: float,
                 wall_s: float, diffstat: str, ledger: dict) -> str:
    where = f"Draft pull request: {pr_url} (branch `{branch}`)" if pr_url else \
        f"Branch `{branch}` in the local repository"
    return (f"**agent: DONE — a branch waits for review** (job {job_id})\n\n{where}\n\n{checks_block(checks)}\n\n"
            f"This session: {turns} turns, {money(usd)}, {fmt_s(wall_s)}. {ledger_line(ledger)}\n\n"
            f"```\n{diffstat}\n```")


def failed_comment(job_id: int, attempt: int, max_attempts: int, retry_in: float | None, why: str,
                   checks: list[Check], last_words: str, usd: float, ledger: dict, worktree: str) -> str:
    head = (f"**agent: attempt {attempt} of {max_attempts} failed** (job {job_id}); it resumes the same session "
            f"in about {retry_in:.0f} s." if retry_in is not None else
            f"**agent failed** (job {job_id}, attempt {attempt} of {max_attempts}).")
    body = f"{head}\n\nWhy: {why}\n\n"
    if checks:
        body += checks_block(checks) + "\n\n"
    tail = last_words.strip()[-800:]
    if tail:
        body += "The CLI's last message:\n\n```\n" + tail + "\n```\n\n"
    return body + (f"This session spent {money(usd)}. {ledger_line(ledger)} The worktree and notes are kept in "
                   f"`{worktree}`.")


def progress_comment(job_id: int, attempt: int, turns: int, usd: float, last_tool: str, elapsed_s: float,
                     state: str) -> str:
    return (f"**agent: {state}** (job {job_id}, attempt {attempt}): {turns} turns, {money(usd)}, "
            f"{fmt_s(elapsed_s)} elapsed" + (f"; last tool: `{last_tool[:100]}`" if last_tool else "") + ".")


# --------------------------------------------------------------------------- the ledger
def day_key(t: float) -> str:
    return "coder.day:" + datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d")


def next_midnight(t: float) -> float:
    d = datetime.fromtimestamp(t, UTC).date() + timedelta(days=1)
    return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()


def spent_today(kv, now: float | None = None) -> float:
    return float((kv.get(day_key(time.time() if now is None else now)) or {}).get("usd", 0.0))


def item_ledger(kv, issue: int) -> dict:
    return kv.get(f"coder.ledger:{issue}") or {"usd": 0.0, "turns": 0, "sessions": 0, "wall_s": 0.0}


def add_to_ledger(kv, issue: int, usd: float, turns: int, wall_s: float, now: float | None = None) -> dict:
    now = time.time() if now is None else now
    led = item_ledger(kv, issue)
    led = {"usd": round(led["usd"] + usd, 6), "turns": led["turns"] + turns, "sessions": led["sessions"] + 1,
           "wall_s": round(led["wall_s"] + wall_s, 2)}
    kv.put(f"coder.ledger:{issue}", led)
    day = kv.get(day_key(now)) or {"usd": 0.0}
    kv.put(day_key(now), {"usd": round(day["usd"] + usd, 6)})
    return led


def ledger_line(led: dict) -> str:
    if not led or not led.get("sessions"):
        return ""
    return (f"The coder on this item so far: {money(led['usd'])}, {led['turns']} turns in {led['sessions']} "
            f"session(s), {fmt_s(led['wall_s'])}.")
