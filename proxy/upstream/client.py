"""The registry client: one per upstream. Auth, Accept forwarding, streaming, bounded reads.

Ownership: ``open()`` returns a *streaming* ``httpx.Response``; the caller closes it
(``await response.aclose()``) on every path. ``read_bounded()`` closes it itself.

Time: httpx's read timeout is per socket read, so a registry that trickles a byte every few
seconds never trips it. Every exchange therefore also has a deadline
(``limits.request_deadline``) from sending the request: the response headers must arrive
before it (every request, every redirect hop), and a size-bounded body too
(``read_bounded``). Streamed blob bodies have no total deadline (a large blob legitimately
takes long); proxy/http/streaming.py holds them to a minimum rate instead.

Redirects are followed only where proxy/upstream/redirects.py allows (SSRF).
"""

from __future__ import annotations

import importlib.util
import logging
import socket
import ssl
import sys
import weakref
from collections.abc import Mapping, Sequence
from typing import NoReturn, Protocol

import anyio
import certifi
import httpcore
import httpx

from proxy.errors import (
    BadDataError,
    OversizeError,
    UpstreamContentError,
    UpstreamUnavailableError,
)
from proxy.metrics import UPSTREAM_ERRORS
from proxy.settings import LimitSettings, UpstreamSettings
from proxy.upstream.challenge import parse_www_authenticate
from proxy.upstream.redirects import (
    METADATA_KINDS,
    RedirectPolicy,
    RedirectRefusedError,
    address_kind,
    display_host,
    resolve_location,
)

log = logging.getLogger("trustproxy.upstream")


def _cache_missing_sniffio() -> None:
    """httpcore runs ``import sniffio`` each time it takes one of its locks (several per
    request) and falls back to asyncio when that fails. anyio 4 no longer installs
    sniffio, and a failed import is not cached: each one searched every directory of
    ``sys.path`` again, about 0.1 ms of CPU, 1.5 ms per cold manifest-by-tag request
    (profiled). ``None`` in ``sys.modules`` makes the import fail at once, which is what
    httpcore already gets; an installed sniffio is left alone."""
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


_cache_missing_sniffio()

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


class Resolver(Protocol):
    """Name → addresses, as the connection will see them (the system resolver by default)."""

    async def __call__(self, host: str, port: int) -> Sequence[str]: ...


async def system_resolver(host: str, port: int) -> Sequence[str]:
    """The addresses getaddrinfo(3) gives for ``host`` (what httpcore connects to).

    Raises OSError when the name does not resolve."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


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
        *,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.settings = settings
        self.limits = limits
        self._http = http
        self._auth = auth
        self._resolver = resolver
        self.redirect_policy = RedirectPolicy.build(
            settings.url,
            settings.allowed_redirect_hosts,
            allow_http_downgrade=settings.insecure_redirect_to_http,
        )
        # When each open response's exchange must be over (see the module docstring).
        self._deadlines: weakref.WeakKeyDictionary[httpx.Response, float] = (
            weakref.WeakKeyDictionary()
        )

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
        content: bytes | None = None,
    ) -> httpx.Response:
        """Send a request upstream and return the streaming response (caller closes it).

        ``content``: a request body (the registry writes of ``trust migrate``; the proxy
        itself never writes).

        In passthrough mode ``client_authorization`` is sent and a 401 is returned as is;
        otherwise a 401 challenge is answered once with the proxy's own credentials.
        Raises UpstreamUnavailableError when the registry cannot be reached or times out.
        """
        headers = {k: v for k, v in (client_headers or {}).items()
                   if k.lower() in FORWARDED_REQUEST_HEADERS}  # fmt: skip
        if content is not None and client_headers and "content-type" in client_headers:
            headers["content-type"] = client_headers["content-type"]
        # Exact bytes matter (manifests are hashed): never let a hop compress them.
        headers["accept-encoding"] = "identity"
        url = f"{self.settings.url}{path}" + (f"?{query}" if query else "")
        deadline = anyio.current_time() + self.limits.request_deadline
        passthrough = self.settings.auth.mode == "passthrough"
        if passthrough:
            if client_authorization:
                headers["authorization"] = client_authorization
        elif self._auth is not None and scope is not None:
            cached = self._auth.cached_authorization(scope)
            if cached:
                headers["authorization"] = cached

        response = await self._send(method, url, headers, deadline, content)
        if response.status_code == 401 and not passthrough and self._auth and scope:
            challenge = response.headers.get("www-authenticate")
            if challenge:
                await response.aclose()
                await self._check_realm(challenge, deadline)
                headers["authorization"] = await self._auth.authorize(
                    challenge, scope, rejected=headers.get("authorization")
                )
                response = await self._send(method, url, headers, deadline, content)
        if follow_redirects and response.status_code in REDIRECT_STATUSES:
            response = await self._follow(response, method, headers, deadline)
        self._deadlines[response] = deadline
        return response

    async def _follow(
        self, response: httpx.Response, method: str, headers: dict[str, str], deadline: float
    ) -> httpx.Response:
        """Follow ``response``'s redirects where the policy allows; the final response."""
        seen = {str(response.request.url)}
        hops = 0
        while response.status_code in REDIRECT_STATUSES:
            location = response.headers.get("location")
            if not location:
                return response  # the caller answers a 3xx without Location as an error
            source = response.request.url
            await response.aclose()
            try:
                target = resolve_location(source, location)
            except UpstreamContentError:
                self._refuse("", "the Location is not a URL")
            hops += 1
            if str(target) in seen:
                self._refuse(display_host(target), "a redirect loop")
            if hops > self.limits.max_redirects:
                limit = self.limits.max_redirects
                self._refuse(display_host(target), f"more than {limit} redirects")
            seen.add(str(target))
            verdict = self.redirect_policy.check(source, target)
            if not verdict.allowed:
                self._refuse(display_host(target), verdict.reason)
            if verdict.vet_addresses:
                await self._vet_addresses(target, deadline)
            if source.scheme == "https" and target.scheme == "http":
                # Allowed by insecure_redirect_to_http; unsafe options log on every use.
                log.warning("upstream %s: following an https to http redirect to %s",
                            self.name, display_host(target))  # fmt: skip
            # Credentials for the registry never go to another origin (blob storage).
            if _origin(target) != _origin(source):
                headers.pop("authorization", None)
            response = await self._send(
                "HEAD" if method == "HEAD" else "GET", str(target), headers, deadline
            )
            if verdict.vet_addresses:
                await self._vet_peer(response, target)
        return response

    async def _vet_addresses(
        self, target: httpx.URL, deadline: float, *, refused: frozenset[str] | None = None
    ) -> None:
        """A host allowed by a wildcard only: every address it resolves to must be global
        (a public-looking name can point at 127.0.0.1 or a metadata service). ``refused``:
        only these address kinds are refused (None: every non-global one)."""
        host = target.raw_host.decode("ascii", "replace")
        port = target.port or (443 if target.scheme == "https" else 80)
        try:
            with anyio.fail_after(max(0.0, deadline - anyio.current_time())):
                addresses = await self._resolver(host, port)
        except TimeoutError as e:
            UPSTREAM_ERRORS.labels(self.name, "timeout").inc()
            what = f"resolving redirect host {display_host(target)} timed out"
            raise UpstreamUnavailableError(self.name, what, timeout=True) from e
        except OSError as e:
            UPSTREAM_ERRORS.labels(self.name, "unreachable").inc()
            raise UpstreamUnavailableError(
                self.name, f"redirect host {display_host(target)} does not resolve"
            ) from e
        for address in addresses:
            kind = address_kind(address)
            if kind is not None and (refused is None or kind in refused):
                reason = f"resolves to a non-public address ({kind})"
                self._refuse(display_host(target), reason, realm=refused is not None)

    async def _vet_peer(
        self, response: httpx.Response, target: httpx.URL, *, refused: frozenset[str] | None = None
    ) -> None:
        """The address the connection really went to must be global too: DNS may answer
        differently for the connection than for the check above (rebinding). Checked
        before any byte of the body is read; the request itself has been sent."""
        stream = response.extensions.get("network_stream")
        peer = stream.get_extra_info("server_addr") if stream is not None else None
        if not peer:
            return  # a transport without sockets (tests); the resolver check stands
        kind = address_kind(str(peer[0]))
        if kind is not None and (refused is None or kind in refused):
            await response.aclose()
            reason = f"connected to a non-public address ({kind})"
            self._refuse(display_host(target), reason, realm=refused is not None)

    def _refuse(self, host: str, reason: str, *, realm: bool = False) -> NoReturn:
        what = "fetch the token realm at" if realm else "follow a redirect to"
        error = RedirectRefusedError(self.name, host, reason, what=what)
        self._count_refusal()
        log.warning("%s", error, extra={"upstream": self.name, "redirect_host": host})
        raise error

    def _count_refusal(self) -> None:
        UPSTREAM_ERRORS.labels(self.name, "redirect_refused").inc()

    async def _check_realm(self, challenge: str, deadline: float) -> None:
        """The token service a Bearer challenge names is where the authenticator will go
        (with the proxy's credentials, if any): it is held to ``check_realm`` first.
        A challenge that does not parse is left to the authenticator (BadDataError)."""
        try:
            bearer = next(
                (c for c in parse_www_authenticate(challenge) if c.is_scheme("bearer")), None
            )
        except BadDataError:
            return
        if bearer is None or not bearer.realm:
            return
        try:
            target = httpx.URL(bearer.realm)
        except httpx.InvalidURL:
            return  # the authenticator refuses it with its own message
        verdict = self.redirect_policy.check_realm(target)
        if not verdict.allowed:
            self._refuse(display_host(target), verdict.reason, realm=True)
        if verdict.vet_addresses:
            await self._vet_addresses(target, deadline, refused=METADATA_KINDS)

    async def open_url(self, url: str, *, authorization: str | None) -> httpx.Response:
        """GET a token service the upstream named (passthrough: the client's credentials go
        there and the answer goes back to the client), streaming.

        The URL comes from the upstream's challenge, so it is checked like a redirect
        (``RedirectPolicy.check_realm``). Raises RedirectRefusedError when it may not be
        fetched, UpstreamUnavailableError when it cannot."""
        try:
            target = httpx.URL(url)
        except httpx.InvalidURL:
            self._refuse("", "not a URL", realm=True)
        verdict = self.redirect_policy.check_realm(target)
        if not verdict.allowed:
            self._refuse(display_host(target), verdict.reason, realm=True)
        deadline = anyio.current_time() + self.limits.request_deadline
        if verdict.vet_addresses:
            await self._vet_addresses(target, deadline, refused=METADATA_KINDS)
        headers = {"accept-encoding": "identity"}
        if authorization:
            headers["authorization"] = authorization
        response = await self._send("GET", url, headers, deadline)
        if verdict.vet_addresses:
            await self._vet_peer(response, target, refused=METADATA_KINDS)
        self._deadlines[response] = deadline
        return response

    async def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        deadline: float,
        content: bytes | None = None,
    ) -> httpx.Response:
        request = self._http.build_request(method, url, headers=headers, content=content)
        try:
            # The deadline covers the response headers: a registry trickling them byte by
            # byte is cut here (httpcore closes the half-read connection on cancellation).
            with anyio.fail_after(max(0.0, deadline - anyio.current_time())):
                response = await self._http.send(request, stream=True)
        except (httpx.TimeoutException, TimeoutError) as e:
            UPSTREAM_ERRORS.labels(self.name, "timeout").inc()
            raise UpstreamUnavailableError(self.name, "timed out", timeout=True) from e
        except httpx.HTTPError as e:
            UPSTREAM_ERRORS.labels(self.name, "unreachable").inc()
            raise UpstreamUnavailableError(self.name, _describe(e)) from e
        except httpx.InvalidURL as e:
            # httpx parses every 3xx's Location (for response.next_request) even when not
            # following; "javascript:x" or "mailto:x" raise InvalidURL, which is no
            # HTTPError: without this a registry could turn any request into a 500. The
            # request URL itself was built above, outside this try.
            UPSTREAM_ERRORS.labels(self.name, "bad_response").inc()
            raise UpstreamUnavailableError(
                self.name, f"answered with a redirect Location that is not a URL ({e})"
            ) from e
        if "transfer-encoding" in response.headers and "content-length" in response.headers:
            # Framed two ways (RFC 9112 6.1: "ought to be handled as an error"). The body is
            # read by Transfer-Encoding; a Content-Length relayed with it would describe a
            # body the client never gets, and a short bad blob could look complete.
            await response.aclose()
            UPSTREAM_ERRORS.labels(self.name, "bad_response").inc()
            raise UpstreamContentError(
                f"upstream {self.name} answered with both Content-Length and Transfer-Encoding"
            )
        return response

    async def read_bounded(self, response: httpx.Response, limit: int, what: str) -> bytes:
        """Read a streaming body up to ``limit`` bytes, then close the response.

        Raises OversizeError past the limit (checked while reading, so an endless body costs
        at most ``limit`` bytes), UpstreamUnavailableError if the stream breaks or the
        exchange's deadline passes (``timeout=True``: a 504).
        """
        deadline = self._deadlines.pop(response, None)
        if deadline is None:  # a response this client did not open: a full budget
            deadline = anyio.current_time() + self.limits.request_deadline
        try:
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise OversizeError(what, limit)
            chunks: list[bytes] = []
            size = 0
            with anyio.fail_after(max(0.0, deadline - anyio.current_time())):
                async for chunk in response.aiter_raw():
                    size += len(chunk)
                    if size > limit:
                        raise OversizeError(what, limit)
                    chunks.append(chunk)
            return b"".join(chunks)
        except (httpx.TimeoutException, TimeoutError) as e:
            UPSTREAM_ERRORS.labels(self.name, "timeout").inc()
            raise UpstreamUnavailableError(
                self.name, f"timed out reading the {what}", timeout=True
            ) from e
        except httpx.HTTPError as e:
            UPSTREAM_ERRORS.labels(self.name, "broken").inc()
            raise UpstreamUnavailableError(self.name, f"{what}: {_describe(e)}") from e
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


def _describe(e: httpx.HTTPError) -> str:
    # httpx messages can be empty (e.g. RemoteProtocolError); name the class at least.
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
