"""Relay an upstream body to the client in constant memory, and always close the upstream.

Starlette's StreamingResponse only watches for client disconnects with ASGI spec < 2.4 and
its BackgroundTask does not run when sending fails, so the ownership is spelled out here:
the upstream response is closed in ``finally`` around the whole ASGI send, and a client
disconnect cancels the copy loop at once (no reading a 10 GiB blob for nobody).
"""

from __future__ import annotations

import ctypes
import logging
import sys
from collections.abc import Mapping

import anyio
import httpx
from starlette.types import Receive, Scope, Send

log = logging.getLogger("trustproxy.stream")

# glibc mallopt(3) parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Below this, buffers come from the heap and are reused (glibc's default starts at
#: 128 KiB, under the ~250 KB chunks a blob relay allocates several times per read).
MMAP_THRESHOLD = 1024 * 1024
#: Free memory at the top of the heap kept for the next chunks instead of being given
#: back to the kernel (and faulted in again, zeroed, a moment later).
TRIM_THRESHOLD = 64 * 1024 * 1024
_allocator_tuned: bool | None = None


def tune_allocator() -> bool:
    """Keep the relay's chunk buffers in the heap (glibc only; True if applied).

    Every upstream read allocates and frees a few ~250 KB bytes objects (the loop's read,
    h11's buffer and its slices). With glibc's defaults each of them is a fresh mmap or
    heap growth, and the page faults that zero the new pages cost more CPU than the copy
    itself: profiled, a fresh process relayed a blob at less than half the rate of one
    whose heap was already large. Fixed thresholds remove that (measured ~1.8x single
    stream throughput); the price is up to TRIM_THRESHOLD of freed memory kept after a
    burst. Same effect as MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ in the
    environment. Process-wide and idempotent.
    """
    global _allocator_tuned
    if _allocator_tuned is None:
        _allocator_tuned = False
        if sys.platform.startswith("linux"):
            try:
                mallopt = ctypes.CDLL(None).mallopt
                # The mmap threshold first: fixing the trim one alone turns glibc's
                # dynamic threshold off and leaves it at 128 KiB (worse than default).
                _allocator_tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                    mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
                )
            except (OSError, AttributeError):  # not glibc (musl has a stub): nothing to do
                pass
    return _allocator_tuned


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
