"""Store semantics without a Redis: the warm path, StoreHealth, CAS in memory, helpers.

Lua and NX behaviour are tested against a real redis-server in
tests/integration/test_redis_store.py."""

from __future__ import annotations

import hashlib
import logging

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from proxy.metrics import REGISTRY
from proxy.sources import MemoryTrustStateStore
from proxy.sources.notary.rules import SigningRule
from proxy.sources.notary.tuf import TrustOnFirstUse
from proxy.sources.redis_store import (
    RedisConnection,
    StoreHealth,
    redact_url,
    source_namespace,
    store_status,
)
from proxy.sources.store import Judge, StoreUnavailableError
from tests.simulators.notary_repo import NotaryRepository
from tests.unit.sources.sim import GUN, Clock, SimServer, make_source

TOFU = SigningRule(TrustOnFirstUse())
M1 = b'{"manifest": 1}'


class CountingStore(MemoryTrustStateStore):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    async def load(self, gun: str) -> bytes | None:
        self.calls.append("load")
        return await super().load(gun)

    async def save(
        self,
        gun: str,
        data: bytes,
        *,
        generation: int | None = None,
        judge: Judge | None = None,
    ) -> None:
        self.calls.append(f"save:{generation}")
        await super().save(gun, data, generation=generation, judge=judge)


@pytest.mark.anyio
async def test_warm_path_makes_no_store_call() -> None:
    server = SimServer()
    repo = server.add(NotaryRepository(GUN))
    repo.add_target("v1", M1)
    repo.publish()
    store = CountingStore()
    clock = Clock()
    src = make_source(server, clock=clock, store=store)
    try:
        await src.resolve(GUN, "v1", TOFU)
        assert store.calls == [
            "load",
            f"save:{repo.versions['timestamp']}",
        ]  # the timestamp version
        store.calls.clear()
        server.reset()
        for _ in range(100):
            got = await src.resolve(GUN, "v1", TOFU)
        assert got.digest == "sha256:" + hashlib.sha256(M1).hexdigest()
        assert store.calls == []
        assert server.names == []
    finally:
        await src.aclose()


@pytest.mark.anyio
async def test_memory_store_never_lowers_the_generation() -> None:
    store = MemoryTrustStateStore()
    await store.save("g", b"5", generation=5)
    await store.save("g", b"3", generation=3)
    assert await store.load("g") == b"5"
    await store.save("g", b"5b", generation=5)
    assert await store.load("g") == b"5b"
    await store.save("g", b"x")  # no generation: unconditional (older callers)
    assert await store.load("g") == b"x"
    await store.save("g", b"1", generation=1)
    assert await store.load("g") == b"1"


def test_health_logs_once_per_outage_and_paces_probes(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    health = StoreHealth("redis://unit-test/0", retry_after=2.0, monotonic=lambda: now[0])

    def gauge() -> float | None:
        return REGISTRY.get_sample_value("trustproxy_store_up", {"store": "redis://unit-test/0"})

    assert gauge() == 1
    with caplog.at_level(logging.INFO, logger="trustproxy.store"):
        for _ in range(50):
            if health.allow():
                health.failed("load", RedisConnectionError("refused"))
        assert not health.up
        assert gauge() == 0
        assert health.last_error == "ConnectionError: refused"
        assert not health.allow()  # still within retry_after
        now[0] += 2.0
        assert health.allow()  # one probe...
        assert not health.allow()  # ...not one per request
        health.failed("load", RedisConnectionError("still refused"))
        now[0] += 2.0
        assert health.allow()
        health.succeeded()
        health.succeeded()
    assert health.status()["status"] == "up"
    assert gauge() == 1
    assert len([m for m in caplog.messages if "is unavailable" in m]) == 1
    assert len([m for m in caplog.messages if "is back after" in m]) == 1
    errors = REGISTRY.get_sample_value(
        "trustproxy_store_errors_total", {"store": "redis://unit-test/0", "operation": "load"}
    )
    assert errors == 2


@pytest.mark.anyio
async def test_unreachable_redis_is_store_unavailable_and_shows_in_status() -> None:
    # Nothing listens on port 1: connection refused at once.
    conn = RedisConnection("redis://127.0.0.1:1/0", timeout=0.5)
    store = conn.store("n:")
    try:
        assert store_status()["trust_store"] == "up"  # not tried yet
        assert conn.health.up
        with pytest.raises(StoreUnavailableError):
            await store.load(GUN)
        with pytest.raises(StoreUnavailableError):
            await store.acquire(GUN)  # fails fast: down, no probe due
        status = store_status()
        assert status["trust_store"] == "down"
        assert status["trust_stores"][0]["status"] == "down"
    finally:
        await conn.aclose()
    assert store_status() == {"trust_store": "memory"}


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://:s3cret@h:6379/0", "redis://***@h:6379/0"),
        ("rediss://user:s3cret@h/1", "rediss://user:***@h/1"),
        ("unix:///run/redis.sock?db=0", "unix:///run/redis.sock?db=0"),
    ],
    ids=["plain", "password", "user-password", "unix"],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_source_namespace_follows_the_server() -> None:
    a = source_namespace("notary", "https://notary-a:4443")
    assert a.startswith("notary:")
    assert a != source_namespace("notary", "https://notary-b:4443")
    assert a == source_namespace("notary", "https://notary-a:4443")
