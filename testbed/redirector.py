"""An upstream that answers blob GETs with 307 to another origin, as registries on object
storage do. Everything else gets 404. Runs in a thread (stdlib http.server)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from testbed.processes import free_port


class Redirector:
    def __init__(self, target_url: str) -> None:
        self.target_url = target_url.rstrip("/")
        self.port = free_port()
        target = self.target_url

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                if self.path.startswith("/v2/") and "/blobs/sha256:" in self.path:
                    self.send_response(307)
                    self.send_header("Location", f"{target}{self.path}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path == "/v2/":
                    self.send_response(200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    if self.command == "GET":
                        self.wfile.write(b"{}")
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            do_GET = _answer
            do_HEAD = _answer

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Redirector:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
