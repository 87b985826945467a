"""Build the Starlette application from settings: routes, shared state, lifespan.

Handlers read the shared state from ``app.state.proxy``. Under ``serve`` a
:class:`proxy.reload.Runtime` owns it and replaces it on SIGHUP; without one (tests, embedding)
the state is built here and lives as long as the app.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.errors import FetchError
from proxy.http.access_log import AccessLogMiddleware
from proxy.http.allocator import tune_allocator
from proxy.http.client_auth import Htpasswd
from proxy.http.errors import oci_error_response
from proxy.http.handlers import dispatch, token
from proxy.http.state import BASIC_REALM, ProxyState
from proxy.metrics import exposition_registry
from proxy.routing import Router
from proxy.settings import Settings
from proxy.sources.invalidation import changefeed_status
from proxy.sources.redis_store import store_status
from proxy.trust_gate import FallbackReport, PassThroughGate, TrustGate
from proxy.upstream.build import build_upstream_client

if TYPE_CHECKING:
    from proxy.reload import RequestTracker, Runtime

log = logging.getLogger("trustproxy.app")

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


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
    """Every upstream answers ``/v2/`` (any status below 500; 401 means it is there).

    The body also says whether the shared trust-state store is up (``trust_store``:
    ``memory``, ``up`` or ``down``), but Redis down does not make the replica unready: it
    keeps deciding correctly from its per-process trust state, and a 503 here would make a
    load balancer drain every replica at once during a Redis outage. ``fallback`` lists the
    repositories this process last answered from a policy rule's fallback."""
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
    body: dict[str, object] = {
        "ready": ready,
        "upstreams": results,
        **store_status(),
        **changefeed_status(),
    }
    if isinstance(state.gate, FallbackReport):
        # Repositories served from a policy rule's fallback (a trust snapshot) because their
        # own source has no data or is unreachable: worth an alert, not a drain (the
        # fallback answers correctly, and draining would take every replica out at once).
        body["fallback"] = state.gate.fallback_repositories()
    return JSONResponse(body, status_code=200 if ready else 503)


async def metrics(request: Request) -> Response:
    """Prometheus exposition of the proxy's own registry (``proxy/metrics.py``; with several
    workers, every worker's counts added up).

    The format follows the scraper's Accept, as prometheus_client's own handlers do:
    OpenMetrics when asked for, the classic text format 0.0.4 otherwise.
    """
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(exposition_registry()), headers={"Content-Type": content_type})


class InFlightMiddleware:
    """Tells the runtime which requests are running, so that a generation replaced by a
    reload is closed only after the requests that may still use it have finished."""

    def __init__(self, app: ASGIApp, tracker: RequestTracker) -> None:
        self.app = app
        self.tracker = tracker

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        epoch = self.tracker.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.tracker.exit(epoch)


async def not_routed(request: Request, exc: Exception) -> Response:
    """Paths and methods outside the API still get an OCI error body, not plain text."""
    status = getattr(exc, "status_code", 404)
    code = "UNSUPPORTED" if status == 405 else "NOT_FOUND"
    path: str = request.scope["path"]  # as routed (request.url.path drops tabs, see dispatch)
    return oci_error_response(status, code, f"no such endpoint: {path[:200]}")


def create_app(
    settings: Settings, *, gate: TrustGate | None = None, runtime: Runtime | None = None
) -> Starlette:
    """The app for ``settings``. With ``runtime`` (``serve``), the runtime supplies and
    replaces the state and ``gate`` is ignored; its lifespan installs the SIGHUP reload."""
    state = runtime.state if runtime is not None else build_state(settings, gate)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tune_allocator()  # blob relay buffers: see proxy/http/allocator.py
        if runtime is not None:
            await runtime.start(app)
        try:
            yield
        finally:
            if runtime is not None:
                await runtime.aclose()
            else:
                await state.aclose()

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/_trustproxy/token/{upstream}", token, methods=["GET"]),
        Route("/v2", dispatch, methods=ALL_METHODS),
        Route("/v2/{rest:path}", dispatch, methods=ALL_METHODS),
    ]
    if settings.server.metrics_enabled:
        routes.append(Route("/metrics", metrics, methods=["GET"]))
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: not_routed, 405: not_routed},
    )
    # No 307 from "/healthz/" to "/healthz": Starlette builds that Location from the
    # client's Host header, and a path that is no endpoint gets an OCI 404 like any other.
    app.router.redirect_slashes = False
    app.state.proxy = state
    if runtime is not None:
        app.add_middleware(InFlightMiddleware, tracker=runtime.tracker)
    app.add_middleware(AccessLogMiddleware)
    return app
