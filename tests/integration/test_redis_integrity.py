"""Redis is untrusted storage (issue 17, findings 1 and 6), against the real servers.

Two trustproxy replicas share one real redis-server and read trust data from the real
notary-server (through the counting front); the attacker is whoever can write Redis:

* a record saved while a tag was signed, written back after the revocation with its fetch
  time set to now, must not bring the tag back, neither on a fresh replica nor on a running
  one whose hot cache was evicted by requests for other repositories;
* ``gen=999999`` planted beside a record must not stop replicas from saving newer states;
* a refresh lock without expiry must not stall refreshes for ``lock_timeout``.

Each case signs its own repository in a module-wide replica set.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from testbed import images
from testbed.enforcement_bed import wait_until
from testbed.notary_server import NotaryBed
from testbed.redis_server import redis_binary
from testbed.replica_bed import ReplicaSet, redate_record, signed_replica_set
from tests.conftest import RegistryBed, requires

pytestmark = pytest.mark.integration

REFRESH = 2.0  # cache.refresh_seconds
LOCK_TIMEOUT = 30.0  # cache.lock_timeout (the default): what an eternal lock used to cost
#: more than the hot cache holds (NotarySourceOptions.max_hot_entries, 1024)
EVICTING_REQUESTS = 1100


@pytest.fixture(scope="module")
def replicas(
    registry: RegistryBed, notary_bed: NotaryBed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ReplicaSet]:
    requires("notary")
    if redis_binary() is None:
        pytest.skip("redis-server is not installed (run `make test` to install it)")
    with signed_replica_set(
        tmp_path_factory.mktemp("redis-integrity"),
        registry.url,
        notary_bed,
        label="integ",
        refresh_seconds=REFRESH,
        cache_extra={"lock_timeout": LOCK_TIMEOUT},
    ) as started:
        yield started


def _image(replicas: ReplicaSet, label: str) -> images.Image:
    return images.single_image(f"{replicas.bed.namespace} {label}")


def _revoked_after_saving_record(replicas: ReplicaSet, name: str) -> tuple[bytes, bytes, str]:
    """Sign ``old`` and ``kept``, pull ``old`` through replica a, keep the record a saved in
    Redis; revoke ``old`` (notary remove + publish) and wait until a answers 404.
    Returns (record key, the record saved while ``old`` was signed, old's digest)."""
    bed = replicas.bed
    gun, repo = bed.gun(name), bed.repo(name)
    old = bed.push_and_sign(name, "old", _image(replicas, f"{name} old"))
    bed.push_and_sign(name, "kept", _image(replicas, f"{name} kept"))
    r = replicas[0].manifest(repo, "old")
    assert r.status_code == 200, (r.status_code, r.text, replicas.logs())
    wait_until(lambda: replicas.record_key(gun) is not None, timeout=5, interval=0.1)
    key = replicas.record_key(gun)
    assert key is not None
    saved = replicas.read(key)
    assert saved is not None
    bed.trust(name).remove("old")
    wait_until(
        lambda: replicas[0].manifest(repo, "old").status_code == 404,
        timeout=REFRESH + 10,
        interval=0.2,
    )
    return key, saved, f"sha256:{old.sha256}"


def _assert_revoked(replicas: ReplicaSet, index: int, name: str, old_digest: str) -> None:
    replica = replicas[index]
    repo = replicas.bed.repo(name)
    r = replica.manifest(repo, "old")
    assert r.status_code != 200, (
        f"{replica.name} served the revoked tag 'old' ({images.sha256(r.content)}, signed "
        f"digest before the revocation {old_digest}) from a replayed Redis record\n"
        f"{replicas.front.summary(replicas.bed.gun(name))}\n{replicas.logs()}"
    )
    assert r.status_code == 404, (r.status_code, r.text)
    assert replica.proxy.tags(repo) == ["kept"]
    kept = replica.manifest(repo, "kept")
    assert kept.status_code == 200, (kept.status_code, kept.text)


def test_replayed_record_does_not_bring_a_revoked_tag_back_on_a_fresh_replica(
    replicas: ReplicaSet,
) -> None:
    name = "fresh/app"
    key, saved, old_digest = _revoked_after_saving_record(replicas, name)
    replicas[1].restart()  # a fresh replica: nothing in process
    replicas.overwrite(key, redate_record(saved))  # the old record, "fetched" now
    since = time.monotonic()
    _assert_revoked(replicas, 1, name, old_digest)
    gun = replicas.bed.gun(name)
    # It asked the trust server for the signed timestamp instead of believing Redis.
    assert replicas.front.count(gun, "timestamp.json", since=since) >= 1


async def _evict(replicas: ReplicaSet, count: int) -> list[int]:
    """``count`` manifest requests to replica a for repositories nobody signed (each takes
    a hot cache entry: the trust server answers "no trust data")."""
    bed = replicas.bed
    todo = [bed.repo(f"evict{i}/app") for i in range(count)]
    statuses: list[int] = []
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=replicas[0].url, limits=limits, timeout=30) as http:

        async def worker() -> None:
            while todo:
                repo = todo.pop()
                r = await http.get(
                    f"/v2/{repo}/manifests/latest", headers={"Accept": images.ACCEPT_ALL}
                )
                statuses.append(r.status_code)

        await asyncio.gather(*(worker() for _ in range(32)))
    return statuses


def test_replayed_record_does_not_bring_a_revoked_tag_back_after_eviction(
    replicas: ReplicaSet,
) -> None:
    name = "evicted/app"
    key, saved, old_digest = _revoked_after_saving_record(replicas, name)
    statuses = asyncio.run(_evict(replicas, EVICTING_REQUESTS))
    assert set(statuses) == {404}, sorted(set(statuses))
    replicas.overwrite(key, redate_record(saved))
    _assert_revoked(replicas, 0, name, old_digest)


def test_planted_generation_does_not_freeze_the_stored_state(replicas: ReplicaSet) -> None:
    bed = replicas.bed
    name = "gen/app"
    gun, repo = bed.gun(name), bed.repo(name)
    bed.push_and_sign(name, "v1", _image(replicas, f"{name} v1"))
    r = replicas[0].manifest(repo, "v1")
    assert r.status_code == 200, (r.status_code, r.text, replicas.logs())
    wait_until(lambda: replicas.record_key(gun) is not None, timeout=5, interval=0.1)
    key = replicas.record_key(gun)
    assert key is not None
    before = replicas.record(gun)
    assert before is not None
    replicas.set_field(key, b"gen", b"999999")
    v2 = bed.push_and_sign(name, "v2", _image(replicas, f"{name} v2"))
    wait_until(
        lambda: replicas[0].manifest(repo, "v2").status_code == 200,
        timeout=REFRESH + 10,
        interval=0.2,
    )
    assert images.sha256(replicas[0].manifest(repo, "v2").content) == f"sha256:{v2.sha256}"

    def saved_newer() -> bool:
        after = replicas.record(gun)
        return after is not None and (
            after[1].versions["timestamp"] > before[1].versions["timestamp"]
        )

    try:
        wait_until(saved_newer, timeout=5, interval=0.1)
    except TimeoutError:
        after = replicas.record(gun)
        pytest.fail(
            f"the record in Redis stayed at timestamp version "
            f"{before[1].versions['timestamp']} after gen=999999 was planted (now "
            f"{after[1].versions if after else None}): saves are frozen\n{replicas.logs()}"
        )


def test_eternal_lock_does_not_stall_refreshes(replicas: ReplicaSet) -> None:
    bed = replicas.bed
    name = "lock/app"
    gun, repo = bed.gun(name), bed.repo(name)
    bed.push_and_sign(name, "v1", _image(replicas, f"{name} v1"))
    r = replicas[0].manifest(repo, "v1")
    assert r.status_code == 200, (r.status_code, r.text, replicas.logs())
    wait_until(lambda: replicas.record_key(gun) is not None, timeout=5, interval=0.1)
    saved_at = time.monotonic()
    lock = replicas.lock_key(gun)
    with replicas.redis_client() as client:
        client.set(lock, "0123456789abcdef" * 2)  # a token, and no expiry
        assert client.pttl(lock) == -1
    v2 = bed.push_and_sign(name, "v2", _image(replicas, f"{name} v2"))
    # Past refresh_seconds even code that took a stored record as fresh must refresh.
    time.sleep(max(0.0, saved_at + REFRESH + 0.5 - time.monotonic()))
    # Replica b has never seen the repository: its refresh needs the lock.
    with httpx.Client(base_url=replicas[1].url, timeout=LOCK_TIMEOUT / 2) as http:
        try:
            r = http.get(f"/v2/{repo}/manifests/v2", headers={"Accept": images.ACCEPT_ALL})
        except httpx.TimeoutException:
            pytest.fail(
                f"a refresh waited more than {LOCK_TIMEOUT / 2:g}s for a lock without "
                f"expiry (lock_timeout {LOCK_TIMEOUT:g}s)\n{replicas.logs()}"
            )
    assert r.status_code == 200, (r.status_code, r.text, replicas.logs())
    assert images.sha256(r.content) == f"sha256:{v2.sha256}"
    with replicas.redis_client() as client:
        # Taken over and released by the replica (or left to expire): never eternal again.
        assert client.pttl(lock) != -1
