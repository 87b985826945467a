"""NotaryFetcher: names and URLs, 404, bounded reads, timeouts, errors, Bearer auth."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator

import httpx
import pytest

from proxy.errors import TrustSourceUnavailableError
from proxy.sources.notary.fetcher import NotaryFetcher, role_of
from proxy.sources.notary.tuf import MetadataFormatError, OversizeMetadataError
from proxy.upstream.auth import UpstreamAuthenticator
from tests.simulators.notary_repo import NotaryRepository
from tests.unit.sources.sim import GUN, URL, SimServer

pytestmark = pytest.mark.anyio
HEX = "ab" * 32


@pytest.mark.parametrize(
    ("name", "role"),
    [
        ("timestamp.json", "timestamp"),
        ("root.json", "root"),
        ("3.root.json", "root"),
        (f"snapshot.{HEX}.json", "snapshot"),
        (f"targets.{HEX}.json", "targets"),
        (f"targets/releases.{HEX}.json", "targets/releases"),
        ("targets/releases.json", "targets/releases"),
    ],
)
def test_role_of(name: str, role: str) -> None:
    assert role_of(name) == role


def fetcher(server: SimServer, *, auth: bool = False, deadline: float = 5.0) -> NotaryFetcher:
    http = httpx.AsyncClient(transport=httpx.MockTransport(server))
    a = UpstreamAuthenticator(http, "notary") if auth else None
    return NotaryFetcher("notary", URL + "/", http, auth=a, deadline=deadline)


async def test_get_by_name_with_host_port_gun() -> None:
    server = SimServer()
    repo = server.add(NotaryRepository(GUN))
    f = fetcher(server)
    try:
        assert await f.fetch(GUN, "timestamp.json", max_bytes=1 << 20) == repo.fetch(
            "timestamp.json"
        )
    finally:
        await f.aclose()
    (req,) = server.requests
    assert req.method == "GET"
    assert str(req.url) == f"{URL}/v2/{GUN}/_trust/tuf/timestamp.json"
    assert req.headers["accept-encoding"] == "identity"


async def test_404_is_none() -> None:
    server = SimServer()
    f = fetcher(server)
    try:
        assert await f.fetch("registry.example/none", "root.json", max_bytes=1024) is None
    finally:
        await f.aclose()


@pytest.mark.parametrize("status", [500, 502, 503, 403, 400, 301])
async def test_other_status_is_unavailable(status: int) -> None:
    server = SimServer(down=status)
    f = fetcher(server)
    try:
        with pytest.raises(TrustSourceUnavailableError, match=f"HTTP {status}") as ei:
            await f.fetch(GUN, "timestamp.json", max_bytes=1024)
    finally:
        await f.aclose()
    assert ei.value.source == "notary"


@pytest.mark.parametrize("location", ["javascript:alert(1)", "mailto:x@example.com", "http://[::1"])
async def test_redirect_to_an_invalid_url_is_unavailable(location: str) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"location": location})

    f = NotaryFetcher("notary", URL, httpx.AsyncClient(transport=httpx.MockTransport(answer)))
    try:
        with pytest.raises(TrustSourceUnavailableError, match=r"timestamp\.json"):
            await f.fetch(GUN, "timestamp.json", max_bytes=1024)
    finally:
        await f.aclose()


@pytest.mark.parametrize(
    "exc",
    [
        lambda r: httpx.ConnectError("refused", request=r),
        lambda r: httpx.ConnectTimeout("slow", request=r),
        lambda r: httpx.ReadTimeout("slow", request=r),
        lambda r: httpx.RemoteProtocolError("eof", request=r),
    ],
    ids=["connect", "connect-timeout", "read-timeout", "protocol"],
)
async def test_network_errors_are_unavailable(exc: object) -> None:
    server = SimServer(down=exc)  # type: ignore[arg-type]
    f = fetcher(server)
    try:
        with pytest.raises(TrustSourceUnavailableError):
            await f.fetch(GUN, "timestamp.json", max_bytes=1024)
    finally:
        await f.aclose()


async def test_endless_body_is_cut_at_the_limit() -> None:
    server = SimServer(faults={"timestamp.json": "endless"})
    f = fetcher(server)
    try:
        with pytest.raises(OversizeMetadataError) as ei:
            await f.fetch(GUN, "timestamp.json", max_bytes=200_000)
    finally:
        await f.aclose()
    assert ei.value.role == "timestamp"


async def test_declared_length_over_limit_is_refused_before_reading() -> None:
    server = SimServer()
    repo = server.add(NotaryRepository(GUN))
    size = len(repo.fetch("timestamp.json") or b"")
    f = fetcher(server)
    try:
        with pytest.raises(OversizeMetadataError, match="announces"):
            await f.fetch(GUN, "timestamp.json", max_bytes=size - 1)
        assert await f.fetch(GUN, "timestamp.json", max_bytes=size) is not None
    finally:
        await f.aclose()


def _deflate_bomb(inflated: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    parts = [c.compress(bytes(1 << 20)) for _ in range(inflated >> 20)]
    return b"".join([*parts, c.flush()])


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "GZIP, identity"])
async def test_content_encoding_is_refused_unread(encoding: str) -> None:
    """Found by the hostile trust server suite: httpx inflated a gzip body one network
    chunk at a time with no bound, so a 64 KiB timestamp limit let ~140 MiB be allocated
    by one fetch. We send ``Accept-Encoding: identity``; an encoded answer is bad data."""
    bomb = _deflate_bomb(16 << 20)
    pulled: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        for at in range(0, len(bomb), 65536):
            pulled.append(at)
            yield bomb[at : at + 65536]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-encoding": encoding}, content=body())

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    f = NotaryFetcher("notary", URL, http, deadline=5)
    try:
        with pytest.raises(MetadataFormatError, match="Content-Encoding") as ei:
            await f.fetch(GUN, "timestamp.json", max_bytes=65536)
    finally:
        await f.aclose()
    assert ei.value.role == "timestamp"
    assert not isinstance(ei.value, OversizeMetadataError)
    assert pulled == []  # refused on the headers: not one byte inflated


@pytest.mark.parametrize("encoding", ["identity", " Identity "])
async def test_identity_encoding_is_read(encoding: str) -> None:
    server = SimServer()
    repo = server.add(NotaryRepository(GUN))
    honest = repo.fetch("timestamp.json")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-encoding": encoding}, content=honest)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    f = NotaryFetcher("notary", URL, http, deadline=5)
    try:
        assert await f.fetch(GUN, "timestamp.json", max_bytes=65536) == honest
    finally:
        await f.aclose()


async def test_deadline_bounds_a_stalled_server() -> None:
    server = SimServer(gate=asyncio.Event())  # never set: the server never answers
    f = fetcher(server, deadline=0.05)
    try:
        with pytest.raises(TrustSourceUnavailableError, match="timed out"):
            await f.fetch(GUN, "timestamp.json", max_bytes=1024)
    finally:
        await f.aclose()


async def test_bearer_challenge_is_answered_with_pull_scope() -> None:
    server = SimServer(token="t0ken")
    repo = server.add(NotaryRepository(GUN))
    f = fetcher(server, auth=True)
    try:
        assert await f.fetch(GUN, "timestamp.json", max_bytes=1 << 20) == repo.fetch(
            "timestamp.json"
        )
        # the token is cached: the second fetch goes straight through
        await f.fetch(GUN, "root.json", max_bytes=1 << 20)
    finally:
        await f.aclose()
    (token_req,) = server.token_requests
    # the challenge's own scope wins (UpstreamAuthenticator), as with registries
    assert token_req.url.params["service"] == "notary-server"
    assert [r.headers.get("authorization") for r in server.requests] == [
        None,
        "Bearer t0ken",
        "Bearer t0ken",
    ]


async def test_bearer_without_challenge_scope_uses_repository_pull() -> None:
    server = SimServer(token="t0ken")
    server.add(NotaryRepository(GUN))

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host != "auth.example" and "authorization" not in request.headers:
            return httpx.Response(
                401, headers={"www-authenticate": 'Bearer realm="https://auth.example/token"'}
            )
        return await server(request)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    f = NotaryFetcher("notary", URL, http, auth=UpstreamAuthenticator(http, "notary"))
    try:
        await f.fetch(GUN, "timestamp.json", max_bytes=1 << 20)
    finally:
        await f.aclose()
    assert server.token_requests[0].url.params["scope"] == f"repository:{GUN}:pull"


async def test_refused_token_is_unavailable() -> None:
    server = SimServer(token="t0ken")

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            return httpx.Response(401)
        return await server(request)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    f = NotaryFetcher("notary", URL, http, auth=UpstreamAuthenticator(http, "notary"))
    try:
        with pytest.raises(TrustSourceUnavailableError, match="authentication failed"):
            await f.fetch(GUN, "timestamp.json", max_bytes=1024)
    finally:
        await f.aclose()


async def test_401_without_authenticator_is_unavailable() -> None:
    server = SimServer(token="t0ken")
    f = fetcher(server)
    try:
        with pytest.raises(TrustSourceUnavailableError, match="HTTP 401"):
            await f.fetch(GUN, "timestamp.json", max_bytes=1024)
    finally:
        await f.aclose()


class _Body(httpx.AsyncByteStream):
    """A response body that records how much of it was read."""

    def __init__(self, chunks: int, size: int = 1024) -> None:
        self.left = chunks
        self.size = size
        self.read = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.left:
            self.left -= 1
            self.read += self.size
            yield b"x" * self.size


@pytest.mark.parametrize(
    ("chunks", "read_all"),
    [(2, True), (10_000, False)],
    ids=["small-404-read-to-its-end", "endless-404-not-read-past-the-cap"],
)
async def test_a_404_body_is_read_to_keep_the_connection_only_when_small(
    chunks: int, read_all: bool
) -> None:
    """A probe for the next root answers 404 on every refresh: reading its small body lets
    the connection serve the next file (closed unread, the connection goes with it). A
    large one is not read past the cap."""
    body = _Body(chunks)
    http = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda _: httpx.Response(404, stream=body))
    )
    f = NotaryFetcher("notary", URL, http, deadline=5.0)
    try:
        assert await f.fetch(GUN, "2.root.json", max_bytes=1 << 20) is None
    finally:
        await f.aclose()
    if read_all:
        assert body.left == 0
    else:
        assert body.read <= 64 * 1024 + body.size


async def test_a_trickled_404_body_is_not_waited_for() -> None:
    class Trickle(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            while True:
                await asyncio.sleep(0.05)
                yield b"x"

    http = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda _: httpx.Response(404, stream=Trickle()))
    )
    # Waiting for the endless body would end in the fetch's deadline (unavailable); the
    # drain gives up first and the 404 stands.
    f = NotaryFetcher("notary", URL, http, deadline=1.0)
    try:
        assert await f.fetch(GUN, "2.root.json", max_bytes=1 << 20) is None
    finally:
        await f.aclose()
