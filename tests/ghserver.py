"""A local HTTP server that speaks the part of GitHub's REST API refinery uses.

Real HTTP on 127.0.0.1 (stdlib http.server, one thread per connection), so the real PyGithub and
requests/urllib3 stack run unpatched against it. One repository, kept in memory:

    srv = GitHubServer(repo="acme/lab", token="ghp_...", base_path="/api/v3").start()
    srv.add_collaborator("alice", "write")
    n = srv.create_issue("idea", body, labels=["ideas", "cpu"], author="alice")
    ... srv.url  (the base URL to give PyGithub) ... srv.stop()

What it models: issues (and pull requests, marked by a `pull_request` key) with `state`,
`labels`, `since`, `sort`/`direction`, `per_page` and Link pagination; weak ETags with
If-None-Match -> 304, which does not count against the rate limit (as on GitHub); single
issues, pull requests (create, with `draft`; list by `head` and `state`; get; edit; reviews; merged), the GraphQL
mutation markPullRequestReadyForReview (PyGithub's mark_ready_for_review), comments (list with
`since`/pagination, create, edit), issue labels (add, remove),
repository labels (get, create, list), collaborator permission, issue events (`labeled` with its
actor), reactions on a comment, `x-ratelimit-*` headers and `/rate_limit`.

A slow GitHub: `write_delay` seconds before every write is performed and answered.

An eventually consistent GitHub: `list_lag` seconds (default 0) during which a created comment is missing from
comment lists (it is at its own URL at once), as GitHub's lists lag a new comment.

GitHub's secondary limits on content-creating requests (every POST, PATCH, PUT and DELETE): `write_limits`, a list of
(requests, window in seconds), by default 80 a minute and 500 an hour; past one, a 403 whose JSON message names the
secondary rate limit, with a Retry-After header (the seconds until the window has room), and nothing happens.
`secondary_hits` counts those 403s.

Fault injection (`fail`): a status with optional headers/body returned before or after the
request took effect (a 502 after the comment was created), an HTML error page instead of JSON (`html`),
a dropped connection (RST), and a
primary rate limit (`exhaust`: 403 with x-ratelimit-remaining 0 and a reset). `counted` counts
requests that cost rate-limit quota; `not_modified` the 304s; `log` keeps every request.

Run by hand for poking with curl: `python -m tests.ghserver [--base-path /api/v3]`.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler

from tests.http_support import LocalServer

PRIMARY_MSG = "API rate limit exceeded for user ID 1."
SECONDARY_MSG = "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."


def iso(t: float) -> str:
    return datetime.fromtimestamp(int(t), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(s: str) -> float:
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


@dataclass
class Fault:
    """One injected failure. `match(method, path)` picks requests; `times` how many it hits."""

    method: str
    path_re: str
    status: int = 502
    after: bool = False  # apply the request first, then answer with the fault (ambiguous write)
    reset: bool = False  # drop the connection (RST) instead of answering
    delay: float = 0.0  # seconds to stall before answering (a slow or hanging GitHub)
    headers: dict = field(default_factory=dict)
    message: str = "Server Error"
    html: bool = False  # answer with an HTML error page (what GitHub's front end sends on a 502/503), not JSON
    times: int = 1
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return self.times > 0 and method == self.method and re.search(self.path_re, path) is not None


class GitHubServer(LocalServer):
    thread_name = "ghserver"

    def __init__(self, repo: str = "acme/lab", token: str | None = None, base_path: str = "",
                 bot_login: str = "refinery-bot", limit: int = 5000):
        self.repo, self.token, self.base_path = repo, token, base_path.rstrip("/")
        self.bot_login = bot_login
        self.lock = threading.RLock()
        self.issues: dict[int, dict] = {}
        self.comments: dict[int, dict] = {}
        self.events: dict[int, list[dict]] = {}
        self.reactions: dict[int, list[dict]] = {}
        self.labels: dict[str, dict] = {}
        self.perms: dict[str, str] = {bot_login: "write"}
        self.bots: set[str] = set()
        self.faults: list[Fault] = []
        self.pulls: dict[int, dict] = {}  # number -> {head, base, draft, title, body} (the issue row has pr=True)
        self.log: list[tuple[str, str, int, float]] = []  # (method, path?query, status, time)
        self.counted = 0  # requests that cost primary quota (everything but 304s and /rate_limit)
        self.not_modified = 0
        self.limit = limit
        self.remaining = limit
        self.reset_at = time.time() + 3600
        self.exhausted_until = 0.0
        self.write_delay = 0.0  # every POST/PATCH/DELETE/PUT is answered (and takes effect) after this many seconds
        self.list_lag = 0.0  # a new comment shows in comment lists this many seconds after it was created
        self.write_limits: list[tuple[int, float]] = [(80, 60.0), (500, 3600.0)]  # GitHub's secondary limits
        self.write_times: list[float] = []  # content-creating requests accepted (their times)
        self.secondary_hits = 0
        self._next_id = 1000
        self._clock = 0.0

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        return self.origin + self.base_path

    # ------------------------------------------------------------------ clock and ids
    def now(self) -> float:
        """Wall time in whole seconds, never going backwards (GitHub's timestamps have 1 s resolution)."""
        with self.lock:
            self._clock = max(self._clock, float(int(time.time())))
            return self._clock

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id

    # ------------------------------------------------------------------ test-side helpers
    def add_collaborator(self, login: str, permission: str = "write") -> None:
        self.perms[login] = permission

    def add_bot(self, login: str) -> None:
        self.bots.add(login)

    def create_issue(self, title: str, body: str = "", labels: tuple | list = (), author: str = "alice",
                     pr: bool = False, label_actor: str | None = None, at: float | None = None) -> int:
        """A new issue; `at` backdates it (a repository with history), labels included."""
        with self.lock:
            n = max(self.issues, default=0) + 1
            t = self.now() if at is None else float(int(at))
            self.issues[n] = {"number": n, "title": title, "body": body, "state": "open", "labels": [],
                              "user": author, "created_at": t, "updated_at": t, "closed_at": None, "pr": pr}
            self.events[n] = []
            for lab in labels:
                self.add_label(n, lab, actor=label_actor or author)
                if at is not None:
                    self.issues[n]["updated_at"] = t
            return n

    def add_label(self, n: int, label: str, actor: str = "alice") -> None:
        with self.lock:
            issue = self.issues[n]
            self._ensure_label(label)
            if label not in issue["labels"]:
                issue["labels"].append(label)
                self._event(n, "labeled", actor, label)
            issue["updated_at"] = self.now()

    def remove_label(self, n: int, label: str, actor: str = "alice") -> None:
        with self.lock:
            issue = self.issues[n]
            if label in issue["labels"]:
                issue["labels"].remove(label)
                self._event(n, "unlabeled", actor, label)
            issue["updated_at"] = self.now()

    def edit_body(self, n: int, body: str) -> None:
        with self.lock:
            self.issues[n]["body"] = body
            self.issues[n]["updated_at"] = self.now()

    def close_issue(self, n: int, actor: str = "alice") -> None:
        with self.lock:
            self.issues[n].update(state="closed", closed_at=self.now(), updated_at=self.now())
            self._event(n, "closed", actor, None)

    def set_pull_head(self, n: int, sha: str) -> None:
        with self.lock:
            self.pulls[n]["sha"] = sha

    def add_review(self, n: int, login: str, commit_id: str, state: str = "APPROVED") -> None:
        """A review on pull request `n` left on commit `commit_id` (APPROVED, CHANGES_REQUESTED, COMMENTED)."""
        with self.lock:
            self.pulls[n].setdefault("reviews", []).append({"id": self._id(), "user": self._user(login),
                                                           "state": state, "commit_id": commit_id, "body": ""})

    def merge_pull(self, n: int, login: str) -> None:
        """`login` merges pull request `n` at its head SHA (set_pull_head)."""
        with self.lock:
            self.pulls[n].update(merged=True, merged_by=login)
            self.issues[n].update(state="closed", closed_at=self.now(), updated_at=self.now())

    def add_reaction(self, comment_id: int, login: str, content: str = "+1") -> None:
        with self.lock:
            self.reactions.setdefault(comment_id, []).append({"id": self._id(), "content": content,
                                                              "user": self._user(login)})

    def writes(self, method: str = "POST", path_re: str = r"/comments$") -> list[tuple]:
        """Logged requests of `method` whose path matches (e.g. every comment POST)."""
        with self.lock:
            return [e for e in self.log if e[0] == method and re.search(path_re, e[1].split("?")[0])]

    def comments_of(self, n: int) -> list[dict]:
        with self.lock:
            return [dict(c) for c in sorted(self.comments.values(), key=lambda c: c["id"]) if c["issue"] == n]

    def pull_json(self, n: int) -> dict:
        p, i = self.pulls[n], self.issues[n]
        owner = self.repo.split("/")[0]
        return {"id": 9000 + n, "node_id": f"PR_node{n}", "number": n, "title": i["title"], "body": i["body"],
                "state": i["state"], "draft": p["draft"], "merged": bool(p.get("merged")),
                "merged_by": self._user(p["merged_by"]) if p.get("merged_by") else None,
                "url": f"{self._repo_url()}/pulls/{n}",
                "html_url": f"https://github.invalid/{self.repo}/pull/{n}", "user": self._user(self.bot_login),
                "head": {"ref": p["head"], "label": f"{owner}:{p['head']}", "sha": p.get("sha", "")},
                "base": {"ref": p["base"], "label": f"{owner}:{p['base']}"},
                "created_at": iso(i["created_at"]), "updated_at": iso(i["updated_at"])}

    def fail(self, method: str, path_re: str, status: int = 502, **kw) -> Fault:
        f = Fault(method, path_re, status, **kw)
        with self.lock:
            self.faults.append(f)
        return f

    def exhaust(self, reset_in: float) -> None:
        """Primary rate limit: every counted request answers 403 (remaining 0) until the reset."""
        with self.lock:
            self.exhausted_until = time.time() + reset_in
            self.reset_at = self.exhausted_until

    def secondary_wait(self, now: float) -> float:
        """0 when a content-creating request fits every write limit now (and counts it), else the seconds to wait."""
        with self.lock:
            longest = max((w for _, w in self.write_limits), default=0.0)
            self.write_times = [t for t in self.write_times if t > now - longest]
            wait = 0.0
            for limit, window in self.write_limits:
                recent = [t for t in self.write_times if t > now - window]
                if len(recent) >= limit:
                    wait = max(wait, recent[len(recent) - limit] + window - now)
            if wait <= 0:
                self.write_times.append(now)
            return wait

    def reset_counts(self) -> None:
        with self.lock:
            self.counted = self.not_modified = 0
            self.log.clear()

    # ------------------------------------------------------------------ JSON shapes
    def _user(self, login: str) -> dict:
        return {"login": login, "id": abs(hash(login)) % 10**7, "type": "Bot" if login in self.bots else "User",
                "url": f"{self.url}/users/{login}"}

    def _repo_url(self) -> str:
        return f"{self.url}/repos/{self.repo}"

    def _ensure_label(self, name: str) -> dict:
        if name not in self.labels:
            self.labels[name] = {"id": self._id(), "name": name, "color": "ededed", "description": "",
                                 "url": f"{self._repo_url()}/labels/{urllib.parse.quote(name)}"}
        return self.labels[name]

    def _event(self, n: int, kind: str, actor: str, label: str | None) -> None:
        ev = {"id": self._id(), "event": kind, "actor": self._user(actor), "created_at": iso(self.now())}
        if label is not None:
            ev["label"] = {"name": label, "color": "ededed"}
        self.events[n].append(ev)

    def issue_json(self, n: int) -> dict:
        i = self.issues[n]
        url = f"{self._repo_url()}/issues/{n}"
        out = {"id": 5000 + n, "number": n, "title": i["title"], "body": i["body"], "state": i["state"],
               "url": url, "html_url": f"https://github.invalid/{self.repo}/issues/{n}",
               "user": self._user(i["user"]), "labels": [self._ensure_label(x) for x in i["labels"]],
               "comments": sum(1 for c in self.comments.values() if c["issue"] == n),
               "created_at": iso(i["created_at"]), "updated_at": iso(i["updated_at"]),
               "closed_at": iso(i["closed_at"]) if i["closed_at"] else None,
               "author_association": "COLLABORATOR" if i["user"] in self.perms else "NONE"}
        if i["pr"]:
            out["pull_request"] = {"url": f"{self._repo_url()}/pulls/{n}"}
        return out

    def comment_json(self, c: dict) -> dict:
        return {"id": c["id"], "body": c["body"], "user": self._user(c["user"]),
                "url": f"{self._repo_url()}/issues/comments/{c['id']}",
                "issue_url": f"{self._repo_url()}/issues/{c['issue']}",
                "created_at": iso(c["created_at"]), "updated_at": iso(c["updated_at"])}


class _Handler(BaseHTTPRequestHandler):
    server_ref: GitHubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PUT(self):
        self._dispatch("PUT")

    # ------------------------------------------------------------------ plumbing
    def _send(self, status: int, data, headers: dict | None = None, counted: bool = True) -> None:
        srv = self.server_ref
        body = b"" if data is None else json.dumps(data).encode()
        with srv.lock:
            if counted and status != 304:
                srv.counted += 1
                srv.remaining = max(0, srv.remaining - 1)
            elif status == 304:
                srv.not_modified += 1
            srv.log.append((self.command, self.path, status, time.time()))
            rl = {"x-ratelimit-limit": str(srv.limit), "x-ratelimit-remaining": str(srv.remaining),
                  "x-ratelimit-used": str(srv.limit - srv.remaining), "x-ratelimit-reset": str(int(srv.reset_at)),
                  "x-ratelimit-resource": "core"}
        self.send_response(status)
        for k, v in {**rl, **(headers or {})}.items():
            self.send_header(k, v)
        if status != 304:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _send_html(self, status: int, headers: dict) -> None:
        body = (f"<!DOCTYPE html>\n<html><head><title>Unicorn! &middot; GitHub</title></head><body>"
                f"<p>{status}: this page is taking too long to load.</p></body></html>\n").encode()
        with self.server_ref.lock:
            self.server_ref.log.append((self.command, self.path, status, time.time()))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _reset_connection(self) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def _read_json(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        return json.loads(raw) if raw else {}

    def _dispatch(self, method: str) -> None:
        srv = self.server_ref
        payload = self._read_json() if method in ("POST", "PATCH", "PUT", "DELETE") else {}
        parsed = urllib.parse.urlsplit(self.path)
        path, query = parsed.path, dict(urllib.parse.parse_qsl(parsed.query))
        if srv.token and self.headers.get("Authorization", "").split(" ")[-1] != srv.token:
            return self._send(401, {"message": "Bad credentials"})
        if method == "POST" and path == srv.base_path.removesuffix("/v3") + "/graphql":  # PyGithub's prefix rule
            return self._send(200, self._graphql(payload))
        if not path.startswith(srv.base_path + "/"):
            return self._send(404, {"message": "Not Found"})
        path = path[len(srv.base_path):]
        if path == "/rate_limit":
            core = {"limit": srv.limit, "remaining": srv.remaining, "reset": int(srv.reset_at)}
            return self._send(200, {"resources": {"core": core}, "rate": core}, counted=False)
        fault = None
        with srv.lock:
            for f in srv.faults:
                if f.matches(method, path):
                    f.times -= 1
                    f.hits += 1
                    fault = f
                    break
            if fault is None and time.time() < srv.exhausted_until:
                srv.remaining = 0
                return self._send(403, {"message": PRIMARY_MSG}, {"x-ratelimit-remaining": "0"})
            wait = srv.secondary_wait(time.time()) if fault is None and method != "GET" else 0.0
            if wait > 0:
                srv.secondary_hits += 1
                return self._send(403, {"message": SECONDARY_MSG,
                                        "documentation_url": "https://docs.github.com/rest/overview/rate-limits"},
                                  {"retry-after": str(max(1, int(wait + 0.999)))})
        if fault and not fault.after:
            return self._fault(fault)
        if method != "GET" and srv.write_delay > 0:
            time.sleep(srv.write_delay)
        try:
            status, data, headers = self._route(method, path, query, payload)
        except KeyError:
            status, data, headers = 404, {"message": "Not Found"}, {}
        if fault:
            return self._fault(fault)
        if method == "GET" and status == 200:
            etag = 'W/"' + hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest() + '"'
            headers = {**headers, "ETag": etag}
            if self.headers.get("If-None-Match") == etag:
                return self._send(304, None, headers)
        return self._send(status, data, headers)

    def _fault(self, f: Fault) -> None:
        if f.delay:
            time.sleep(f.delay)
        if f.reset:
            return self._reset_connection()
        if f.html:
            return self._send_html(f.status, f.headers)
        msg = f.message
        if f.status in (403, 429) and msg == "Server Error":
            msg = SECONDARY_MSG
        return self._send(f.status, {"message": msg}, f.headers)

    def _page(self, items: list, query: dict, path: str) -> tuple[int, list, dict]:
        per_page = min(100, int(query.get("per_page", 30)))
        page = int(query.get("page", 1))
        chunk = items[(page - 1) * per_page: page * per_page]
        links = []
        last = max(1, -(-len(items) // per_page))
        base = f"http://127.0.0.1:{self.server.server_address[1]}{self.server_ref.base_path}{path}"
        for rel, p in (("next", page + 1), ("last", last)):
            if rel == "next" and page >= last:
                continue
            q = urllib.parse.urlencode({**query, "page": p})
            links.append(f'<{base}?{q}>; rel="{rel}"')
        return 200, chunk, ({"Link": ", ".join(links)} if links else {})

    # ------------------------------------------------------------------ routes
    def _route(self, method: str, path: str, query: dict, body: dict):  # noqa: C901 - one table of routes
        srv = self.server_ref
        prefix = f"/repos/{srv.repo}"
        if not path.startswith(prefix):
            return 404, {"message": "Not Found"}, {}
        rest = path[len(prefix):]
        with srv.lock:
            if rest == "" and method == "GET":
                return 200, {"id": 1, "full_name": srv.repo, "name": srv.repo.split("/")[1],
                             "url": srv._repo_url(), "owner": srv._user(srv.repo.split("/")[0])}, {}
            if rest == "/issues" and method == "GET":
                return self._list_issues(query, path)
            m = re.fullmatch(r"/issues/(\d+)", rest)
            if m:
                n = int(m.group(1))
                if method == "PATCH":
                    issue = srv.issues[n]
                    if body.get("state") == "closed" and issue["state"] != "closed":
                        srv.close_issue(n, srv.bot_login)
                    if "body" in body:
                        srv.edit_body(n, body["body"])
                return 200, srv.issue_json(n), {}
            m = re.fullmatch(r"/issues/(\d+)/comments", rest)
            if m:
                n = int(m.group(1))
                if n not in srv.issues:
                    return 404, {"message": "Not Found"}, {}
                if method == "POST":
                    t = srv.now()
                    c = {"id": srv._id(), "issue": n, "body": body["body"], "user": srv.bot_login,
                         "created_at": t, "updated_at": t, "made": time.time()}
                    srv.comments[c["id"]] = c
                    srv.issues[n]["updated_at"] = t
                    return 201, srv.comment_json(c), {}
                since = parse_iso(query["since"]) if "since" in query else 0
                seen = time.time() - srv.list_lag  # eventual consistency: the newest comments are not listed yet
                items = [srv.comment_json(c) for c in srv.comments_of(n)
                         if c["updated_at"] >= since and c.get("made", 0.0) <= seen]
                return self._page(items, query, path)
            m = re.fullmatch(r"/issues/comments/(\d+)", rest)
            if m:
                c = srv.comments[int(m.group(1))]
                if method == "PATCH":
                    c["body"], c["updated_at"] = body["body"], srv.now()
                return 200, srv.comment_json(c), {}
            m = re.fullmatch(r"/issues/comments/(\d+)/reactions", rest)
            if m:
                items = list(srv.reactions.get(int(m.group(1)), []))
                return self._page(items, query, path)
            m = re.fullmatch(r"/issues/(\d+)/labels", rest)
            if m and method == "POST":
                n = int(m.group(1))
                names = body.get("labels", body) if isinstance(body, dict) else body
                for name in names:
                    srv.add_label(n, name, actor=srv.bot_login)
                return 200, [srv._ensure_label(x) for x in srv.issues[n]["labels"]], {}
            m = re.fullmatch(r"/issues/(\d+)/labels/(.+)", rest)
            if m and method == "DELETE":
                n, name = int(m.group(1)), urllib.parse.unquote(m.group(2))
                if name not in srv.issues[n]["labels"]:
                    return 404, {"message": "Label does not exist"}, {}
                srv.remove_label(n, name, actor=srv.bot_login)
                return 200, [srv._ensure_label(x) for x in srv.issues[n]["labels"]], {}
            m = re.fullmatch(r"/issues/(\d+)/events", rest)
            if m:
                return self._page(list(srv.events[int(m.group(1))]), query, path)
            if rest == "/pulls" and method == "POST":
                head, base = body.get("head", ""), body.get("base", "")
                if any(p["head"] == head and srv.issues[n]["state"] == "open" for n, p in srv.pulls.items()):
                    return 422, {"message": "Validation Failed",
                                 "errors": [{"message": f"A pull request already exists for {head}."}]}, {}
                n = srv.create_issue(body.get("title", ""), body.get("body", ""), author=srv.bot_login, pr=True)
                srv.pulls[n] = {"head": head, "base": base, "draft": bool(body.get("draft"))}
                return 201, srv.pull_json(n), {}
            if rest == "/pulls" and method == "GET":
                owner = srv.repo.split("/")[0]
                rows = [srv.pull_json(n) for n, p in sorted(srv.pulls.items())
                        if query.get("state", "open") in ("all", srv.issues[n]["state"])
                        and (not query.get("head") or query["head"] == f"{owner}:{p['head']}")]
                return self._page(rows, query, path)
            m = re.fullmatch(r"/pulls/(\d+)/reviews", rest)
            if m and int(m.group(1)) in srv.pulls and method == "GET":
                return self._page(list(srv.pulls[int(m.group(1))].get("reviews", [])), query, path)
            m = re.fullmatch(r"/pulls/(\d+)", rest)
            if m and int(m.group(1)) in srv.pulls:
                n = int(m.group(1))
                if method == "PATCH":
                    for k in ("title", "body"):
                        if k in body:
                            srv.issues[n][k] = body[k]
                return 200, srv.pull_json(n), {}
            if rest == "/labels" and method == "POST":
                if body["name"] in srv.labels:
                    return 422, {"message": "Validation Failed", "errors": [{"code": "already_exists"}]}, {}
                lab = srv._ensure_label(body["name"])
                lab.update(color=body.get("color", "ededed"), description=body.get("description", ""))
                return 201, lab, {}
            if rest == "/labels" and method == "GET":
                return self._page(list(srv.labels.values()), query, path)
            m = re.fullmatch(r"/labels/(.+)", rest)
            if m and method == "GET":
                name = urllib.parse.unquote(m.group(1))
                if name not in srv.labels:
                    return 404, {"message": "Not Found"}, {}
                return 200, srv.labels[name], {}
            m = re.fullmatch(r"/collaborators/([^/]+)/permission", rest)
            if m:
                login = urllib.parse.unquote(m.group(1))
                perm = srv.perms.get(login, "none")
                legacy = {"maintain": "write", "triage": "read"}.get(perm, perm)
                return 200, {"permission": legacy, "role_name": perm, "user": srv._user(login)}, {}
        return 404, {"message": "Not Found"}, {}

    def _graphql(self, body: dict) -> dict:
        """The one mutation refinery sends: markPullRequestReadyForReview(input: {pullRequestId})."""
        srv = self.server_ref
        if "markPullRequestReadyForReview" not in body.get("query", ""):
            return {"errors": [{"type": "UNSUPPORTED", "message": "this server answers one mutation only"}]}
        node = ((body.get("variables") or {}).get("input") or {}).get("pullRequestId", "")
        with srv.lock:
            n = next((k for k in srv.pulls if f"PR_node{k}" == node), None)
            if n is None:
                return {"errors": [{"type": "NOT_FOUND", "message": f"Could not resolve to a node with the global id "
                                                                    f"of '{node}'"}]}
            srv.pulls[n]["draft"] = False
            srv.log.append(("POST", "/graphql markPullRequestReadyForReview", 200, time.time()))
        return {"data": {"markPullRequestReadyForReview": {"clientMutationId": None,
                                                           "pullRequest": {"isDraft": False}}}}

    def _list_issues(self, query: dict, path: str):
        srv = self.server_ref
        state = query.get("state", "open")
        want = [x for x in query.get("labels", "").split(",") if x]
        since = parse_iso(query["since"]) if "since" in query else None
        rows = []
        for n, i in srv.issues.items():
            if state != "all" and i["state"] != state:
                continue
            if want and not all(w in i["labels"] for w in want):
                continue
            if since is not None and i["updated_at"] < since:
                continue
            rows.append((i["updated_at"] if query.get("sort") == "updated" else i["created_at"], n))
        rows.sort(reverse=query.get("direction", "desc") == "desc")
        return self._page([srv.issue_json(n) for _, n in rows], query, path)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-path", default="")
    args = ap.parse_args()
    s = GitHubServer(base_path=args.base_path).start()
    s.add_collaborator("alice", "admin")
    print(f"serving {s.repo} at {s.url} (ctrl-c stops)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        s.stop()


GitHubServer.handler = _Handler
