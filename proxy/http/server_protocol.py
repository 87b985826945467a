"""Limits uvicorn lacks: how long, and how many bytes, a client may take to send a request.

uvicorn (0.55, both its httptools and its h11 protocol) arms its keep-alive timer only after
a response, and any byte received cancels it. A client that connects and sends nothing, or
trickles a request head a byte at a time (slowloris), keeps its connection open forever,
and enough of them exhaust the process's file descriptors. With httptools nothing bounds
the request line and headers either: one 300 MiB header grew the process by 580 MiB and
took minutes of CPU (measured; tests/hardening/test_fuzz_wire.py keeps the checks). h11 has
``h11_max_incomplete_event_size`` for the size, but no timeout.

The guard is a subclass of the protocol uvicorn would pick (``http="auto"``). It uses only
what both implementations have (``connection_made``, ``data_received``,
``connection_lost``, ``on_response_complete``, the current request ``cycle``), and never
cuts a request in progress (the app running, or a response streaming):

* ``max_header_bytes``: how long a request head may be (request line to the empty line,
  exactly: :mod:`proxy.http.head_meter` follows every byte the connection receives,
  whatever it is doing). Past that, 431 and close (Go's ``MaxHeaderBytes``); the parser
  only ever gets the bytes before the head that went over. A head pipelined behind a
  request in progress counts too: with httptools uvicorn reads and buffers it while the
  previous answer streams (issue 17: 150 MiB behind an unread blob, +270 MiB RSS). Then
  nothing more is read, and the 431 follows the answers before it (HTTP/1.1 answers in
  order);
* ``header_timeout``: a connection with no request in progress, just opened or since its
  last response, must have a complete request head within this time; a client that sent
  part of one gets a 408, a silent one is just closed (as nginx's client_header_timeout).
  A head started while an answer was in progress has this time from that answer's end.

Both answers are OCI error bodies, written straight to the socket (no request reached the
app), and the connection is then closed lingeringly (see ``_refuse``), so that a client
still sending gets the answer rather than a reset.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from proxy.http.errors import API_VERSION_HEADER, oci_error_body
from proxy.http.head_meter import HeadMeter

__all__ = ["guarded_protocol"]

log = logging.getLogger("trustproxy.server")


def _raw_response(status: int, reason: str, code: str, message: str) -> bytes:
    body = oci_error_body(code, message)
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "content-type: application/json\r\n"
        # Docker clients look for it on every answer, as on the app's own errors.
        + "".join(f"{k.lower()}: {v}\r\n" for k, v in API_VERSION_HEADER.items())
        + f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


#: After a 408/431: how long the client may still send (read and dropped, as uvicorn drops
#: the rest of a body nobody read) while its answer is on the way; then the connection closes.
LINGER_SECONDS = 2.0


class _RequestHeadGuard(asyncio.Protocol):
    """Mixin over a uvicorn HTTP protocol class (see :func:`guarded_protocol`)."""

    header_timeout: float
    max_header_bytes: int
    # What the guard reads of uvicorn's protocols (both implementations have them).
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    cycle: Any  # RequestResponseCycle | None: the latest request parsed on this connection

    _head_timer: asyncio.TimerHandle | None = None
    _meter: HeadMeter
    _refusal_pending = False  # a head over the limit waits for the answers before it
    _lingering = False  # refused: the answer is out, the connection closes soon
    _linger_timer: asyncio.TimerHandle | None = None

    def _in_progress(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _arm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _refuse(self, status: int, reason: str, code: str, message: str) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        self.transport.write(_raw_response(status, reason, code, message))
        if not self.transport.can_write_eof():  # TLS has no half-close
            self.transport.close()
            return
        # A lingering close (nginx's lingering_close): closing a socket with bytes of the
        # client's still unread makes the kernel answer with a reset, and a reset throws away
        # the answer the client had not read yet. So the answer is followed by a FIN, and
        # what still comes is read and dropped until the client closes too, or for
        # LINGER_SECONDS.
        self.transport.write_eof()
        self._lingering = True
        self._linger_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)
        self.transport.resume_reading()

    def _refuse_oversize(self) -> None:
        self._refuse(431, "Request Header Fields Too Large", "UNSUPPORTED",
                     f"request head larger than {self.max_header_bytes} bytes")  # fmt: skip

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_progress() or self.transport.is_closing():
            return  # on_response_complete arms again when it ends
        peer = self.transport.get_extra_info("peername")
        if self._meter.head_bytes == 0:
            # Nothing sent, or the rest of a body nobody reads: nothing to answer.
            log.debug("closing a connection that sent no request", extra={"client": str(peer)})
            self.transport.close()
            return
        log.warning("request head not complete in %ss: 408", self.header_timeout,
                    extra={"client": str(peer)})  # fmt: skip
        self._refuse(408, "Request Timeout", "UNAVAILABLE",
                     f"request head not complete within {self.header_timeout:g}s")  # fmt: skip

    # --- the protocol methods the guard extends -------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._meter = HeadMeter(self.max_header_bytes)
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._lingering:  # refused: what still comes is dropped
            return
        if self._refusal_pending:
            # uvicorn resumes reading when a response completes; nothing more is parsed.
            self.transport.pause_reading()
            return
        # Every byte, whatever the connection is doing: a head pipelined behind a request
        # in progress is buffered by the parser all the same (issue 17).
        over = self._meter.feed(data)
        if over is None:
            super().data_received(data)
            return
        if over:  # the requests before the oversized head are parsed and answered
            super().data_received(data[:over])
        if self.transport.is_closing():
            return
        log.warning("request head larger than %d bytes: 431", self.max_header_bytes)
        if self._in_progress():
            # An answer is being written: the 431 follows it (HTTP/1.1 answers in order).
            # Nothing more is read meanwhile, so a client that does not read its answer
            # holds at most its socket buffers, not the process's memory.
            self._refusal_pending = True
            self._disarm()
            self.transport.pause_reading()
        else:
            self._refuse_oversize()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]  # uvicorn's, not asyncio's
        if self.transport.is_closing():
            return
        if self._in_progress():  # a pipelined request was started
            if self._refusal_pending:
                self.transport.pause_reading()
        elif self._refusal_pending:
            self._refuse_oversize()
        else:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        super().connection_lost(exc)


def guarded_protocol(
    *,
    header_timeout: float,
    max_header_bytes: int,
    base: type[asyncio.Protocol] | None = None,
) -> type[asyncio.Protocol]:
    """``base`` (default: uvicorn's ``http="auto"`` choice, httptools where installed, else
    h11) with the guard; pass it as ``uvicorn.Config(http=...)``."""
    if base is None:
        from uvicorn.protocols.http.auto import AutoHTTPProtocol

        base = AutoHTTPProtocol
    attrs = {"header_timeout": header_timeout, "max_header_bytes": max_header_bytes}
    return type(f"Guarded{base.__name__}", (_RequestHeadGuard, base), attrs)
