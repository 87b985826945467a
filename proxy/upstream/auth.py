"""Authenticating the proxy to one upstream registry: Basic, and the Docker token flow.

The flow (distribution ``docs/spec/auth/token.md``): a request without (valid)
credentials gets a 401 with ``WWW-Authenticate: Bearer realm=...,service=...,scope=...``;
the client GETs ``realm?service=...&scope=...`` (with Basic credentials when it has any),
receives ``{"token": ..., "expires_in": ...}`` and retries with ``Authorization: Bearer``.

:class:`UpstreamAuthenticator` keeps one token per scope until shortly before it
expires, and runs one token fetch per scope at a time however many requests hit the 401
together. It does no registry I/O itself: the caller sends the request, hands the 401's
header to :meth:`UpstreamAuthenticator.authorize` and retries once.

Secrets (passwords, tokens) never appear in logs, exception messages or ``repr``.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import httpx

from proxy.errors import (
    BadDataError,
    OversizeError,
    UnauthorizedError,
    UpstreamUnavailableError,
)
from proxy.upstream.challenge import Challenge, parse_www_authenticate

__all__ = [
    "AuthLimits",
    "UpstreamAuthenticator",
    "UpstreamUnauthorizedError",
    "basic_header",
]

log = logging.getLogger(__name__)


class UpstreamUnauthorizedError(UnauthorizedError):
    """The upstream (or its token server) refused the proxy's credentials, or wants
    credentials and none are configured. ``upstream`` names it.

    A subclass of UnauthorizedError so that one ``except`` catches every auth failure;
    the HTTP layer may still answer it differently from a client's bad password.
    """

    def __init__(self, upstream: str, message: str) -> None:
        self.upstream = upstream
        super().__init__(f"upstream {upstream}: {message}")


@dataclass(frozen=True)
class AuthLimits:
    """Bounds and timings of the token flow (seconds and bytes)."""

    max_token_response_bytes: int = 64 * 1024
    # Docker token spec: expires_in "defaults to 60 seconds" and "a token should never be
    # returned with less than 60 seconds to live"; docker's client raises shorter values
    # to 60 (registry/client/auth/session.go), and distribution accepts tokens 60 s past
    # their exp (token.Leeway), so the floor is safe against distribution.
    default_expires_in: float = 60.0
    min_expires_in: float = 60.0
    # Stop using a token this long before it expires: the request using it must still
    # reach the registry in time.
    expiry_skew: float = 10.0
    max_cached_scopes: int = 1024
    # The whole token exchange (headers and body): httpx's read timeout is per socket read,
    # and a token server trickling its answer would otherwise hold every request waiting
    # for the token.
    request_timeout: float = 60.0


def basic_header(username: str, password: str) -> str:
    """``Basic base64(username:password)`` (RFC 7617, UTF-8).

    Raises ValueError when the username contains ':' (Basic cannot encode it).
    """
    if ":" in username:
        raise ValueError("a Basic username cannot contain ':'")
    raw = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass
class _Entry:
    value: str
    expires_at: float


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _header_safe(token: str) -> bool:
    # Tokens are JWTs or opaque visible-ASCII strings; anything else (CR, LF, spaces)
    # would be header injection or an httpx error later.
    return bool(token) and all(0x21 <= ord(c) <= 0x7E for c in token)


class UpstreamAuthenticator:
    """Credentials and cached tokens for one upstream registry.

    ``client`` belongs to the caller (who closes it); ``upstream`` names the registry in
    errors; ``username``/``password`` are plain strings the config layer resolved.
    ``clock`` returns monotonic seconds. ``insecure_http_realm`` allows a token endpoint
    on plain http off loopback (tokens and passwords would cross the network in clear).
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        upstream: str,
        *,
        username: str | None = None,
        password: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        limits: AuthLimits | None = None,
        insecure_http_realm: bool = False,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("username and password must be given together")
        if username == "":
            raise ValueError("username must not be empty")
        self._client = client
        self.upstream = upstream
        self._username = username
        self._basic = (
            basic_header(username, password)
            if username is not None and password is not None
            else None
        )
        self._clock = clock
        self._limits = limits or AuthLimits()
        self._insecure_http_realm = insecure_http_realm
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[str]] = {}
        # Set once the upstream answered with a Basic challenge: from then on every request
        # carries Basic up front instead of paying a 401 round trip each time.
        self._basic_upstream = False

    def __repr__(self) -> str:
        who = "with credentials" if self._basic else "anonymous"
        return f"<UpstreamAuthenticator {self.upstream} {who}>"

    @property
    def has_credentials(self) -> bool:
        return self._basic is not None

    def cached_authorization(self, scope: str) -> str | None:
        """A still-valid ``Authorization`` value for ``scope``, without I/O, or None."""
        if self._basic_upstream and self._basic is not None:
            return self._basic
        entry = self._cache.get(scope)
        if entry is None:
            return None
        if self._clock() >= entry.expires_at:
            del self._cache[scope]
            return None
        self._cache.move_to_end(scope)
        return entry.value

    async def authorize(
        self, challenge_header: str, scope: str, *, rejected: str | None = None
    ) -> str:
        """The ``Authorization`` value to retry with after a 401 carrying ``challenge_header``.

        ``scope`` is what the request needs (``repository:<name>:pull``, several separated
        by spaces, or "" for ``/v2/``); the challenge's own scope wins when it has one.
        ``rejected`` is the Authorization value the 401 answered (None when the request
        carried none): a cached token other than it is returned without a fetch, which
        absorbs a burst of 401s that raced one token fetch; the rejected one is dropped.

        Raises UpstreamUnauthorizedError (no or refused credentials),
        UpstreamUnavailableError (token server unreachable, timed out, HTTP error status),
        BadDataError (malformed challenge or token response; OversizeError when the
        response is over the limit).
        """
        challenges = parse_www_authenticate(challenge_header)
        bearer = next((c for c in challenges if c.is_scheme("bearer")), None)
        if bearer is not None:
            return await self._authorize_bearer(bearer, scope, rejected)
        if any(c.is_scheme("basic") for c in challenges):
            return self._authorize_basic(rejected)
        schemes = ", ".join(sorted({c.scheme for c in challenges}))
        raise BadDataError(f"upstream {self.upstream}: unsupported auth scheme(s): {schemes}")

    def _authorize_basic(self, rejected: str | None) -> str:
        if self._basic is None:
            raise UpstreamUnauthorizedError(
                self.upstream, "registry asks for Basic credentials and none are configured"
            )
        if rejected == self._basic:
            # Retrying the same credentials would only loop.
            raise UpstreamUnauthorizedError(self.upstream, "registry rejected the credentials")
        self._basic_upstream = True
        return self._basic

    async def _authorize_bearer(self, bearer: Challenge, scope: str, rejected: str | None) -> str:
        # A Bearer challenge means Basic-up-front is (no longer) what this upstream wants.
        self._basic_upstream = False
        cached = self.cached_authorization(scope)
        if cached is not None:
            if cached != rejected:
                return cached
            self._cache.pop(scope, None)
        task = self._inflight.get(scope)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(bearer, scope))
            self._inflight[scope] = task
            task.add_done_callback(lambda t: self._fetch_done(scope, t))
        # shield: a cancelled caller must not cancel the fetch other callers wait for.
        return await asyncio.shield(task)

    def _fetch_done(self, scope: str, task: asyncio.Task[str]) -> None:
        if self._inflight.get(scope) is task:
            del self._inflight[scope]
        if not task.cancelled():
            # Mark the exception retrieved: when every waiter was cancelled nobody else
            # will, and asyncio would log "Task exception was never retrieved".
            task.exception()

    def _realm_url(self, bearer: Challenge) -> httpx.URL:
        realm = bearer.realm
        if not realm:
            raise BadDataError(f"upstream {self.upstream}: Bearer challenge without realm")
        try:
            url = httpx.URL(realm)
        except httpx.InvalidURL as e:
            raise BadDataError(f"upstream {self.upstream}: invalid token realm URL") from e
        if url.scheme not in ("http", "https") or not url.host:
            raise BadDataError(f"upstream {self.upstream}: token realm must be an http(s) URL")
        if url.userinfo:
            raise BadDataError(f"upstream {self.upstream}: token realm must not hold userinfo")
        if url.scheme == "http" and not (_is_loopback(url.host) or self._insecure_http_realm):
            raise BadDataError(
                f"upstream {self.upstream}: token realm {url.host} is plain http; refusing to "
                "exchange credentials or tokens in clear"
            )
        return url

    async def _fetch(self, bearer: Challenge, scope: str) -> str:
        url = self._realm_url(bearer)
        params: list[tuple[str, str]] = []
        if bearer.service:
            params.append(("service", bearer.service))
        # One scope= per item, as docker does; distribution and Hub accept this form.
        params.extend(("scope", s) for s in (bearer.scopes or tuple(scope.split())))
        headers: dict[str, str] = {}
        if self._basic is not None and self._username is not None:
            params.append(("account", self._username))
            headers["Authorization"] = self._basic
        started = self._clock()
        body = await self._get_bounded(url, params, headers)
        token, expires_in = self._parse_token_response(body)
        ttl = max(expires_in, self._limits.min_expires_in)
        value = f"Bearer {token}"
        self._store(scope, _Entry(value, started + ttl - self._limits.expiry_skew))
        log.debug(
            "upstream %s: token for scope %r from %s, expires in %.0fs",
            self.upstream,
            scope,
            url.host,
            ttl,
        )
        return value

    def _store(self, scope: str, entry: _Entry) -> None:
        self._cache[scope] = entry
        self._cache.move_to_end(scope)
        while len(self._cache) > self._limits.max_cached_scopes:
            self._cache.popitem(last=False)

    async def _get_bounded(
        self, url: httpx.URL, params: list[tuple[str, str]], headers: dict[str, str]
    ) -> bytes:
        try:
            with anyio.fail_after(self._limits.request_timeout):
                return await self._get_bounded_unlimited(url, params, headers)
        except TimeoutError as e:
            where = f"token server {url.host}"
            raise UpstreamUnavailableError(self.upstream, f"{where} timed out", timeout=True) from e

    async def _get_bounded_unlimited(
        self, url: httpx.URL, params: list[tuple[str, str]], headers: dict[str, str]
    ) -> bytes:
        where = f"token server {url.host}"
        limit = self._limits.max_token_response_bytes
        # Merge, not replace: a realm may carry its own query (build_request(params=)
        # would drop it).
        request = self._client.build_request(
            "GET", url.copy_merge_params(tuple(params)), headers=headers
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException as e:
            raise UpstreamUnavailableError(self.upstream, f"{where} timed out", timeout=True) from e
        except (httpx.HTTPError, httpx.InvalidURL) as e:
            # InvalidURL: httpx parses a 3xx's Location even when not following it, and
            # "javascript:x" raises that (no HTTPError): still the token server's fault.
            raise UpstreamUnavailableError(
                self.upstream, f"{where} unreachable ({type(e).__name__})"
            ) from e
        try:
            status = response.status_code
            if status in (401, 403):
                what = "the configured credentials" if self._basic else "anonymous access"
                raise UpstreamUnauthorizedError(
                    self.upstream, f"{where} refused {what} (HTTP {status})"
                )
            if status != 200:
                raise UpstreamUnavailableError(self.upstream, f"{where} answered HTTP {status}")
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise OversizeError(f"token response from upstream {self.upstream}", limit)
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                # Counted after decoding, so a gzip bomb is bounded too.
                if size > limit:
                    raise OversizeError(f"token response from upstream {self.upstream}", limit)
                chunks.append(chunk)
            return b"".join(chunks)
        except httpx.TimeoutException as e:
            raise UpstreamUnavailableError(self.upstream, f"{where} timed out", timeout=True) from e
        except httpx.HTTPError as e:
            raise UpstreamUnavailableError(
                self.upstream, f"{where} failed while reading ({type(e).__name__})"
            ) from e
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()

    def _parse_token_response(self, body: bytes) -> tuple[str, float]:
        def bad(message: str) -> BadDataError:
            return BadDataError(f"upstream {self.upstream}: token response {message}")

        try:
            doc = json.loads(body)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
            raise bad("is not JSON") from e
        if not isinstance(doc, dict):
            raise bad("is not a JSON object")
        # Spec: "token"; OAuth2-compatible servers send "access_token"; docker takes
        # "token" and falls back to "access_token" when it is empty.
        token = doc.get("token") or doc.get("access_token")
        if not isinstance(token, str) or not _header_safe(token):
            raise bad("has no usable token")
        raw = doc.get("expires_in")
        if raw is None:
            return token, self._limits.default_expires_in
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
            raise bad("has a non-numeric expires_in")
        return token, float(raw) if raw > 0 else self._limits.default_expires_in
