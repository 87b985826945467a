"""Hash a relayed blob on a worker thread, in order, while the event loop keeps relaying.

Profiled (docs/performance-notes.md), sha256 was the largest single item on the event
loop's thread during a blob relay: ~0.56 CPU s/GB on a CPU with SHA extensions, next to
~0.8 for the relay itself. hashlib releases the GIL while it hashes a buffer larger than
2 KiB, so the hash can run on another core at the same time as the loop reads and writes
sockets.

The shape keeps the hand-off cheap, one ``SimpleQueue.put`` per chunk and no event-loop
wake-up per chunk (an ``await`` on a thread pool for every chunk cost more CPU than it
saved): a few long-lived worker threads per process, each with its own queue; a blob's
chunks all go to one worker, so they are hashed in the order they arrived. The loop only
waits for a worker when a blob is too far ahead of its hash (``max_backlog`` bytes, so
memory stays bounded) and once at the end, for the digest: the caller holds the chunk that
completes the blob back until then (proxy/http/streaming.py).

Nothing here decides anything: ``digest()`` returns what the bytes hash to, and the caller
compares it. A worker that fails makes ``digest()`` raise, so a relay fails closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

#: Chunks go to the worker in batches of at least this many bytes: one hand-off (a queue
#: put, a thread wake-up, a GIL hand-over) per socket read or so instead of one per chunk.
#: Each blob in flight holds up to a batch plus the backlog: measured with 2 workers and
#: 50 concurrent 16 MiB streams, 1 MiB of each made the proxy's RSS peak about 40 MiB
#: higher than 256 KiB, for no throughput and at most ~0.05 CPU s/GB less; 128 KiB saved
#: no more memory and cost CPU (docs/performance-notes.md, section 7).
BATCH_BYTES = 256 * 1024
#: Bytes handed to the worker and not hashed yet before the relay waits for it: enough
#: for the hash to keep up, little memory held (this many per blob, plus one batch).
MAX_BACKLOG = 256 * 1024


class _Workers:
    """The process's hashing threads (daemon, started on first use, again after a fork)."""

    def __init__(self, count: int) -> None:
        self.pid = os.getpid()
        self.queues: list[queue.SimpleQueue[tuple[BackgroundHash, list[bytes] | None]]] = []
        for i in range(count):
            q: queue.SimpleQueue[tuple[BackgroundHash, list[bytes] | None]] = queue.SimpleQueue()
            thread = threading.Thread(
                target=_work, args=(q,), name=f"trustproxy-blob-hash-{i}", daemon=True
            )
            thread.start()
            self.queues.append(q)
        self._next = itertools.cycle(range(count))

    def pick(self) -> queue.SimpleQueue[tuple[BackgroundHash, list[bytes] | None]]:
        return self.queues[next(self._next)]


_workers: _Workers | None = None
_workers_lock = threading.Lock()


def _worker_count() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    # One event loop per process: more threads than CPUs would only queue on the cores.
    return max(1, min(cpus, 4))


def _get_workers() -> _Workers:
    global _workers
    with _workers_lock:
        # Threads do not survive fork(): a forked worker process starts its own.
        if _workers is None or _workers.pid != os.getpid():
            _workers = _Workers(_worker_count())
        return _workers


def _work(q: queue.SimpleQueue[tuple[BackgroundHash, list[bytes] | None]]) -> None:
    while True:
        job, chunks = q.get()
        job._run(chunks)
        del job, chunks  # not kept alive while waiting for the next batch


class BackgroundHash:
    """A hash fed from the event loop and computed on a worker thread.

    ``hasher`` is a fresh or partly fed hashlib object that the caller no longer touches.
    Use from one task: ``await update(chunk)`` per chunk, ``await digest()`` once; call
    ``abandon()`` when the relay stops early (the worker then skips what is still queued).
    """

    def __init__(
        self, hasher: Any, *, batch_bytes: int = BATCH_BYTES, max_backlog: int = MAX_BACKLOG
    ) -> None:
        self._hasher = hasher
        self._batch_bytes = batch_bytes
        self._max_backlog = max_backlog
        self._batch: list[bytes] = []
        self._batched = 0
        self._loop = asyncio.get_running_loop()
        self._queue = _get_workers().pick()
        # Written by the loop's thread only.
        self._queued = 0
        self._finish_sent = False
        self._abandoned = False
        # Written by the worker only (read by the loop: plain ints and bools under the GIL).
        self._hashed = 0
        self._finished = False
        self._error: BaseException | None = None
        # The loop sets the waiter and then re-checks; the worker updates its counters and
        # then looks for a waiter: between the two, a wake-up is never lost. Only the loop
        # clears it (a worker clearing it could erase a newer one).
        self._waiter: asyncio.Future[None] | None = None

    @property
    def name(self) -> str:
        return str(self._hasher.name)

    async def update(self, chunk: bytes) -> None:
        """Queue ``chunk``; waits only while the hash is ``max_backlog`` bytes behind."""
        if self._finish_sent:
            raise RuntimeError("update() after digest()")
        self._batch.append(chunk)
        self._batched += len(chunk)
        if self._batched < self._batch_bytes:
            return
        self._flush()
        if self._queued - self._hashed > self._max_backlog:
            target = self._queued - self._max_backlog // 2
            await self._wait(lambda: self._hashed >= target or self._stopped())

    async def digest(self) -> str:
        """``<algorithm>:<hex>`` of everything given to update(). Raises RuntimeError if
        the worker failed (the caller must treat that as a mismatch)."""
        if not self._finish_sent:
            self._finish_sent = True
            self._flush()
            self._queue.put((self, None))
        await self._wait(lambda: self._finished)
        if self._error is not None:
            raise RuntimeError(f"hashing the blob failed: {self._error!r}") from self._error
        if self._hashed != self._queued:  # cannot happen unless abandoned: never a pass
            raise RuntimeError("hashing the blob was abandoned")
        return f"{self.name}:{self._hasher.hexdigest()}"

    def _flush(self) -> None:
        if self._batch:
            self._queued += self._batched
            self._queue.put((self, self._batch))
            self._batch = []
            self._batched = 0

    def abandon(self) -> None:
        """The relay stopped: skip whatever of this blob is still queued."""
        self._abandoned = True

    def _stopped(self) -> bool:
        return self._finished or self._error is not None

    async def _wait(self, ready: Callable[[], bool]) -> None:
        try:
            while not ready():
                waiter = self._loop.create_future()
                self._waiter = waiter
                if not ready():
                    await waiter
        finally:
            self._waiter = None

    # -- on the worker thread -------------------------------------------------------------

    def _run(self, chunks: list[bytes] | None) -> None:
        try:
            if chunks is None:
                self._finished = True
            else:
                for chunk in chunks:
                    if self._abandoned or self._error is not None:
                        break
                    self._hasher.update(chunk)  # releases the GIL for buffers over 2 KiB
                    self._hashed += len(chunk)
        except BaseException as e:  # reported to the relay by digest(), never swallowed
            self._error = e
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            # Wake the loop; it re-checks its own condition and waits again if need be.
            # RuntimeError: the loop is closed, nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(_wake, waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
