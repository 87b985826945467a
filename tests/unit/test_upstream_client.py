"""The upstream client over a real socket: large reads keep bodies exact and bounded."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import httpcore
import pytest

from proxy.errors import OversizeError
from proxy.settings import LimitSettings, UpstreamSettings
from proxy.upstream.client import UPSTREAM_READ_BYTES, UpstreamClient, make_http_client

pytestmark = pytest.mark.anyio

BODY = bytes(range(256)) * (4 * 4096 + 7)  # ~4 MiB, not a multiple of any read size


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _serve(declare_length: bool) -> tuple[asyncio.Server, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = b"HTTP/1.1 200 OK\r\n"
        head += f"Content-Length: {len(BODY)}\r\n".encode() if declare_length else b""
        writer.write(head + b"Connection: close\r\n\r\n")
        for i in range(0, len(BODY), 300_000):
            writer.write(BODY[i : i + 300_000])
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


@pytest.fixture
async def client_for() -> AsyncIterator[list[UpstreamClient]]:
    made: list[UpstreamClient] = []
    yield made
    for c in made:
        await c.aclose()


def _client(url: str, made: list[UpstreamClient]) -> UpstreamClient:
    limits = LimitSettings()
    up = UpstreamSettings(name="internal", url=url, registry="registry.test")
    client = UpstreamClient(up, limits, make_http_client(limits, None), None)
    made.append(client)
    return client


def test_httpcore_reads_at_least_the_configured_size() -> None:
    assert httpcore.AsyncHTTP11Connection.READ_NUM_BYTES >= UPSTREAM_READ_BYTES


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "until-close"])
async def test_large_body_is_relayed_exactly(
    declare_length: bool, client_for: list[UpstreamClient]
) -> None:
    server, url = await _serve(declare_length)
    async with server:
        client = _client(url, client_for)
        resp = await client.open("GET", "/v2/x/blobs/y", scope=None)
        digest = hashlib.sha256()
        chunks = 0
        async for chunk in resp.aiter_raw():
            assert len(chunk) <= UPSTREAM_READ_BYTES
            digest.update(chunk)
            chunks += 1
        await resp.aclose()
    assert digest.digest() == hashlib.sha256(BODY).digest()
    assert chunks >= 2


async def test_bounded_read_still_stops_at_the_limit(client_for: list[UpstreamClient]) -> None:
    server, url = await _serve(declare_length=False)  # no length to refuse up front
    async with server:
        client = _client(url, client_for)
        resp = await client.open("GET", "/v2/x/manifests/y", scope=None)
        with pytest.raises(OversizeError):
            await client.read_bounded(resp, 100_000, "manifest")
        assert resp.is_closed
