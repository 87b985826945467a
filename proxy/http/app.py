"""Build the Starlette application from settings: routes, shared state, lifespan."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.errors import FetchError
from proxy.gate import PassThroughGate, TrustGate
from proxy.http.access_log import AccessLogMiddleware
from proxy.http.client_auth import Htpasswd
from proxy.http.errors import oci_error_response
from proxy.http.handlers import dispatch, token
from proxy.http.state import BASIC_REALM, ProxyState
from proxy.routing import Router
from proxy.settings import Settings, UpstreamSettings
from proxy.upstream.auth import AuthLimits, UpstreamAuthenticator
from proxy.upstream.client import UpstreamClient, make_http_client

log = logging.getLogger("trustproxy.app")

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def build_upstream_client(settings: Settings, up: UpstreamSettings) -> UpstreamClient:
    ca = str(up.ca_file) if up.ca_file else None
    http = make_http_client(settings.limits, ca)
    auth = None
    if up.auth.mode != "passthrough":
        creds = up.auth.credentials
        auth = UpstreamAuthenticator(
            http,
            up.name,
            username=creds.username,
            password=creds.password,
            clock=time.monotonic,
            limits=AuthLimits(max_token_response_bytes=settings.limits.token_max_bytes),
            # An operator who configured a plain-http registry has accepted cleartext for
            # it; its token service on plain http is no worse.
            insecure_http_realm=up.url.startswith("http://"),
        )
    return UpstreamClient(up, settings.limits, http, auth)


def build_state(settings: Settings, gate: TrustGate | None = None) -> ProxyState:
    htpasswd = None
    if settings.server.client_auth.htpasswd_file is not None:
        htpasswd = Htpasswd.load(settings.server.client_auth.htpasswd_file)
    return ProxyState(
        settings=settings,
        router=Router(settings.upstreams),
        clients={up.name: build_upstream_client(settings, up) for up in settings.upstreams},
        gate=gate or PassThroughGate(),
        client_auth=htpasswd,
        basic_realm=BASIC_REALM if htpasswd else None,
    )


async def healthz(request: Request) -> Response:
    """The process is up and serving."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Every upstream answers ``/v2/`` (any status below 500; 401 means it is there)."""
    state: ProxyState = request.app.state.proxy
    results: dict[str, str] = {}
    ready = True
    for name, client in state.clients.items():
        try:
            resp = await client.open("GET", "/v2/", scope=None)
            await resp.aclose()
            ok = resp.status_code < 500
            results[name] = "ok" if ok else f"HTTP {resp.status_code}"
        except FetchError as e:
            ok = False
            results[name] = str(e)
        ready = ready and ok
    return JSONResponse({"ready": ready, "upstreams": results}, status_code=200 if ready else 503)


async def not_routed(request: Request, exc: Exception) -> Response:
    """Paths and methods outside the API still get an OCI error body, not plain text."""
    status = getattr(exc, "status_code", 404)
    code = "UNSUPPORTED" if status == 405 else "NOT_FOUND"
    return oci_error_response(status, code, f"no such endpoint: {request.url.path[:200]}")


def create_app(settings: Settings, *, gate: TrustGate | None = None) -> Starlette:
    state = build_state(settings, gate)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await state.aclose()

    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/_trustproxy/token/{upstream}", token, methods=["GET"]),
            Route("/v2", dispatch, methods=ALL_METHODS),
            Route("/v2/{rest:path}", dispatch, methods=ALL_METHODS),
        ],
        lifespan=lifespan,
        exception_handlers={404: not_routed, 405: not_routed},
    )
    app.state.proxy = state
    app.add_middleware(AccessLogMiddleware)
    return app
