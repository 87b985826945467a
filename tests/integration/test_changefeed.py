"""Revocation through notary-server's change feed, on two replicas sharing a real Redis.

The replicas keep what they verified for ``refresh_seconds`` = 300 s: without the change
feed a ``notary remove`` + publish would go on being served for up to five minutes. With
it, one replica polls notary-server's ``/v2/_trust/changefeed`` every second (a lease in
Redis), the other only reads the invalidation log in Redis, and both must refuse the
revoked tag within seconds. The front counts what each repository's trust data cost, so
the tests can also check that only the changed repository was fetched again.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from proxy.sources.invalidation import ALL, Invalidation
from proxy.sources.redis_invalidation import MAX_CURSOR_CHARS, RedisInvalidationLog
from proxy.sources.redis_store import RedisConnection
from testbed import images
from testbed.enforcement_bed import (
    EnforcementBed,
    oci_error,
    proxy_config,
    rule,
    upstream,
    wait_until,
    write_policy,
)
from testbed.notary_server import NotaryBed
from testbed.proxy_server import start_proxy
from testbed.redis_server import redis_binary
from testbed.replica_bed import ReplicaSet, signed_replica_set
from tests.conftest import RegistryBed, requires

pytestmark = pytest.mark.integration

REFRESH = 300.0  # cache.refresh_seconds: far longer than any wait below
WITHIN = 30.0  # how long the tests wait for both replicas (the feed polls every 1 s)


@pytest.fixture(scope="module")
def replicas(
    registry: RegistryBed, notary_bed: NotaryBed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ReplicaSet]:
    requires("notary")
    if redis_binary() is None:
        pytest.skip("redis-server is not installed (run `make test` to install it)")
    workdir = tmp_path_factory.mktemp("changefeed")
    with signed_replica_set(
        workdir, registry.url, notary_bed, label="cf", refresh_seconds=REFRESH
    ) as started:
        yield started


def _status(replicas: ReplicaSet, repo: str, tag: str) -> tuple[int, int]:
    return replicas[0].manifest(repo, tag).status_code, replicas[1].manifest(repo, tag).status_code


def _served(replicas: ReplicaSet, repo: str, tag: str, digest: str) -> None:
    for replica in replicas.replicas:
        r = replica.manifest(repo, tag)
        assert r.status_code == 200, (replica.name, r.status_code, r.text, replicas.logs())
        assert images.sha256(r.content) == f"sha256:{digest}"


def test_remove_and_publish_is_refused_on_both_replicas_within_seconds(
    replicas: ReplicaSet,
) -> None:
    """Sign two repositories and pull both through both replicas (now cached for 300 s);
    revoke the tag of one: both replicas refuse it long before their refresh interval,
    and the other repository is not fetched again (the invalidation names one)."""
    bed = replicas.bed
    name, other = "revoke/app", "untouched/app"
    signed = bed.push_and_sign(name, "v1", images.single_image(f"{bed.namespace} {name}"))
    kept = bed.push_and_sign(other, "v1", images.single_image(f"{bed.namespace} {other}"))
    repo, other_repo = bed.repo(name), bed.repo(other)
    # Signing publishes; let the feed's invalidations of that settle before caching.
    time.sleep(3)
    _served(replicas, repo, "v1", signed.sha256)
    _served(replicas, other_repo, "v1", kept.sha256)

    bed.trust(name).remove("v1")  # notary remove + publish
    revoked_at = time.monotonic()
    took = wait_until(lambda: _status(replicas, repo, "v1") == (404, 404), timeout=WITHIN)
    # The mechanism, not a timing ratio: both replicas had the tag cached for REFRESH and
    # refused it after a few seconds, so something other than the refresh interval told them.
    assert took < WITHIN < REFRESH
    for replica in replicas.replicas:
        r = replica.manifest(repo, "v1")
        assert r.status_code == 404
        assert oci_error(r)["code"] == "MANIFEST_UNKNOWN", r.text
    front = replicas.front
    assert front.count(bed.gun(name), "timestamp.json", since=revoked_at) >= 1
    # The other repository is still served from what the replicas verified before.
    _served(replicas, other_repo, "v1", kept.sha256)
    assert front.count(bed.gun(other), "timestamp.json", since=revoked_at) == 0, front.summary(
        bed.gun(other), since=revoked_at
    )


def test_deleted_trust_data_is_refused_on_both_replicas(replicas: ReplicaSet) -> None:
    """``notary delete --remote`` (the feed's ``deletion``): both replicas answer 404 with
    "no trust data" within seconds, not after the refresh interval."""
    bed = replicas.bed
    name = "deleted/app"
    signed = bed.push_and_sign(name, "v1", images.single_image(f"{bed.namespace} {name}"))
    repo = bed.repo(name)
    time.sleep(3)
    _served(replicas, repo, "v1", signed.sha256)
    bed.trust(name).delete_remote()
    took = wait_until(lambda: _status(replicas, repo, "v1") == (404, 404), timeout=WITHIN)
    assert took < WITHIN
    r = replicas[1].manifest(repo, "v1")
    assert "trust data" in oci_error(r)["message"], r.text


def test_one_replica_polls_and_readyz_says_so(replicas: ReplicaSet) -> None:
    """Exactly one replica holds the lease; both report the feed in /readyz."""
    seen: list[list[dict[str, object]]] = []

    def one_polls() -> bool:
        states = [r.get("/readyz").json()["changefeeds"]["notary"] for r in replicas.replicas]
        seen.append(states)
        polling = [s["polling"] for s in states].count(True) == 1
        return polling and sorted(str(s["state"]) for s in states) == ["active", "standby"]

    # A poll that failed just now (a loaded machine) shows until the next one: retry a bit.
    wait_until(one_polls, timeout=10, interval=0.5)
    assert seen


# -- the workers of one host, without Redis: the state file carries the log ---------------------


def _access(log_path: Path, repo: str) -> Counter[tuple[int, int]]:
    """(worker slot, status) of every access-log line for ``repo``'s manifests."""
    seen: Counter[tuple[int, int]] = Counter()
    for line in log_path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if doc.get("logger") == "trustproxy.access" and f"/v2/{repo}/manifests" in str(
            doc.get("path", "")
        ):
            seen[(int(doc.get("worker", -1)), int(doc.get("status", 0)))] += 1
    return seen


def _statuses(url: str, repo: str, tag: str, n: int) -> list[int]:
    """``n`` GETs, each on a new connection (the kernel spreads them over the workers)."""
    out = []
    for _ in range(n):
        with httpx.Client(base_url=url, timeout=30) as http:
            r = http.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": images.ACCEPT_ALL})
            out.append(r.status_code)
    return out


def test_workers_of_one_host_without_redis_refuse_within_seconds(
    registry: RegistryBed, notary_bed: NotaryBed, tmp_path: Path
) -> None:
    """``serve`` with two workers and no Redis: the lease, the cursor and the invalidation
    log live in the host's state file. Both workers cache the tag (300 s); after
    ``notary remove`` + publish neither serves it within seconds (a sibling's hand-over
    from before the change is refused too)."""
    requires("notary")
    bed = EnforcementBed.create(
        tmp_path / "bed", registry.url, notary_bed, namespace=f"cfw{uuid.uuid4().hex[:8]}"
    )
    try:
        bed.trust("setup/app")
        policy = write_policy(
            tmp_path / "policy.yaml", {bed.pattern("*/app"): rule(root_keys=[bed.root_key_id])}
        )
        config = proxy_config([upstream("internal", bed.registry_url)], notary_bed, policy)
        config["server"] = {"workers": 2}
        config["cache"] = {"refresh_seconds": REFRESH}
        server = start_proxy(tmp_path, config, name="cf-workers")
        try:
            name = "workers/app"
            bed.push_and_sign(name, "v1", images.single_image(f"{bed.namespace} {name}"))
            repo = bed.repo(name)
            time.sleep(3)
            url = server.extra["url"]
            wait_until(
                lambda: (
                    all(s == 200 for s in _statuses(url, repo, "v1", 4))
                    and {w for (w, st) in _access(server.log_path, repo) if st == 200} == {0, 1}
                ),
                timeout=30,
                interval=0.1,
            )
            bed.trust(name).remove("v1")
            since = _access(server.log_path, repo)
            took = wait_until(
                lambda: all(s == 404 for s in _statuses(url, repo, "v1", 8)), timeout=WITHIN
            )
            assert took < WITHIN < REFRESH
            refused = _access(server.log_path, repo) - since
            assert {w for (w, st) in refused if st == 404} == {0, 1}, refused
        finally:
            server.stop()
    finally:
        bed.close()


# -- the Redis side of the log, against the same real redis-server ------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_redis_log_lease_cursor_and_entries(replicas: ReplicaSet) -> None:
    """The lease is one holder's until it stops renewing; a planted lease no replica can
    hold is taken over; an oversized cursor is not read; entries that are not ours are
    skipped; readers see what was published after they started."""
    prefix = f"tp-log-{uuid.uuid4().hex[:8]}:"
    conn = RedisConnection(replicas.redis.url, timeout=1.0)
    a, b = RedisInvalidationLog(conn, prefix), RedisInvalidationLog(conn, prefix)
    try:
        assert await a.lease("a" * 32, 0.5)
        assert not await b.lease("b" * 32, 0.5)
        assert await a.lease("a" * 32, 0.5)  # renewed
        await asyncio.sleep(0.7)  # a stopped renewing
        assert await b.lease("b" * 32, 0.5)
        await a.release("a" * 32)  # not a's: b keeps it
        assert not await a.lease("a" * 32, 5.0)
        await b.release("b" * 32)
        assert await a.lease("a" * 32, 5.0)
        with replicas.redis_client() as r:
            r.set(a.lease_key, "not-a-token")  # no expiry: dead
        assert await b.lease("b" * 32, 5.0)

        assert await a.load_cursor() is None
        await a.save_cursor("42")
        assert await b.load_cursor() == "42"
        with replicas.redis_client() as r:
            r.set(a.cursor_key, "9" * (MAX_CURSOR_CHARS + 1))
        assert await b.load_cursor() is None

        start = await b.position()
        await a.publish([Invalidation("reg/ns/app", 7), Invalidation(ALL)])
        with replicas.redis_client() as r:
            r.xadd(a.stream_key, {"other": "x"})  # someone else's entry
            r.xadd(a.stream_key, {"r": b"\xff\xfe"})  # not text
            r.xadd(a.stream_key, {"r": "x/y", "v": "-1"})  # not a version: unknown
        position, repos = await b.read(start, 100)
        assert repos == [Invalidation("reg/ns/app", 7), Invalidation(ALL), Invalidation("x/y")]
        assert (await b.read(position, 100))[1] == []
        assert await b.position() == position
    finally:
        await conn.aclose()
