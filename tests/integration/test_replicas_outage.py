"""Two trustproxy replicas when their shared Redis dies: warm tags keep being served (no
5xx), a repository never seen is still decided from the trust server, and a restarted Redis
is used again. Each test runs its own Redis (it kills it) and its own replicas."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from testbed import images
from testbed.counting_front import CountingFront
from testbed.enforcement_bed import EnforcementBed, rule, wait_until
from testbed.notary_server import NotaryBed
from testbed.redis_server import RedisServer, redis_binary
from testbed.replica_bed import Answer, Replica, ReplicaSet, start_replica_set, sustained
from tests.conftest import RegistryBed, requires

pytestmark = pytest.mark.integration

REFRESH = 2.0  # cache.refresh_seconds
WARM_TAGS = ("w1", "w2", "w3")


@dataclass
class World:
    replicas: ReplicaSet
    signed: dict[tuple[str, str], str]  # (repository name, tag) -> digest


@pytest.fixture
def world(
    registry: RegistryBed, notary_bed: NotaryBed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    requires("notary")
    if redis_binary() is None:
        pytest.skip("redis-server is not installed (run `make test` to install it)")
    workdir = tmp_path_factory.mktemp("replicas-outage")
    ns = f"out{uuid.uuid4().hex[:8]}"
    bed = EnforcementBed.create(workdir / "bed", registry.url, notary_bed, namespace=ns)
    redis_server = RedisServer(workdir / "redis")
    front = CountingFront(notary_bed, workdir / "front")
    started: ReplicaSet | None = None
    try:
        signed: dict[tuple[str, str], str] = {}
        for name, tags in (("warm/app", WARM_TAGS), ("warm2/app", ("w1",)),
                           ("cold/app", ("c1",)), ("cold2/app", ("c1",))):  # fmt: skip
            for tag in tags:
                image = images.single_image(f"{ns} {name} {tag}")
                signed[(name, tag)] = f"sha256:{bed.push_and_sign(name, tag, image).sha256}"
        redis_server.start()
        front.start()
        started = start_replica_set(
            workdir / "proxies",
            bed,
            notary_bed,
            redis_server,
            front,
            {bed.pattern("*/app"): rule(root_keys=[bed.root_key_id])},
            key_prefix=f"tp-{ns}:",
            refresh_seconds=REFRESH,
            cache_extra={"redis_timeout": 0.5, "lock_timeout": 5},
        )
        yield World(started, signed)
    finally:
        if started is not None:
            started.stop()
        front.stop()
        redis_server.stop()
        bed.close()


def _metric(text: str, name: str) -> list[float]:
    """Every sample value of ``name`` (any labels) in a Prometheus exposition."""
    found = re.findall(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", text, re.M)
    return [float(v) for v in found]


def _readyz(replica: Replica) -> tuple[int, object]:
    """(status, the body's ``trust_store``)."""
    r = replica.get("/readyz")
    body = r.json()
    return r.status_code, body.get("trust_store") if isinstance(body, dict) else None


def _warm_up(world: World, names: tuple[str, ...]) -> None:
    bed, replicas = world.replicas.bed, world.replicas
    for replica in replicas.replicas:
        for (name, tag), digest in world.signed.items():
            if name not in names:
                continue
            r = replica.manifest(bed.repo(name), tag)
            assert r.status_code == 200, (replica.name, name, tag, r.status_code, r.text)
            assert images.sha256(r.content) == digest
    for name in names:
        _wait_record(replicas, bed.gun(name))


def _wait_record(replicas: ReplicaSet, gun: str) -> None:
    wait_until(lambda: replicas.record_key(gun) is not None, timeout=5, interval=0.1)


def _pull(replica: Replica, world: World, name: str, tag: str) -> None:
    r = replica.manifest(world.replicas.bed.repo(name), tag)
    assert r.status_code == 200, (replica.name, name, tag, r.status_code, r.text,
                                  world.replicas.logs())  # fmt: skip
    assert images.sha256(r.content) == world.signed[(name, tag)]


@pytest.mark.slow
def test_redis_killed_mid_load_then_restarted(world: World) -> None:
    replicas, bed = world.replicas, world.replicas.bed
    warm = ("warm/app", "warm2/app")
    _warm_up(world, warm)
    targets = [
        (replica, bed.repo(name), tag)
        for replica in replicas.replicas
        for (name, tag) in world.signed
        if name in warm
    ]
    expected = {(bed.repo(name), tag): d for (name, tag), d in world.signed.items()}
    killed_at = 0.0

    async def load() -> list[Answer]:
        nonlocal killed_at

        async def kill_later() -> None:
            nonlocal killed_at
            await asyncio.sleep(1.0)
            replicas.redis.kill()
            killed_at = time.monotonic()

        # Longer than refresh_seconds after the kill: every warm repository is refreshed
        # (by both replicas) while Redis is dead.
        answers, _ = await asyncio.gather(
            sustained(targets, seconds=1.0 + REFRESH + 1.5, concurrency=16), kill_later()
        )
        return answers

    answers = asyncio.run(load())
    assert not replicas.redis.alive()
    statuses = Counter((a.replica, a.status) for a in answers)
    assert len(answers) >= 200, statuses
    failed = [a for a in answers if a.status != 200]
    assert not failed, (statuses, failed[:5], replicas.logs())
    wrong = [a for a in answers if a.digest != expected[(a.repo, a.tag)]]
    assert not wrong, wrong[:5]
    # The replicas did refresh from the trust server with Redis down (so a revocation
    # would still reach them), and noticed that Redis is down.
    for name in warm:
        gun = bed.gun(name)
        fetched = replicas.front.count(gun, "timestamp.json", since=killed_at)
        assert fetched >= 1, f"{gun}: no refresh after the kill:\n{replicas.front.summary(gun)}"
    for replica in replicas.replicas:
        text = replica.proxy.metrics()
        assert 0.0 in _metric(text, "trustproxy_store_up"), (replica.name, text[-2000:])
        # Still ready (draining every replica during a Redis outage helps nobody), and says
        # that the store is down.
        assert _readyz(replica) == (200, "down")

    # Recovery: Redis back on the same port (empty).
    replicas.redis.start()
    cold_gun = bed.gun("cold/app")

    def recovered() -> bool:
        # A request lets the store's probe through (one per retry interval while down).
        for replica in replicas.replicas:
            _pull(replica, world, "warm/app", "w1")
            if 1.0 not in _metric(replica.proxy.metrics(), "trustproxy_store_up"):
                return False
        return True

    wait_until(recovered, timeout=15, interval=0.3)
    for replica in replicas.replicas:
        assert _readyz(replica) == (200, "up")
    # A repository never seen: decided, and its state is shared through the new Redis.
    since = time.monotonic()
    _pull(replicas[0], world, "cold/app", "c1")
    _wait_record(replicas, cold_gun)
    _pull(replicas[1], world, "cold/app", "c1")
    counts = replicas.front.counts(cold_gun, since=since)
    summary = replicas.front.summary(cold_gun, since=since)
    # B starts from the state A saved: the walk's files once, the signed timestamp once
    # per replica (a stored state never stands in for freshness).
    assert counts["timestamp.json"] == 2, summary
    walked = [n for n in counts if n.startswith(("snapshot.", "targets."))]
    assert walked, summary
    assert all(counts[n] == 1 for n in walked), summary
    for name, tag in world.signed:
        if name in warm:
            for replica in replicas.replicas:
                _pull(replica, world, name, tag)


def test_cold_repository_while_redis_is_down(world: World) -> None:
    """Trust decisions never depend on the store being up: a repository neither replica has
    seen is fetched and verified from the trust server, Redis or not."""
    replicas = world.replicas
    _warm_up(world, ("warm/app",))
    replicas.redis.kill()
    for replica in replicas.replicas:
        started = time.monotonic()
        _pull(replica, world, "cold2/app", "c1")
        # redis_timeout is 0.5 s: a dead Redis must not cost a request much more.
        assert time.monotonic() - started < 5.0
        _pull(replica, world, "warm/app", "w1")
