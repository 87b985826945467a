"""The Redis trust-state store against a real redis-server (testbed.redis_server): CAS saves,
bounded reads, replicas sharing floors, the cross-replica refresh lock, outages."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from proxy.metrics import REGISTRY
from proxy.sources.notary.rules import SigningRule
from proxy.sources.notary.source import (
    NotarySource,
    NotarySourceOptions,
    decode_record,
    encode_record,
    state_generation,
)
from proxy.sources.notary.tuf import RollbackError, TrustedState, TrustOnFirstUse
from proxy.sources.redis_store import RedisConnection, RedisTrustStateStore, store_status
from proxy.sources.store import StoreUnavailableError
from testbed.redis_server import RedisServer, redis_binary
from tests.simulators.notary_repo import NotaryRepository
from tests.unit.sources.sim import GUN, Clock, SimServer, make_source

pytestmark = [
    pytest.mark.integration,
    pytest.mark.anyio,
    pytest.mark.skipif(redis_binary() is None, reason="redis-server not installed"),
]

TOFU = SigningRule(TrustOnFirstUse())
M1 = b'{"manifest": 1}'
M2 = b'{"manifest": 2}'


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_server(shared_redis: RedisServer) -> RedisServer:
    shared_redis.start()  # a test may have killed it
    shared_redis.flushall()
    return shared_redis


@pytest.fixture
async def conn(redis_server: RedisServer) -> AsyncIterator[RedisConnection]:
    c = RedisConnection(redis_server.url, timeout=0.5, retry_after=0.3)
    try:
        yield c
    finally:
        await c.aclose()


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def repo() -> NotaryRepository:
    r = NotaryRepository(GUN)
    r.add_target("v1", M1)
    r.publish()
    return r


def up_gauge(conn: RedisConnection) -> float | None:
    return REGISTRY.get_sample_value("trustproxy_store_up", {"store": conn.health.label})


def source(
    server: SimServer, store: RedisTrustStateStore, clock: Clock, **opts: object
) -> NotarySource:
    return make_source(server, clock=clock, store=store, options=NotarySourceOptions(**opts))  # type: ignore[arg-type]


# -- the store ------------------------------------------------------------------------------


async def test_save_is_compare_and_set_on_generation(conn: RedisConnection) -> None:
    store = conn.store("s:")
    assert await store.load("g") is None
    await store.save("g", b"v5", generation=5)
    await store.save("g", b"v3", generation=3)  # a replica that saw less, saving late
    assert await store.load("g") == b"v5"
    await store.save("g", b"v5-later", generation=5)  # equal: the newer fetch time wins
    assert await store.load("g") == b"v5-later"
    await store.save("g", b"v6", generation=6)
    assert await store.load("g") == b"v6"
    await store.save("g", b"forced", generation=None)
    assert await store.load("g") == b"forced"


async def test_concurrent_saves_keep_the_highest_generation(conn: RedisConnection) -> None:
    store = conn.store("s:")
    gens = list(range(1, 41))
    await asyncio.gather(*(store.save("g", str(g).encode(), generation=g) for g in gens[::-1]))
    assert await store.load("g") == b"40"


async def test_oversized_and_foreign_values_are_misses(
    redis_server: RedisServer, conn: RedisConnection
) -> None:
    store = conn.store("s:", max_bytes=16)
    await store.save("big", b"x" * 17, generation=1)
    assert await store.load("big") is None  # refused on the server, never transferred
    redis_server.command("SET", store.state_key("str"), "not a hash")
    assert await store.load("str") is None
    await store.save("str", b"ok", generation=1)  # replaced, not an error
    assert await store.load("str") == b"ok"
    redis_server.command("HSET", store.state_key("nogen"), "data", "d", "gen", "junk")
    await store.save("nogen", b"ours", generation=1)
    assert await store.load("nogen") == b"ours"


async def test_keys_are_namespaced_by_prefix(
    redis_server: RedisServer, conn: RedisConnection
) -> None:
    a = conn.store("a:", key_prefix="tp:")
    b = conn.store("b:", key_prefix="tp:")
    await a.save("g", b"A", generation=1)
    assert await b.load("g") is None
    assert redis_server.command("EXISTS", "tp:a:state:g") == 1


async def test_lock_is_exclusive_expires_and_releases_only_its_own(
    conn: RedisConnection,
) -> None:
    store = conn.store("s:", lock_timeout=0.3)
    token = await store.acquire("g")
    assert token is not None
    assert await store.acquire("g") is None
    await store.release("g", "someone-else")
    assert await store.acquire("g") is None
    await asyncio.sleep(0.4)  # the holder "crashed": its lock expires
    other = await store.acquire("g")
    assert other is not None
    await store.release("g", token)  # the old holder's late release does not free it
    assert await store.acquire("g") is None
    await store.release("g", other)
    assert await store.acquire("g") is not None


# -- sources sharing Redis ------------------------------------------------------------------


async def test_corrupted_stored_state_is_refetched_never_allowed(
    redis_server: RedisServer, conn: RedisConnection
) -> None:
    server = SimServer()
    server.add(repo())
    clock = Clock()
    store = conn.store("n:")
    redis_server.command("HSET", store.state_key(GUN), "gen", "999", "data", b"\x00garbage")
    src = source(server, store, clock)
    try:
        assert (await src.resolve(GUN, "v1", TOFU)).digest == digest(M1)
        assert "timestamp.json" in server.names
    finally:
        await src.aclose()


async def test_stored_root_with_a_malformed_certificate_is_refetched(
    conn: RedisConnection,
) -> None:
    """A record whose root key frames a certificate with a broken subject (cryptography
    parses it lazily): a refetch, not an exception out of the trust core (a 500)."""
    server = SimServer()
    server.add(repo())
    clock = Clock()
    store = conn.store("n:")
    a = source(server, store, clock)
    await a.resolve(GUN, "v1", TOFU)
    await a.aclose()
    saved = await store.load(GUN)
    assert saved is not None
    at, state = decode_record(saved, max_bytes=1 << 26)
    root = json.loads(state.root)
    for key in root["signed"]["keys"].values():
        if key["keytype"].endswith("-x509"):
            pem = base64.b64decode(key["keyval"]["public"])
            cert = x509.load_pem_x509_certificate(pem)
            der = bytearray(cert.public_bytes(serialization.Encoding.DER))
            der[der.rfind(GUN.encode())] = 0xFF  # not UTF-8 in the subject's UTF8String
            pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(bytes(der))
            key["keyval"]["public"] = base64.b64encode(
                pem + b"-----END CERTIFICATE-----\n"
            ).decode()
    broken = TrustedState(state.gun, json.dumps(root).encode(), state.versions, state.metadata)
    await store.save(GUN, encode_record(broken, at), generation=None)
    server.reset()
    b = source(server, store, clock)
    try:
        assert (await b.resolve(GUN, "v1", TOFU)).digest == digest(M1)
        assert "root.json" in server.names  # the stored root refused: first contact
    finally:
        await b.aclose()


async def test_oversized_stored_state_is_a_miss(conn: RedisConnection) -> None:
    server = SimServer()
    server.add(repo())
    clock = Clock()
    a = source(server, conn.store("n:"), clock)
    await a.resolve(GUN, "v1", TOFU)
    await a.aclose()
    server.reset()
    b = source(server, conn.store("n:", max_bytes=64), clock)
    try:
        assert (await b.resolve(GUN, "v1", TOFU)).digest == digest(M1)
        assert "timestamp.json" in server.names  # not replayed from the store: refetched
    finally:
        await b.aclose()


async def test_two_replicas_share_rollback_floors(conn: RedisConnection) -> None:
    server = SimServer()
    r = server.add(repo())
    old = r.checkpoint()
    clock = Clock()
    a = source(server, conn.store("n:"), clock)
    b = source(server, conn.store("n:"), clock)
    try:
        assert (await b.resolve(GUN, "v1", TOFU)).digest == digest(M1)  # B sees v1 -> M1
        r.add_target("v1", M2)
        r.publish()
        clock.advance(seconds=61)
        assert (await a.resolve(GUN, "v1", TOFU)).digest == digest(M2)  # A sees newer
        r.serve(old)  # a mirror replays the older, validly signed files
        clock.advance(seconds=61)
        with pytest.raises(RollbackError):
            await b.resolve(GUN, "v1", TOFU)  # B never saw the newer version itself
        # A restarted replica (nothing in process) refuses it too: the floors are in Redis.
        c = source(server, conn.store("n:"), clock)
        try:
            with pytest.raises(RollbackError):
                await c.resolve(GUN, "v1", TOFU)
        finally:
            await c.aclose()
    finally:
        await a.aclose()
        await b.aclose()


async def test_late_save_of_older_state_is_ignored(conn: RedisConnection) -> None:
    server = SimServer()
    r = server.add(repo())
    clock = Clock()
    store = conn.store("n:")
    a = source(server, store, clock)
    try:
        await a.resolve(GUN, "v1", TOFU)
        older = await store.load(GUN)
        assert older is not None
        r.add_target("v1", M2)
        r.publish()
        clock.advance(seconds=61)
        await a.resolve(GUN, "v1", TOFU)
        newer = await store.load(GUN)
        # Replica B finishes a refresh started before A's and saves what it fetched.
        _, state = decode_record(older, max_bytes=1 << 26)
        await store.save(GUN, encode_record(state, clock()), generation=state_generation(state))
        assert await store.load(GUN) == newer
    finally:
        await a.aclose()


async def test_one_replica_refreshes_the_others_wait_and_reuse(conn: RedisConnection) -> None:
    server = SimServer()
    server.add(repo())
    clock = Clock()
    server.gate = asyncio.Event()
    a = source(server, conn.store("n:"), clock)
    b = source(server, conn.store("n:"), clock)
    try:
        calls = [s.resolve(GUN, "v1", TOFU) for s in (a, b) for _ in range(5)]
        tasks = [asyncio.ensure_future(c) for c in calls]
        await asyncio.sleep(0.3)  # A (or B) holds the lock and waits on notary
        server.gate.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert {t.digest for t in results} == {digest(M1)}
        # One walk across both; the other replica checks only the signed timestamp (and
        # probes for a new root) itself: a stored state never stands in for freshness.
        names = server.names
        assert names.count("timestamp.json") == 2, names
        assert names.count("root.json") == 1, names
        assert len([n for n in names if n.startswith(("snapshot.", "targets."))]) == 2, names
    finally:
        await a.aclose()
        await b.aclose()


async def test_crashed_lock_holder_blocks_others_at_most_lock_timeout(
    redis_server: RedisServer, conn: RedisConnection
) -> None:
    server = SimServer()
    server.add(repo())
    clock = Clock()
    store = conn.store("n:", lock_timeout=0.5)
    # A lock as a replica of ours takes it (a token, PX lock_timeout), then crashed.
    redis_server.command("SET", store.lock_key(GUN), "0123456789abcdef" * 2, "PX", "500")
    src = source(server, store, clock)
    try:
        started = asyncio.get_running_loop().time()
        got = await asyncio.wait_for(src.resolve(GUN, "v1", TOFU), 5)
        assert got.digest == digest(M1)
        assert asyncio.get_running_loop().time() - started >= 0.3  # it did wait for the lock
        assert server.names.count("timestamp.json") == 1
        assert redis_server.command("EXISTS", store.lock_key(GUN)) == 0  # released
    finally:
        await src.aclose()


# -- Redis is untrusted: planted locks and generations (issue 17, findings 6 and 1) ----------


DEAD_LOCKS = [
    ("eternal-token", ("SET", "0123456789abcdef" * 2)),
    ("eternal-garbage", ("SET", "garbage")),
    ("garbage-with-expiry", ("SET", "garbage", "PX", "400")),
    ("longer-than-lock-timeout", ("SET", "0123456789abcdef" * 2, "PX", "600000")),
    ("hash", ("HSET", "f", "v")),
    ("list", ("RPUSH", "x")),
]


@pytest.mark.parametrize(("_name", "command"), DEAD_LOCKS, ids=[n for n, _ in DEAD_LOCKS])
async def test_a_lock_no_replica_can_hold_is_taken_over_at_once(
    redis_server: RedisServer, conn: RedisConnection, _name: str, command: tuple[str, ...]
) -> None:
    store = conn.store("s:", lock_timeout=0.4)
    key = store.lock_key("g")
    verb, *rest = command
    redis_server.command(verb, key, *rest)
    token = await store.acquire("g")
    assert token is not None
    assert redis_server.command("GET", key) == token.encode()
    assert 0 < int(redis_server.command("PTTL", key)) <= 400  # type: ignore[call-overload]
    assert await store.acquire("g") is None  # ours now: exclusive again
    await store.release("g", token)
    assert redis_server.command("EXISTS", key) == 0


async def test_eternal_lock_does_not_stall_a_refresh(
    redis_server: RedisServer, conn: RedisConnection
) -> None:
    """Finding 6: a lock key without expiry used to hold every refresh for lock_timeout."""
    server = SimServer()
    server.add(repo())
    clock = Clock()
    store = conn.store("n:", lock_timeout=30.0)
    redis_server.command("SET", store.lock_key(GUN), "0123456789abcdef" * 2)  # no PX
    src = source(server, store, clock)
    try:
        got = await asyncio.wait_for(src.resolve(GUN, "v1", TOFU), 5)  # not 30 s
        assert got.digest == digest(M1)
        assert redis_server.command("EXISTS", store.lock_key(GUN)) == 0  # released
    finally:
        await src.aclose()


async def test_planted_generation_does_not_freeze_saves(
    redis_server: RedisServer, conn: RedisConnection
) -> None:
    """Finding 1 (``gen=999999``): the stored generation is judged from the record's signed
    timestamp, so a planted ``gen`` no longer refuses every later save."""
    server = SimServer()
    r = server.add(repo())
    clock = Clock()
    store = conn.store("n:")
    src = source(server, store, clock)
    try:
        await src.resolve(GUN, "v1", TOFU)
        redis_server.command("HSET", store.state_key(GUN), "gen", "999999")
        r.add_target("v1", M2)
        r.publish()
        clock.advance(seconds=61)
        assert (await src.resolve(GUN, "v1", TOFU)).digest == digest(M2)
        stored = await store.load(GUN)
        assert stored is not None
        _, state = decode_record(stored, max_bytes=1 << 26)
        assert state_generation(state) == r.versions["timestamp"]
        assert redis_server.command("HGET", store.state_key(GUN), "gen") == (
            str(r.versions["timestamp"]).encode()
        )
    finally:
        await src.aclose()


async def test_judged_save_keeps_a_genuinely_higher_generation(conn: RedisConnection) -> None:
    store = conn.store("s:")
    await store.save("g", b"seven", generation=7, judge=lambda _d: None)
    judge = {b"seven": 7, b"five": 5}.get
    await store.save("g", b"five", generation=5, judge=judge)  # a late, older save
    assert await store.load("g") == b"seven"
    await store.save("g", b"eight", generation=8, judge=judge)
    assert await store.load("g") == b"eight"
    await store.save("g", b"six", generation=6, judge=lambda _d: None)  # "eight" unverifiable
    assert await store.load("g") == b"six"


# -- outages ----------------------------------------------------------------------------------


async def test_warm_path_survives_redis_outage_logged_once_and_recovers(
    redis_server: RedisServer, conn: RedisConnection, caplog: pytest.LogCaptureFixture
) -> None:
    server = SimServer()
    r = server.add(repo())
    old = r.checkpoint()
    r.add_target("v1", M2)
    r.publish()
    clock = Clock()
    src = source(server, conn.store("n:"), clock)
    try:
        assert (await src.resolve(GUN, "v1", TOFU)).digest == digest(M2)
        assert store_status()["trust_store"] == "up"
        redis_server.kill()
        with caplog.at_level(logging.INFO, logger="trustproxy.store"):
            for _ in range(20):  # the hot set answers: no Redis call at all
                assert (await src.resolve(GUN, "v1", TOFU)).digest == digest(M2)
            clock.advance(seconds=61)
            for _ in range(20):  # refresh from notary without the store
                assert (await src.resolve(GUN, "v1", TOFU)).digest == digest(M2)
                clock.advance(seconds=61)
            # The per-process floors still hold while Redis is down (or empty after it).
            r.serve(old)
            with pytest.raises(RollbackError):
                await src.resolve(GUN, "v1", TOFU)
            downs = [m for m in caplog.messages if "is unavailable" in m]
            assert len(downs) == 1, caplog.messages
            assert store_status()["trust_store"] == "down"
            assert up_gauge(conn) == 0
            with pytest.raises(StoreUnavailableError):
                await conn.store("n:").load(GUN)  # fails fast while down (no probe due)
            redis_server.start()  # same port, empty
            await asyncio.sleep(0.4)  # past retry_after: the next call probes
            assert await conn.store("n:").load(GUN) is None
            backs = [m for m in caplog.messages if "is back after" in m]
            assert len(backs) == 1
        assert store_status()["trust_store"] == "up"
        assert up_gauge(conn) == 1
        clock.advance(seconds=61)
        with pytest.raises(RollbackError):  # Redis came back empty: floors from the process
            await src.resolve(GUN, "v1", TOFU)
    finally:
        await src.aclose()


async def test_frozen_redis_costs_at_most_the_timeout(
    redis_server: RedisServer, conn: RedisConnection
) -> None:
    server = SimServer()
    server.add(repo())
    clock = Clock()
    src = source(server, conn.store("n:"), clock)
    redis_server.freeze()
    try:
        started = asyncio.get_running_loop().time()
        got = await asyncio.wait_for(src.resolve(GUN, "v1", TOFU), 10)
        assert got.digest == digest(M1)
        # One load times out (0.5 s); the lock and the save then fail fast (down).
        assert asyncio.get_running_loop().time() - started < 3.0
        assert store_status()["trust_store"] == "down"
    finally:
        redis_server.thaw()
        await src.aclose()
