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
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["ReplicaLock"]


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
