"""One structured access line per request (method, path, status, bytes, duration, upstream)
and the request counter ``trustproxy_requests_total``."""

from __future__ import annotations

import logging
import time

from prometheus_client.metrics import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.metrics import REQUESTS
from proxy.observability import ACCESS_LOGGER

log = logging.getLogger(ACCESS_LOGGER)

# Label values come from a fixed set: a client must not be able to mint new time series
# (every label combination is kept in memory forever) with odd methods or paths.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
_REPO_ENDPOINTS = {"manifests": "manifests", "blobs": "blobs", "referrers": "referrers"}
_FIXED_PATHS = {
    "/v2": "base",
    "/v2/": "base",
    "/v2/_catalog": "catalog",
    "/healthz": "health",
    "/readyz": "health",
    "/metrics": "metrics",
}


def endpoint_kind(path: str) -> str:
    """manifests, blobs, tags, referrers, catalog, base, token, health, metrics or other.

    By shape only (``/v2/<name>/<kind>/<reference>``): the handlers validate names; this
    only has to be cheap and bounded.
    """
    fixed = _FIXED_PATHS.get(path)
    if fixed is not None:
        return fixed
    if path.startswith("/_trustproxy/token/"):
        return "token"
    if not path.startswith("/v2/"):
        return "other"
    parts = path.rsplit("/", 2)  # [.../<name>, <kind>, <reference>]
    if len(parts) == 3:
        if parts[1] == "tags" and parts[2] == "list":
            return "tags"
        kind = _REPO_ENDPOINTS.get(parts[1])
        if kind is not None and parts[0] != "/v2" and parts[2]:
            return kind
    return "other"


def status_class(status: int) -> str:
    return _STATUS_CLASSES.get(status // 100, "other")


# ``Counter.labels()`` takes a lock and builds a key each call (~15% of the access path's
# own cost, profiled): the children are kept here instead. The label values come from the
# fixed sets above, so this holds at most 8 x 10 x 6 entries.
_request_counters: dict[tuple[str, str, str], Counter] = {}


def _request_counter(method: str, endpoint: str, status: str) -> Counter:
    key = (method, endpoint, status)
    child = _request_counters.get(key)
    if child is None:
        child = _request_counters[key] = REQUESTS.labels(method, endpoint, status)
    return child


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0
        sent = 0
        complete = False

        async def counting_send(message: Message) -> None:
            nonlocal status, sent, complete
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
                complete = not message.get("more_body", False)
            await send(message)

        scope.setdefault("state", {})
        try:
            await self.app(scope, receive, counting_send)
        finally:
            if log.isEnabledFor(logging.INFO):  # access_log: false skips the line whole
                _log_line(scope, status, sent, complete, start)
            method = scope["method"]
            _request_counter(
                method if method in _METHODS else "other",
                endpoint_kind(scope["path"]),
                status_class(status or 500),
            ).inc()


def _log_line(scope: Scope, status: int, sent: int, complete: bool, start: float) -> None:
    state = scope["state"]
    client = scope.get("client")
    fields = {
        "method": scope["method"],
        "path": scope["path"],
        "query": scope.get("query_string", b"").decode("latin-1")[:512],
        "status": status or 500,
        "bytes": sent,
        "duration_ms": round((time.perf_counter() - start) * 1000, 2),
        "upstream": state.get("upstream"),
        "client": client[0] if client else None,
        "user": state.get("user"),
        "complete": complete,
    }
    if state.get("client_disconnected"):
        fields["outcome"] = "client_disconnected"
    elif state.get("upstream_broke"):
        fields["outcome"] = "upstream_broke"
    if state.get("error"):
        fields["error"] = state["error"]
    log.info("request", extra=fields)
