"""Verified answers kept in process: the hot layer every trust source puts in front of its
network and its shared store.

What a source computes here is the result of a verification it ran itself, in this
process (a verified trust state, a verdict on a digest's signatures). The cache adds:

- **freshness**: an entry answers for ``fresh_for``, then the next ``get`` computes again;
  a source whose answers carry their own end (trust data that expires, a refusal to retry
  sooner) passes ``fresh_until`` instead;
- **single flight**: concurrent misses for one key share one computation (the first caller
  runs it; the others wait for its result or its exception);
- **stale within grace**: when a computation fails with
  :class:`~proxy.errors.TrustSourceUnavailableError` (the source could not fetch), the last
  verified value younger than ``grace`` (counted from when it stopped being fresh) answers,
  marked stale; a verdict that verification *refused* is never replaced by an older allow,
  because only values that computed are kept and any other error propagates;
- **bounds**: at most ``max_entries`` keys, least recently used first out;
- **counters** ``trustproxy_trust_cache_total{source, result}``, each lookup counted once:
  hit (a fresh entry answered), miss (a computation answered, or failed),
  stale_served (a stale value answered); ``kind_of`` lets a source name what one of its
  values is (a value its own fallback marked stale: stale_served), and ``count=False``
  leaves a lookup uncounted (a second look within one request).

Nothing in it is read from outside the process, so nothing in it needs re-verifying; what a
source loads from a shared store goes through its own verification before it is put here.
The clock is passed in (tests move it).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

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
    #: when it stops answering as fresh
    fresh_until: datetime
    #: what a lookup it answers counts as (None: hit, or miss when just computed)
    kind: str | None = None
    #: the answer of a hit, made once (immutable: every hit shares it; the warm path
    #: then allocates nothing)
    answer: Cached[V] | None = None


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
        fresh_until: Callable[[V, datetime], datetime] | None = None,
        kind_of: Callable[[V], str | None] | None = None,
    ) -> None:
        """``fresh_until(value, computed_at)``: when an entry stops being fresh (default
        ``computed_at + fresh_for``); ``kind_of(value)``: the counter result a lookup the
        value answers counts as, None for the default (hit, or miss when computed)."""
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.source = source
        self._clock = clock
        self.fresh_for = fresh_for
        self.grace = grace
        self.max_entries = max_entries
        self._fresh_until = fresh_until
        self._kind_of = kind_of
        self._entries: OrderedDict[K, _Entry[V]] = OrderedDict()
        self._flights: dict[K, asyncio.Future[_Entry[V]]] = {}
        self._counters: dict[str, Counter] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[K]:
        """The keys kept, least recently used first (fresh or not)."""
        return iter(list(self._entries))

    def _entry(self, value: V, computed_at: datetime) -> _Entry[V]:
        until = (
            computed_at + self.fresh_for
            if self._fresh_until is None
            else self._fresh_until(value, computed_at)
        )
        kind = self._kind_of(value) if self._kind_of is not None else None
        return _Entry(value, computed_at, until, kind, Cached(value, computed_at))

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

    def last(self, key: K) -> Cached[V] | None:
        """The entry kept for ``key``, fresh or not (what a computation starts from: the
        previous answer); no counting, no reordering."""
        entry = self._entries.get(key)
        return None if entry is None else Cached(entry.value, entry.computed_at)

    def fresh_items(self) -> list[tuple[K, V]]:
        """Every fresh entry (for answers that list what was verified recently)."""
        return [(k, e.value) for k, e in self._entries.items() if self._fresh(e)]

    def _fresh(self, entry: _Entry[V]) -> bool:
        return self._clock() < entry.fresh_until

    async def get(
        self, key: K, compute: Callable[[], Awaitable[V]], *, count: bool = True
    ) -> Cached[V]:
        """The fresh value of ``key``, computing it (once for all concurrent callers) when
        there is none. Raises what ``compute`` raises, except that an unavailable source
        answers with the last value within grace, marked stale. ``count=False``: not a
        lookup of its own for the counters."""
        entry = self._entries.get(key)
        if entry is not None and self._clock() < entry.fresh_until:
            self._entries.move_to_end(key)
            if count:
                self._count(entry.kind or "hit")
            if entry.answer is not None:
                return entry.answer
            return Cached(entry.value, entry.computed_at)
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
                if count:
                    self._count("miss")
                raise
            if count:
                self._count("stale_served")
            return stale
        except BaseException:
            if count:
                self._count("miss")
            raise
        if count:
            self._count(done.kind or "miss")
        return done.answer if done.answer is not None else Cached(done.value, done.computed_at)

    async def _kept(self, key: K, computing: asyncio.Future[V]) -> _Entry[V]:
        value = await computing
        entry = self._entry(value, self._clock())
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
        if self._clock() >= entry.fresh_until + self.grace:
            return None
        return Cached(entry.value, entry.computed_at, stale=True)

    # --- writes --------------------------------------------------------------------------

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` (verified by the caller just now) as fresh for ``key``."""
        self._keep(key, self._entry(value, self._clock()))

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
        for k, _ in self.in_flight(predicate):
            self.detach(k)
        return len(doomed)

    def in_flight(self, predicate: Callable[[K], bool]) -> list[tuple[K, asyncio.Future[Any]]]:
        """The computations running for keys ``predicate`` holds for (a caller may add a
        done callback: what to do when one lands)."""
        return [(k, f) for k, f in self._flights.items() if predicate(k)]

    def detach(self, key: K) -> None:
        """The computation in flight for ``key`` (if any) is no longer its flight: it
        answers the callers already waiting, it is not kept, and later callers start a new
        one (it may have read data older than a change the caller just learned of)."""
        self._flights.pop(key, None)

    def cancel_all(self) -> None:
        """Cancel computations in flight (on close)."""
        for f in list(self._flights.values()):
            f.cancel()
