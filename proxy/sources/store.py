"""Where trust state lives between refreshes: a small interface, in memory or in Redis.

A store holds opaque bytes per repository (GUN). What comes back is **untrusted**: the
source bounds its size and re-verifies it like freshly downloaded metadata, so a poisoned
store can only cause a refusal or a refetch (python-tuf ``_load_timestamp``). The shared
store (:mod:`proxy.sources.redis_store`) implements the same two methods.

Rollback memory must survive races between writers (replicas): ``save`` takes a
``generation`` (the source passes the timestamp version) and never replaces a state of a
higher generation, so a replica that refreshed earlier cannot lower the floors another one
saved.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

from proxy.errors import FetchError

__all__ = ["MemoryTrustStateStore", "StoreUnavailableError", "TrustStateStore"]


class StoreUnavailableError(FetchError):
    """The store could not be read or written (a network store is down).

    Sources treat it as a cache miss on load and log it on save: trust decisions never
    depend on the store being up.
    """


class TrustStateStore(Protocol):
    async def load(self, gun: str) -> bytes | None:
        """The bytes last saved for ``gun``, or None.

        Raises:
            StoreUnavailableError: the store cannot be reached.
        """
        ...

    async def save(self, gun: str, data: bytes, *, generation: int | None = None) -> None:
        """Replace what is stored for ``gun``, unless it holds a higher ``generation``
        (compare-and-set: equal generations replace, so a newer fetch time is kept).
        ``generation=None`` replaces unconditionally.

        Raises:
            StoreUnavailableError: the store cannot be reached.
        """
        ...


class MemoryTrustStateStore:
    """In-process store: at most ``max_entries`` repositories, least recently used out.

    One process only: replicas do not share it (that is the Redis store's job).
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self._data: OrderedDict[str, bytes] = OrderedDict()
        self._generations: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._data)

    async def load(self, gun: str) -> bytes | None:
        data = self._data.get(gun)
        if data is not None:
            self._data.move_to_end(gun)
        return data

    async def save(self, gun: str, data: bytes, *, generation: int | None = None) -> None:
        if generation is not None:
            kept = self._generations.get(gun)
            if kept is not None and kept > generation and gun in self._data:
                return
            self._generations[gun] = generation
        else:
            self._generations.pop(gun, None)
        self._data[gun] = data
        self._data.move_to_end(gun)
        while len(self._data) > self.max_entries:
            old, _ = self._data.popitem(last=False)
            self._generations.pop(old, None)
