"""UpstreamAuthenticator against httpx.MockTransport token servers."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from proxy.errors import (
    BadDataError,
    OversizeError,
    UnauthorizedError,
    UpstreamUnavailableError,
)
from proxy.upstream.auth import (
    AuthLimits,
    UpstreamAuthenticator,
    UpstreamUnauthorizedError,
    basic_header,
)

REALM = "https://auth.example/token"
BEARER = f'Bearer realm="{REALM}",service="reg.example"'
PULL_A = "repository:team/a:pull"
PULL_B = "repository:team/b:pull"
PASSWORD = "pa55-w0rd-secret"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class TokenServer:
    """A scripted token endpoint recording what it was asked."""

    status: int = 200
    body: dict[str, Any] | bytes | None = None
    requests: list[httpx.Request] = field(default_factory=list)
    gate: asyncio.Event | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        n = len(self.requests)
        if self.gate is not None:
            await self.gate.wait()
        body = self.body if self.body is not None else {"token": f"tok{n}", "expires_in": 300}
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.Response(self.status, content=content)


Handler = Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]


def make(
    handler: Handler,
    clock: Clock | None = None,
    *,
    credentials: bool = False,
    limits: AuthLimits | None = None,
    insecure_http_realm: bool = False,
) -> UpstreamAuthenticator:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return UpstreamAuthenticator(
        client,
        "hub",
        username="bob" if credentials else None,
        password=PASSWORD if credentials else None,
        clock=clock or Clock(),
        limits=limits,
        insecure_http_realm=insecure_http_realm,
    )


def challenge(scope: str | None = None, realm: str = REALM) -> str:
    header = f'Bearer realm="{realm}",service="reg.example"'
    return header + (f',scope="{scope}"' if scope else "")


@pytest.mark.anyio
async def test_anonymous_bearer_flow() -> None:
    server = TokenServer()
    auth = make(server)
    assert auth.cached_authorization(PULL_A) is None
    assert await auth.authorize(challenge(PULL_A), PULL_A) == "Bearer tok1"
    (req,) = server.requests
    assert req.url.host == "auth.example"
    assert req.url.params.get_list("service") == ["reg.example"]
    assert req.url.params.get_list("scope") == [PULL_A]
    assert "authorization" not in req.headers
    assert "account" not in req.url.params
    assert auth.cached_authorization(PULL_A) == "Bearer tok1"


@pytest.mark.anyio
async def test_credentials_sent_to_token_server() -> None:
    server = TokenServer()
    auth = make(server, credentials=True)
    await auth.authorize(challenge(PULL_A), PULL_A)
    (req,) = server.requests
    assert req.headers["authorization"] == basic_header("bob", PASSWORD)
    assert req.url.params["account"] == "bob"


@pytest.mark.parametrize(
    ("challenge_scope", "our_scope", "sent"),
    [
        (PULL_A, PULL_B, [PULL_A]),
        (None, PULL_B, [PULL_B]),
        (f"{PULL_A} {PULL_B}", PULL_A, [PULL_A, PULL_B]),
        (None, f"{PULL_A}  {PULL_B}", [PULL_A, PULL_B]),
        (None, "", []),
    ],
    ids=["challenge-wins", "ours-when-absent", "several-in-challenge", "several-ours", "base"],
)
@pytest.mark.anyio
async def test_scope_sent(challenge_scope: str | None, our_scope: str, sent: list[str]) -> None:
    server = TokenServer()
    auth = make(server)
    await auth.authorize(challenge(challenge_scope), our_scope)
    assert server.requests[0].url.params.get_list("scope") == sent
    # Cached under the caller's scope: that is what it asks cached_authorization with.
    assert auth.cached_authorization(our_scope) == "Bearer tok1"


@pytest.mark.anyio
async def test_realm_query_is_kept() -> None:
    server = TokenServer()
    auth = make(server)
    await auth.authorize(challenge(PULL_A, realm="https://auth.example/token?tenant=t1"), PULL_A)
    params = server.requests[0].url.params
    assert (params["tenant"], params["scope"]) == ("t1", PULL_A)


@pytest.mark.anyio
async def test_cache_is_per_scope_and_reused() -> None:
    server = TokenServer()
    auth = make(server)
    assert await auth.authorize(challenge(PULL_A), PULL_A) == "Bearer tok1"
    assert await auth.authorize(challenge(PULL_B), PULL_B) == "Bearer tok2"
    assert auth.cached_authorization(PULL_A) == "Bearer tok1"
    assert auth.cached_authorization(PULL_B) == "Bearer tok2"
    # A 401 that answered a request sent without a token (it raced the first fetch):
    # the cached token is the answer, no new fetch.
    assert await auth.authorize(challenge(PULL_A), PULL_A) == "Bearer tok1"
    assert len(server.requests) == 2


@pytest.mark.anyio
async def test_rejected_token_is_dropped_and_refetched() -> None:
    server = TokenServer()
    auth = make(server)
    first = await auth.authorize(challenge(PULL_A), PULL_A)
    second = await auth.authorize(challenge(PULL_A), PULL_A, rejected=first)
    assert (first, second) == ("Bearer tok1", "Bearer tok2")
    assert auth.cached_authorization(PULL_A) == "Bearer tok2"
    # A stale token rejected after a newer one arrived: the newer one is returned.
    assert await auth.authorize(challenge(PULL_A), PULL_A, rejected=first) == "Bearer tok2"
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("body", "valid_for"),
    [
        ({"token": "t", "expires_in": 300}, 290.0),
        ({"token": "t"}, 50.0),
        ({"token": "t", "expires_in": None}, 50.0),
        ({"token": "t", "expires_in": 5}, 50.0),
        ({"token": "t", "expires_in": 0}, 50.0),
        ({"token": "t", "expires_in": -10}, 50.0),
        ({"token": "t", "expires_in": 120.5}, 110.5),
    ],
    ids=["300s", "default-60", "null-60", "floor-60", "zero", "negative", "float"],
)
@pytest.mark.anyio
async def test_expiry(body: dict[str, Any], valid_for: float) -> None:
    clock = Clock()
    start = clock.now
    auth = make(TokenServer(body=body), clock)
    await auth.authorize(BEARER, PULL_A)
    clock.now = start + valid_for - 0.001
    assert auth.cached_authorization(PULL_A) == "Bearer t"
    clock.now = start + valid_for
    assert auth.cached_authorization(PULL_A) is None


@pytest.mark.anyio
async def test_expired_token_is_refetched() -> None:
    clock = Clock()
    server = TokenServer()
    auth = make(server, clock)
    await auth.authorize(BEARER, PULL_A)
    clock.now += 1000
    assert await auth.authorize(BEARER, PULL_A) == "Bearer tok2"
    assert len(server.requests) == 2


@pytest.mark.anyio
async def test_access_token_fallback() -> None:
    auth = make(TokenServer(body={"token": "", "access_token": "oauth", "expires_in": 60}))
    assert await auth.authorize(BEARER, PULL_A) == "Bearer oauth"


@pytest.mark.anyio
async def test_concurrent_callers_share_one_fetch() -> None:
    server = TokenServer(gate=asyncio.Event())
    auth = make(server)
    waiters = [asyncio.create_task(auth.authorize(BEARER, PULL_A)) for _ in range(20)]
    other = asyncio.create_task(auth.authorize(BEARER, PULL_B))
    await asyncio.sleep(0.01)
    assert server.gate is not None
    server.gate.set()
    results = await asyncio.gather(*waiters)
    assert set(results) == {results[0]}
    assert await other != results[0]
    assert len(server.requests) == 2  # one per scope


@pytest.mark.anyio
async def test_cancelled_waiter_does_not_cancel_the_shared_fetch() -> None:
    server = TokenServer(gate=asyncio.Event())
    auth = make(server)
    first = asyncio.create_task(auth.authorize(BEARER, PULL_A))
    second = asyncio.create_task(auth.authorize(BEARER, PULL_A))
    await asyncio.sleep(0.01)
    first.cancel()
    assert server.gate is not None
    server.gate.set()
    assert await second == "Bearer tok1"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert len(server.requests) == 1


@pytest.mark.anyio
async def test_failure_reaches_every_waiter_and_is_not_cached() -> None:
    server = TokenServer(status=503, gate=asyncio.Event())
    auth = make(server)
    waiters = [asyncio.create_task(auth.authorize(BEARER, PULL_A)) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert server.gate is not None
    server.gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, UpstreamUnavailableError) for r in results)
    assert len(server.requests) == 1
    server.status, server.gate = 200, None
    assert await auth.authorize(BEARER, PULL_A) == "Bearer tok2"


@pytest.mark.anyio
async def test_all_waiters_cancelled_fetch_error_is_retrieved() -> None:
    # With filterwarnings=error and asyncio's "exception was never retrieved" logging,
    # the done-callback must consume the exception itself.
    server = TokenServer(status=500, gate=asyncio.Event())
    auth = make(server)
    waiter = asyncio.create_task(auth.authorize(BEARER, PULL_A))
    await asyncio.sleep(0.01)
    waiter.cancel()
    assert server.gate is not None
    server.gate.set()
    await asyncio.sleep(0.01)
    assert auth._inflight == {}


def _raiser(exc: Exception) -> Handler:
    async def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


def _status(status: int) -> Handler:
    return TokenServer(status=status, body={"errors": []})


def _body(body: bytes) -> Handler:
    return TokenServer(body=body)


ERRORS: list[tuple[str, Handler, type[Exception], str]] = [
    ("500", _status(500), UpstreamUnavailableError, "answered HTTP 500"),
    ("503", _status(503), UpstreamUnavailableError, "answered HTTP 503"),
    ("404", _status(404), UpstreamUnavailableError, "answered HTTP 404"),
    ("429", _status(429), UpstreamUnavailableError, "answered HTTP 429"),
    ("401", _status(401), UpstreamUnauthorizedError, "refused the configured credentials"),
    ("403", _status(403), UpstreamUnauthorizedError, r"HTTP 403"),
    (
        "connect",
        _raiser(httpx.ConnectError("boom")),
        UpstreamUnavailableError,
        "unreachable \\(ConnectError\\)",
    ),
    ("timeout", _raiser(httpx.ReadTimeout("slow")), UpstreamUnavailableError, "timed out"),
    ("not-json", _body(b"<html>"), BadDataError, "is not JSON"),
    ("not-utf8", _body(b"\xff\xfe{}"), BadDataError, "is not JSON"),
    ("deep-json", _body(b"[" * 60000), BadDataError, "is not JSON"),
    ("json-list", _body(b"[]"), BadDataError, "not a JSON object"),
    ("no-token", _body(b'{"expires_in": 60}'), BadDataError, "no usable token"),
    ("token-not-str", _body(b'{"token": 42}'), BadDataError, "no usable token"),
    ("token-crlf", _body(b'{"token": "a\\r\\nX-Evil: 1"}'), BadDataError, "no usable token"),
    ("token-space", _body(b'{"token": "a b"}'), BadDataError, "no usable token"),
    ("expires-str", _body(b'{"token": "t", "expires_in": "60"}'), BadDataError, "non-numeric"),
    ("expires-bool", _body(b'{"token": "t", "expires_in": true}'), BadDataError, "non-numeric"),
    (
        "expires-inf",
        _body(b'{"token": "t", "expires_in": Infinity}'),
        BadDataError,
        "non-numeric",
    ),
]


@pytest.mark.parametrize(
    ("handler", "exc", "match"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
@pytest.mark.anyio
async def test_error_mapping(handler: Handler, exc: type[Exception], match: str) -> None:
    auth = make(handler, credentials=True)
    with pytest.raises(exc, match=match) as info:
        await auth.authorize(BEARER, PULL_A)
    assert "hub" in str(info.value)
    assert PASSWORD not in str(info.value)
    assert auth.cached_authorization(PULL_A) is None


@pytest.mark.anyio
async def test_timeout_flag_and_anonymous_refusal_message() -> None:
    with pytest.raises(UpstreamUnavailableError) as info:
        await make(_raiser(httpx.ConnectTimeout("x"))).authorize(BEARER, PULL_A)
    assert info.value.timeout
    assert info.value.upstream == "hub"
    with pytest.raises(UnauthorizedError, match="refused anonymous access"):
        await make(_status(401)).authorize(BEARER, PULL_A)


class TrackedStream(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk

    async def aclose(self) -> None:
        self.closed = True


LIMIT = 1024


@pytest.mark.parametrize(
    ("headers", "chunks", "status", "exc"),
    [
        ({"content-length": str(LIMIT + 1)}, [b"x"], 200, OversizeError),
        ({}, [b"x" * 512, b"x" * 512, b"x"], 200, OversizeError),
        ({}, [b"{}"], 401, UpstreamUnauthorizedError),
        ({}, [b"{}"], 500, UpstreamUnavailableError),
        ({}, [b"nope"], 200, BadDataError),
    ],
    ids=["declared-too-big", "streamed-too-big", "401", "500", "bad-json"],
)
@pytest.mark.anyio
async def test_size_bound_and_response_always_closed(
    headers: dict[str, str], chunks: list[bytes], status: int, exc: type[Exception]
) -> None:
    stream = TrackedStream(chunks)

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=headers, stream=stream)

    auth = make(handler, limits=AuthLimits(max_token_response_bytes=LIMIT))
    with pytest.raises(exc) as info:
        await auth.authorize(BEARER, PULL_A)
    if isinstance(info.value, OversizeError):
        assert info.value.limit == LIMIT
    assert stream.closed


@pytest.mark.anyio
async def test_exactly_at_limit_is_accepted() -> None:
    token = "t" * (LIMIT - len('{"token": ""}'))
    body = json.dumps({"token": token}).encode()
    assert len(body) == LIMIT
    auth = make(TokenServer(body=body), limits=AuthLimits(max_token_response_bytes=LIMIT))
    assert await auth.authorize(BEARER, PULL_A) == f"Bearer {token}"


REALMS: list[tuple[str, str, bool, str | None]] = [
    ("no-realm", 'Bearer service="s"', False, "without realm"),
    ("ftp", 'Bearer realm="ftp://auth.example/t"', False, "must be an http"),
    ("relative", 'Bearer realm="/token"', False, "must be an http"),
    ("userinfo", 'Bearer realm="https://u:p@auth.example/t"', False, "userinfo"),
    ("bad-url", 'Bearer realm="https://[::1"', False, "invalid token realm"),
    ("http-remote", 'Bearer realm="http://auth.example/t"', False, "plain http"),
    ("http-remote-allowed", 'Bearer realm="http://auth.example/t"', True, None),
    ("http-loopback", 'Bearer realm="http://127.0.0.1:5001/t"', False, None),
    ("http-localhost", 'Bearer realm="http://localhost/t"', False, None),
    ("http-ipv6-loopback", 'Bearer realm="http://[::1]:5001/t"', False, None),
]


@pytest.mark.parametrize(
    ("header", "insecure", "match"), [r[1:] for r in REALMS], ids=[r[0] for r in REALMS]
)
@pytest.mark.anyio
async def test_realm_validation(header: str, insecure: bool, match: str | None) -> None:
    server = TokenServer()
    auth = make(server, insecure_http_realm=insecure)
    if match is None:
        assert await auth.authorize(header, PULL_A) == "Bearer tok1"
    else:
        with pytest.raises(BadDataError, match=match):
            await auth.authorize(header, PULL_A)
        assert server.requests == []


@pytest.mark.anyio
async def test_basic_challenge_with_credentials() -> None:
    server = TokenServer()
    auth = make(server, credentials=True)
    expected = basic_header("bob", PASSWORD)
    assert auth.cached_authorization(PULL_A) is None
    assert await auth.authorize('Basic realm="Registry Realm"', PULL_A) == expected
    # Known Basic upstream: every scope gets Basic up front, no more 401 round trips.
    assert auth.cached_authorization(PULL_B) == expected
    assert server.requests == []
    with pytest.raises(UpstreamUnauthorizedError, match="rejected the credentials"):
        await auth.authorize('Basic realm="Registry Realm"', PULL_A, rejected=expected)


@pytest.mark.anyio
async def test_basic_challenge_without_credentials() -> None:
    auth = make(TokenServer())
    with pytest.raises(UnauthorizedError, match=r"upstream hub: .*none are configured"):
        await auth.authorize('Basic realm="r"', PULL_A)


@pytest.mark.anyio
async def test_bearer_preferred_over_basic() -> None:
    server = TokenServer()
    auth = make(server, credentials=True)
    got = await auth.authorize(f'Basic realm="r", {BEARER}', PULL_A)
    assert got == "Bearer tok1"


@pytest.mark.parametrize(
    ("header", "match"),
    [
        ('Digest realm="r", nonce="n"', "unsupported auth scheme"),
        ('Bearer realm="r', "malformed WWW-Authenticate"),
        ("", "empty"),
    ],
    ids=["digest", "unterminated", "empty"],
)
@pytest.mark.anyio
async def test_bad_challenges(header: str, match: str) -> None:
    with pytest.raises(BadDataError, match=match):
        await make(TokenServer()).authorize(header, PULL_A)


@pytest.mark.anyio
async def test_cache_is_bounded() -> None:
    auth = make(TokenServer(), limits=AuthLimits(max_cached_scopes=2))
    for scope in ("repository:a:pull", "repository:b:pull", "repository:c:pull"):
        await auth.authorize(BEARER, scope)
    assert auth.cached_authorization("repository:a:pull") is None
    assert auth.cached_authorization("repository:b:pull") == "Bearer tok2"
    assert auth.cached_authorization("repository:c:pull") == "Bearer tok3"


def test_basic_header() -> None:
    assert basic_header("user", "pass") == "Basic dXNlcjpwYXNz"
    decoded = base64.b64decode(basic_header("jörg", "pä:ss").split()[1]).decode()
    assert decoded == "jörg:pä:ss"
    with pytest.raises(ValueError, match="cannot contain ':'"):
        basic_header("a:b", "c")


def test_constructor_checks_and_repr_hides_secrets() -> None:
    client = httpx.AsyncClient()
    with pytest.raises(ValueError, match="together"):
        UpstreamAuthenticator(client, "hub", username="bob")
    with pytest.raises(ValueError, match="empty"):
        UpstreamAuthenticator(client, "hub", username="", password="x")
    auth = UpstreamAuthenticator(client, "hub", username="bob", password=PASSWORD)
    assert auth.has_credentials
    assert PASSWORD not in repr(auth)
    assert not UpstreamAuthenticator(client, "hub").has_credentials


class FailingStream(httpx.AsyncByteStream):
    def __init__(self, exc: Exception) -> None:
        self.exc = exc
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"tok'
        raise self.exc

    async def aclose(self) -> None:
        self.closed = True


@pytest.mark.parametrize(
    ("exc", "match", "is_timeout"),
    [
        (httpx.ReadTimeout("slow"), "timed out", True),
        (httpx.RemoteProtocolError("peer closed"), "failed while reading", False),
    ],
    ids=["read-timeout", "protocol-error"],
)
@pytest.mark.anyio
async def test_errors_while_reading_body(exc: Exception, match: str, is_timeout: bool) -> None:
    stream = FailingStream(exc)

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=stream)

    with pytest.raises(UpstreamUnavailableError, match=match) as info:
        await make(handler).authorize(BEARER, PULL_A)
    assert info.value.timeout is is_timeout
    assert stream.closed


@pytest.mark.anyio
@pytest.mark.parametrize("location", ["javascript:alert(1)", "mailto:x@example.com"])
async def test_a_token_server_redirecting_to_a_non_url_is_unavailable(location: str) -> None:
    # httpx parses the Location of any 3xx and raises InvalidURL (no HTTPError) for these:
    # that must stay the token server's failure, not become a 500.
    async def redirecting(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": location})

    with pytest.raises(UpstreamUnavailableError, match="unreachable \\(InvalidURL\\)"):
        await make(redirecting).authorize(BEARER, PULL_A)


@pytest.mark.anyio
async def test_a_token_server_trickling_its_answer_hits_the_deadline() -> None:
    # Each part arrives well within any per-read timeout; the whole never ends.
    class Trickle(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            while True:
                await asyncio.sleep(0.02)
                yield b" "

    async def trickling(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Trickle())

    auth = make(trickling, limits=AuthLimits(request_timeout=0.2))
    started = asyncio.get_running_loop().time()
    with pytest.raises(UpstreamUnavailableError, match="timed out") as info:
        await auth.authorize(BEARER, PULL_A)
    assert info.value.timeout
    assert asyncio.get_running_loop().time() - started < 1.0
