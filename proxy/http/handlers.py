"""The pull side of the OCI Distribution API, proxied. One function per endpoint.

Routing (``dispatch``) → client auth → endpoint. Every TrustproxyError raised below becomes
an OCI error response in ``proxy/http/errors.py``; nothing here builds error bodies by hand
except for relaying the upstream's own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from proxy.digests import digest_of, verify_digest
from proxy.errors import (
    DigestMismatchError,
    NotSignedError,
    TrustproxyError,
    UnsupportedError,
    UpstreamContentError,
    UpstreamUnavailableError,
)
from proxy.http.client_input import check_forwarded_headers
from proxy.http.errors import API_VERSION_HEADER, oci_error_response, response_for_exception
from proxy.http.relay import (
    error_body_for_client,
    range_not_satisfiable,
    relayed_headers,
    rewrite_link,
    whole_blob_answer,
)
from proxy.http.state import ProxyState
from proxy.http.streaming import UpstreamBodyResponse
from proxy.metrics import UPSTREAM_ERRORS
from proxy.reference import RepoPath, parse_repo_path
from proxy.routing import Route
from proxy.tag_pages import paginate, parse_page_query
from proxy.trust_gate import PassThrough, RequestContext, ServeDigest
from proxy.upstream.client import FORWARDED_REQUEST_HEADERS, REDIRECT_STATUSES, UpstreamClient
from proxy.upstream.reader import MANIFEST_MEDIA_TYPES, RegistryReader
from proxy.upstream.redirects import resolve_location

log = logging.getLogger("trustproxy.handlers")

MAX_UPSTREAM_PAGES = 1000
READ_ONLY = "trustproxy is a read-only pull proxy: push and delete are not supported"
PULL_METHODS = ("GET", "HEAD")

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY_REFERRERS = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


def proxy_state(request: Request) -> ProxyState:
    # Read once per request (in dispatch) and passed down: a SIGHUP reload swaps the
    # state, and one request must not mix two generations.
    state: ProxyState = request.app.state.proxy
    return state


async def dispatch(request: Request) -> Response | ASGIApp:
    """Entry point for everything under ``/v2``."""
    state = proxy_state(request)
    try:
        if request.method not in PULL_METHODS:
            raise UnsupportedError(READ_ONLY, allow=_allowed_methods(request.scope["path"]))
        if state.client_auth is not None:
            request.state.user = state.client_auth.check(request.headers.get("authorization"))
        check_forwarded_headers(request.scope["headers"])
        # The path as the server decoded it, which is also what routed the request here.
        # Not request.url.path: that goes through urlsplit, which silently drops tabs and
        # line breaks, so /v2/team/ap%09p/... would be served (and decided) as team/app.
        path: str = request.scope["path"]
        if path in ("/v2", "/v2/"):
            return await base(request, state)
        if path == "/v2/_catalog":
            return await catalog(request, state)
        repo_path = parse_repo_path(path)
        if repo_path is None:
            return oci_error_response(404, "NOT_FOUND", f"no such endpoint: {path[:200]}")
        if repo_path.kind == "uploads":
            raise UnsupportedError(READ_ONLY, allow="")
        route = state.router.route(repo_path.name)
        request.state.upstream = route.upstream.name
        client = state.clients[route.upstream.name]
        if repo_path.kind == "manifests":
            return await manifest(request, state, client, route, repo_path)
        if repo_path.kind == "blobs":
            return await blob(request, state, client, route, repo_path)
        if repo_path.kind == "tags":
            return await tags_list(request, state, client, route)
        return await referrers(request, state, client, route, repo_path)
    except TrustproxyError as exc:
        request.state.error = str(exc)
        response = response_for_exception(exc, basic_realm=state.basic_realm)
        if isinstance(exc, UnsupportedError):
            response.headers["Allow"] = exc.allow
        return response
    except Exception as exc:  # a bug of ours: still an OCI error body, logged with traceback
        request.state.error = f"internal error: {type(exc).__name__}"
        return response_for_exception(exc)


def _allowed_methods(path: str) -> str:
    """The Allow header of a 405 for ``path``: what the proxy serves there. An upload
    session serves nothing (RFC 9110 15.5.6: an empty Allow), everything else GET and HEAD."""
    try:
        parsed = parse_repo_path(path)
    except TrustproxyError:
        parsed = None
    return "" if parsed is not None and parsed.kind == "uploads" else ", ".join(PULL_METHODS)


# --------------------------------------------------------------------------- /v2/


async def token(request: Request) -> Response:
    """``GET /_trustproxy/token/<upstream>``: passthrough token relay (see token_relay.py)."""
    state = proxy_state(request)
    client = state.clients.get(request.path_params["upstream"])
    if client is None:
        return oci_error_response(404, "NOT_FOUND", "no such upstream")
    return await state.token_relay.relay(request, client)


async def base(request: Request, state: ProxyState) -> Response:
    """``GET /v2/``: the API version check, and where clients learn how to authenticate."""
    up = state.router.default or state.settings.upstreams[0]
    if up.auth.mode != "passthrough":
        # The proxy authenticates upstream itself (or client auth was checked above).
        return Response(b"{}", media_type="application/json", headers=API_VERSION_HEADER)
    client = state.clients[up.name]
    request.state.upstream = up.name
    resp = await client.open(
        "GET", "/v2/", scope=None, client_authorization=request.headers.get("authorization")
    )
    if resp.status_code == 200:
        await resp.aclose()
        return Response(b"{}", media_type="application/json", headers=API_VERSION_HEADER)
    return await relay_error(request, client, resp, state)


# --------------------------------------------------------------------------- manifests


async def manifest(
    request: Request, state: ProxyState, client: UpstreamClient, route: Route, rp: RepoPath
) -> Response:
    registry = registry_reader(request, state, client, route)
    ctx = request_context(request, state, client, route, registry)
    if rp.is_digest:
        await state.gate.decide_digest(route, rp.reference, ctx)
        return await manifest_by_digest(request, state, client, route, rp.reference, registry)
    decision = await state.gate.decide_tag(route, rp.reference, ctx)
    if isinstance(decision, PassThrough):
        return await manifest_unchecked(request, state, client, route, rp.reference)
    return await manifest_signed(request, state, client, route, rp.reference, decision, ctx,
                                 registry)  # fmt: skip


def registry_reader(
    request: Request, state: ProxyState, client: UpstreamClient, route: Route
) -> RegistryReader:
    """The registry as the requesting client (proxy/upstream/reader.py): what the gate
    reads to decide and what the handler serves under a signed digest both go through it,
    sharing the manifest cache and one read per digest in flight."""

    def remember(digest: str, body: bytes, headers: Mapping[str, str]) -> None:
        _remember(state, client, route, digest, body, headers)

    limits = state.settings.limits
    return RegistryReader(
        client,
        route,
        accept=lambda: _signed_fetch_headers(request),
        authorization=request.headers.get("authorization"),
        manifest_max_bytes=limits.manifest_max_bytes,
        cache=state.manifest_cache,
        flights=state.reader_flights,
        remember=remember,
        recheck_timeout=limits.connect_timeout,
    )


def request_context(
    request: Request,
    state: ProxyState,
    client: UpstreamClient,
    route: Route,
    registry: RegistryReader | None = None,
) -> RequestContext:
    """Who asked (for audit records), and the registry as that client, for the gate.

    A cache hit of the gate's reads needs no passthrough check: what the reader returns
    to the gate only informs it (the children of a signed index, which DigestAllowlist
    keeps for every client anyway) and never reaches the client; what is then served goes
    through ``manifest_to_serve`` / ``cached_for_client``, which ask the upstream on the
    client's behalf."""
    if registry is None:
        registry = registry_reader(request, state, client, route)
    peer = request.client
    return RequestContext(
        client=peer.host if peer is not None else None,
        user_agent=request.headers.get("user-agent"),
        user=getattr(request.state, "user", None),
        method=request.method,
        registry=registry,
    )


async def manifest_unchecked(
    request: Request, state: ProxyState, client: UpstreamClient, route: Route, tag: str
) -> Response:
    """No enforcement applies: relay what the upstream has under the tag."""
    resp = await _open(request, client, route, f"manifests/{tag}")
    if resp.status_code != 200:
        return await relay_error(request, client, resp, state)
    if request.method == "HEAD":
        await resp.aclose()
        return Response(status_code=200, headers=relayed_headers(resp.headers))
    body = await client.read_bounded(resp, state.settings.limits.manifest_max_bytes, "manifest")
    headers = relayed_headers(resp.headers, body_length=len(body))
    # Even unenforced, the digest header says what these bytes are, not what upstream claims.
    claimed = headers.get("docker-content-digest", "")
    headers["docker-content-digest"] = digest_of(
        body, "sha512" if claimed.startswith("sha512:") else "sha256"
    )
    return Response(body, headers=headers)


async def manifest_by_digest(
    request: Request,
    state: ProxyState,
    client: UpstreamClient,
    route: Route,
    digest: str,
    registry: RegistryReader,
) -> Response:
    """Content-addressed: the bytes must hash to the digest asked for, or nothing is served.

    Read with the client's own Accept, not through the reader's shared read: the registry
    negotiates by Accept even by digest (an OCI manifest is a 404 unless Accept names its
    type: see MANIFEST_MEDIA_TYPES), so the upstream's answer, 404 included, is this
    client's to relay, and is not one to share with clients that sent another Accept.
    For the same reason a cached entry stands in for the upstream only where the client
    names its type."""
    cached = await registry.cached_for_client(
        digest, accept=forwardable_headers(request, conditional=False),
        accepted=_accepted_types(request),
    )  # fmt: skip
    headers: Mapping[str, str]
    if cached is not None:
        body, headers = cached.body, cached.header_map
    else:
        resp = await _open(request, client, route, f"manifests/{digest}", force_get=True)
        if resp.status_code != 200:
            return await relay_error(request, client, resp, state)
        limit = state.settings.limits.manifest_max_bytes
        body = await client.read_bounded(resp, limit, "manifest")
        headers = resp.headers
    # A hit is checked like fresh bytes (style habit 2): same errors, same answer.
    verify_digest(body, digest, what=f"manifest {route.client_name}@{digest}")
    if cached is None:
        _remember(state, client, route, digest, body, headers)
    return _manifest_response(request, headers, body, digest)


async def manifest_signed(
    request: Request,
    state: ProxyState,
    client: UpstreamClient,
    route: Route,
    tag: str,
    decision: ServeDigest,
    ctx: RequestContext,
    registry: RegistryReader,
) -> Response:
    """Serve exactly the signed digest under the tag; HEAD is checked like GET.

    The upstream is asked by digest, never by tag (the tag may have moved to unsigned
    content), through the registry reader: the cached copy if this client may have it
    (served whatever the client's Accept: the read offers every manifest type, so the
    upstream answers with the stored bytes whatever the client sent), else one read for
    concurrent requests. The bytes are hashed there against the signed digest and length:
    the upstream's Docker-Content-Digest header is not evidence of anything. Bytes that
    are not the signed digest are an alert here (the reader knows no tag, rule or client).
    """
    what = f"manifest {route.client_name}:{tag}"
    try:
        served = await registry.manifest_to_serve(
            decision.digest, length=decision.length, what=what
        )
    except DigestMismatchError as e:
        _report_mismatch(state, client, route, tag, decision, e, ctx)
        raise
    if served is None:
        raise NotSignedError(
            f"tag {tag!r} is signed at {decision.digest}, which upstream {client.name} "
            "does not have"
        )
    if isinstance(served, httpx.Response):
        return await relay_error(request, client, served, state)
    return _manifest_response(request, served.headers, served.body, decision.digest)


def _remember(
    state: ProxyState,
    client: UpstreamClient,
    route: Route,
    digest: str,
    body: bytes,
    upstream_headers: Mapping[str, str],
) -> None:
    """Cache a manifest whose bytes were just verified against ``digest``."""
    headers = relayed_headers(upstream_headers)
    headers.pop("content-length", None)  # the body's own length is set when serving
    state.manifest_cache.put(client.name, route.upstream_name, digest, body, headers)


def _report_mismatch(
    state: ProxyState,
    client: UpstreamClient,
    route: Route,
    tag: str,
    decision: ServeDigest,
    mismatch: DigestMismatchError,
    ctx: RequestContext,
) -> None:
    """Signed digest, other bytes: a registry serving content it must not (or a trust
    entry whose length is wrong). Someone has to look: alert, count, record."""
    actual = mismatch.actual
    log.critical(
        "upstream %s sent bytes that do not match the signed digest: %s:%s expected %s "
        "(%s bytes), got %s (%d bytes)",
        client.name,
        route.repository,
        tag,
        decision.digest,
        decision.length if decision.length is not None else "?",
        actual,
        mismatch.size,
        extra={
            "repository": route.repository,
            "tag": tag,
            "expected_digest": decision.digest,
            "actual_digest": actual,
            "upstream": client.name,
        },
    )
    UPSTREAM_ERRORS.labels(client.name, "mismatch").inc()
    state.gate.report_mismatch(route, tag, decision.digest, actual, ctx)


def _manifest_response(
    request: Request, upstream_headers: Mapping[str, str], body: bytes, digest: str
) -> Response:
    headers = relayed_headers(upstream_headers, body_length=len(body))
    headers["docker-content-digest"] = digest  # the digest we computed, not the upstream's
    headers["etag"] = f'"{digest}"'
    if request.method == "HEAD":
        return Response(status_code=200, headers=headers)
    return Response(body, status_code=200, headers=headers)


# --------------------------------------------------------------------------- blobs


async def blob(
    request: Request, state: ProxyState, client: UpstreamClient, route: Route, rp: RepoPath
) -> ASGIApp:
    """Stream a blob in constant memory; Range honoured; storage redirects per config.
    With ``blobs: redirect``, a GET is answered with a redirect to where the upstream
    serves the blob (HEAD and errors as when streaming)."""
    redirect_get = client.settings.blobs == "redirect" and request.method == "GET"
    follow = client.settings.redirects == "follow" and not redirect_get
    resp = await _open(
        request, client, route, f"blobs/{rp.reference}", follow=follow, conditional=True
    )
    if redirect_get and resp.status_code in (200, 206):
        # The upstream serves the bytes itself: send the client there (the proxy's
        # credentials stay here; the client must be allowed to read the upstream). Asking
        # first keeps unknown blobs and upstream errors answered as when streaming.
        await resp.aclose()
        return Response(status_code=307, headers={"Location": str(resp.url)})
    if resp.status_code in REDIRECT_STATUSES and not follow:
        await resp.aclose()
        location = resp.headers.get("location", "")
        if not location:
            raise UpstreamContentError(f"upstream {client.name} redirected without a Location")
        # Relaying is safe for integrity: blobs are content-addressed and clients verify them.
        # Where it leads is the client's business (it fetches it, not the proxy), but only
        # http(s): a malformed Location is a 502, never a 500.
        target = resolve_location(resp.url, location)
        if target.scheme not in ("http", "https"):
            raise UpstreamContentError(f"upstream {client.name} redirected to a non-http URL")
        return Response(status_code=resp.status_code, headers={"Location": str(target)})
    if resp.status_code == 416:  # its body is the registry's to get wrong: not read
        await resp.aclose()
        return range_not_satisfiable(resp.headers, client.name)
    if resp.status_code not in (200, 206, 304):  # 304: the client's If-None-Match held
        return await relay_error(request, client, resp, state)
    headers = relayed_headers(resp.headers)
    if "docker-content-digest" in headers:
        headers["docker-content-digest"] = rp.reference  # what was asked for, not the claim
    send_body = request.method != "HEAD" and resp.status_code != 304
    # A whole blob is hashed on the way through, whatever was asked; a part only goes to a
    # client that asked for one (proxy/http/relay.py).
    try:
        ranged = "range" in forwardable_headers(request)
        whole = whole_blob_answer(resp.status_code, resp.headers, range_requested=ranged,
                                  upstream=client.name)  # fmt: skip
    except UpstreamContentError:
        await resp.aclose()
        raise
    verify = client.settings.verify_blobs and send_body and whole
    limits = state.settings.limits
    return UpstreamBodyResponse(
        resp,
        status_code=resp.status_code,
        headers=headers,
        send_body=send_body,
        expected_digest=rp.reference if verify else None,
        min_rate=limits.min_upstream_rate,
        grace=limits.read_timeout,
        upstream_name=client.name,
    )


# --------------------------------------------------------------------------- listings


async def tags_list(
    request: Request, state: ProxyState, client: UpstreamClient, route: Route
) -> Response:
    """Tag list, filtered by the gate and paginated here (``n``/``last``, Link to the proxy)."""
    n, last = parse_page_query(request.query_params.get("n"), request.query_params.get("last"))
    ctx = request_context(request, state, client, route)
    # The gate first: a repository no policy covers is refused before the upstream is
    # asked (its tags, or its errors, were relayed before the gate ran).
    if await state.gate.admit_listing(route, "tags", "", ctx):
        tags = await _all_upstream_tags(request, state, client, route)
        if isinstance(tags, Response):
            return tags
        visible = await state.gate.filter_tags(route, tags, ctx)
    else:
        visible = []
    page = paginate(visible, n=n, last=last, name=route.client_name)
    out = json.dumps({"name": route.client_name, "tags": page.tags}).encode()
    headers = {"Content-Type": "application/json", "Content-Length": str(len(out))}
    if page.next_link:
        headers["Link"] = page.next_link
    return Response(out if request.method == "GET" else b"", headers=headers)


async def _all_upstream_tags(
    request: Request, state: ProxyState, client: UpstreamClient, route: Route
) -> list[str] | Response:
    """Every tag upstream, following its own pagination; bounded in bytes and pages."""
    budget = state.settings.limits.tag_list_max_bytes
    tags: list[str] = []
    suffix, query = "tags/list", ""
    for _ in range(MAX_UPSTREAM_PAGES):
        resp = await _open(request, client, route, suffix, query=query, force_get=True)
        if resp.status_code != 200:
            return await relay_error(request, client, resp, state)
        link = resp.headers.get("link")
        body = await client.read_bounded(resp, budget, "tag list")
        budget -= len(body)
        tags.extend(_parse_tag_list(body, client.name))
        if not link or 'rel="next"' not in link.replace(" ", ""):
            return tags
        next_url = rewrite_link(link, route.upstream_name, route.upstream_name)
        if not next_url:
            # A partial list would silently hide tags: say what went wrong instead.
            raise UpstreamContentError(f"upstream {client.name} sent an unusable tag-list Link")
        target = next_url[1 : next_url.index(">")]
        path, _, query = target.partition("?")
        suffix = path[len(f"/v2/{route.upstream_name}/") :]
        if suffix != "tags/list":
            raise UpstreamContentError(f"upstream {client.name} sent a strange tag-list Link")
    raise UpstreamContentError(f"upstream {client.name}: more than {MAX_UPSTREAM_PAGES} tag pages")


async def catalog(request: Request, state: ProxyState) -> Response:
    """``/v2/_catalog`` of the default upstream (the one without a prefix)."""
    up = state.router.default
    if up is None:
        return oci_error_response(
            404, "UNSUPPORTED", "the catalog is only served for an upstream without a prefix"
        )
    client = state.clients[up.name]
    request.state.upstream = up.name
    resp = await client.open(
        "GET",
        "/v2/_catalog",
        scope="registry:catalog:*",
        query=_query(request, ("n", "last")),
        client_headers=forwardable_headers(request, conditional=False),
        client_authorization=request.headers.get("authorization"),
    )
    if resp.status_code != 200:
        return await relay_error(request, client, resp, state)
    link = resp.headers.get("link")
    body = await client.read_bounded(resp, state.settings.limits.tag_list_max_bytes, "catalog")
    headers = relayed_headers(resp.headers, body_length=len(body))
    if link and (new_link := rewrite_link(link, None, None)):
        headers["link"] = new_link
    return Response(body if request.method == "GET" else b"", headers=headers)


async def referrers(
    request: Request, state: ProxyState, client: UpstreamClient, route: Route, rp: RepoPath
) -> ASGIApp:
    """``/v2/<name>/referrers/<digest>``: streamed as is (``artifactType`` filter forwarded).

    A repository no policy covers gets an empty index without the upstream being asked:
    the referrers API answers "none" that way (a 404 would mean "no referrers API").
    """
    ctx = request_context(request, state, client, route)
    if not await state.gate.admit_listing(route, "referrers", rp.reference, ctx):
        out = json.dumps(EMPTY_REFERRERS, separators=(",", ":")).encode()
        headers = {"Content-Type": OCI_INDEX, "Content-Length": str(len(out))}
        return Response(out if request.method == "GET" else b"", headers=headers)
    query = _query(request, ("artifactType",))
    resp = await _open(request, client, route, f"referrers/{rp.reference}", query=query)
    if resp.status_code != 200:
        return await relay_error(request, client, resp, state)
    limits = state.settings.limits
    return UpstreamBodyResponse(
        resp,
        status_code=200,
        headers=relayed_headers(resp.headers),
        send_body=request.method != "HEAD",
        min_rate=limits.min_upstream_rate,
        grace=limits.read_timeout,
        upstream_name=client.name,
    )


# --------------------------------------------------------------------------- helpers


async def _open(
    request: Request,
    client: UpstreamClient,
    route: Route,
    suffix: str,
    *,
    query: str = "",
    force_get: bool = False,
    follow: bool = False,
    conditional: bool = False,
) -> httpx.Response:
    method = "GET" if force_get else request.method
    return await client.open(
        method,
        f"/v2/{route.upstream_name}/{suffix}",
        scope=route.scope,
        client_headers=forwardable_headers(request, conditional=conditional),
        client_authorization=request.headers.get("authorization"),
        query=query,
        follow_redirects=follow,
    )


def forwardable_headers(request: Request, *, conditional: bool = True) -> dict[str, str]:
    """Request headers for the upstream, repeated ones joined (RFC 9110 5.3).

    Clients send Accept several times (skopeo sends one line per media type); keeping
    only one would make distribution downgrade to schema1 or refuse OCI content.

    ``conditional=False`` drops Range and If-*: where the proxy reads the body itself
    (manifests it hashes, tag lists it filters) a 206 or 304 would leave it nothing to
    check, and would reach the client as a 502.
    """
    names = FORWARDED_REQUEST_HEADERS if conditional else ("accept",)
    out: dict[str, str] = {}
    for name in names:
        # Empty lines dropped and values trimmed: joined, they made ", " or "a, ", which h11
        # refuses to send (a field value has no leading or trailing whitespace): a 502.
        values = [v.strip(" \t") for v in request.headers.getlist(name)]
        if any(values):
            out[name] = ", ".join(v for v in values if v)
    return out


def _signed_fetch_headers(request: Request) -> dict[str, str]:
    """The client's Accept plus every manifest type we know (see MANIFEST_MEDIA_TYPES)."""
    offered = _accept_values(request)
    names = {_media_type_name(v) for v in offered}
    offered.extend(t for t in MANIFEST_MEDIA_TYPES if t not in names)
    return {"accept": ", ".join(offered)}


def _accept_values(request: Request) -> list[str]:
    accept = [v.strip() for v in ", ".join(request.headers.getlist("accept")).split(",")]
    return [v for v in accept if v]


def _accepted_types(request: Request) -> frozenset[str]:
    """The media types the client's Accept names (without parameters, lower case)."""
    return frozenset(_media_type_name(v) for v in _accept_values(request))


def _media_type_name(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def _query(request: Request, allowed: tuple[str, ...]) -> str:
    from urllib.parse import urlencode

    return urlencode([(k, v) for k, v in request.query_params.multi_items() if k in allowed])


def _parse_tag_list(body: bytes, upstream: str) -> list[str]:
    try:
        parsed: Any = json.loads(body)
    except (ValueError, RecursionError) as e:  # deeply nested JSON raises RecursionError
        raise UpstreamContentError(f"upstream {upstream} sent a tag list that is not JSON") from e
    tags = parsed.get("tags") if isinstance(parsed, dict) else None
    if tags is None and isinstance(parsed, dict):
        return []  # distribution answers "tags": null for a repository without tags
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise UpstreamContentError(f"upstream {upstream} sent a malformed tag list")
    return tags


async def relay_error(
    request: Request, client: UpstreamClient, resp: httpx.Response, state: ProxyState
) -> Response:
    """Turn a non-success upstream answer into the client's answer (and close it)."""
    status = resp.status_code
    if status >= 500 or status in REDIRECT_STATUSES or status < 400:
        await resp.aclose()
        raise UpstreamUnavailableError(client.name, f"answered HTTP {status}")
    passthrough = client.settings.auth.mode == "passthrough"
    if status == 401 and not passthrough:
        await resp.aclose()
        # Our own credentials were refused (Docker Hub also says 401 for a missing repo).
        return oci_error_response(
            403,
            "DENIED",
            f"upstream {client.name} refused the proxy's credentials "
            "(the repository may not exist, or the proxy may not pull it)",
            {"upstream": client.name},
        )
    body = await client.read_bounded(resp, state.settings.limits.error_body_max_bytes, "error body")
    out = error_body_for_client(status, resp.headers.get("content-type", ""), body, client.name)
    headers = {"Content-Type": "application/json", **API_VERSION_HEADER}
    if status == 401 and (challenge := resp.headers.get("www-authenticate")):
        headers["WWW-Authenticate"] = state.token_relay.rewrite_challenge(
            client.settings, challenge, str(request.base_url)
        )
    if status == 429 and (retry := resp.headers.get("retry-after")):
        headers["Retry-After"] = retry
    return Response(out, status_code=status, headers=headers)
