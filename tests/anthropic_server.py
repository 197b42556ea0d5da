"""A local HTTP server that speaks the part of the Anthropic Messages API the Claude Code CLI uses.

Real HTTP on 127.0.0.1 (stdlib http.server), so the real, pinned `claude` binary runs unpatched against it
with ANTHROPIC_BASE_URL — the way tests/ghserver.py stands in for GitHub. It plays a script:

    srv = AnthropicServer(key="sk-ant-...").start()
    srv.script = [Step([write("hello.txt", "hi\\n")]),          # turn 1: a tool_use block (stop_reason tool_use)
                  Step([bash("git add -A && git commit -qm hi")]),
                  Step([text("Done: wrote hello.txt")])]          # the last: end_turn
    env["ANTHROPIC_BASE_URL"] = srv.url

Which step answers a request is decided by the request itself: the number of assistant messages it
carries that this server wrote (so a retried request gets the same step, and a `--resume`d session,
which sends the earlier turns again, continues where it was). Past the end of the script the last step repeats.

What it answers: `HEAD /` and `GET /` (the CLI's probe: 404), the title request (no tools: a short text,
streaming or not), streaming `POST /v1/messages` with SSE events `message_start`, `content_block_start`,
`content_block_delta` (`text_delta`, `input_json_delta`), `content_block_stop`, `message_delta` (stop
reason, usage) and `message_stop`; `count_tokens`; anything else 404. A wrong `x-api-key` gets 401.

Faults, per step: `fail=[529, 529]` answers those statuses first (one per request); `stall_s` (once) sends
`message_start` and a ping, then stalls (the connection stays open) before finishing;
`silent_s` sleeps before any byte. `requests` records every request (path, body JSON; never the key).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tests.http_support import LocalServer

ERRORS = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error", 500: "api_error",
          529: "overloaded_error"}


def text(s: str) -> dict:
    return {"type": "text", "text": s}


def tool(name: str, **inp) -> dict:
    return {"type": "tool_use", "name": name, "input": inp}


def write(path: str, content: str) -> dict:
    return tool("Write", file_path=path, content=content)


def edit(path: str, old: str, new: str) -> dict:
    return tool("Edit", file_path=path, old_string=old, new_string=new)


def bash(command: str) -> dict:
    return tool("Bash", command=command, description="run a command")


@dataclass
class Step:
    blocks: list[dict]
    fail: list[int] = field(default_factory=list)  # statuses answered first, one per request
    stall_s: float = 0.0  # mid-stream stall (after message_start)
    silent_s: float = 0.0  # before any byte
    usage: tuple[int, int] = (1000, 200)  # input, output tokens reported


@dataclass
class Seen:
    path: str
    body: dict
    at: float
    status: int = 200

    sent: set = field(default_factory=set)  # the tool ids and texts the server has answered with so far

    @property
    def assistant_turns(self) -> int:
        """Assistant messages this server wrote (not the CLI's own: an interrupted session, resumed, gets a
        synthetic "No response requested." turn)."""
        def ours(m: dict) -> bool:
            c = m.get("content")
            blocks = [{"type": "text", "text": c}] if isinstance(c, str) else (c or [])
            return any(b.get("id") in self.sent or (b.get("type") == "text" and b.get("text") in self.sent)
                       for b in blocks)
        return sum(1 for m in self.body.get("messages", []) if m.get("role") == "assistant" and ours(m))

    def tool_results(self) -> list[str]:
        out = []
        for m in self.body.get("messages", []):
            for b in m.get("content", []) if isinstance(m.get("content"), list) else []:
                if b.get("type") == "tool_result":
                    c = b.get("content")
                    out.append(c if isinstance(c, str) else json.dumps(c))
        return out


class AnthropicServer(LocalServer):
    thread_name = "anthropic-server"

    def __init__(self, key: str | None = None):
        self.key = key
        self.script: list[Step] = [Step([text("Nothing to do.")])]
        self.requests: list[Seen] = []
        self.lock = threading.Lock()
        self._tool_id = 0
        self.reject_all: int | None = None  # answer every scripted request with this status (a 401 forever)
        self.sent: set = set()

    @property
    def url(self) -> str:
        return self.origin

    def turns(self) -> list[Seen]:
        """The scripted (tool-carrying) message requests, in order."""
        with self.lock:
            return [r for r in self.requests if r.path.startswith("/v1/messages") and r.body.get("tools")
                    and "count_tokens" not in r.path]

    def _next_tool_id(self) -> str:
        with self.lock:
            self._tool_id += 1
            return f"toolu_{self._tool_id:020d}"


class _Handler(BaseHTTPRequestHandler):
    server_ref: AnthropicServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self):
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": "not found"}})

    def _json(self, status: int, data: dict, headers: dict | None = None) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int) -> None:
        kind = ERRORS.get(status, "api_error")
        headers = {"retry-after": "0"} if status in (429, 529) else {}
        self._json(status, {"type": "error", "error": {"type": kind, "message": f"{kind} (scripted)"}}, headers)

    def do_POST(self):
        srv = self.server_ref
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        seen = Seen(self.path, body, time.time(), sent=srv.sent)
        with srv.lock:
            srv.requests.append(seen)
        if srv.key and self.headers.get("x-api-key") != srv.key and \
                self.headers.get("authorization", "").split(" ")[-1] != srv.key:
            seen.status = 401
            return self._error(401)
        if not self.path.startswith("/v1/messages"):
            seen.status = 404
            return self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": "no"}})
        if "count_tokens" in self.path:
            return self._json(200, {"input_tokens": 100})
        model = body.get("model", "claude-sonnet-4-5")
        if srv.reject_all:
            seen.status = srv.reject_all
            return self._error(srv.reject_all)
        if not body.get("tools"):  # the session title, or another side request
            return self._reply(model, [text('{"title": "scripted session"}')], "end_turn", body.get("stream"),
                               Step([]))
        idx = min(seen.assistant_turns, len(srv.script) - 1)
        step = srv.script[idx]
        with srv.lock:
            status = step.fail.pop(0) if step.fail else None
        if status:
            seen.status = status
            return self._error(status)
        blocks = [dict(b) for b in step.blocks]
        stop = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
        return self._reply(model, blocks, stop, body.get("stream", True), step)

    def _reply(self, model: str, blocks: list[dict], stop: str, stream: bool, step: Step) -> None:
        srv = self.server_ref
        for b in blocks:
            if b["type"] == "tool_use":
                b["id"] = srv._next_tool_id()
            with srv.lock:
                srv.sent.add(b.get("id") or b.get("text"))
        msg_id = f"msg_{int(time.time() * 1e6)}"
        usage_in, usage_out = step.usage
        if not stream:
            return self._json(200, {"id": msg_id, "type": "message", "role": "assistant", "model": model,
                                    "content": blocks, "stop_reason": stop, "stop_sequence": None,
                                    "usage": {"input_tokens": usage_in, "output_tokens": usage_out}})
        if step.silent_s:
            time.sleep(step.silent_s)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            self._event("message_start", {"type": "message_start", "message": {
                "id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": usage_in, "output_tokens": 1, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0}}})
            if step.stall_s:
                self._event("ping", {"type": "ping"})
                with srv.lock:
                    stall, step.stall_s = step.stall_s, 0.0  # once: a retried or resumed request goes through
                time.sleep(stall)
            for i, b in enumerate(blocks):
                if b["type"] == "text":
                    self._event("content_block_start", {"type": "content_block_start", "index": i,
                                                        "content_block": {"type": "text", "text": ""}})
                    self._event("content_block_delta", {"type": "content_block_delta", "index": i,
                                                        "delta": {"type": "text_delta", "text": b["text"]}})
                else:
                    self._event("content_block_start", {"type": "content_block_start", "index": i, "content_block": {
                        "type": "tool_use", "id": b["id"], "name": b["name"], "input": {}}})
                    self._event("content_block_delta", {"type": "content_block_delta", "index": i, "delta": {
                        "type": "input_json_delta", "partial_json": json.dumps(b["input"])}})
                self._event("content_block_stop", {"type": "content_block_stop", "index": i})
            self._event("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop,
                                                                             "stop_sequence": None},
                                          "usage": {"output_tokens": usage_out}})
            self._event("message_stop", {"type": "message_stop"})
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _event(self, name: str, data: dict) -> None:
        self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        self.wfile.flush()


AnthropicServer.handler = _Handler
