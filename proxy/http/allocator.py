"""The process's C allocator, tuned for the blob relay: keep chunk buffers in the heap while
blobs stream, give the memory back once the last one has finished.

Every upstream read of a blob allocates and frees a few ~250 KB bytes objects (the loop's
read, the ASGI send). With glibc's defaults each of them is a fresh mmap or heap growth,
and the page faults that zero the new pages cost more CPU than the copy itself: profiled
(docs/performance-notes.md), a fresh process relayed a blob at less than half the rate of
one whose heap was already large. Fixed thresholds (:func:`tune_allocator`) remove that.

The price was memory: what a burst of streams left in the heap stayed there, and each
burst left a little more (fragments pinned by longer-lived objects): measured with 2
workers and 50 concurrent 16 MiB streams, the proxy's RSS went 148 → 184 → 195 → 199 MiB
over three bursts. :class:`RelayTracker` hands the free pages back (``malloc_trim``, which
also releases whole free pages inside the heap, not only at its top) once no blob has been
relayed for :data:`QUIET_SECONDS`: never during a burst, so the relay keeps its warm heap.

glibc only; elsewhere (musl, macOS) both are no-ops.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import sys
from typing import Any

__all__ = ["QUIET_SECONDS", "RelayTracker", "relays", "tune_allocator"]

log = logging.getLogger("trustproxy.stream")

# glibc mallopt(3) parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Below this, buffers come from the heap and are reused (glibc's default starts at
#: 128 KiB, under the ~250 KB chunks a blob relay allocates several times per read).
MMAP_THRESHOLD = 1024 * 1024
#: Free memory at the top of the heap kept for the next chunks instead of being given
#: back to the kernel (and faulted in again, zeroed, a moment later) while blobs stream.
TRIM_THRESHOLD = 64 * 1024 * 1024
#: Seconds without any blob relay after which the heap's free pages go back.
QUIET_SECONDS = 1.0

_libc: Any = None
_allocator_tuned: bool | None = None


def _glibc() -> Any:
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None)
                # Both are glibc's; musl has a mallopt stub and no malloc_trim.
                if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim"):
                    _libc = libc
            except OSError:
                pass
    return _libc or None


def tune_allocator() -> bool:
    """Keep the relay's chunk buffers in the heap (glibc only; True if applied). Same
    effect as MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ in the environment.
    Process-wide and idempotent."""
    global _allocator_tuned
    if _allocator_tuned is None:
        libc = _glibc()
        # The mmap threshold first: fixing the trim one alone turns glibc's dynamic
        # threshold off and leaves it at 128 KiB (worse than default).
        _allocator_tuned = (
            libc is not None
            and bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
            and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        )
    return _allocator_tuned


class RelayTracker:
    """Counts the blob relays in flight on this event loop; when the count has stayed at
    zero for ``quiet`` seconds, trims the heap once (``trim`` is ``malloc_trim(0)``)."""

    def __init__(self, *, quiet: float = QUIET_SECONDS, trim: Any = None) -> None:
        self.active = 0
        self.trims = 0
        self._quiet = quiet
        self._trim = trim
        self._timer: asyncio.TimerHandle | None = None

    def started(self) -> None:
        self.active += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def finished(self) -> None:
        self.active -= 1
        if self.active == 0 and self._timer is None and tune_allocator():
            self._timer = asyncio.get_running_loop().call_later(self._quiet, self._release)

    def _release(self) -> None:
        self._timer = None
        if self.active:
            return
        trim = self._trim
        if trim is None:
            libc = _glibc()
            trim = libc.malloc_trim if libc is not None else None
        if trim is not None:
            # Milliseconds for a heap of a few hundred MiB, on the loop's thread while no
            # blob streams (another thread's malloc would wait on the arena lock anyway).
            trim(0)
            self.trims += 1


#: The process's tracker (one event loop per worker process).
relays = RelayTracker()
