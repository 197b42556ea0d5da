"""The GitHub tracker: PyGithub against REFINERY_GITHUB_REPO, polite and cheap.

What it does about PyGithub 2.10's known traps:
- Retries: our own urllib3 `Retry` — GET/HEAD only, on 5xx and dropped connections, a short
  back-off, never a Retry-After sleep, and it hands back the last response instead of raising
  RetryError. POST/PATCH/DELETE are never re-sent here: a failure after sending raises
  AmbiguousWrite and the outbox looks for the comment's marker before it tries again.
- Rate limits: no retry ever sleeps inside a request. A 403/429 is read here: Retry-After, or
  x-ratelimit-remaining 0 with x-ratelimit-reset, or a secondary-limit message (60 s). A wait up
  to max_rate_limit_wait_s is slept once; a longer one raises TrackerUnavailable(until) and
  every call before `until` fails fast without touching the network (the queue keeps running).
- Outages surface from requests as ConnectionError/Timeout/RetryError, not GithubException;
  both are caught and turn into TrackerUnavailable with a doubling back-off.
- The issue list is our own conditional GET (PyGithub has no ETag support on lists): sort by
  update time, newest first, per_page=100, `since` a cursor kept in the database, and the first
  page's ETag kept there too. A 304 (free) on page one means nothing changed, so an idle poll
  costs nothing against the 5,000/h limit, also across restarts. Pages are followed through the
  Link header (full URLs keep a GitHub Enterprise /api/v3 prefix). Pull requests are dropped on
  the raw `pull_request` key, so no PyGithub object is ever completed by a second fetch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import requests
from github import Auth, Github, GithubException
from github.Requester import Requester
from urllib3.util.retry import Retry

import config
from agent.redact import redact
from agent.state.tables import KeyValue
from agent.trackers.interface import (
    AmbiguousWrite,
    Comment,
    Issue,
    Poll,
    TrackerError,
    TrackerUnavailable,
    approvals_of,
    marker,
)

log = logging.getLogger("refinery.github")

WINDOW_MAX = 50  # the `since` window may hold this many issues before the cursor moves up
SECONDARY_WAIT_S = 60.0  # a secondary limit without Retry-After: GitHub says wait at least a minute
MAX_BACKOFF_S = 300.0


class NoToken(TrackerError):
    """tracker = github but no GitHub token was found.

    Fix: set GITHUB_TOKEN, or put the token in a file named by REFINERY_TOKEN_FILE, or (systemd)
    pass it as the credential `github-token` (LoadCredential=github-token:/path).
    """


def _raw_issue(d: dict) -> Issue:
    user = d.get("user") or {}
    login = user.get("login", "")
    return Issue(number=d["number"], title=d.get("title") or "", body=d.get("body") or "", state=d["state"],
                 labels=tuple(lab["name"] for lab in d.get("labels") or []), author=login,
                 author_is_bot=user.get("type") == "Bot" or login.endswith("[bot]"),
                 is_pr="pull_request" in d, updated_at=d.get("updated_at") or "", url=d.get("html_url", ""))


def _fingerprint(d: dict) -> str:
    """What intake reads of an issue: updated_at has one-second resolution, so two changes in the same
    second look alike by time alone."""
    keys = (d.get("updated_at"), d.get("state"), d.get("title"), d.get("body"),
            sorted(lab["name"] for lab in d.get("labels") or []))
    return hashlib.sha1(json.dumps(keys, default=str).encode()).hexdigest()[:16]


class _NotJSON(Exception):
    """An answer whose body is not JSON (GitHub's HTML error pages on 502/503, a proxy in between)."""

    def __init__(self, status: int, content_type: str):
        super().__init__(status)
        self.status, self.kind = status, (content_type.split(";")[0].strip() or "no content type")


def _not_json(e: GithubException) -> bool:
    return isinstance(e.data, str) or (isinstance(e.data, dict) and set(e.data) == {"data"})


def _written(obj: Any, what: str) -> Any:
    """A write's answer must be the object GitHub made; anything else (an HTML page with 200) is ambiguous."""
    if not isinstance(getattr(obj, "_rawData", None), dict) or "id" not in obj._rawData:
        raise _NotJSON(200, f"{what}: not the expected object")
    return obj


def _next_link(headers: dict) -> str | None:
    m = re.search(r'<([^>]+)>;\s*rel="next"', headers.get("link", ""))
    return m.group(1) if m else None


class GitHubTracker:
    name = "github"

    def __init__(self, settings: config.Settings, kv: KeyValue, token: str | None = None):
        d = settings.daemon
        token = token or config.read_github_token(settings=settings)
        if not token:
            raise NoToken("no GitHub token: set GITHUB_TOKEN or a token file")
        self.settings, self.kv, self.repo_name = settings, kv, d.github_repo
        retry = Retry(total=3, connect=2, read=2, status=2, redirect=0, backoff_factor=0.25,
                      status_forcelist=(500, 502, 503, 504), allowed_methods=frozenset({"GET", "HEAD"}),
                      raise_on_status=False, respect_retry_after_header=False)
        self.gh = Github(auth=Auth.Token(token), base_url=d.github_api_url.rstrip("/"),
                         timeout=max(1, round(d.github_timeout_s)), per_page=100, retry=retry, lazy=True,
                         seconds_between_requests=0.0,
                         seconds_between_writes=d.write_interval_s, user_agent="refinery")
        self.requester: Requester = self.gh.requester
        self.repo = self.gh.get_repo(self.repo_name)  # lazy: no request
        self.base = f"/repos/{self.repo_name}"
        self.lock = threading.Lock()  # one request at a time (GitHub asks for serial requests)
        # a back-off outlives a restart (a crash-looping service must not hammer GitHub), but not a change of
        # the server or repository it was about: a corrected REFINERY_GITHUB_API_URL is tried at once
        self.endpoint = f"{d.github_api_url.rstrip('/')} {self.repo_name}"
        blocked = kv.get("github.blocked") or {}
        if blocked.get("endpoint", self.endpoint) != self.endpoint:
            blocked = {}
        self.blocked_until = float(blocked.get("until", 0.0))
        self.blocked_why = blocked.get("why", "")
        self.failures = 0
        self.requests = 0  # requests sent that cost quota (304s excluded)
        self.not_modified = 0

    # ------------------------------------------------------------------ the one door to GitHub
    def _call(self, what: str, fn: Callable[[], Any], write: bool = False) -> Any:
        if time.time() < self.blocked_until:  # the message is the cause; the caller says until when
            raise TrackerUnavailable(self.blocked_why, self.blocked_until)
        for attempt in range(2):
            try:
                with self.lock:
                    out = fn()
                self._ok()
                return out
            except GithubException as e:
                headers = {k.lower(): v for k, v in (e.headers or {}).items()}
                if _not_json(e):  # PyGithub wraps a body it could not parse as {"data": text}
                    e = _NotJSON(e.status, headers.get("content-type", ""))
                    raise self._block(f"GitHub answered {e.status} to {what} with a page that is not JSON ({e.kind})",
                                      self._backoff(), write, e.status) from None
                wait, why = self._rate_wait(e.status, headers, e.data)
                if wait is not None:
                    if attempt == 0 and wait <= self.settings.daemon.max_rate_limit_wait_s:
                        log.info("GitHub %s: %s; waiting %.0f s", what, why, wait)
                        time.sleep(max(0.0, wait))
                        continue  # a rate-limited request was not performed: safe to send again
                    raise self._block(f"GitHub answered {e.status}: {why}", time.time() + wait,
                                      status=e.status) from None
                if e.status >= 500:
                    raise self._block(f"GitHub answered {e.status} to {what}", self._backoff(), write,
                                      e.status) from None
                message = (e.data or {}).get("message", "") if isinstance(e.data, dict) else str(e.data)
                hint = self._hint(e.status, what)
                raise TrackerError(redact(f"GitHub answered {e.status} to {what}: {message}{hint}"), e.status) from None
            except _NotJSON as e:
                raise self._block(f"GitHub answered {e.status} to {what} with a page that is not JSON ({e.kind})",
                                  self._backoff(), write, e.status) from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                    requests.exceptions.RetryError, requests.exceptions.ChunkedEncodingError) as e:
                log.debug("GitHub %s failed: %s", what, redact(str(e)))
                why = f"GitHub unreachable during {what} ({type(e).__name__})"
                raise self._block(why, self._backoff(), write) from None
        raise AssertionError("unreachable")

    def _hint(self, status: int, what: str) -> str:
        """The fix for an answer that means a setting is wrong (a bad token; a repository that is not there)."""
        if status == 401:
            return " — check the token (GITHUB_TOKEN, REFINERY_TOKEN_FILE or the github-token credential)"
        if status == 404 and what == "list issues":
            return (f" — check REFINERY_GITHUB_REPO ({self.repo_name}) and REFINERY_GITHUB_API_URL, and that the "
                    "token can read that repository")
        return ""

    def _rate_wait(self, status: int, headers: dict, data: Any) -> tuple[float | None, str]:
        """Seconds to wait when a 403/429 is a rate limit (None when it is not), and why."""
        if status not in (403, 429):
            return None, ""
        message = (data or {}).get("message", "") if isinstance(data, dict) else ""
        if "retry-after" in headers:
            try:
                return float(headers["retry-after"]), f"secondary rate limit, Retry-After {headers['retry-after']} s"
            except ValueError:
                pass
        if headers.get("x-ratelimit-remaining") == "0" and str(headers.get("x-ratelimit-reset", "")).isdigit():
            return max(1.0, int(headers["x-ratelimit-reset"]) - time.time() + 1), "primary rate limit exhausted"
        if status == 429 or Requester.isRateLimitError(message):
            return SECONDARY_WAIT_S, "secondary rate limit"
        return None, ""

    def _backoff(self) -> float:
        self.failures += 1
        base = self.settings.daemon.github_backoff_s
        return time.time() + min(MAX_BACKOFF_S, base * 2 ** (self.failures - 1))

    def _block(self, why: str, until: float, ambiguous: bool = False, status: int | None = None) -> TrackerUnavailable:
        """Remember (here and in the database) not to call GitHub before `until`."""
        self.blocked_until, self.blocked_why = until, why
        if until > time.time():
            self.kv.put("github.blocked", {"until": until, "why": why, "endpoint": self.endpoint})
        log.warning("%s; next try after %s", why, time.strftime("%H:%M:%S", time.localtime(until)))
        return (AmbiguousWrite if ambiguous else TrackerUnavailable)(why, until, status)

    def _ok(self) -> None:
        if self.failures or self.blocked_until:
            self.failures, self.blocked_until, self.blocked_why = 0, 0.0, ""
            self.kv.delete("github.blocked")

    def _get_json(self, url: str, params: dict | None = None, headers: dict | None = None) -> tuple[int, dict, Any]:
        """One GET through PyGithub's requester (auth, base URL, timeout, our Retry); raw JSON back."""
        status, hdrs, body = self.requester.requestJson("GET", url, parameters=params, headers=headers or {})
        hdrs = {k.lower(): v for k, v in hdrs.items()}
        if status == 304:
            self.not_modified += 1
            return status, hdrs, None
        self.requests += 1
        try:
            data = json.loads(body) if body else None
        except ValueError:  # an HTML error page from GitHub's front end, a proxy's login page: an outage
            raise _NotJSON(status, hdrs.get("content-type", "")) from None
        if status >= 400:
            raise Requester.createException(status, hdrs, data)
        return status, hdrs, data

    def _get_all(self, url: str) -> list[dict]:
        """Every page of a list (Link: rel=next), 100 a page."""
        _, hdrs, items = self._get_json(url, {"per_page": "100"})
        items, nxt = list(items or []), _next_link(hdrs)
        while nxt:
            _, hdrs, more = self._get_json(nxt)
            items.extend(more or [])
            nxt = _next_link(hdrs)
        return items

    # ------------------------------------------------------------------ polling
    def poll(self) -> Poll:
        """Issues changed since the last poll, oldest first: one free 304 when nothing changed.

        The cursor `since` moves up lazily (when its window holds more than WINDOW_MAX issues),
        so the polled URL, and with it the cached ETag, stays the same while nothing happens.
        `seen` (number -> [updated_at, fingerprint] inside the window) drops what was already handed out.
        Every resync_s a full, unconditional read of the open issues backs the cursor up.
        """
        now = time.time()
        cur = self.kv.get("github.cursor") or {}
        since, seen, resync_at = cur.get("since"), dict(cur.get("seen", {})), cur.get("resync_at", 0.0)
        every = self.settings.daemon.resync_s
        full = not since or bool(every and now - resync_at > every)
        params = {"state": "open" if full else "all", "sort": "updated", "direction": "desc", "per_page": "100"}
        if not full:
            params["since"] = since
        out = Poll()
        before = (self.requests, self.not_modified)
        try:
            raw = self._call("list issues", lambda: self._read_pages(params, conditional=not full))
        finally:
            out.requests, out.not_modified = self.requests - before[0], self.not_modified - before[1]
            self._save_rate()
        raw, etag = raw
        if raw is None:  # 304: nothing changed
            if full and since:
                out.state["github.cursor"] = {**cur, "resync_at": now}
            return out
        fresh = raw if full else [d for d in raw if seen.get(str(d["number"]), [None, None])[1] != _fingerprint(d)]
        for d in raw:
            seen[str(d["number"])] = [d.get("updated_at") or "", _fingerprint(d)]
        if not since or (not full and len(raw) > WINDOW_MAX):
            # A resync never moves the cursor: a close inside the window would be missed.
            since = max([d.get("updated_at") or "" for d in raw] + [since or ""]) or None
        if since:
            seen = {k: v for k, v in seen.items() if isinstance(v, list) and v[0] >= since}
        for d in sorted(fresh, key=lambda d: d.get("updated_at") or ""):
            if "pull_request" in d:
                out.skipped_prs += 1
            else:
                out.issues.append(_raw_issue(d))
        out.state["github.cursor"] = {"since": since, "seen": seen, "resync_at": now if full else resync_at}
        if etag:
            out.state["github.etag"] = etag
        return out

    def ack(self, poll: Poll) -> None:
        for k, v in poll.state.items():
            self.kv.put(k, v)

    def _read_pages(self, params: dict, conditional: bool) -> tuple[list[dict] | None, dict | None]:
        """All pages of one issue query (None on a 304) and the ETag to keep. It is kept (and sent) only for a
        one-page answer: a change shows on page one only if it is not tied, to the second, with
        more than a page of issues, and a one-page window cannot hide one that way."""
        key = urllib.parse.urlencode(sorted(params.items()))
        cached = self.kv.get("github.etag") or {}
        use = conditional and cached.get("key") == key and cached.get("etag")
        status, hdrs, page = self._get_json(f"{self.base}/issues", params, {"If-None-Match": use} if use else {})
        if status == 304:
            return None, None
        items, nxt = list(page or []), _next_link(hdrs)
        single = nxt is None
        while nxt:
            _, h, more = self._get_json(nxt)
            items.extend(more or [])
            nxt = _next_link(h)
        keep = conditional and single and hdrs.get("etag")
        return items, ({"key": key, "etag": hdrs["etag"]} if keep else None)

    def _save_rate(self) -> None:
        remaining, limit = self.requester.rate_limiting
        if limit < 0:  # PyGithub's (-1, -1): GitHub has not answered yet, so there is nothing to show
            return
        self.kv.put("github.rate", {"remaining": remaining, "limit": limit,
                                    "reset": self.requester.rate_limiting_resettime, "at": time.time()})

    # ------------------------------------------------------------------ reads
    def get_issue(self, number: int) -> Issue:
        _, _, d = self._call(f"get issue #{number}", lambda: self._get_json(f"{self.base}/issues/{number}"))
        return _raw_issue(d)

    def comments(self, number: int) -> list[Comment]:
        rows = self._call(f"list comments of #{number}", lambda: self._get_all(f"{self.base}/issues/{number}/comments"))
        return [Comment(c["id"], c.get("body") or "", (c.get("user") or {}).get("login", ""), c.get("created_at", ""))
                for c in rows]

    def find_marker(self, number: int, key: str) -> int | None:
        m = marker(key)
        return next((c.id for c in self.comments(number) if m in c.body), None)

    def permission(self, login: str) -> str:
        def read() -> str:
            try:
                _, _, d = self._get_json(f"{self.base}/collaborators/{urllib.parse.quote(login, safe='')}/permission")
            except GithubException as e:
                if e.status == 404:
                    return "none"
                raise
            return d.get("role_name") or d.get("permission") or "none"
        return self._call(f"permission of {login}", read)

    def label_actor(self, number: int, label: str) -> str | None:
        events = self._call(f"events of #{number}", lambda: self._get_all(f"{self.base}/issues/{number}/events"))
        actors = [(e.get("actor") or {}).get("login") for e in events
                  if e.get("event") == "labeled" and (e.get("label") or {}).get("name") == label]
        return actors[-1] if actors else None

    def reactions(self, number: int, comment_id: int) -> list[tuple[str, str]]:
        rows = self._call(f"reactions on comment {comment_id}",
                          lambda: self._get_all(f"{self.base}/issues/comments/{comment_id}/reactions"))
        return [((r.get("user") or {}).get("login", ""), r.get("content", "")) for r in rows]

    def approvals(self, number: int, key: str) -> list[str]:
        return approvals_of(self, number, key, self.settings.daemon.allowlist)

    # ------------------------------------------------------------------ writes (never re-sent blindly)
    def post_comment(self, number: int, body: str) -> int:
        return self._call(f"comment on #{number}", lambda: _written(
            self.repo.get_issue(number).create_comment(redact(body)), "comment").id, write=True)

    def edit_comment(self, number: int, comment_id: int, body: str) -> None:
        self._call(f"edit comment {comment_id}",
                   lambda: self.repo.get_issue(number).get_comment(comment_id).edit(redact(body)), write=True)

    def add_label(self, number: int, label: str) -> None:
        self._call(f"label #{number}", lambda: self.repo.get_issue(number).add_to_labels(label), write=True)

    def remove_label(self, number: int, label: str) -> None:
        def remove() -> None:
            try:
                self.repo.get_issue(number).remove_from_labels(label)
            except GithubException as e:
                if e.status != 404:
                    raise
        self._call(f"unlabel #{number}", remove, write=True)

    def ensure_labels(self, labels: dict[str, tuple[str, str]]) -> None:
        done = set(self.kv.get("github.labels_ok") or [])
        missing = [n for n in labels if n not in done]
        if not missing:
            return
        have = {lab["name"] for lab in self._call("list labels", lambda: self._get_all(f"{self.base}/labels"))}
        for name in missing:
            if name not in have:
                color, desc = labels[name]

                def create(name=name, color=color, desc=desc) -> None:
                    try:
                        self.repo.create_label(name, color, desc)
                    except GithubException as e:
                        if e.status != 422:  # already exists (a race with a person): fine
                            raise
                self._call(f"create label {name}", create, write=True)
            done.add(name)
            self.kv.put("github.labels_ok", sorted(done))

    def close(self, number: int) -> None:
        self._call(f"close #{number}", lambda: self.repo.get_issue(number).edit(state="closed"), write=True)

    # ------------------------------------------------------------------ status
    def state(self) -> dict:
        rate = self.kv.get("github.rate") or {}
        blocked = self.kv.get("github.blocked") or {}
        if blocked.get("endpoint", self.endpoint) != self.endpoint:
            blocked = {}
        return {"tracker": "github", "repo": self.repo_name, "available": time.time() >= blocked.get("until", 0),
                "blocked_until": blocked.get("until"), "why": blocked.get("why"), **{f"rate_{k}": v
                                                                                   for k, v in rate.items()}}
