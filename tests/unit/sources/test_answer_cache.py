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


# --- what sources whose answers carry their own end need (the Notary source) ---------------


def counted(source: str) -> dict[str, float]:
    from proxy.metrics import REGISTRY

    return {
        result: REGISTRY.get_sample_value(
            "trustproxy_trust_cache_total", {"source": source, "result": result}
        )
        or 0.0
        for result in ("hit", "miss", "stale_served")
    }


async def test_an_entry_can_carry_its_own_end() -> None:
    """``fresh_until``: here a value is its own lifetime in seconds (trust data that expires
    sooner, a refusal retried sooner); the grace counts from that end."""
    clock = Clock()
    cache: AnswerCache[str, int] = AnswerCache(
        "own-end", clock=clock, fresh_for=timedelta(hours=1), grace=timedelta(seconds=5),
        fresh_until=lambda v, at: at + timedelta(seconds=v),
    )  # fmt: skip
    await cache.get("a", Counting(10))
    clock.now += timedelta(seconds=9)
    assert cache.peek("a") is not None
    clock.now += timedelta(seconds=1)
    assert cache.peek("a") is None  # its own end, long before fresh_for
    down = Counting(error=TrustSourceUnavailableError("src", "down"))
    assert (await cache.get("a", down)).stale  # within grace of its own end
    clock.now += timedelta(seconds=5)
    with pytest.raises(TrustSourceUnavailableError):
        await cache.get("a", down)


async def test_each_lookup_is_counted_once_as_its_kind() -> None:
    clock = Clock()
    cache: AnswerCache[str, int] = AnswerCache(
        "kinds", clock=clock, fresh_for=timedelta(seconds=30), grace=timedelta(minutes=5),
        kind_of=lambda v: "stale_served" if v < 0 else None,
    )  # fmt: skip
    before = counted("kinds")

    def delta() -> dict[str, float]:
        now = counted("kinds")
        return {k: now[k] - before[k] for k in now}

    await cache.get("a", Counting(1))  # miss
    await cache.get("a", Counting(1))  # hit
    await cache.get("a", Counting(1), count=False)  # a second look: not counted
    assert delta() == {"hit": 1, "miss": 1, "stale_served": 0}
    clock.now += timedelta(seconds=31)
    await cache.get("a", Counting(error=TrustSourceUnavailableError("src", "down")))
    assert delta() == {"hit": 1, "miss": 1, "stale_served": 1}  # stale, not a miss too
    await cache.get("b", Counting(-1))  # the source's own fallback marked it stale
    await cache.get("b", Counting(-1))
    assert delta() == {"hit": 1, "miss": 1, "stale_served": 3}
    with pytest.raises(NotSignedError):
        await cache.get("c", Counting(error=NotSignedError("no")))
    assert delta() == {"hit": 1, "miss": 2, "stale_served": 3}


async def test_last_and_iteration_see_entries_fresh_or_not() -> None:
    clock = Clock()
    cache = make(clock)
    await cache.get("a", Counting(1))
    await cache.get("b", Counting(2))
    clock.now += timedelta(hours=1)
    assert cache.peek("a") is None
    last = cache.last("a")
    assert last is not None
    assert (last.value, last.stale) == (1, False)
    assert list(cache) == ["a", "b"]
    assert cache.last("z") is None
