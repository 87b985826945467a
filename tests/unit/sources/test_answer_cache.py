"""The generic verified-answer cache: freshness, single flight, stale within grace, bounds,
invalidation (a computation in flight when its key is invalidated is not kept)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from proxy.errors import NotSignedError, TrustSourceUnavailableError
from proxy.sources.answer_cache import AnswerCache

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 12, 5, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def make(clock: Clock, **kw: object) -> AnswerCache[str, int]:
    args: dict[str, object] = {"fresh_for": timedelta(seconds=30), "grace": timedelta(minutes=5)}
    args.update(kw)
    return AnswerCache("test", clock=clock, **args)  # type: ignore[arg-type]


class Counting:
    def __init__(self, value: int = 1, error: Exception | None = None) -> None:
        self.calls = 0
        self.value = value
        self.error = error
        self.gate: asyncio.Event | None = None

    async def __call__(self) -> int:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.value


async def test_fresh_value_answers_without_computing() -> None:
    clock, compute = Clock(), Counting(7)
    cache = make(clock)
    assert (await cache.get("a", compute)).value == 7
    clock.now += timedelta(seconds=29)
    assert (await cache.get("a", compute)).value == 7
    assert compute.calls == 1
    clock.now += timedelta(seconds=2)
    compute.value = 8
    assert (await cache.get("a", compute)).value == 8
    assert compute.calls == 2


async def test_concurrent_misses_compute_once() -> None:
    cache, compute = make(Clock()), Counting(3)
    compute.gate = asyncio.Event()
    waiters = [asyncio.ensure_future(cache.get("a", compute)) for _ in range(50)]
    await asyncio.sleep(0)
    compute.gate.set()
    got = await asyncio.gather(*waiters)
    assert {c.value for c in got} == {3}
    assert compute.calls == 1


async def test_unavailable_serves_stale_within_grace_only() -> None:
    clock = Clock()
    cache = make(clock)
    await cache.get("a", Counting(1))
    down = Counting(error=TrustSourceUnavailableError("src", "down"))
    clock.now += timedelta(seconds=31)
    got = await cache.get("a", down)
    assert got.value == 1
    assert got.stale
    clock.now = T0 + timedelta(seconds=30) + timedelta(minutes=5)
    with pytest.raises(TrustSourceUnavailableError):
        await cache.get("a", down)


async def test_a_refusal_is_never_answered_by_an_older_value() -> None:
    clock = Clock()
    cache = make(clock)
    await cache.get("a", Counting(1))
    clock.now += timedelta(seconds=31)
    with pytest.raises(NotSignedError):
        await cache.get("a", Counting(error=NotSignedError("revoked")))


async def test_least_recently_used_goes_first() -> None:
    cache = make(Clock(), max_entries=2)
    for key in ("a", "b"):
        await cache.get(key, Counting())
    await cache.get("a", Counting())  # a is now the most recent
    await cache.get("c", Counting())
    assert cache.peek("a") is not None
    assert cache.peek("b") is None
    assert len(cache) == 2


async def test_invalidated_flight_answers_its_waiters_but_is_not_kept() -> None:
    cache, old = make(Clock()), Counting(1)
    old.gate = asyncio.Event()
    waiter = asyncio.ensure_future(cache.get("a", old))
    await asyncio.sleep(0)
    cache.invalidate("a")  # the trust data changed while the old walk was running
    new = Counting(2)
    assert (await cache.get("a", new)).value == 2  # a new flight, not the old one
    old.gate.set()
    assert (await waiter).value == 1
    assert (await cache.get("a", Counting(3))).value == 2  # the old result was not kept
    assert cache.invalidate_where(lambda k: k.startswith("a")) == 1
    assert cache.peek("a") is None
