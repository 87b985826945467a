"""Two trustproxy replicas sharing trust state in one real redis-server.

One replica set serves the module: replicas ``a`` and ``b`` with the same policy and
``cache:`` section (``refresh_seconds`` short), reading trust data through a counting HTTPS
front (``testbed.counting_front``) that can also serve an older, validly signed view of a
repository (a trust server rolling back). Every case signs its own repository, so the cases
share nothing but the processes.

The Redis outage cases live in ``test_replicas_outage.py`` (they kill their own Redis).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from testbed import images
from testbed.counting_front import signed_version
from testbed.enforcement_bed import oci_error, wait_until
from testbed.notary_server import NotaryBed
from testbed.redis_server import redis_binary
from testbed.replica_bed import (
    Replica,
    ReplicaSet,
    burst,
    redate_record,
    retarget_record,
    signed_replica_set,
)
from testbed.trust_scenarios import RELEASES
from tests.conftest import RegistryBed, requires

pytestmark = pytest.mark.integration

REFRESH = 2.0  # cache.refresh_seconds: how long a replica uses what it verified
SLACK = 1.5  # scheduling, a refresh round trip, the lock


@pytest.fixture(scope="module")
def replicas(
    registry: RegistryBed, notary_bed: NotaryBed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ReplicaSet]:
    requires("notary")
    if redis_binary() is None:
        pytest.skip("redis-server is not installed (run `make test` to install it)")
    workdir = tmp_path_factory.mktemp("replicas")
    with signed_replica_set(
        workdir, registry.url, notary_bed, label="rep", refresh_seconds=REFRESH
    ) as started:
        yield started


def _image(replicas: ReplicaSet, label: str) -> images.Image:
    return images.single_image(f"{replicas.bed.namespace} {label}")


def _answers(replica: Replica, repo: str, tag: str, status: int) -> Callable[[], bool]:
    return lambda: replica.manifest(repo, tag).status_code == status


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def _publish_then_roll_forward(
    replicas: ReplicaSet, name: str
) -> tuple[dict[str, bytes], str, str]:
    """Sign ``old``; capture that view (v1); revoke ``old`` and sign ``new`` (v2).
    Returns (captured v1 files, old digest, new digest)."""
    bed = replicas.bed
    old = bed.push_and_sign(name, "old", _image(replicas, f"{name} old"))
    v1 = replicas.front.capture(bed.gun(name))
    bed.trust(name).remove("old")
    new = bed.push_and_sign(name, "new", _image(replicas, f"{name} new"))
    return v1, f"sha256:{old.sha256}", f"sha256:{new.sha256}"


def _assert_sees_v2(replicas: ReplicaSet, index: int, name: str, new: str) -> None:
    repo = replicas.bed.repo(name)
    r = replicas[index].manifest(repo, "new")
    assert r.status_code == 200, (r.status_code, r.text, replicas.logs())
    assert images.sha256(r.content) == new
    r = replicas[index].manifest(repo, "old")
    assert r.status_code == 404, (r.status_code, r.text)


def _assert_refuses_rollback(
    replicas: ReplicaSet, index: int, name: str, new: str, *, since: float, stored: bool = True
) -> None:
    """Replica ``index`` was just offered the captured v1 view: ``old`` (revoked in v2) must
    not be served, and ``new`` is either v2's answer or a refusal, never anything else."""
    bed, front = replicas.bed, replicas.front
    gun, repo = bed.gun(name), bed.repo(name)
    replica = replicas[index]
    r_old = replica.manifest(repo, "old")
    r_new = replica.manifest(repo, "new")
    seen = front.fetches(gun, since=since)
    # The replica really asked the (lying) server: otherwise this proves nothing.
    assert any(f.name == "timestamp.json" and f.tampered for f in seen), (
        f"{replica.name} never fetched timestamp.json after the rollback was staged:\n"
        f"{front.summary(gun, since=since)}\n{replicas.logs()}"
    )
    assert r_old.status_code != 200, (
        f"{replica.name} served tag 'old' (revoked in v2) from the rolled-back v1 view: "
        f"{images.sha256(r_old.content)}\n{replicas.logs()}"
    )
    assert r_old.status_code in (404, 503), (r_old.status_code, r_old.text)
    assert r_new.status_code in (200, 503), (r_new.status_code, r_new.text)
    if r_new.status_code == 200:
        assert images.sha256(r_new.content) == new
    else:
        assert oci_error(r_new)["code"] == "UNAVAILABLE"
    if stored:
        assert replicas.record(gun) is not None, f"no record for {gun}: {replicas.keys()}"


def test_rollback_to_b_after_a_saw_newer_is_refused(replicas: ReplicaSet) -> None:
    """A sees v2 (tag ``old`` revoked); the trust server then serves the older, validly
    signed v1 to B, which never fetched this repository itself: B must refuse it, from the
    version floors A left in Redis."""
    name = "rollback/app"
    gun = replicas.bed.gun(name)
    v1, _old, new = _publish_then_roll_forward(replicas, name)
    v1_timestamp = signed_version(v1["timestamp.json"])
    try:
        _assert_sees_v2(replicas, 0, name, new)
        seen_at = time.monotonic()
        wait_until(lambda: replicas.record(gun) is not None, timeout=5, interval=0.1)
        stored = replicas.record(gun)
        assert stored is not None
        assert stored[1].versions["timestamp"] > v1_timestamp
        staged = time.monotonic()
        replicas.front.override(gun, v1)
        # Past refresh_seconds A's record is due for a refresh: B must ask the server.
        _sleep_until(seen_at + REFRESH + 0.5)
        _assert_refuses_rollback(replicas, 1, name, new, since=staged)
        after = replicas.record(gun)
        assert after is not None
        assert after[1].versions["timestamp"] > v1_timestamp, after
    finally:
        replicas.front.clear_overrides(gun)


def test_restarted_instance_keeps_rollback_memory(replicas: ReplicaSet) -> None:
    """A sees v2 and is restarted (its memory is gone); the server then rolls back to v1:
    the restarted A refuses it, from the state in Redis."""
    name = "restart/app"
    gun = replicas.bed.gun(name)
    v1, _old, new = _publish_then_roll_forward(replicas, name)
    try:
        _assert_sees_v2(replicas, 0, name, new)
        seen_at = time.monotonic()
        wait_until(lambda: replicas.record(gun) is not None, timeout=5, interval=0.1)
        replicas[0].restart()
        staged = time.monotonic()
        replicas.front.override(gun, v1)
        _sleep_until(seen_at + REFRESH + 0.5)
        _assert_refuses_rollback(replicas, 0, name, new, since=staged)
    finally:
        replicas.front.clear_overrides(gun)


def test_rollback_after_redis_lost_its_state_is_refused(replicas: ReplicaSet) -> None:
    """Redis forgets everything (restarted without persistence, flushed) after A saw v2;
    then the server rolls back to v1: A still refuses, from what it saw itself."""
    name = "flush/app"
    gun = replicas.bed.gun(name)
    v1, _old, new = _publish_then_roll_forward(replicas, name)
    try:
        _assert_sees_v2(replicas, 0, name, new)
        seen_at = time.monotonic()
        wait_until(lambda: replicas.record(gun) is not None, timeout=5, interval=0.1)
        replicas.redis.flushall()
        staged = time.monotonic()
        replicas.front.override(gun, v1)
        _sleep_until(seen_at + REFRESH + 0.5)
        _assert_refuses_rollback(replicas, 0, name, new, since=staged, stored=False)
    finally:
        replicas.front.clear_overrides(gun)


def test_replayed_older_record_does_not_roll_back_a_replica(replicas: ReplicaSet) -> None:
    """Someone with write access to Redis puts back an older, genuine record (v1, saved by
    A itself) dated now, after A saw v2: its signatures verify and it looks fresh, but A
    must not go back to v1 (serve the tag v2 revoked); refusing or refetching is fine."""
    bed = replicas.bed
    name = "replay/app"
    gun, repo = bed.gun(name), bed.repo(name)
    old = bed.push_and_sign(name, "old", _image(replicas, f"{name} old"))
    r = replicas[0].manifest(repo, "old")
    assert r.status_code == 200, (r.status_code, r.text, replicas.logs())
    wait_until(lambda: replicas.record_key(gun) is not None, timeout=5, interval=0.1)
    key = replicas.record_key(gun)
    assert key is not None
    v1_record = replicas.read(key)
    assert v1_record is not None
    bed.trust(name).remove("old")
    new = bed.push_and_sign(name, "new", _image(replicas, f"{name} new"))
    wait_until(_answers(replicas[0], repo, "new", 200), timeout=REFRESH + 5, interval=0.1)
    seen_at = time.monotonic()
    assert replicas[0].manifest(repo, "old").status_code == 404
    _sleep_until(seen_at + REFRESH + 0.3)  # A's own copy is due for a refresh
    replicas.overwrite(key, redate_record(v1_record))
    since = time.monotonic()
    r_old = replicas[0].manifest(repo, "old")
    r_new = replicas[0].manifest(repo, "new")
    assert r_old.status_code != 200, (
        f"a went back to the replayed v1 record and served the revoked tag 'old' "
        f"({images.sha256(r_old.content)} = signed v1 digest sha256:{old.sha256}); "
        f"trust server asked meanwhile:\n{replicas.front.summary(gun, since=since)}\n"
        f"{replicas.logs()}"
    )
    assert r_new.status_code in (200, 503), (r_new.status_code, r_new.text)
    if r_new.status_code == 200:
        assert images.sha256(r_new.content) == f"sha256:{new.sha256}"


def test_cold_burst_on_both_replicas_fetches_each_file_once(replicas: ReplicaSet) -> None:
    """200 concurrent requests, split over both replicas, for a new tag of a repository
    neither has seen: one replica walks the trust data, fetching each file once; the other
    waits for the state it saves and then checks only the signed timestamp itself (a
    stored state never stands in for freshness), so timestamp.json and the root probe are
    fetched once per replica."""
    bed, front = replicas.bed, replicas.front
    name = "burst/app"
    bed.trust(name).add_signer(f"{bed.namespace}-burst", RELEASES)
    target = bed.push_and_sign(name, "v1", _image(replicas, "burst v1"), role=RELEASES)
    gun, repo = bed.gun(name), bed.repo(name)
    # Files of the current view (timestamp, snapshot.<hex>, targets.<hex>,
    # targets/releases.<hex>), read around the front: not counted.
    expected = set(front.capture(gun)) | {"root.json"}
    assert any(n.startswith("targets/releases.") for n in expected), expected
    per_replica = {"timestamp.json"}
    since = time.monotonic()
    answers = asyncio.run(burst([(replicas[i % 2], repo, "v1") for i in range(200)]))
    statuses = Counter((a.replica, a.status) for a in answers)
    assert all(a.status == 200 for a in answers), (
        statuses,
        [a for a in answers if a.status != 200][:3],
        replicas.logs(),
    )
    assert {a.digest for a in answers} == {f"sha256:{target.sha256}"}
    counts = front.counts(gun, since=since)
    summary = front.summary(gun, since=since)
    for file in sorted(expected - per_replica):
        assert counts[file] == 1, f"{file} fetched {counts[file]} times:\n{summary}"
    for file in sorted(per_replica):
        assert 1 <= counts[file] <= 2, f"{file} fetched {counts[file]} times:\n{summary}"
    others = {n: c for n, c in counts.items() if n not in expected}
    # The root walk's probe for the next version (404) is allowed, once per replica.
    for file, n in others.items():
        assert re.fullmatch(r"\d+\.root\.json", file), f"unexpected fetch {file}:\n{summary}"
        assert n <= 2, f"{file} fetched {n} times:\n{summary}"


def test_corrupted_entry_is_refetched_not_trusted(replicas: ReplicaSet) -> None:
    """Garbage, then a well-formed record whose targets entry was changed to another
    digest: a replica that reads it refetches from the server and serves only the signed
    digest."""
    bed, front = replicas.bed, replicas.front
    name = "corrupt/app"
    signed = bed.push_and_sign(name, "v1", _image(replicas, "corrupt signed"))
    evil = _image(replicas, "corrupt unsigned")
    evil_digest = bed.push(name, evil, None)
    gun, repo = bed.gun(name), bed.repo(name)
    want = f"sha256:{signed.sha256}"

    r = replicas[0].manifest(repo, "v1")
    assert r.status_code == 200, (r.status_code, r.text, replicas.logs())
    wait_until(lambda: replicas.record_key(gun) is not None, timeout=5, interval=0.1)
    key = replicas.record_key(gun)
    assert key is not None

    # (1) Garbage in the record's key: B (cold for this repository) refetches.
    replicas.overwrite(key, b"\x00garbage\xff" * 10)
    since = time.monotonic()
    r = replicas[1].manifest(repo, "v1")
    assert r.status_code == 200, (r.status_code, r.text, replicas.logs())
    assert images.sha256(r.content) == want
    assert front.count(gun, "timestamp.json", since=since) >= 1, front.summary(gun, since=since)
    wait_until(lambda: replicas.record_key(gun) is not None, timeout=5, interval=0.1)

    # (2) A well-formed record saying v1 is the unsigned image, dated now (fresh). Both
    # replicas' own copies are past refresh_seconds, so both read it.
    time.sleep(REFRESH + 0.3)
    key = replicas.record_key(gun)
    assert key is not None
    current = replicas.read(key)
    assert current is not None
    replicas.overwrite(key, retarget_record(current, "targets", "v1", evil.manifest))
    since = time.monotonic()
    for replica in replicas.replicas:
        r = replica.manifest(repo, "v1")
        assert r.status_code == 200, (replica.name, r.status_code, r.text, replicas.logs())
        got = images.sha256(r.content)
        assert got != evil_digest, f"{replica.name} served the digest planted in Redis"
        assert got == want
    targets_files = [f for f in front.counts(gun, since=since) if f.startswith("targets.")]
    assert targets_files, f"the tampered targets were not refetched:\n{front.summary(gun)}"


def test_revocation_reaches_both_replicas_within_refresh_seconds(replicas: ReplicaSet) -> None:
    bed = replicas.bed
    name = "revoke/app"
    bed.push_and_sign(name, "v1", _image(replicas, "revoke v1"))
    kept = bed.push_and_sign(name, "v2", _image(replicas, "revoke v2"))
    repo = bed.repo(name)
    for replica in replicas.replicas:
        r = replica.manifest(repo, "v1")
        assert r.status_code == 200, (replica.name, r.status_code, r.text)
    bed.trust(name).remove("v1")  # notary remove + publish
    revoked_at = time.monotonic()
    took: dict[str, float] = {}
    for replica in replicas.replicas:
        wait_until(_answers(replica, repo, "v1", 404), timeout=REFRESH + 10, interval=0.1)
        took[replica.name] = time.monotonic() - revoked_at
    assert max(took.values()) <= REFRESH + SLACK, took
    for replica in replicas.replicas:
        r = replica.manifest(repo, "v2")
        assert r.status_code == 200, (replica.name, r.status_code)
        assert images.sha256(r.content) == f"sha256:{kept.sha256}"
        assert replica.proxy.tags(repo) == ["v2"]
