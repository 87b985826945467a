"""Where trust state lives between refreshes: a small interface, in memory or in Redis.

A store holds opaque bytes per repository. What comes back is **untrusted**: the
source bounds its size and re-verifies it like freshly downloaded metadata, so a poisoned
store can only cause a refusal or a refetch (as a reference client of signed metadata
re-verifies what it loads from its local cache). The shared
store (:mod:`proxy.sources.redis_store`) implements the same two methods.

Rollback memory must survive races between writers (replicas): ``save`` takes a
``generation`` (the source passes the timestamp version) and never replaces a state of a
higher generation, so a replica that refreshed earlier cannot lower the floors another one
saved. In a shared store the generation of what is stored is untrusted too: the source
passes a ``judge`` that derives it from the stored bytes' signed data, so a planted
``gen=999999`` cannot freeze the store.

A store never proves freshness: whoever can write it can put back an older, genuine state
(dated "now"), so a state read back is a head start for a refresh (a root, version floors
to refuse rollbacks with, bytes to reuse when the signed timestamp announces their hash),
never a reason to skip the trust server. And because a store can be rolled back, the
floors a process has verified itself are kept in :class:`RollbackFloors`, in process,
apart from any evictable cache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

from proxy.errors import FetchError

__all__ = [
    "STATE_MAX_BYTES",
    "Judge",
    "MemoryTrustStateStore",
    "RollbackFloors",
    "SharedFloors",
    "StoreUnavailableError",
    "TrustStateStore",
    "VouchingStore",
]

#: The largest stored record a source reads back (its whole verified state of a repository).
STATE_MAX_BYTES = 64 * 1024 * 1024

#: The verified generation of stored bytes, or None when they do not verify (a state that
#: is not genuine, or that cannot be checked any more, is replaced by any save).
Judge = Callable[[bytes], int | None]


class StoreUnavailableError(FetchError):
    """The store could not be read or written (a network store is down).

    Sources treat it as a cache miss on load and log it on save: trust decisions never
    depend on the store being up.
    """


class TrustStateStore(Protocol):
    async def load(self, repository: str) -> bytes | None:
        """The bytes last saved for ``repository``, or None.

        Raises:
            StoreUnavailableError: the store cannot be reached.
        """
        ...

    async def save(
        self,
        repository: str,
        data: bytes,
        *,
        generation: int | None = None,
        judge: Judge | None = None,
    ) -> None:
        """Replace what is stored for ``repository``, unless it holds a higher ``generation``
        (compare-and-set: equal generations replace, so a newer fetch time is kept).
        ``generation=None`` replaces unconditionally. ``judge`` gives the generation of
        the bytes currently stored (None: not genuine, replaced); a store that others can
        write must use it rather than a generation it stored beside the bytes.

        Raises:
            StoreUnavailableError: the store cannot be reached.
        """
        ...


@runtime_checkable
class SharedFloors(Protocol):
    """Rollback floors shared by the processes of one host (the workers of ``serve``).

    A store may offer it (the SQLite store does; with Redis, a wrapper adds the host's
    SQLite floors, see :func:`proxy.sources.sqlite_store.with_host_floors`). A source keeps
    its :class:`RollbackFloors` in process and raises them with these before each refresh,
    so what one worker verified, every worker refuses to go below. What is read back can
    only raise a floor: a refusal, never an allow.
    """

    async def load_floors(self, repository: str) -> dict[str, int]:
        """The floors stored for ``repository`` (empty when none).

        Raises:
            StoreUnavailableError: the store cannot be read.
        """
        ...

    async def raise_floors(self, repository: str, versions: Mapping[str, int]) -> None:
        """Raise ``repository``'s stored floors to ``versions`` (never lowers one).

        Raises:
            StoreUnavailableError: the store cannot be written.
        """
        ...


@runtime_checkable
class VouchingStore(Protocol):
    """A store that can say "a sibling process saved these bytes" (the host's state file,
    with or without Redis: :class:`~proxy.sources.sqlite_store.HostVouchingStore`).

    Saves are authenticated with a key that only the processes of one ``serve`` hold (the
    master makes it before it forks; it is never written anywhere), so whoever writes the
    file cannot forge one. A source uses what a sibling verified and saved as if it had
    verified it itself, for what is left of its ``fresh_for`` window: the workers of one
    host then refresh a repository once per window between them, as one process does.
    """

    async def load_vouched(self, repository: str) -> bytes | None:
        """The stored bytes when a process holding the key saved them, else None.

        Raises:
            StoreUnavailableError: the store cannot be read.
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

    async def load(self, repository: str) -> bytes | None:
        data = self._data.get(repository)
        if data is not None:
            self._data.move_to_end(repository)
        return data

    async def save(
        self,
        repository: str,
        data: bytes,
        *,
        generation: int | None = None,
        judge: Judge | None = None,
    ) -> None:
        # Process memory is written by this process only: the generations it kept are its
        # own, so ``judge`` (for stores others can write) is not needed here.
        del judge
        if generation is not None:
            kept = self._generations.get(repository)
            if kept is not None and kept > generation and repository in self._data:
                return
            self._generations[repository] = generation
        else:
            self._generations.pop(repository, None)
        self._data[repository] = data
        self._data.move_to_end(repository)
        while len(self._data) > self.max_entries:
            old, _ = self._data.popitem(last=False)
            self._generations.pop(old, None)


class RollbackFloors:
    """The highest top-level versions this process has verified, per repository.

    Kept apart from the hot cache on purpose: that cache is evicted by requests for other
    repositories (anyone can send those), and the shared store can be rolled back by
    whoever writes it, so neither may be where a process remembers what it has seen. Only
    verified sets raise a floor, so requests for unknown or unsigned repositories never
    add entries; ``max_entries`` (least recently raised out) bounds memory at about 200
    bytes an entry.
    """

    def __init__(self, max_entries: int = 65_536) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self._floors: OrderedDict[str, dict[str, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._floors)

    def get(self, repository: str) -> dict[str, int]:
        """A copy of ``repository``'s floors (empty when never verified here)."""
        return dict(self._floors.get(repository, {}))

    def raise_to(self, repository: str, versions: Mapping[str, int]) -> None:
        """Raise ``repository``'s floors to ``versions`` (never lowers one)."""
        floors = self._floors.setdefault(repository, {})
        for role, version in versions.items():
            if version > floors.get(role, 0):
                floors[role] = version
        self._floors.move_to_end(repository)
        while len(self._floors) > self.max_entries:
            self._floors.popitem(last=False)
