"""Cross-replica single flight: at most one replica walks a repository's trust data at a time.

Inside one process, concurrent misses for a repository already share one refresh task
(the source's own single flight). Across replicas a store may also offer a
lock (:class:`ReplicaLock`; the Redis store does, with ``SET key token NX PX timeout``):

    acquired          -> refresh from the network, save, release
    held elsewhere    -> poll the store for the state the holder will save, then refresh
                         from it (the signed timestamp is still fetched: a stored state
                         is never freshness, only bytes to reuse), or take the lock when
                         it is released or expires (a crashed holder blocks the others at
                         most lock_timeout)
    dead lock         -> a value no replica can have set (no expiry, a longer one than
                         lock_timeout, not a token, another type): taken over at once
    store unavailable -> refresh without it (the per-process single flight still holds)

The lock only saves work: correctness never depends on it (every state is verified, and
the store's compare-and-set keeps the highest verified version whoever writes last).

:func:`take_turn` is that loop for any source: what it waits for is a newer stored state
(the source says how to load one and what marks it newer); what the source then does with
it (re-verify it, refresh from it) is its own business.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

from proxy.sources.store import StoreUnavailableError

__all__ = ["ReplicaLock", "take_turn"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@runtime_checkable
class ReplicaLock(Protocol):
    """A per-repository lock shared by replicas, with an expiry."""

    #: seconds until a lock whose holder never released it expires by itself
    lock_timeout: float

    async def acquire(self, repository: str) -> str | None:
        """A token when this caller now holds the lock for ``repository``; None when another does.

        Raises:
            StoreUnavailableError: the lock cannot be reached (proceed without it).
        """
        ...

    async def release(self, repository: str, token: str) -> None:
        """Release the lock if ``token`` still holds it (never someone else's lock).

        Raises:
            StoreUnavailableError: the lock cannot be reached (it expires by itself).
        """
        ...


#: The first poll of a waiting replica comes after ``poll`` / this, each next one twice
#: as late, up to ``poll`` (75 ms by default: 2.3, 4.7, 9.4, 19, 38, 75, 75, ... ms).
_FIRST_POLL_DIVISOR = 32


async def take_turn(
    lock: ReplicaLock,
    repository: str,
    *,
    start: T | None,
    load: Callable[[], Awaitable[T | None]],
    stamp: Callable[[T], Any],
    poll: float,
    label: str,
    lock_first: bool = False,
) -> tuple[str | None, T | None]:
    """Take this replica's turn at refreshing ``repository``: (our lock token, or None
    when another replica saved meanwhile or the lock cannot be had; the stored state to
    refresh from).

    ``start``: the stored state the caller loaded; ``load``: load it again (None: none or
    unreadable); ``stamp``: what orders stored states (a save moves it forward). While
    another replica holds the lock, the store is polled (soon, then less often: every
    ``poll`` seconds at most) for a state whose stamp moved: that replica saved, so
    refresh from its state. The stamp is untrusted (whoever writes the store can move
    it), so it can only make us stop waiting early (more work, never an allow): the
    caller verifies whatever it gets. A holder that neither saves nor releases within
    ``lock.lock_timeout`` is not waited for longer. The caller releases the token when it
    is done (``lock.release``).

    ``lock_first``: the caller has not loaded the stored state (``start`` is ignored): the
    lock is tried first and the state loaded once after it, taken or not (one store round
    trip less on the usual path, a cold repository whose lock is free). When it is held,
    the state loaded then is what the holder's save must move past.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + lock.lock_timeout
    first = True
    if lock_first:
        try:
            token = await lock.acquire(repository)
        except StoreUnavailableError:
            return None, await load()  # no lock without the store: refresh ourselves
        start = await load()
        if token is not None:
            return token, start
        first = False  # held elsewhere: wait for its save (or its release)
    seen = stamp(start) if start is not None else None
    # The first looks come soon, then every ``poll``: a holder's refresh usually takes a
    # few milliseconds, and every request for the repository on this replica waits for
    # it. With siblings taking each other's hand-over, their entries fall due together
    # (same fetch time), so one of them waits like this once per refresh interval: a
    # flat 75 ms showed as the p99.9 of a paced warm load (docs/performance.md).
    wait = poll / _FIRST_POLL_DIVISOR
    while True:
        if not first:
            await asyncio.sleep(wait)
            wait = min(poll, wait * 2)
            latest = await load()
            if latest is not None and (seen is None or stamp(latest) > seen):
                return None, latest
        first = False
        try:
            token = await lock.acquire(repository)
        except StoreUnavailableError:
            return None, start  # no lock without the store: refresh ourselves
        if token is not None:
            # Another replica may have saved between our load and the lock: start from it.
            latest = await load()
            return token, latest if latest is not None else start
        if loop.time() >= deadline:
            # The holder neither saved nor released within lock_timeout (a lock of ours
            # never outlives it: a clock or lock_timeout mismatch, or a lock planted with a
            # valid expiry): do not wait longer, refresh alone.
            log.warning(
                "trust source %s: %s: another replica holds the refresh lock for over "
                "%.0fs; refreshing anyway",
                label,
                repository,
                lock.lock_timeout,
            )
            return None, start
