"""Read a streamed upstream body straight from its connection, past h11 (the blob relay's
fast path).

Profiled (docs/performance-notes.md), once the hash left the event loop's thread most of
a blob relay's CPU was per-chunk work between the socket and the ASGI send: h11 appends
every read to its receive buffer and slices it out again (two copies), httpcore makes a
third with ``bytes()``, and four generator layers (h11, httpcore, the pool, httpx) plus an
exception-mapping context manager run for every ~250 KB. For a body whose length the
Content-Length gives, none of that decides anything: the bytes that follow the head are
the body, up to that length. So this reads them from the connection's network stream
(public in httpcore as the ``network_stream`` response extension), after the bytes h11
had already buffered with the head (``h11.Connection.trailing_data``).

The same guarantees as ``aiter_raw()``: exactly ``Content-Length`` bytes and never more (a
read never asks past the end); a connection that closes early or a read that times out
raises the httpx exceptions ``aiter_raw()`` raises (``RemoteProtocolError``,
``ReadError``, ``ReadTimeout``), with the same per-read timeout. The price: h11 never sees
the body, so closing the response closes the connection instead of pooling it (one new
connection per large blob). Anything unexpected (chunked, HTTP/2, other httpx/httpcore
internals) returns None and the caller uses ``aiter_raw()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import h11
import httpcore
import httpx

#: Bytes read from the socket and not yet asked for, after which the connection stops
#: reading until they are (see _BoundedReads).
READ_AHEAD_BYTES = 512 * 1024


def direct_body(
    response: httpx.Response, *, read_bytes: int, read_ahead: int = READ_AHEAD_BYTES
) -> AsyncIterator[bytes] | None:
    """The body of a just-opened streaming ``response``, read from its connection, or
    None when that is not possible here (then read it with ``aiter_raw()``). At most
    about ``read_ahead`` bytes are read from the socket ahead of the relay."""
    length = _content_length(response)
    if length is None or response.http_version != "HTTP/1.1" or response.is_stream_consumed:
        return None
    network_stream = response.extensions.get("network_stream")
    connection = _h11_connection(response)
    if network_stream is None or connection is None:
        return None
    h11_state = getattr(connection, "_h11_state", None)
    if (
        not isinstance(h11_state, h11.Connection)
        or h11_state.their_state is not h11.SEND_BODY
        or getattr(connection, "_network_stream", None) is not network_stream
    ):
        return None
    buffered, _closed = h11_state.trailing_data
    _bound_reads(network_stream, read_ahead)
    timeout = response.request.extensions.get("timeout", {}).get("read")
    return _read(network_stream, buffered, length, read_bytes, timeout)


class _BoundedReads(asyncio.Protocol):
    """anyio's stream protocol, with reading paused once ``limit`` bytes wait in its queue.

    anyio pauses reading only when its reader wakes up, and the event loop reads a ready
    socket up to 32 times per wake-up (libuv): with a fast upstream and a busy loop, each
    connection could queue megabytes ahead of the relay (profiled: ~2 MiB per stream with
    50 concurrent blobs). anyio resumes reading when its queue is empty, as before."""

    def __init__(self, inner: Any, transport: Any, limit: int) -> None:
        self._inner = inner
        self._transport = transport
        self._limit = limit

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)
        queue = self._inner.read_queue
        if len(queue) > 1 and sum(map(len, queue)) >= self._limit:
            self._transport.pause_reading()

    def eof_received(self) -> bool | None:
        result: bool | None = self._inner.eof_received()
        return result

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def _bound_reads(network_stream: Any, limit: int) -> None:
    """Put _BoundedReads in front of the connection's anyio protocol, where the private
    attributes are the expected ones (else leave it: correct, only more read-ahead)."""
    stream = getattr(network_stream, "_stream", None)  # httpcore AnyIOStream → anyio
    stream = getattr(stream, "transport_stream", stream)  # under TLS: the socket stream
    protocol = getattr(stream, "_protocol", None)
    transport: Any = getattr(stream, "_transport", None)
    if (
        isinstance(protocol, asyncio.Protocol)
        and hasattr(protocol, "read_queue")
        # uvloop's transports are not asyncio.Transport subclasses: ask for what is used.
        and all(hasattr(transport, m) for m in ("get_protocol", "set_protocol", "pause_reading"))
        and transport.get_protocol() is protocol
    ):
        transport.set_protocol(_BoundedReads(protocol, transport, limit))


def _content_length(response: httpx.Response) -> int | None:
    # Only a body framed by a single Content-Length (duplicates of one value count once,
    # as h11 takes them); Transfer-Encoding is left to h11.
    headers = response.headers
    if "transfer-encoding" in headers:
        return None
    values = {v.strip() for v in headers.get("content-length", "").split(",")}
    if len(values) != 1:
        return None
    (value,) = values
    return int(value) if value.isdigit() else None


def _h11_connection(response: httpx.Response) -> Any:
    """httpx → httpcore pool → HTTP/1.1 connection (private attributes of the pinned
    versions; None as soon as one is not what is expected)."""
    stream: Any = response.stream
    for attribute in ("_stream", "_httpcore_stream", "_stream"):
        stream = getattr(stream, attribute, None)
        if stream is None:
            return None
    connection = getattr(stream, "_connection", None)
    if not isinstance(connection, httpcore.AsyncHTTP11Connection):
        return None
    return connection


async def _read(
    network_stream: Any, buffered: bytes, length: int, read_bytes: int, read_timeout: float | None
) -> AsyncIterator[bytes]:
    remaining = length
    if buffered:
        first = buffered[:remaining]
        remaining -= len(first)
        yield first
    while remaining > 0:
        try:
            # Never more than the body: what follows it stays unread (the connection is
            # closed, not reused, when the response is).
            chunk = await network_stream.read(min(read_bytes, remaining), read_timeout)
        except httpcore.TimeoutException as e:
            raise httpx.ReadTimeout(str(e) or "read timed out") from e
        except httpcore.NetworkError as e:
            raise httpx.ReadError(str(e) or type(e).__name__) from e
        if not chunk:
            raise httpx.RemoteProtocolError(
                f"peer closed connection without sending complete message body "
                f"(received {length - remaining} bytes, expected {length})"
            )
        remaining -= len(chunk)
        yield chunk
