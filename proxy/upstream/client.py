"""The registry client: one per upstream. Auth, Accept forwarding, streaming, bounded reads.

Ownership: ``open()`` returns a *streaming* ``httpx.Response``; the caller closes it
(``await response.aclose()``) on every path. ``read_bounded()`` closes it itself.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import urljoin, urlsplit

import certifi
import httpcore
import httpx

from proxy.errors import OversizeError, UpstreamUnavailableError
from proxy.metrics import UPSTREAM_ERRORS
from proxy.settings import LimitSettings, UpstreamSettings

# Request headers a client may send that the registry needs to answer correctly. Accept
# decides the manifest type (without it distribution converts schema2 to schema1 or 404s
# OCI content); Range/If-* make blob and cache semantics work. Anything else stays here.
FORWARDED_REQUEST_HEADERS = ("accept", "range", "if-none-match", "if-modified-since", "if-range")

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

#: Largest read from an upstream socket. httpcore reads 64 KiB at a time; the event loop
#: hands over up to 256000 bytes per socket read (uvloop; 256 KiB for asyncio), which anyio
#: then cuts into 64 KiB slices, copying the rest each time. Reading up to what the loop
#: delivers makes one body chunk per socket read: 4x fewer trips through httpx, httpcore,
#: h11 and the ASGI send chain, no re-slicing, and measured ~1.3x blob throughput and
#: ~20% less peak RSS under 50 concurrent streams (docs/performance-notes.md). Memory
#: stays bounded: a read returns at most one loop chunk, and read_bounded checks the size
#: after each one.
UPSTREAM_READ_BYTES = 1024 * 1024


def _set_read_size(size: int) -> None:
    """httpcore has no per-client setting for this, only the class attribute (the same for
    every httpcore client in the process: ours all want it)."""
    conn = getattr(httpcore, "AsyncHTTP11Connection", None)
    if conn is not None and getattr(conn, "READ_NUM_BYTES", 0) < size:
        conn.READ_NUM_BYTES = size


_set_read_size(UPSTREAM_READ_BYTES)


class Authenticator(Protocol):
    """What the client needs from upstream auth (see proxy/upstream/auth.py)."""

    def cached_authorization(self, scope: str) -> str | None: ...

    async def authorize(
        self, challenge_header: str, scope: str, *, rejected: str | None = None
    ) -> str: ...


def ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """Public CAs plus an optional private one: blob redirects often go to public storage."""
    ctx = ssl.create_default_context(cafile=certifi.where())
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    return ctx


def make_http_client(
    limits: LimitSettings, ca_file: str | None, *, base_url: str = ""
) -> httpx.AsyncClient:
    """An httpx client with the proxy's timeouts and pool limits.

    trust_env=False: proxies and CA bundles come from trustproxy's config, not from
    whatever HTTP(S)_PROXY/SSL_CERT_FILE the process happens to inherit.
    """
    return httpx.AsyncClient(
        base_url=base_url,
        verify=ssl_context(ca_file),
        timeout=httpx.Timeout(
            connect=limits.connect_timeout,
            read=limits.read_timeout,
            write=limits.read_timeout,
            # Waiting for a free pooled connection is queueing behind busy requests, not a
            # dead upstream: give it the read timeout, not the connect timeout.
            pool=limits.read_timeout,
        ),
        limits=httpx.Limits(
            max_connections=limits.max_connections or None,
            max_keepalive_connections=max(10, limits.max_connections // 4),
        ),
        follow_redirects=False,
        trust_env=False,
    )


class UpstreamClient:
    """Talks to one upstream registry on behalf of the proxy."""

    def __init__(
        self,
        settings: UpstreamSettings,
        limits: LimitSettings,
        http: httpx.AsyncClient,
        auth: Authenticator | None,
    ) -> None:
        self.settings = settings
        self.limits = limits
        self._http = http
        self._auth = auth

    @property
    def name(self) -> str:
        return self.settings.name

    async def aclose(self) -> None:
        await self._http.aclose()

    async def open(
        self,
        method: str,
        path: str,
        *,
        scope: str | None,
        client_headers: Mapping[str, str] | None = None,
        client_authorization: str | None = None,
        query: str = "",
        follow_redirects: bool = False,
    ) -> httpx.Response:
        """Send a request upstream and return the streaming response (caller closes it).

        In passthrough mode ``client_authorization`` is sent and a 401 is returned as is;
        otherwise a 401 challenge is answered once with the proxy's own credentials.
        Raises UpstreamUnavailableError when the registry cannot be reached or times out.
        """
        headers = {k: v for k, v in (client_headers or {}).items()
                   if k.lower() in FORWARDED_REQUEST_HEADERS}  # fmt: skip
        # Exact bytes matter (manifests are hashed): never let a hop compress them.
        headers["accept-encoding"] = "identity"
        url = f"{self.settings.url}{path}" + (f"?{query}" if query else "")
        passthrough = self.settings.auth.mode == "passthrough"
        if passthrough:
            if client_authorization:
                headers["authorization"] = client_authorization
        elif self._auth is not None and scope is not None:
            cached = self._auth.cached_authorization(scope)
            if cached:
                headers["authorization"] = cached

        response = await self._send(method, url, headers)
        if response.status_code == 401 and not passthrough and self._auth and scope:
            challenge = response.headers.get("www-authenticate")
            if challenge:
                await response.aclose()
                headers["authorization"] = await self._auth.authorize(
                    challenge, scope, rejected=headers.get("authorization")
                )
                response = await self._send(method, url, headers)

        hops = 0
        while follow_redirects and response.status_code in REDIRECT_STATUSES:
            location = response.headers.get("location")
            if not location:
                break
            hops += 1
            await response.aclose()
            if hops > self.limits.max_redirects:
                raise UpstreamUnavailableError(
                    self.name, f"more than {self.limits.max_redirects} redirects"
                )
            target = urljoin(str(response.request.url), location)
            # Credentials for the registry never go to another origin (blob storage).
            if _origin(target) != _origin(url):
                headers.pop("authorization", None)
            url = target
            response = await self._send("HEAD" if method == "HEAD" else "GET", url, headers)
        return response

    async def open_url(self, url: str, *, authorization: str | None) -> httpx.Response:
        """GET an absolute URL (a token service) with the client's credentials, streaming."""
        headers = {"accept-encoding": "identity"}
        if authorization:
            headers["authorization"] = authorization
        return await self._send("GET", url, headers)

    async def _send(self, method: str, url: str, headers: dict[str, str]) -> httpx.Response:
        request = self._http.build_request(method, url, headers=headers)
        try:
            return await self._http.send(request, stream=True)
        except httpx.TimeoutException as e:
            UPSTREAM_ERRORS.labels(self.name, "timeout").inc()
            raise UpstreamUnavailableError(self.name, "timed out", timeout=True) from e
        except httpx.HTTPError as e:
            UPSTREAM_ERRORS.labels(self.name, "unreachable").inc()
            raise UpstreamUnavailableError(self.name, _describe(e)) from e

    async def read_bounded(self, response: httpx.Response, limit: int, what: str) -> bytes:
        """Read a streaming body up to ``limit`` bytes, then close the response.

        Raises OversizeError past the limit (checked while reading, so an endless body costs
        at most ``limit`` bytes), UpstreamUnavailableError if the stream breaks.
        """
        try:
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise OversizeError(what, limit)
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_raw():
                size += len(chunk)
                if size > limit:
                    raise OversizeError(what, limit)
                chunks.append(chunk)
            return b"".join(chunks)
        except httpx.TimeoutException as e:
            raise UpstreamUnavailableError(self.name, "timed out", timeout=True) from e
        except httpx.HTTPError as e:
            raise UpstreamUnavailableError(self.name, _describe(e)) from e
        finally:
            await response.aclose()


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _describe(e: httpx.HTTPError) -> str:
    # httpx messages can be empty (e.g. RemoteProtocolError); name the class at least.
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
