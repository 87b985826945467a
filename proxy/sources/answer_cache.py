"""Verified answers kept in process: the hot layer every trust source puts in front of its
network and its shared store.

What a source computes here is the result of a verification it ran itself, in this
process (a verified trust state, a verdict on a digest's signatures). The cache adds:

- **freshness**: an entry answers for ``fresh_for``, then the next ``get`` computes again;
- **single flight**: concurrent misses for one key share one computation (the first caller
  runs it; the others wait for its result or its exception);
- **stale within grace**: when a computation fails with
  :class:`~proxy.errors.TrustSourceUnavailableError` (the source could not fetch), the last
  verified value younger than ``grace`` (counted from when it stopped being fresh) answers,
  marked stale; a verdict that verification *refused* is never replaced by an older allow,
  because only values that computed are kept and any other error propagates;
- **bounds**: at most ``max_entries`` keys, least recently used first out;
- **counters** ``trustproxy_trust_cache_total{source, result}``: hit, miss, stale_served.

Nothing in it is read from outside the process, so nothing in it needs re-verifying; what a
source loads from a shared store goes through its own verification before it is put here.
The clock is passed in (tests move it).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from prometheus_client import Counter

from proxy.errors import TrustSourceUnavailableError
from proxy.metrics import TRUST_CACHE

__all__ = ["AnswerCache", "Cached"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class Cached(Generic[V]):
    """A value and when it was computed; ``stale`` when served past a failed refresh."""

    value: V
    computed_at: datetime
    stale: bool = False


@dataclass
class _Entry(Generic[V]):
    value: V
    computed_at: datetime


class AnswerCache(Generic[K, V]):
    """Fresh verified values by key, with single flight and stale-within-grace.

    Safe for concurrent use from one event loop (no locks: no ``await`` between a read of
    the table and the write that depends on it).
    """

    def __init__(
        self,
        source: str,
        *,
        clock: Callable[[], datetime],
        fresh_for: timedelta,
        grace: timedelta = timedelta(0),
        max_entries: int = 10_000,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.source = source
        self._clock = clock
        self.fresh_for = fresh_for
        self.grace = grace
        self.max_entries = max_entries
        self._entries: OrderedDict[K, _Entry[V]] = OrderedDict()
        self._flights: dict[K, asyncio.Future[_Entry[V]]] = {}
        self._counters: dict[str, Counter] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def _count(self, result: str) -> None:
        child = self._counters.get(result)
        if child is None:
            child = self._counters[result] = TRUST_CACHE.labels(self.source, result)
        child.inc()

    # --- reads ---------------------------------------------------------------------------

    def peek(self, key: K) -> Cached[V] | None:
        """The entry for ``key`` if it is fresh now (no computation, no counting)."""
        entry = self._entries.get(key)
        if entry is None or not self._fresh(entry):
            return None
        return Cached(entry.value, entry.computed_at)

    def fresh_items(self) -> list[tuple[K, V]]:
        """Every fresh entry (for answers that list what was verified recently)."""
        return [(k, e.value) for k, e in self._entries.items() if self._fresh(e)]

    def _fresh(self, entry: _Entry[V]) -> bool:
        return self._clock() - entry.computed_at < self.fresh_for

    async def get(self, key: K, compute: Callable[[], Awaitable[V]]) -> Cached[V]:
        """The fresh value of ``key``, computing it (once for all concurrent callers) when
        there is none. Raises what ``compute`` raises, except that an unavailable source
        answers with the last value within grace, marked stale."""
        entry = self._entries.get(key)
        if entry is not None and self._fresh(entry):
            self._entries.move_to_end(key)
            self._count("hit")
            return Cached(entry.value, entry.computed_at)
        self._count("miss")
        pending = self._flights.get(key)
        if pending is None:
            computing = asyncio.ensure_future(compute())
            self._flights[key] = pending = asyncio.ensure_future(self._kept(key, computing))
            pending.add_done_callback(lambda f, k=key: self._landed(k, f))  # type: ignore[misc]
        try:
            # Shielded: one caller giving up (a client disconnect) does not cancel the
            # computation the others wait for.
            done = await asyncio.shield(pending)
        except TrustSourceUnavailableError:
            stale = self._within_grace(key)
            if stale is None:
                raise
            self._count("stale_served")
            return stale
        return Cached(done.value, done.computed_at)

    async def _kept(self, key: K, computing: asyncio.Future[V]) -> _Entry[V]:
        value = await computing
        entry = _Entry(value, self._clock())
        if self._flights.get(key) is asyncio.current_task():
            self._keep(key, entry)
        return entry

    def _keep(self, key: K, entry: _Entry[V]) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def _landed(self, key: K, future: asyncio.Future[_Entry[V]]) -> None:
        if self._flights.get(key) is future:
            del self._flights[key]
        if not future.cancelled():
            future.exception()  # retrieved: a failure nobody awaited stays quiet

    def _within_grace(self, key: K) -> Cached[V] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() - entry.computed_at >= self.fresh_for + self.grace:
            return None
        return Cached(entry.value, entry.computed_at, stale=True)

    # --- writes --------------------------------------------------------------------------

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` (verified by the caller just now) as fresh for ``key``."""
        self._keep(key, _Entry(value, self._clock()))

    def invalidate(self, key: K) -> None:
        """Forget ``key``: the next ``get`` computes afresh. A computation in flight
        started before the change: it still answers the callers already waiting for it,
        but it is not kept, and later callers start a new one."""
        self.invalidate_where(lambda k: k == key)

    def invalidate_where(self, predicate: Callable[[K], bool]) -> int:
        """Forget every key ``predicate`` holds for (kept or in flight); how many kept
        entries were forgotten."""
        doomed = [k for k in self._entries if predicate(k)]
        for k in doomed:
            del self._entries[k]
        for k in [k for k in self._flights if predicate(k)]:
            # No longer the flight of its key: it answers its waiters, and is not kept.
            del self._flights[k]
        return len(doomed)

    def cancel_all(self) -> None:
        """Cancel computations in flight (on close)."""
        for f in list(self._flights.values()):
            f.cancel()
