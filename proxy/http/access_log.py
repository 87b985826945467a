"""One structured access line per request: method, path, status, bytes, duration, upstream."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.observability import ACCESS_LOGGER

log = logging.getLogger(ACCESS_LOGGER)


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
