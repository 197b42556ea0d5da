"""A local HTTP server on a free loopback port, served from a daemon thread: the lifecycle the test servers
(the GitHub-speaking one, the Anthropic Messages API one) share. Each names its request handler class, which
finds the server object through its `server_ref` attribute."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """A client that gave up (a timeout, a killed daemon) before a slow answer is not an error here."""
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class LocalServer:
    handler: type[BaseHTTPRequestHandler]  # set by the subclass
    thread_name = "local-server"
    httpd: ThreadingHTTPServer | None = None

    def start(self):
        srv = self

        class Handler(self.handler):
            server_ref = srv

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True, name=self.thread_name).start()
        return self

    def stop(self) -> None:
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()

    @property
    def origin(self) -> str:
        assert self.httpd, "start() the server first"
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"
