"""Where trust state lives between refreshes: a small interface, in-memory for now.

A store holds opaque bytes per repository (GUN). What comes back is **untrusted**: the
source bounds its size and re-verifies it like freshly downloaded metadata, so a poisoned
store can only cause a refusal or a refetch (python-tuf ``_load_timestamp``). A shared
store (Redis, in the "shared trust state" issue) implements the same two methods.
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

    async def save(self, gun: str, data: bytes) -> None:
        """Replace what is stored for ``gun``.

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

    def __len__(self) -> int:
        return len(self._data)

    async def load(self, gun: str) -> bytes | None:
        data = self._data.get(gun)
        if data is not None:
            self._data.move_to_end(gun)
        return data

    async def save(self, gun: str, data: bytes) -> None:
        self._data[gun] = data
        self._data.move_to_end(gun)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)
