"""Relay an upstream body to the client in constant memory, and always close the upstream.

Starlette's StreamingResponse only watches for client disconnects with ASGI spec < 2.4 and
its BackgroundTask does not run when sending fails, so the ownership is spelled out here:
the upstream response is closed in ``finally`` around the whole ASGI send, and a client
disconnect cancels the copy loop at once (no reading a 10 GiB blob for nobody).

Once the headers are out, the only honest signal left for a bad body is to cut the
connection before the body is complete (uvicorn closes it when the app returns with the
response unfinished): the client sees fewer bytes than Content-Length, or a chunked body
without its last chunk, and never a clean short answer it could take as whole. Cut when:

* the upstream breaks (connection closed early, read timeout): ``upstream_broke``;
* the upstream is slower than ``min_rate`` bytes per second on average, counting only the
  time spent waiting for it, once ``grace`` seconds of such waiting have passed (slowloris:
  a byte every few seconds never trips a per-read timeout): ``upstream_too_slow``;
* ``expected_digest`` is given (a whole blob by digest) and the bytes do not hash to it:
  the last chunk is held back until the hash is known and never sent, so a complete bad
  blob never leaves the proxy: ``upstream_digest_mismatch``.

"Complete" is the client's view, so the Content-Length it gets is the one the upstream's
framing gives (none for chunked), never a header copied beside it; whether a body is the
whole blob is decided from the upstream's answer (proxy/http/relay.py, whole_blob_answer).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping

import anyio
import httpx
from starlette.types import Receive, Scope, Send

from proxy.http.allocator import relays
from proxy.http.background_hash import BackgroundHash
from proxy.http.relay import framed_length
from proxy.metrics import UPSTREAM_ERRORS
from proxy.upstream.client import UPSTREAM_READ_BYTES
from proxy.upstream.direct_body import direct_body

log = logging.getLogger("trustproxy.stream")

#: Hash algorithms a blob digest may name (proxy/reference.py accepts these).
_DIGEST_ALGORITHMS = ("sha256", "sha512")
#: A blob is hashed on the event loop up to this many bytes, then on a worker thread.
INLINE_HASH_BYTES = 1024 * 1024
#: From this declared length on, the body is read from the connection past h11
#: (proxy/upstream/direct_body.py): fewer copies and layers per chunk, but the connection
#: is closed afterwards instead of pooled, which only pays off for large bodies.
DIRECT_BODY_BYTES = 8 * 1024 * 1024


class _Cut(Exception):
    """Stop relaying and leave the response unfinished. ``outcome`` (upstream_broke,
    upstream_too_slow, upstream_digest_mismatch) starts the access line's error field."""

    def __init__(self, outcome: str, message: str) -> None:
        self.outcome = outcome
        super().__init__(message)


class UpstreamBodyResponse:
    """An ASGI response that streams ``upstream``'s raw body (no decoding, exact bytes)."""

    def __init__(
        self,
        upstream: httpx.Response,
        *,
        status_code: int,
        headers: Mapping[str, str],
        send_body: bool = True,
        expected_digest: str | None = None,
        min_rate: int = 0,
        grace: float = 0.0,
        upstream_name: str = "",
    ) -> None:
        self.upstream = upstream
        self.status_code = status_code
        out = {k.lower(): v for k, v in headers.items()}
        # The body sent is what the upstream's framing delivered, so its Content-Length is the
        # framing's, never a header beside it: with both Content-Length and chunked, a short
        # bad blob relayed with the Content-Length of its first chunk looked complete. A HEAD
        # answer keeps the upstream's (the length of the body it would have sent).
        self.length = framed_length(upstream.headers)
        if send_body:
            out.pop("content-length", None)
            if self.length is not None:
                out["content-length"] = str(self.length)
        self.headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in out.items()]
        self.send_body = send_body
        algorithm, _, _ = (expected_digest or "").partition(":")
        # An algorithm we cannot compute means no check (the reference parser only lets
        # sha256 and sha512 through, so this is a caller's choice, not a bypass).
        self.expected_digest = expected_digest if algorithm in _DIGEST_ALGORITHMS else None
        self.min_rate = min_rate
        self.grace = grace
        self.upstream_name = upstream_name

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
                    nonlocal finished
                    try:
                        await self._copy(send)
                    except _Cut as cut:
                        log.warning("%s", cut, extra={"upstream": self.upstream_name})
                        # The access line: outcome upstream_broke, and the error says how.
                        state = scope.setdefault("state", {})
                        state["upstream_broke"] = True
                        state["error"] = f"{cut.outcome}: {cut}"
                        tg.cancel_scope.cancel()
                        return
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

    async def _copy(self, send: Send) -> None:
        """Every body chunk but the final empty one; raises _Cut to leave it unfinished."""
        # Counted so that the heap a burst of blobs grew is handed back once the last
        # one ends (proxy/http/allocator.py).
        relays.started()
        try:
            await self._copy_counted(send)
        finally:
            relays.finished()

    async def _copy_counted(self, send: Send) -> None:
        expected = self.expected_digest
        hasher = hashlib.new(expected.partition(":")[0]) if expected else None
        # Past the first INLINE_HASH_BYTES the hash moves to a worker thread and runs beside
        # the relay (proxy/http/background_hash.py): small blobs do not pay the hand-off.
        background: BackgroundHash | None = None
        # With a digest to check, the chunk that completes the blob waits for the hash, so a
        # bad blob never arrives whole. With a declared length that chunk is known when it
        # arrives and every other one goes out at once, undelayed and uncopied; without
        # one, the newest chunk waits for the next.
        length = self.length
        held = b""
        received = 0
        waited = 0.0  # seconds spent waiting for the upstream (not for the client)
        asked = time.monotonic()
        try:
            body = None
            if length is not None and length >= DIRECT_BODY_BYTES:
                body = direct_body(self.upstream, read_bytes=UPSTREAM_READ_BYTES)
            async for chunk in body or self.upstream.aiter_raw():
                waited += time.monotonic() - asked
                if chunk:
                    received += len(chunk)
                    if self.min_rate and waited > self.grace and received < self.min_rate * waited:
                        self._count("too_slow")
                        raise _Cut(
                            "upstream_too_slow",
                            f"upstream {self.upstream_name} sent {received} bytes in "
                            f"{waited:.1f}s of waiting, under {self.min_rate} B/s: cut",
                        )
                    if hasher is None:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    else:
                        if background is not None:
                            await background.update(chunk)
                        elif received > INLINE_HASH_BYTES:
                            background = BackgroundHash(hasher)
                            await background.update(chunk)
                        else:
                            hasher.update(chunk)
                        if length is not None and received < length:
                            await send({"type": "http.response.body", "body": chunk,
                                        "more_body": True})  # fmt: skip
                        else:
                            if held:
                                await send({"type": "http.response.body", "body": held,
                                            "more_body": True})  # fmt: skip
                            held = chunk
                asked = time.monotonic()
            if hasher is not None:
                if background is None:
                    actual = f"{hasher.name}:{hasher.hexdigest()}"
                else:
                    try:
                        actual = await background.digest()
                    except RuntimeError as e:  # the worker failed: no digest, no last chunk
                        actual = f"none ({e})"
        except httpx.HTTPError as e:
            self._count("broken")
            raise _Cut(
                "upstream_broke",
                f"upstream {self.upstream_name} body broke after {received} bytes: {e!r}",
            ) from e
        finally:
            if background is not None:
                background.abandon()  # a cut or a cancelled relay: skip what is still queued
        if hasher is not None:
            if actual != expected:
                self._count("mismatch")
                raise _Cut(
                    "upstream_digest_mismatch",
                    f"upstream {self.upstream_name} sent a blob that hashes to {actual}, "
                    f"not {expected} ({received} bytes): cut before its last {len(held)}",
                )
            if held:
                await send({"type": "http.response.body", "body": held, "more_body": True})

    def _count(self, kind: str) -> None:
        if self.upstream_name:
            UPSTREAM_ERRORS.labels(self.upstream_name, kind).inc()
