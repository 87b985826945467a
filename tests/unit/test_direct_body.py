"""The blob relay's direct body reader: exact bytes over a real socket, never past the
declared length, the same errors as aiter_raw(), and aiter_raw() wherever it cannot apply."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from proxy.settings import LimitSettings
from proxy.upstream.client import UPSTREAM_READ_BYTES, make_http_client
from proxy.upstream.direct_body import _BoundedReads, direct_body
from testbed.tls import make_ca

pytestmark = pytest.mark.anyio

BODY = bytes(range(251)) * (64 * 1024 + 3)  # ~16 MiB, not a multiple of any read size


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    # uvloop is what the proxy runs on (its transports are no asyncio.Transport).
    pytest.importorskip("uvloop")
    backend: tuple[str, dict[str, bool]] = request.param
    return backend


async def _serve(
    head: bytes,
    body: bytes,
    *,
    then: bytes = b"",
    close_early: bool = False,
    tls: ssl.SSLContext | None = None,
) -> tuple[asyncio.Server, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        # The head and the start of the body in one write: h11 buffers part of the body
        # with the head, and the reader must start from there.
        writer.write(head + body[:1000])
        try:
            for i in range(1000, len(body), 300_000):
                writer.write(body[i : i + 300_000])
                await writer.drain()
            writer.write(then)
            await writer.drain()
            if not close_early:
                await reader.read()  # keep the connection until the client closes it
        except (ConnectionResetError, BrokenPipeError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    scheme = "https" if tls else "http"
    return server, f"{scheme}://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    client = make_http_client(LimitSettings(), None)
    yield client
    await client.aclose()


def _head(length: int | None, extra: bytes = b"") -> bytes:
    framing = f"Content-Length: {length}\r\n".encode() if length is not None else b""
    return b"HTTP/1.1 200 OK\r\n" + framing + extra + b"\r\n"


async def _read_all(http: httpx.AsyncClient, url: str) -> tuple[bytes, bool]:
    response = await http.send(http.build_request("GET", url), stream=True)
    try:
        body = direct_body(response, read_bytes=UPSTREAM_READ_BYTES)
        direct = body is not None
        chunks = [c async for c in (body or response.aiter_raw())]
        return b"".join(chunks), direct
    finally:
        await response.aclose()


async def test_the_body_is_relayed_exactly_past_h11(http: httpx.AsyncClient) -> None:
    server, url = await _serve(_head(len(BODY)), BODY)
    async with server:
        body, direct = await _read_all(http, url)
    assert direct, "the pinned httpx/httpcore/h11 must take the direct path"
    assert hashlib.sha256(body).digest() == hashlib.sha256(BODY).digest()


async def test_bytes_after_the_declared_length_are_never_read(http: httpx.AsyncClient) -> None:
    server, url = await _serve(_head(len(BODY)), BODY, then=b"X" * 500_000)
    async with server:
        body, direct = await _read_all(http, url)
    assert direct
    assert body == BODY


@pytest.mark.parametrize(
    ("head", "body"),
    [
        (_head(None, b"Transfer-Encoding: chunked\r\n"), b"5\r\nhello\r\n0\r\n\r\n"),
        (_head(None, b"Connection: close\r\n"), b"until the close"),
    ],
    ids=["chunked", "until-close"],
)
async def test_other_framings_are_left_to_aiter_raw(
    http: httpx.AsyncClient, head: bytes, body: bytes
) -> None:
    server, url = await _serve(head, body, close_early=True)
    async with server:
        got, direct = await _read_all(http, url)
    assert not direct
    assert got in (body, b"hello")


async def test_a_body_cut_short_raises_like_aiter_raw(http: httpx.AsyncClient) -> None:
    server, url = await _serve(_head(len(BODY)), BODY[: len(BODY) // 2], close_early=True)
    async with server:
        with pytest.raises(httpx.RemoteProtocolError):
            await _read_all(http, url)


async def test_read_ahead_is_bounded(http: httpx.AsyncClient) -> None:
    server, url = await _serve(_head(len(BODY)), BODY)
    async with server:
        response = await http.send(http.build_request("GET", url), stream=True)
        try:
            body = direct_body(response, read_bytes=UPSTREAM_READ_BYTES, read_ahead=300_000)
            assert body is not None
            first = await anext(body)
            stream = response.extensions["network_stream"]._stream
            protocol = stream._transport.get_protocol()
            assert isinstance(protocol, _BoundedReads)
            await asyncio.sleep(0.2)  # the upstream has sent far more than that by now
            queued = sum(map(len, stream._protocol.read_queue))
            # At most one socket read past the limit.
            assert queued < 300_000 + 256 * 1024
            rest = [c async for c in body]
        finally:
            await response.aclose()
    assert first + b"".join(rest) == BODY


async def test_over_tls_the_body_is_exact_and_read_ahead_bounded(tmp_path: Path) -> None:
    """Under TLS the network stream is anyio's TLSStream: the bound goes on the socket
    stream beneath it."""
    ca = make_ca(tmp_path)
    pair = ca.issue_server(tmp_path, "upstream")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pair.cert, pair.key)
    server, url = await _serve(_head(len(BODY)), BODY, tls=server_ctx)
    http = make_http_client(LimitSettings(), str(ca.cert))
    try:
        async with server:
            response = await http.send(http.build_request("GET", url), stream=True)
            try:
                body = direct_body(response, read_bytes=UPSTREAM_READ_BYTES)
                assert body is not None
                first = await anext(body)
                tls_stream = response.extensions["network_stream"]._stream
                transport = tls_stream.transport_stream._transport
                assert isinstance(transport.get_protocol(), _BoundedReads)
                rest = [c async for c in body]
            finally:
                await response.aclose()
    finally:
        await http.aclose()
    assert hashlib.sha256(first + b"".join(rest)).digest() == hashlib.sha256(BODY).digest()
