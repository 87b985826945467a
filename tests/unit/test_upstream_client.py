"""The upstream client: exact bounded reads over a real socket, which redirects it follows
(SSRF), and the deadline that stops a registry trickling bytes."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpcore
import httpx
import pytest

from proxy.errors import OversizeError, UpstreamContentError, UpstreamUnavailableError
from proxy.metrics import REGISTRY as METRICS
from proxy.settings import LimitSettings, UpstreamSettings
from proxy.upstream.auth import UpstreamAuthenticator
from proxy.upstream.client import UPSTREAM_READ_BYTES, UpstreamClient, make_http_client
from proxy.upstream.redirects import RedirectRefusedError
from testbed.hostile_registry import loopback_name

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
        try:
            for i in range(0, len(BODY), 300_000):
                writer.write(BODY[i : i + 300_000])
                await writer.drain()
        except (ConnectionResetError, BrokenPipeError):
            # A bounded read closes the connection before the body ends: that is the behaviour
            # under test, not a server error (left unhandled it surfaces as an error of the
            # test that happens to run when the handler task is collected).
            pass
        finally:
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


# --------------------------------------------------------------------------- redirects (SSRF)

REGISTRY = "https://registry.test"
BLOB = "/v2/team/app/blobs/sha256:" + "a" * 64


def _refusals(upstream: str = "internal") -> float:
    value = METRICS.get_sample_value(
        "trustproxy_upstream_errors_total", {"upstream": upstream, "kind": "redirect_refused"}
    )
    return value or 0.0


class Storage:
    """A mock upstream: ``routes`` maps a URL to its Location (a 307) or to None (200)."""

    def __init__(self, routes: dict[str, str | None]) -> None:
        self.routes = routes
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        url = str(request.url)
        if url not in self.routes:
            return httpx.Response(404)
        location = self.routes[url]
        if location is None:
            return httpx.Response(200, content=b"blob bytes")
        return httpx.Response(307, headers={"Location": location})

    @property
    def urls(self) -> list[str]:
        return [str(r.url) for r in self.seen]


def _mock_client(
    storage: Storage,
    made: list[UpstreamClient],
    *,
    hosts: tuple[str, ...] = (),
    resolved: dict[str, list[str]] | None = None,
    insecure: bool = False,
    url: str = REGISTRY,
    max_redirects: int = 5,
) -> UpstreamClient:
    limits = LimitSettings(max_redirects=max_redirects)
    up = UpstreamSettings(name="internal", url=url, registry="registry.test",
                          redirect_hosts=hosts, insecure_redirect_to_http=insecure)  # fmt: skip

    async def resolver(host: str, port: int) -> list[str]:
        if resolved is None or host not in resolved:
            raise OSError(f"cannot resolve {host}")
        return resolved[host]

    http = httpx.AsyncClient(transport=httpx.MockTransport(storage))
    client = UpstreamClient(up, limits, http, None, resolver=resolver)
    made.append(client)
    return client


async def _get(client: UpstreamClient, **kw: Any) -> httpx.Response:
    resp = await client.open("GET", BLOB, scope=None, follow_redirects=True, **kw)
    await resp.aread()
    await resp.aclose()
    return resp


async def test_same_origin_and_listed_redirects_are_followed(
    client_for: list[UpstreamClient],
) -> None:
    cdn = "https://cdn.example/b?sig=1"
    storage = Storage({REGISTRY + BLOB: REGISTRY + "/elsewhere", REGISTRY + "/elsewhere": cdn,
                       cdn: None})  # fmt: skip
    client = _mock_client(storage, client_for, hosts=("cdn.example",))
    resp = await _get(client, client_authorization=None)
    assert resp.status_code == 200
    assert resp.content == b"blob bytes"
    assert storage.urls == [REGISTRY + BLOB, REGISTRY + "/elsewhere", cdn]


async def test_registry_credentials_never_follow_to_another_origin(
    client_for: list[UpstreamClient],
) -> None:
    cdn = "https://cdn.example/b"
    storage = Storage({REGISTRY + BLOB: cdn, cdn: None})
    limits = LimitSettings()
    up = UpstreamSettings(name="internal", url=REGISTRY, registry="registry.test",
                          redirect_hosts=("cdn.example",))  # fmt: skip
    up = replace(up, auth=replace(up.auth, mode="passthrough"))
    http = httpx.AsyncClient(transport=httpx.MockTransport(storage))
    client = UpstreamClient(up, limits, http, None)
    client_for.append(client)
    resp = await _get(client, client_authorization="Bearer registry-token")
    assert resp.status_code == 200
    assert storage.seen[0].headers["authorization"] == "Bearer registry-token"
    assert "authorization" not in storage.seen[1].headers


@pytest.mark.parametrize(
    ("location", "hosts", "fragment"),
    [
        ("https://evil.example/x", (), "evil.example: not in redirect_hosts"),
        ("http://169.254.169.254/latest/meta-data/", ("*",), "downgrade"),
        ("https://169.254.169.254/latest/meta-data/", ("*",), "link-local"),
        ("https://127.0.0.1:6379/", ("*:6379",), "loopback"),
        ("file:///etc/passwd", ("*",), "scheme 'file'"),
        ("https://u:p@cdn.example/x", ("cdn.example",), "credentials"),
    ],
    ids=["unlisted", "downgrade", "metadata", "loopback", "file", "userinfo"],
)
async def test_refused_redirects_are_never_requested(
    client_for: list[UpstreamClient], location: str, hosts: tuple[str, ...], fragment: str
) -> None:
    storage = Storage({REGISTRY + BLOB: location})
    client = _mock_client(storage, client_for, hosts=hosts)
    before = _refusals()
    with pytest.raises(RedirectRefusedError) as info:
        await _get(client)
    assert fragment in str(info.value)
    assert info.value.upstream == "internal"
    assert storage.urls == [REGISTRY + BLOB]  # the target was never asked
    assert _refusals() == before + 1


async def test_a_wildcard_host_must_resolve_to_public_addresses(
    client_for: list[UpstreamClient],
) -> None:
    target = "https://eu.blob.example/x"
    storage = Storage({REGISTRY + BLOB: target, target: None})
    public = _mock_client(
        storage,
        client_for,
        hosts=("*.blob.example",),
        resolved={"eu.blob.example": ["93.184.216.34", "2606:4700::1"]},
    )
    assert (await _get(public)).status_code == 200  # fmt: skip
    inside = _mock_client(
        storage,
        client_for,
        hosts=("*.blob.example",),
        resolved={"eu.blob.example": ["93.184.216.34", "10.0.0.8"]},
    )
    with pytest.raises(RedirectRefusedError, match=r"resolves to a non-public address \(private"):
        await _get(inside)  # fmt: skip
    unknown = _mock_client(storage, client_for, hosts=("*.blob.example",), resolved={})
    with pytest.raises(UpstreamUnavailableError, match="does not resolve"):
        await _get(unknown)
    exact = _mock_client(storage, client_for, hosts=("eu.blob.example",), resolved={})
    assert (await _get(exact)).status_code == 200  # named exactly: no DNS check


async def test_redirect_loops_and_chains_stop(client_for: list[UpstreamClient]) -> None:
    loop = Storage({REGISTRY + BLOB: REGISTRY + "/a", REGISTRY + "/a": REGISTRY + BLOB})
    with pytest.raises(RedirectRefusedError, match="a redirect loop"):
        await _get(_mock_client(loop, client_for))
    assert len(loop.seen) == 2
    hops = [REGISTRY + BLOB] + [f"{REGISTRY}/hop{n}" for n in range(10)]
    chain = Storage(dict(itertools.pairwise(hops)))
    with pytest.raises(RedirectRefusedError, match="more than 3 redirects"):
        await _get(_mock_client(chain, client_for, max_redirects=3))
    assert len(chain.seen) == 4


async def test_a_3xx_without_location_is_returned_as_is(client_for: list[UpstreamClient]) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302)

    http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    up = UpstreamSettings(name="internal", url=REGISTRY, registry="registry.test")
    client = UpstreamClient(up, LimitSettings(), http, None)
    client_for.append(client)
    resp = await _get(client)
    assert resp.status_code == 302


async def test_an_answer_framed_two_ways_is_refused(client_for: list[UpstreamClient]) -> None:
    # RFC 9112 6.1: Content-Length beside Transfer-Encoding "ought to be handled as an error"
    # (issue 17, finding 5a: the Content-Length reached the client beside a chunked body).
    stream = httpx.ByteStream(b"1c\r\n" + b"x" * 28 + b"\r\n0\r\n\r\n")

    def answer(request: httpx.Request) -> httpx.Response:
        headers = {"Content-Length": "28", "Transfer-Encoding": "chunked"}
        return httpx.Response(200, headers=headers, stream=stream)

    http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    up = UpstreamSettings(name="internal", url=REGISTRY, registry="registry.test")
    client = UpstreamClient(up, LimitSettings(), http, None)
    client_for.append(client)
    with pytest.raises(UpstreamContentError, match="both Content-Length and Transfer-Encoding"):
        await client.open("GET", BLOB, scope=None)


async def test_insecure_downgrade_is_followed_and_logged(
    client_for: list[UpstreamClient], caplog: pytest.LogCaptureFixture
) -> None:
    target = "http://cdn.example/x"
    storage = Storage({REGISTRY + BLOB: target, target: None})
    client = _mock_client(storage, client_for, hosts=("cdn.example",), insecure=True)
    with caplog.at_level(logging.WARNING, logger="trustproxy.upstream"):
        assert (await _get(client)).status_code == 200
    assert "https to http redirect to cdn.example" in caplog.text


async def test_the_connected_address_is_checked_too(client_for: list[UpstreamClient]) -> None:
    # DNS rebinding: the check sees a public address, the connection goes to loopback.
    name = loopback_name()
    if name is None:
        pytest.skip("no host name here resolves to loopback only")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecret")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    target = f"http://{name}:{port}/latest/meta-data/"
    limits = LimitSettings()
    up = UpstreamSettings(name="internal", url="http://registry.test", registry="registry.test",
                          redirect_hosts=(f"*:{port}",))  # fmt: skip

    async def lying_resolver(host: str, port: int) -> list[str]:
        return ["93.184.216.34"]

    class FirstHopRedirects(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.real = httpx.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.host == "registry.test":
                return httpx.Response(307, headers={"Location": target})
            return await self.real.handle_async_request(request)

        async def aclose(self) -> None:
            await self.real.aclose()

    async with server:
        http = httpx.AsyncClient(transport=FirstHopRedirects())
        client = UpstreamClient(up, limits, http, None, resolver=lying_resolver)
        client_for.append(client)
        with pytest.raises(RedirectRefusedError, match=r"connected to a non-public address"):
            await client.open("GET", BLOB, scope=None, follow_redirects=True)


# --------------------------------------------------------------------------- token realms


async def test_token_realm_is_checked_before_it_is_fetched(
    client_for: list[UpstreamClient],
) -> None:
    storage = Storage({"https://auth.registry.test/token?scope=x": None})
    client = _mock_client(storage, client_for, url="https://registry.test",
                          resolved={"auth.registry.test": ["93.184.216.34"]})  # fmt: skip
    ok = await client.open_url("https://auth.registry.test/token?scope=x", authorization=None)
    await ok.aclose()
    assert ok.status_code == 200
    for realm, fragment in (
        ("http://169.254.169.254/latest/meta-data/", "plain http"),
        ("https://169.254.169.254/latest/meta-data/", "link-local"),
        ("https://localhost:8080/token", "localhost"),
        ("not a url at all\x00", "not a URL"),
    ):
        with pytest.raises(RedirectRefusedError, match=fragment) as info:
            await client.open_url(realm, authorization="Basic c2VjcmV0")
        assert "token realm" in str(info.value)
    metadata = _mock_client(storage, client_for, resolved={"meta.test": ["169.254.169.254"]})
    with pytest.raises(RedirectRefusedError, match="resolves to a non-public address"):
        await metadata.open_url("https://meta.test/token", authorization=None)
    assert storage.urls == ["https://auth.registry.test/token?scope=x"]


# --------------------------------------------------------------------------- deadlines


async def _trickle_server(*, headers: bool) -> tuple[asyncio.Server, str]:
    """Answers a 200 whose headers (or body) come a byte every 50 ms: never a read timeout."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
        data = (head + b"x" * 1000) if headers else b"x" * 1000
        if not headers:
            writer.write(head)
        try:
            for i in range(len(data)):
                writer.write(data[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0.05)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def _deadline_client(url: str, made: list[UpstreamClient]) -> UpstreamClient:
    limits = LimitSettings(read_timeout=1.0, request_timeout=0.4)
    up = UpstreamSettings(name="internal", url=url, registry="registry.test")
    client = UpstreamClient(up, limits, make_http_client(limits, None), None)
    made.append(client)
    return client


async def test_a_trickled_bounded_body_hits_the_request_deadline(
    client_for: list[UpstreamClient],
) -> None:
    server, url = await _trickle_server(headers=False)
    async with server:
        client = _deadline_client(url, client_for)
        started = time.monotonic()
        resp = await client.open("GET", "/v2/x/manifests/y", scope=None)
        with pytest.raises(
            UpstreamUnavailableError, match="timed out reading the manifest"
        ) as info:
            await client.read_bounded(resp, 100_000, "manifest")
        assert info.value.timeout  # a 504
        assert time.monotonic() - started < 1.0  # the deadline, not 1000 bytes x 50 ms
        assert resp.is_closed


async def test_trickled_headers_hit_the_request_deadline(client_for: list[UpstreamClient]) -> None:
    server, url = await _trickle_server(headers=True)
    async with server:
        client = _deadline_client(url, client_for)
        started = time.monotonic()
        with pytest.raises(UpstreamUnavailableError, match="timed out") as info:
            await client.open("GET", "/v2/x/blobs/y", scope=None)
        assert info.value.timeout
        assert time.monotonic() - started < 1.0


def test_request_deadline_defaults_to_twice_the_read_timeout() -> None:
    assert LimitSettings(read_timeout=7.0).request_deadline == pytest.approx(14.0)
    assert LimitSettings(read_timeout=7.0, request_timeout=3.0).request_deadline == 3.0


async def test_a_bearer_realm_pointing_inside_is_refused_before_the_token_fetch(
    client_for: list[UpstreamClient],
) -> None:
    asked: list[str] = []
    realm = "https://169.254.169.254/latest/meta-data/iam/security-credentials/"

    def registry(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        challenge = f'Bearer realm="{realm}",service="registry.test"'
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})

    http = httpx.AsyncClient(transport=httpx.MockTransport(registry))
    auth = UpstreamAuthenticator(http, "internal", username="robot", password="s3cret")
    up = UpstreamSettings(name="internal", url=REGISTRY, registry="registry.test")
    client = UpstreamClient(up, LimitSettings(), http, auth)
    client_for.append(client)
    with pytest.raises(RedirectRefusedError, match=r"realm at 169\.254\.169\.254: link-local"):
        await client.open("GET", BLOB, scope="repository:team/app:pull")
    assert asked == [REGISTRY + BLOB]  # the credentials never went to the metadata service
