"""A malicious trust server: a :class:`~testbed.counting_front.CountingFront` that can also
misbehave at the HTTP level and serve repositories whose keys the test holds.

    trustproxy --HTTPS--> HostileNotary --HTTPS--> notary-server     (relayed GUNs)
                                |
                                +--> a mounted repository (``fetch(name) -> bytes | None``,
                                     e.g. ``tests.simulators.notary_repo.NotaryRepository``)

Why one server with two kinds of content, rather than two servers:

* Real notary data is what rollback and mix-and-match need: views captured from the real
  notary-server (:meth:`CountingFront.capture`) and served again later. Everything the
  counting front already does (relay, count, override) keeps working, on the same port.
* Freeze (a timestamp that expires), forged or re-signed snapshots and timestamps (Docker
  gives the server the snapshot and timestamp keys, so a compromised server holds them),
  and targets signed by a key outside the root need keys the test controls: the real
  notary-signer never lets them out. :meth:`HostileNotary.mount` answers a GUN from any
  object with ``fetch(name)``; testbed does not import the test simulator itself.
* Transport misbehaviour is the same whatever the content: a :class:`Behaviour` per file
  (or per GUN) replaces the honest answer's framing, pace, status, headers or bytes, for a
  relayed and a mounted GUN alike. Every answer is counted, tampered ones flagged.

The server certificate comes from the notary bed's CA (as the counting front's does), so
the proxy's trust source keeps ``ca_file: <bed CA>`` and only its ``url`` points here.
Handler threads that trickle, stream or hang stop when the client goes away or the server
stops, whichever comes first (and after :data:`MAX_MISBEHAVIOUR_SECONDS` at the latest).
"""

from __future__ import annotations

import math
import select
import threading
import time
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Literal, Protocol

from testbed.counting_front import CountingFront, send, split_path
from testbed.notary_server import NotaryBed

__all__ = [
    "MAX_MISBEHAVIOUR_SECONDS",
    "Behaviour",
    "FileSource",
    "HostileNotary",
    "Trickle",
    "endless",
    "gzip_bomb",
    "hang",
    "html_page",
    "redirect",
    "serve",
    "status",
    "trickle",
    "truncated",
]

#: No handler thread misbehaves for longer than this (a safety net for a stuck test).
MAX_MISBEHAVIOUR_SECONDS = 120.0

Framing = Literal["length", "chunked", "close"]


class FileSource(Protocol):
    """What a mounted repository offers: the bytes of one served file, None for 404."""

    def fetch(self, filename: str) -> bytes | None: ...


@dataclass(frozen=True)
class Trickle:
    """Write the body a few bytes at a time: ``nbytes`` every ``every`` seconds, or (with
    ``over``) the whole body spread evenly over ``over`` seconds in writes ``every`` apart."""

    every: float
    nbytes: int = 1
    over: float | None = None

    def step(self, size: int) -> int:
        if self.over is None:
            return max(1, self.nbytes)
        pieces = max(1, int(self.over / self.every))
        return max(1, math.ceil(size / pieces))


@dataclass(frozen=True)
class Behaviour:
    """How one answer deviates from the honest one. Unset fields keep the honest value."""

    label: str
    body: bytes | None = None  # None: the honest bytes
    status: int | None = None  # None: the honest status
    content_type: str | None = None  # None: the honest content type
    headers: tuple[tuple[str, str], ...] = ()
    framing: Framing = "length"
    #: announce the whole body's length, send only its first ``cut_after`` bytes, close
    cut_after: int | None = None
    trickle: Trickle | None = None
    #: after the body, write this filler again and again (chunked framing)
    endless: bytes | None = None
    #: read the request, then answer nothing until the client gives up
    hang: bool = False


# -- behaviours ---------------------------------------------------------------------------------


def serve(body: bytes, *, content_type: str = "application/json", label: str = "") -> Behaviour:
    """200 with these bytes."""
    return Behaviour(label or "serve bytes", body=body, status=200, content_type=content_type)


def html_page(status_code: int = 200, *, label: str = "") -> Behaviour:
    """An HTML error page (a captive portal, a load balancer's "maintenance" page)."""
    page = (
        b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
        b"<body><h1>Bad Gateway</h1><p>The upstream is taking a break.</p></body></html>"
    )
    return Behaviour(
        label or f"HTML page ({status_code})",
        body=page,
        status=status_code,
        content_type="text/html; charset=utf-8",
    )


def status(code: int, *, body: bytes = b"", label: str = "") -> Behaviour:
    """Any status with a small plain body."""
    text = body or f"hostile notary says {code}".encode()
    return Behaviour(label or f"HTTP {code}", body=text, status=code, content_type="text/plain")


def redirect(location: str, code: int = 302) -> Behaviour:
    """A redirect elsewhere (a client that follows it fetches from a server of our choice)."""
    return Behaviour(
        f"redirect {code}",
        body=b"",
        status=code,
        content_type="text/plain",
        headers=(("Location", location),),
    )


def hang() -> Behaviour:
    """Read the request, send nothing."""
    return Behaviour("hang", hang=True)


def trickle(every: float, *, nbytes: int = 1, over: float | None = None) -> Behaviour:
    """The honest bytes (with their Content-Length), a few at a time (see :class:`Trickle`)."""
    pace = f"over {over:g}s" if over is not None else f"{nbytes} B every {every:g}s"
    return Behaviour(f"trickle {pace}", trickle=Trickle(every, nbytes, over))


def endless(prefix: bytes = b'{"signed":{"_type":"Timestamp","padding":"') -> Behaviour:
    """A body that never ends (chunked, no length): a JSON-looking prefix, then filler."""
    return Behaviour(
        "endless body", body=prefix, status=200, framing="chunked", endless=b"a" * 65536
    )


def gzip_bomb(decompressed: int = 1 << 30, *, framing: Framing = "length") -> Behaviour:
    """``Content-Encoding: gzip`` over ``decompressed`` zero bytes (about 1/1000 of that on
    the wire). A client that decodes before counting holds the expansion in memory."""
    return Behaviour(
        f"gzip bomb ({decompressed >> 20} MiB inflated)",
        body=_bomb(decompressed),
        status=200,
        headers=(("Content-Encoding", "gzip"),),
        framing=framing,
    )


def truncated(keep: int) -> Behaviour:
    """The honest Content-Length, the first ``keep`` bytes, then the connection closes."""
    return Behaviour(f"truncated after {keep} B", cut_after=keep, framing="close")


_BOMBS: dict[int, bytes] = {}


def _bomb(size: int) -> bytes:
    found = _BOMBS.get(size)
    if found is None:
        compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
        block = bytes(1 << 20)
        parts = [compressor.compress(block) for _ in range(size >> 20)]
        parts.append(compressor.flush())
        found = _BOMBS[size] = b"".join(parts)
    return found


# -- the server ---------------------------------------------------------------------------------


class HostileNotary(CountingFront):
    """A counting front that can misbehave (:meth:`behave`) and serve mounted repositories
    (:meth:`mount`). Start with :meth:`start` (or ``with``)."""

    def __init__(self, notary: NotaryBed, directory: Path) -> None:
        super().__init__(notary, directory)
        self._behaviours: dict[tuple[str, str], Behaviour] = {}
        self._mounts: dict[str, FileSource] = {}
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()  # trickling, endless and hanging handlers end now
        super().stop()

    # -- configuration ------------------------------------------------------------------------

    def mount(self, gun: str, source: FileSource) -> None:
        """Answer every file of ``gun`` from ``source`` (404 where it returns None)."""
        with self._lock:
            self._mounts[gun] = source

    def behave(self, gun: str, behaviour: Behaviour, *names: str) -> None:
        """Answer these files of ``gun`` (every file when no name is given) with
        ``behaviour``. A behaviour for a file wins over one for the whole GUN."""
        with self._lock:
            for name in names or ("*",):
                self._behaviours[(gun, name)] = behaviour

    def calm(self, gun: str | None = None) -> None:
        """Back to honest answers for ``gun`` (every GUN when None): behaviours and overrides
        go; mounts stay."""
        with self._lock:
            for key in [k for k in self._behaviours if gun is None or k[0] == gun]:
                del self._behaviours[key]
        self.clear_overrides(gun)

    # -- answering ----------------------------------------------------------------------------

    def _answer(
        self, handler: BaseHTTPRequestHandler, gun: str | None, name: str
    ) -> tuple[int, bytes, str, bool]:
        with self._lock:
            mounted = self._mounts.get(gun) if gun is not None else None
            fake = self._overrides.get((gun, name)) if gun is not None else None
        if mounted is None or fake is not None:
            return super()._answer(handler, gun, name)
        body = mounted.fetch(name)
        if body is None:
            missing = b'{"errors":[{"code":"METADATA_NOT_FOUND","message":"not found"}]}'
            return 404, missing, "application/json", False
        return 200, body, "application/json", False

    def _relay(self, handler: BaseHTTPRequestHandler) -> None:
        gun, name = split_path(handler.path)
        with self._lock:
            behaviour = None
            if gun is not None:
                behaviour = self._behaviours.get((gun, name)) or self._behaviours.get((gun, "*"))
        if behaviour is None:
            super()._relay(handler)
            return
        if behaviour.hang:
            self._record(gun, name, 0, True)
            self._hang(handler)
            return
        honest_status, honest_body, honest_type, _ = self._answer(handler, gun, name)
        code = behaviour.status if behaviour.status is not None else honest_status
        body = behaviour.body if behaviour.body is not None else honest_body
        ctype = behaviour.content_type or honest_type
        self._record(gun, name, code, True)
        try:
            self._misbehave(handler, behaviour, code, body, ctype)
        except OSError:
            handler.close_connection = True  # the client went away: that is the point

    def _misbehave(
        self,
        handler: BaseHTTPRequestHandler,
        b: Behaviour,
        code: int,
        body: bytes,
        ctype: str,
    ) -> None:
        if b.framing == "length" and b.trickle is None and b.cut_after is None and not b.headers:
            send(handler, code, body, ctype)
            return
        handler.send_response(code)
        handler.send_header("Content-Type", ctype)
        for key, value in b.headers:
            handler.send_header(key, value)
        if b.framing == "chunked":
            handler.send_header("Transfer-Encoding", "chunked")
        elif b.framing == "close":
            handler.send_header("Connection", "close")
            handler.close_connection = True
        if b.framing != "chunked":
            handler.send_header("Content-Length", str(len(body)))
            if b.cut_after is not None:
                body = body[: b.cut_after]
        handler.end_headers()
        started = time.monotonic()
        chunked = b.framing == "chunked"
        step = b.trickle.step(len(body)) if b.trickle is not None else max(1, len(body))
        for at in range(0, len(body), step):
            if at and b.trickle is not None and self._stopping.wait(b.trickle.every):
                return
            self._write(handler, body[at : at + step], chunked=chunked)
        if b.endless is not None:
            while not self._stopping.is_set():
                if time.monotonic() - started > MAX_MISBEHAVIOUR_SECONDS:
                    break
                self._write(handler, b.endless, chunked=chunked)
            handler.close_connection = True
            return
        if chunked:
            handler.wfile.write(b"0\r\n\r\n")

    @staticmethod
    def _write(handler: BaseHTTPRequestHandler, data: bytes, *, chunked: bool) -> None:
        if chunked:
            handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        else:
            handler.wfile.write(data)
        handler.wfile.flush()

    def _hang(self, handler: BaseHTTPRequestHandler) -> None:
        """Say nothing until the client closes the connection (it becomes readable: EOF),
        the server stops, or the safety net expires."""
        handler.close_connection = True
        deadline = time.monotonic() + MAX_MISBEHAVIOUR_SECONDS
        conn = handler.connection
        while not self._stopping.is_set() and time.monotonic() < deadline:
            try:
                readable, _, _ = select.select([conn], [], [], 0.2)
            except (OSError, ValueError):
                return
            if readable:
                return
