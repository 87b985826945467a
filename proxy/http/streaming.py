"""Relay an upstream body to the client in constant memory, and always close the upstream.

Starlette's StreamingResponse only watches for client disconnects with ASGI spec < 2.4 and
its BackgroundTask does not run when sending fails, so the ownership is spelled out here:
the upstream response is closed in ``finally`` around the whole ASGI send, and a client
disconnect cancels the copy loop at once (no reading a 10 GiB blob for nobody).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import anyio
import httpx
from starlette.types import Receive, Scope, Send

log = logging.getLogger("trustproxy.stream")


class UpstreamBodyResponse:
    """An ASGI response that streams ``upstream``'s raw body (no decoding, exact bytes)."""

    def __init__(
        self,
        upstream: httpx.Response,
        *,
        status_code: int,
        headers: Mapping[str, str],
        send_body: bool = True,
    ) -> None:
        self.upstream = upstream
        self.status_code = status_code
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1"))
                        for k, v in headers.items()]  # fmt: skip
        self.send_body = send_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code, "headers": self.headers}
            )
            if not self.send_body:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            finished = False
            async with anyio.create_task_group() as tg:

                async def copy() -> None:
                    sent = 0
                    try:
                        async for chunk in self.upstream.aiter_raw():
                            if chunk:
                                sent += len(chunk)
                                await send({"type": "http.response.body", "body": chunk,
                                            "more_body": True})  # fmt: skip
                    except httpx.HTTPError as e:
                        # Headers are out: the only honest signal left is to cut the
                        # connection, so the client sees a short body and retries.
                        log.warning("upstream body broke after %d bytes: %r", sent, e)
                        scope.setdefault("state", {})["upstream_broke"] = True
                        tg.cancel_scope.cancel()
                        return
                    nonlocal finished
                    finished = True
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    tg.cancel_scope.cancel()

                async def watch_disconnect() -> None:
                    while True:
                        message = await receive()
                        # uvicorn also answers http.disconnect once the response is
                        # complete; only a disconnect before that is the client leaving.
                        if message["type"] == "http.disconnect":
                            if not finished:
                                scope.setdefault("state", {})["client_disconnected"] = True
                                tg.cancel_scope.cancel()
                            # Return either way: after completion receive() answers at
                            # once without yielding, and looping would spin forever.
                            return

                tg.start_soon(copy)
                tg.start_soon(watch_disconnect)
        finally:
            # Shielded: the close must happen even when this task is being cancelled.
            with anyio.CancelScope(shield=True):
                await self.upstream.aclose()
