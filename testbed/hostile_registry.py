"""A registry that lies, stalls and redirects: for the hardening suite.

    trustproxy --> HostileRegistry --> docker-registry (the honest bytes)

Every GET/HEAD is relayed to a real registry, except on paths that have a scripted
:class:`Behaviour` (by exact path, query ignored): other bytes for a digest, a manifest over
the size limit (declared, undeclared, endless), a wrong ``Docker-Content-Digest`` on the
right bytes, redirects anywhere (another host, loopback, link-local, ``file:``, a loop), a
blob cut short after promising its Content-Length, a blob whose bytes do not match its
digest (also framed by both Content-Length and chunked, or as a 206 whatever was asked),
slowloris (headers or body a byte at a time, a hang after the headers or before anything),
and a Bearer challenge whose realm points somewhere the proxy must not go.

Every answer carries ``Connection: close`` and the connection is closed after it: the
proxy keeps no pooled connection to this server, so any connection of the proxy's still
open to it after an attack is a leak (see ``tests/hardening/test_hostile_registry.py``).

:class:`Canary` is a server nothing should ever reach: it records each request it gets.
Everything here runs in threads (stdlib http.server); sleeps wake up on :meth:`stop`.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from testbed import images
from testbed.processes import free_port

_DIGEST = re.compile(r"/(?:manifests|blobs)/(sha256:[0-9a-f]{64})$")
FAKE_DIGEST = "sha256:" + "0" * 64


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A proxy that hangs up on a lying server is the point, not an error.
        return None


@dataclass
class Exchange:
    """One request being answered: what a behaviour needs to write its lie."""

    handler: BaseHTTPRequestHandler
    registry: HostileRegistry

    @property
    def head(self) -> bool:
        return self.handler.command == "HEAD"

    @property
    def path(self) -> str:
        return self.handler.path.split("?", 1)[0]

    @property
    def digest(self) -> str | None:
        """The digest in a ``/manifests/<digest>`` or ``/blobs/<digest>`` path."""
        found = _DIGEST.search(self.path)
        return found.group(1) if found else None

    def honest(self, *, method: str | None = None) -> httpx.Response:
        """What the real registry answers (read whole: test blobs are small)."""
        wanted = {"accept", "range"}
        headers = {k: v for k, v in self.handler.headers.items() if k.lower() in wanted}
        return self.registry.upstream.request(
            method or self.handler.command, self.handler.path, headers=headers
        )

    def start(self, status: int, headers: dict[str, str]) -> None:
        self.handler.send_response(status)
        for name, value in headers.items():
            self.handler.send_header(name, value)
        self.handler.send_header("Connection", "close")
        self.handler.end_headers()
        self.handler.wfile.flush()

    def write(self, data: bytes) -> None:
        self.handler.wfile.write(data)
        self.handler.wfile.flush()

    def sleep(self, seconds: float) -> bool:
        """Wait; False when the registry is stopping (stop trickling then)."""
        return not self.registry.stopping.wait(seconds)


Behaviour = Callable[[Exchange], None]


# -- behaviours -------------------------------------------------------------------------------


def relay(ex: Exchange) -> None:
    """The honest answer (every path without a script)."""
    r = ex.honest()
    headers = {k: r.headers[k] for k in ("Content-Type", "Docker-Content-Digest",
               "Content-Range", "Link", "WWW-Authenticate") if k in r.headers}  # fmt: skip
    body = r.content
    length = r.headers.get("Content-Length", str(len(body))) if ex.head else str(len(body))
    headers["Content-Length"] = length
    ex.start(r.status_code, headers)
    if not ex.head:
        ex.write(body)


def other_bytes(body: bytes, media_type: str = images.OCI_MANIFEST) -> Behaviour:
    """200 with ``body`` and the *requested* digest in Docker-Content-Digest."""

    def answer(ex: Exchange) -> None:
        ex.start(200, {"Content-Type": media_type, "Content-Length": str(len(body)),
                       "Docker-Content-Digest": ex.digest or FAKE_DIGEST})  # fmt: skip
        if not ex.head:
            ex.write(body)

    return answer


def oversize(size: int, *, declare_length: bool) -> Behaviour:
    """A JSON-looking manifest of ``size`` bytes; without Content-Length the end of the body
    is the end of the connection."""
    head, tail = b'{"schemaVersion":2,"pad":"', b'"}'
    body = head + b"x" * max(0, size - len(head) - len(tail)) + tail

    def answer(ex: Exchange) -> None:
        headers = {"Content-Type": images.OCI_MANIFEST,
                   "Docker-Content-Digest": ex.digest or FAKE_DIGEST}  # fmt: skip
        if declare_length:
            headers["Content-Length"] = str(len(body))
        ex.start(200, headers)
        if not ex.head:
            ex.write(body)

    return answer


def endless(ex: Exchange) -> None:
    """A chunked manifest that never ends (until the proxy hangs up or the server stops)."""
    ex.start(200, {"Content-Type": images.OCI_MANIFEST, "Transfer-Encoding": "chunked",
                   "Docker-Content-Digest": ex.digest or FAKE_DIGEST})  # fmt: skip
    if ex.head:
        return
    chunk = b"x" * 65536
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    while not ex.registry.stopping.is_set():
        ex.write(frame)  # raises once the proxy has closed the connection


def wrong_digest_header(ex: Exchange) -> None:
    """The honest bytes with a Docker-Content-Digest that is not theirs."""
    r = ex.honest()
    headers = {k: r.headers[k] for k in ("Content-Type",) if k in r.headers}
    headers["Docker-Content-Digest"] = FAKE_DIGEST
    headers["Content-Length"] = r.headers.get("Content-Length", str(len(r.content)))
    ex.start(r.status_code, headers)
    if not ex.head:
        ex.write(r.content)


def redirect(location: str, status: int = 307) -> Behaviour:
    """A redirect to ``location`` exactly as given (``{path}`` is the request's path)."""

    def answer(ex: Exchange) -> None:
        ex.start(status, {"Location": location.replace("{path}", ex.path), "Content-Length": "0"})

    return answer


def truncated(keep: float = 0.5) -> Behaviour:
    """The honest status and Content-Length, then only ``keep`` of the body, then close."""

    def answer(ex: Exchange) -> None:
        r = ex.honest(method="GET")
        body = r.content
        headers = {k: r.headers[k] for k in ("Content-Type", "Content-Range") if k in r.headers}
        headers["Content-Length"] = str(len(body))
        ex.start(r.status_code, headers)
        if not ex.head:
            ex.write(body[: int(len(body) * keep)])

    return answer


def corrupted(ex: Exchange) -> None:
    """The honest headers and length, the last byte flipped: bytes that are not the digest."""
    r = ex.honest(method="GET")
    body = bytearray(r.content)
    if body:
        body[-1] ^= 0xFF
    headers = {k: r.headers[k] for k in ("Content-Type", "Content-Range",
               "Docker-Content-Digest") if k in r.headers}  # fmt: skip
    headers["Content-Length"] = str(len(body))
    ex.start(r.status_code, headers)
    if not ex.head:
        ex.write(bytes(body))


def framed_twice(ex: Exchange) -> None:
    """Content-Length 28 and Transfer-Encoding: chunked at once: a first chunk of 28 bytes
    that are not the blob, then the honest blob as one more chunk (a proxy that relays the
    Content-Length hands its client a complete 28-byte answer)."""
    r = ex.honest(method="GET")
    ex.start(200, {"Content-Type": "application/octet-stream", "Content-Length": "28",
                   "Transfer-Encoding": "chunked"})  # fmt: skip
    if ex.head:
        return
    for chunk in (b"28 bytes that are not a blob", r.content):
        ex.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    ex.write(b"0\r\n\r\n")


def corrupted_as(status: int, first: int = 0, last: int | None = None) -> Behaviour:
    """The blob's bytes ``first`` to ``last`` (default: to its end) with the last one flipped,
    answered ``status`` whatever the request's Range was; a 206 says which bytes in its
    Content-Range (``bytes first-last/size``)."""

    def answer(ex: Exchange) -> None:
        blob = ex.registry.upstream.get(ex.handler.path).content  # whole: no Range
        end = len(blob) - 1 if last is None else last
        body = bytearray(blob[first : end + 1])
        body[-1] ^= 0xFF
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(body))}
        if status == 206:
            headers["Content-Range"] = f"bytes {first}-{end}/{len(blob)}"
        ex.start(status, headers)
        if not ex.head:
            ex.write(bytes(body))

    answer.__name__ = f"corrupted_as_{status}"
    return answer


def _honest_or(ex: Exchange, body: bytes | None) -> tuple[int, str, bytes]:
    """(status, content type, body): the real registry's answer, or 200 with ``body``."""
    if body is not None:
        return 200, images.OCI_MANIFEST, body
    r = ex.honest(method="GET")
    return r.status_code, r.headers.get("Content-Type", "application/octet-stream"), r.content


def trickle_headers(interval: float, body: bytes | None = None) -> Behaviour:
    """Status line and headers one byte every ``interval`` seconds, then the body (the
    honest one, or ``body``)."""

    def answer(ex: Exchange) -> None:
        status, media_type, content = _honest_or(ex, body)
        head = (
            f"HTTP/1.1 {status} OK\r\nContent-Type: {media_type}\r\n"
            f"Content-Length: {len(content)}\r\nConnection: close\r\n\r\n"
        ).encode()
        for i in range(len(head)):
            ex.write(head[i : i + 1])
            if not ex.sleep(interval):
                return
        if not ex.head:
            ex.write(content)

    return answer


def trickle_body(interval: float, body: bytes | None = None) -> Behaviour:
    """Headers with Content-Length at once, then the body (the honest one, or ``body``) a
    byte every ``interval`` seconds."""

    def answer(ex: Exchange) -> None:
        status, media_type, content = _honest_or(ex, body)
        ex.start(status, {"Content-Type": media_type, "Content-Length": str(len(content))})
        if ex.head:
            return
        for i in range(len(content)):
            ex.write(content[i : i + 1])
            if not ex.sleep(interval):
                return

    return answer


def hang_after_headers(seconds: float, body: bytes | None = None) -> Behaviour:
    """Headers (with the Content-Length of the honest body, or of ``body``), then silence for
    ``seconds``, then close."""

    def answer(ex: Exchange) -> None:
        status, media_type, content = _honest_or(ex, body)
        ex.start(status, {"Content-Type": media_type, "Content-Length": str(len(content))})
        ex.sleep(seconds)

    return answer


def hang(seconds: float) -> Behaviour:
    """Accept the request, answer nothing for ``seconds``, close."""

    def answer(ex: Exchange) -> None:
        ex.handler.close_connection = True
        ex.sleep(seconds)

    return answer


def bearer_challenge(realm: str, service: str = "hostile") -> Behaviour:
    """401 with a Bearer challenge whose realm the registry chose (the passthrough token
    relay fetches that realm on the client's behalf)."""

    def answer(ex: Exchange) -> None:
        body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
        ex.start(401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="{service}"',
                       "Content-Type": "application/json",
                       "Content-Length": str(len(body))})  # fmt: skip
        if not ex.head:
            ex.write(body)

    return answer


# -- the servers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    method: str
    path: str
    behaviour: str


class HostileRegistry:
    """A threaded registry front on 127.0.0.1 with scripted lies per path."""

    def __init__(self, target_url: str) -> None:
        self.target_url = target_url.rstrip("/")
        self.port = free_port()
        self.upstream = httpx.Client(base_url=self.target_url, timeout=30)
        self.behaviours: dict[str, Behaviour] = {}
        self.hits: list[Hit] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                hostile._answer(self)

            do_HEAD = do_GET

        self._server = _Server(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, path: str, behaviour: Behaviour) -> None:
        """Answer ``path`` (no query) with ``behaviour`` from now on."""
        with self._lock:
            self.behaviours[path] = behaviour

    def hits_for(self, path: str) -> list[Hit]:
        with self._lock:
            return [h for h in self.hits if h.path == path]

    def start(self) -> HostileRegistry:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        self.upstream.close()

    def __enter__(self) -> HostileRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?", 1)[0]
        with self._lock:
            behaviour = self.behaviours.get(path, relay)
            self.hits.append(Hit(handler.command, path, getattr(behaviour, "__name__", "?")))
        handler.close_connection = True
        # OSError: the proxy hung up (the point of most attacks); ValueError: a write to a
        # file the stopping server closed.
        with contextlib.suppress(OSError, ValueError):
            behaviour(Exchange(handler, self))


@dataclass
class Canary:
    """An HTTP server on 127.0.0.1 that should never be reached; records who did."""

    port: int = field(default_factory=free_port)
    requests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        canary = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                canary.requests.append(f"{self.command} {self.path}")
                body = b'{"token":"canary-secret","secret":"instance credentials"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(body)

            do_HEAD = do_GET

        self._server = _Server(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def loopback_name() -> str | None:
    """A DNS name (not ``localhost``) that this machine resolves to a loopback address
    only, if there is one: the host name usually is (Debian's /etc/hosts)."""
    name = socket.gethostname()
    try:
        infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
    except OSError:
        return None
    addresses = {str(info[4][0]) for info in infos}
    if (
        name
        and name != "localhost"
        and addresses
        and all(a.startswith("127.") or a == "::1" for a in addresses)
    ):
        return name
    return None


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
