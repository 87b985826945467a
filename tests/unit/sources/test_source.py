"""NotarySource over the simulator: fetch order, caching, re-verification, outages,
singleflight, rollback across refreshes, outcomes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from datetime import timedelta

import httpx
import pytest

from proxy.errors import NotSignedError, TrustSourceUnavailableError
from proxy.sources import MemoryTrustStateStore, NoTrustDataError
from proxy.sources.base import TrustInfo
from proxy.sources.notary.rules import SigningRule
from proxy.sources.notary.source import (
    NotarySource,
    NotarySourceOptions,
    decode_record,
    encode_record,
)
from proxy.sources.notary.tuf import (
    MissingMetadataError,
    PinnedRootKeys,
    RoleRequirement,
    RollbackError,
    RootOfTrustError,
    RootRotationError,
    ThresholdError,
    TrustedState,
    TrustOnFirstUse,
)
from tests.simulators.notary_repo import NotaryRepository, generate_key, meta_for
from tests.unit.sources.sim import GUN, Clock, SimServer, make_source

pytestmark = pytest.mark.anyio

TOFU = SigningRule(TrustOnFirstUse())
M1 = b'{"manifest": 1}'
M2 = b'{"manifest": 2}'
M3 = b'{"manifest": 3}'


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha(raw: bytes | None) -> str:
    assert raw is not None
    return hashlib.sha256(raw).hexdigest()


def repo_with_roles() -> NotaryRepository:
    """v1 in targets and releases (different digests), owner-only in targets, qa in qa."""
    repo = NotaryRepository(GUN)
    repo.add_delegation("targets/releases")
    repo.add_delegation("targets/qa")
    repo.add_target("v1", M1)
    repo.add_target("owner-only", M3)
    repo.add_target("v1", M2, role="targets/releases")
    repo.add_target("qa-build", M3, role="targets/qa")
    repo.publish()
    return repo


async def test_first_contact_fetch_order_and_consistent_names() -> None:
    server = SimServer()
    repo = server.add(repo_with_roles())
    source = make_source(server)
    try:
        await source.load(GUN, TOFU)
    finally:
        await source.aclose()
    expected = [
        "root.json",
        "2.root.json",  # 404 ends the walk
        "timestamp.json",
        f"snapshot.{sha(repo.current['snapshot'])}.json",
        f"targets.{sha(repo.current['targets'])}.json",
        f"targets/releases.{sha(repo.current['targets/releases'])}.json",
        f"targets/qa.{sha(repo.current['targets/qa'])}.json",
    ]
    # The requests of the sequential walk, each once; cold, timestamp.json goes out beside
    # root.json (its name does not depend on root), the rest as their names are known.
    assert sorted(server.names) == sorted(expected)
    assert set(server.names[:2]) == {"root.json", "timestamp.json"}
    assert server.names.index("2.root.json") > server.names.index("root.json")
    assert all(r.method == "GET" for r in server.requests)


class _RoundsServer(SimServer):
    """Every answer takes 10 ms; records each file's round: 1 + the highest round of the
    answers given when it was asked (the sequential round trips up to it)."""

    def __init__(self) -> None:
        super().__init__()
        self.ended: list[int] = []
        self.rounds: dict[str, int] = {}

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        at = 1 + max(self.ended, default=0)
        await asyncio.sleep(0.01)
        response = await super().__call__(request)
        self.ended.append(at)
        self.rounds[request.url.path.partition("/_trust/tuf/")[2]] = at
        return response


async def test_a_cold_refresh_asks_what_the_walk_needs_in_three_rounds() -> None:
    """Cold: timestamp.json beside root.json, the snapshot and targets as soon as the
    bytes naming them are in (verified afterwards, in order): three sequential round trips
    where the walk alone takes four, and the same five requests."""
    server = _RoundsServer()
    repo = server.add(NotaryRepository(GUN))
    repo.add_target("v1", M1)
    repo.publish()
    source = make_source(server)
    try:
        ts = await source.load(GUN, TOFU)
    finally:
        await source.aclose()
    assert ts.state().metadata["targets"] == repo.current["targets"]
    snapshot = f"snapshot.{sha(repo.current['snapshot'])}.json"
    targets = f"targets.{sha(repo.current['targets'])}.json"
    assert server.rounds == {
        "root.json": 1,
        "timestamp.json": 1,
        "2.root.json": 2,
        snapshot: 2,
        targets: 3,
    }
    assert len(server.names) == 5


async def test_docker_rule_and_required_roles() -> None:
    server = SimServer()
    repo = server.add(repo_with_roles())
    source = make_source(server)
    try:
        v1 = await source.resolve(GUN, "v1", TOFU)
        assert (v1.digest, v1.length, v1.role) == (digest(M2), len(M2), "targets/releases")
        assert v1.key_ids == (repo.delegations["targets/releases"].keys[0].key_id,)
        owner = await source.resolve(GUN, "owner-only", TOFU)
        assert (owner.digest, owner.role) == (digest(M3), "targets")
        with pytest.raises(
            NotSignedError, match="tag qa-build is not signed by targets/releases or targets"
        ):
            await source.resolve(GUN, "qa-build", TOFU)
        assert sorted(await source.signed_tags(GUN, TOFU)) == ["owner-only", "v1"]

        qa = SigningRule(TrustOnFirstUse(), required_roles=(RoleRequirement("targets/qa"),))
        got = await source.resolve(GUN, "qa-build", qa)
        assert (got.digest, got.role) == (digest(M3), "targets/qa")
        assert sorted(await source.signed_tags(GUN, qa)) == ["qa-build"]
        both = SigningRule(
            TrustOnFirstUse(),
            required_roles=(RoleRequirement("targets"), RoleRequirement("targets/releases")),
        )
        with pytest.raises(NotSignedError, match="disagree"):
            await source.resolve(GUN, "v1", both)
        assert await source.signed_tags(GUN, both) == {}
    finally:
        await source.aclose()


def test_rule_needs_roles() -> None:
    with pytest.raises(ValueError, match="at least one role"):
        SigningRule(TrustOnFirstUse(), required_roles=())
    assert TOFU.docker
    assert tuple(TOFU.role_names) == ("targets/releases", "targets")


async def test_no_trust_data_is_a_distinct_outcome_and_cached() -> None:
    server = SimServer()
    clock = Clock()
    source = make_source(server, clock=clock)
    try:
        with pytest.raises(NoTrustDataError) as ei:
            await source.resolve(GUN, "v1", TOFU)
        assert str(ei.value) == f"notary does not have trust data for {GUN}"
        assert isinstance(ei.value, NotSignedError)
        # Cold, timestamp.json is asked beside root.json: one more 404 (the price of
        # saving a round trip on every signed repository's first refresh).
        assert sorted(server.names) == ["root.json", "timestamp.json"]
        with pytest.raises(NoTrustDataError):
            await source.resolve(GUN, "v1", TOFU)
        assert len(server.requests) == 2  # negative answers are cached for fresh_for
        server.add(NotaryRepository(GUN))
        clock.advance(seconds=61)
        with pytest.raises(NotSignedError):
            await source.resolve(GUN, "v1", TOFU)  # now it exists: plain "not signed"
    finally:
        await source.aclose()


async def test_deleted_repository_is_no_trust_data_even_when_known() -> None:
    server = SimServer()
    repo = server.add(NotaryRepository(GUN))
    repo.add_target("v1", M1)
    repo.publish()
    clock = Clock()
    source = make_source(server, clock=clock)
    try:
        await source.resolve(GUN, "v1", TOFU)
        del server.repos[GUN]  # notary delete --remote
        clock.advance(seconds=61)
        with pytest.raises(NoTrustDataError):
            await source.resolve(GUN, "v1", TOFU)
    finally:
        await source.aclose()


async def test_hot_cache_then_cheap_refresh_after_ttl() -> None:
    server = SimServer()
    repo = server.add(repo_with_roles())
    clock = Clock()
    source = make_source(server, clock=clock)
    try:
        await source.resolve(GUN, "v1", TOFU)
        server.reset()
        clock.advance(seconds=59)
        await source.resolve(GUN, "v1", TOFU)
        assert server.names == []
        clock.advance(seconds=2)
        await source.resolve(GUN, "v1", TOFU)
        # unchanged repository: stored snapshot/targets/delegations are reused by hash
        assert server.names == ["2.root.json", "timestamp.json"]
        server.reset()
        repo.add_target("v2", M3, role="targets/releases")
        repo.publish()
        clock.advance(seconds=61)
        got = await source.resolve(GUN, "v2", TOFU)
        assert got.digest == digest(M3)
        assert server.names == [
            "2.root.json",
            "timestamp.json",
            f"snapshot.{sha(repo.current['snapshot'])}.json",
            f"targets/releases.{sha(repo.current['targets/releases'])}.json",
        ]
    finally:
        await source.aclose()


async def test_stored_entry_is_a_head_start_never_freshness() -> None:
    """Another replica's stored state spares the walk, not the signed timestamp: the
    store is untrusted and cannot say what is current (issue 17, finding 1)."""
    server = SimServer()
    repo = server.add(repo_with_roles())
    clock = Clock()
    store = MemoryTrustStateStore()
    a = make_source(server, clock=clock, store=store)
    b = make_source(server, clock=clock, store=store)
    try:
        await a.resolve(GUN, "v1", TOFU)
        server.reset()
        clock.advance(seconds=30)
        got = await b.resolve(GUN, "v1", TOFU)  # another replica, same store
        assert got.digest == digest(M2)
        root = repo.versions["root"]
        assert server.names == [f"{root + 1}.root.json", "timestamp.json"]
    finally:
        await a.aclose()
        await b.aclose()


async def test_replayed_record_dated_now_does_not_bring_a_revoked_tag_back() -> None:
    """Finding 1 on a fresh process: a record saved while ``v1`` was signed, put back
    after the revocation with its fetch time set to now. The source asks the trust
    server's timestamp and answers from the current data."""
    server = SimServer()
    repo = server.add(repo_with_roles())
    clock = Clock()
    store = MemoryTrustStateStore()
    a = make_source(server, clock=clock, store=store)
    try:
        assert (await a.resolve(GUN, "v1", TOFU)).digest == digest(M2)
    finally:
        await a.aclose()
    saved = await store.load(GUN)
    assert saved is not None
    repo.remove_target("v1", role="targets/releases")
    repo.remove_target("v1")
    repo.publish()
    _, old_state = decode_record(saved, max_bytes=1 << 26)
    clock.advance(seconds=1)
    await store.save(GUN, encode_record(old_state, clock()))  # replayed, dated now
    fresh = make_source(server, clock=clock, store=store)
    try:
        with pytest.raises(NotSignedError):
            await fresh.resolve(GUN, "v1", TOFU)
        assert "timestamp.json" in server.names
    finally:
        await fresh.aclose()


async def test_floors_survive_hot_cache_eviction() -> None:
    """Finding 1 on a running process: its hot cache is evicted by requests for other
    repositories; the store is rolled back to an older record and the trust server
    serves the older (validly signed) files. The floors it verified are kept apart from
    the hot cache, so the rollback is still refused."""
    server = SimServer()
    repo = server.add(repo_with_roles())
    old_files = repo.checkpoint()
    clock = Clock()
    store = MemoryTrustStateStore()
    source = make_source(
        server, clock=clock, store=store, options=NotarySourceOptions(max_hot_entries=2)
    )
    try:
        await source.resolve(GUN, "v1", TOFU)
        old_record = await store.load(GUN)
        assert old_record is not None
        repo.add_target("v1", M3, role="targets/releases")
        repo.publish()
        clock.advance(seconds=61)
        assert (await source.resolve(GUN, "v1", TOFU)).digest == digest(M3)
        for i in range(3):  # unknown repositories push it out of the hot cache
            with pytest.raises(NoTrustDataError):
                await source.resolve(f"{GUN}-unknown{i}", "v1", TOFU)
        assert all(key[0] != GUN for key in source._hot)
        await store.save(GUN, old_record)  # the store rolled back...
        repo.serve(old_files)  # ...and the server too
        with pytest.raises(RollbackError):
            await source.resolve(GUN, "v1", TOFU)
    finally:
        await source.aclose()


async def test_tampered_store_entry_is_refused_and_refetched(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = SimServer()
    server.add(repo_with_roles())
    clock = Clock()
    store = MemoryTrustStateStore()
    a = make_source(server, clock=clock, store=store)
    await a.resolve(GUN, "v1", TOFU)
    await a.aclose()
    data = await store.load(GUN)
    assert data is not None
    at, state = decode_record(data, max_bytes=1 << 26)
    # The attacker points v1 in releases at their own manifest.
    forged = dict(state.metadata)
    forged["targets/releases"] = state.metadata["targets/releases"].replace(
        base64.b64encode(hashlib.sha256(M2).digest()),
        base64.b64encode(hashlib.sha256(b"evil").digest()),
    )
    assert forged["targets/releases"] != state.metadata["targets/releases"]
    tampered = TrustedState(state.gun, state.root, state.versions, forged)
    await store.save(GUN, encode_record(tampered, at))
    server.reset()
    b = make_source(server, clock=clock, store=store)
    try:
        with caplog.at_level(logging.WARNING):
            got = await b.resolve(GUN, "v1", TOFU)
        assert got.digest == digest(M2)  # never the forged digest
        # The forged bytes do not hash to what the signed snapshot announces: refetched.
        assert f"targets/releases.{sha(server.repos[GUN].current['targets/releases'])}.json" in (
            server.names
        )
    finally:
        await b.aclose()


@pytest.mark.parametrize(
    "data",
    [b"garbage", b"trustproxy-notary-state/1 2026-01-02T00:00:00+00:00\n{}"],
    ids=["garbage", "empty-state"],
)
async def test_unreadable_store_entry_is_a_miss(data: bytes) -> None:
    server = SimServer()
    server.add(repo_with_roles())
    store = MemoryTrustStateStore()
    await store.save(GUN, data)
    source = make_source(server, store=store)
    try:
        assert (await source.resolve(GUN, "v1", TOFU)).digest == digest(M2)
        assert server.names[0] == "root.json"
    finally:
        await source.aclose()


async def test_state_of_another_gun_is_refused() -> None:
    server = SimServer()
    other = server.add(NotaryRepository("registry.example:5000/other"))
    other.add_target("v1", b"other")
    other.publish()
    server.add(repo_with_roles())
    clock = Clock()
    store = MemoryTrustStateStore()
    a = make_source(server, clock=clock, store=store)
    await a.resolve(other.gun, "v1", TOFU)
    await a.aclose()
    await store.save(GUN, await store.load(other.gun) or b"")
    b = make_source(server, clock=clock, store=store)
    try:
        assert (await b.resolve(GUN, "v1", TOFU)).digest == digest(M2)
    finally:
        await b.aclose()


async def test_outage_serves_verified_cache_only_until_it_expires(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = SimServer()
    server.add(repo_with_roles())
    clock = Clock()
    source = make_source(server, clock=clock)
    try:
        await source.resolve(GUN, "v1", TOFU)
        server.down = lambda r: httpx.ConnectError("refused", request=r)
        clock.advance(seconds=61)
        with caplog.at_level(logging.WARNING):
            got = await source.resolve(GUN, "v1", TOFU)
        assert got.digest == digest(M2)
        assert "serving verified cached trust data" in caplog.text
        server.reset()
        clock.advance(seconds=5)
        await source.resolve(GUN, "v1", TOFU)
        assert server.requests == []  # retry_after: no request storm during an outage
        clock.advance(days=14)  # the timestamp (14 days) has expired meanwhile
        with pytest.raises(TrustSourceUnavailableError, match="refused"):
            await source.resolve(GUN, "v1", TOFU)
    finally:
        await source.aclose()


async def test_outage_with_stored_state_after_restart() -> None:
    server = SimServer()
    server.add(repo_with_roles())
    clock = Clock()
    store = MemoryTrustStateStore()
    a = make_source(server, clock=clock, store=store)
    await a.resolve(GUN, "v1", TOFU)
    await a.aclose()
    server.down = 503
    clock.advance(hours=1)
    b = make_source(server, clock=clock, store=store)
    try:
        assert (await b.resolve(GUN, "v1", TOFU)).digest == digest(M2)
    finally:
        await b.aclose()


async def test_outage_with_nothing_cached_is_unavailable() -> None:
    server = SimServer(down=503)
    source = make_source(server)
    try:
        with pytest.raises(TrustSourceUnavailableError, match="HTTP 503"):
            await source.resolve(GUN, "v1", TOFU)
    finally:
        await source.aclose()


def _slow_timeout(clock: Clock, seconds: float) -> Callable[[httpx.Request], Exception]:
    """A fetch that takes ``seconds`` of the source's clock, then times out."""

    def fail(request: httpx.Request) -> Exception:
        clock.advance(seconds=seconds)
        return httpx.ReadTimeout("slow", request=request)

    return fail


async def test_a_slow_failure_is_remembered_from_when_it_ended() -> None:
    """Found by the hostile trust server suite: a refresh that timed out dated its failure
    (and the stale entry) from when it started, so with a deadline longer than
    retry_after every request, and the gate's trust_info after resolve, waited the
    deadline again."""
    server = SimServer()
    server.add(repo_with_roles())
    clock = Clock()
    source = make_source(server, clock=clock)
    slow = _slow_timeout(clock, 30)  # deadline 30 s > retry_after 10 s
    try:
        # Cold: the refusal is remembered for retry_after from the failure.
        server.faults["root.json"] = slow
        with pytest.raises(TrustSourceUnavailableError):
            await source.resolve(GUN, "v1", TOFU)
        server.reset()
        clock.advance(seconds=5)
        with pytest.raises(TrustSourceUnavailableError):
            await source.resolve(GUN, "v1", TOFU)
        assert server.requests == []
        # Warm: the cached answer is served, and keeps being served, without a refetch.
        del server.faults["root.json"]
        clock.advance(seconds=6)
        assert (await source.resolve(GUN, "v1", TOFU)).digest == digest(M2)
        server.faults["timestamp.json"] = slow
        clock.advance(seconds=61)
        assert (await source.resolve(GUN, "v1", TOFU)).digest == digest(M2)
        assert (await source.trust_info(GUN, TOFU)).stale
        server.reset()
        clock.advance(seconds=5)
        assert (await source.resolve(GUN, "v1", TOFU)).digest == digest(M2)
        assert server.requests == []
    finally:
        await source.aclose()


async def test_a_slow_refresh_is_fresh_from_when_it_ended() -> None:
    """Found with the hostile trust server suite: a successful refresh that took longer
    than fresh_for left an entry already due, so the gate's trust_info (right after
    resolve) and every later request refreshed again."""
    server = SimServer()
    repo = server.add(repo_with_roles())
    clock = Clock()
    source = make_source(server, clock=clock)  # fresh_for 60 s
    real = repo.fetch

    def slow_fetch(name: str) -> bytes | None:
        if name == "timestamp.json":
            clock.advance(seconds=90)  # a server that took 90 s, and answered
        return real(name)

    repo.fetch = slow_fetch  # type: ignore[method-assign,assignment]
    try:
        assert (await source.resolve(GUN, "v1", TOFU)).digest == digest(M2)
        n = len(server.requests)
        await source.trust_info(GUN, TOFU)
        clock.advance(seconds=30)
        assert (await source.resolve(GUN, "v1", TOFU)).digest == digest(M2)
        assert len(server.requests) == n  # no second refresh
    finally:
        await source.aclose()


class _SlowServer(SimServer):
    async def __call__(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.06)  # a cold refresh fetches 7 files: 0.42 s in all
        return await super().__call__(request)


async def test_refresh_deadline_bounds_the_whole_walk() -> None:
    """Each file inside the fetcher's deadline, the refresh as a whole past its own: the
    server counts as unreachable (cold: unavailable; warm: the verified cache)."""
    server = _SlowServer()
    server.add(repo_with_roles())
    clock = Clock()
    options = NotarySourceOptions(refresh_deadline=timedelta(seconds=0.15))
    source = make_source(server, clock=clock, options=options, deadline=5.0)
    try:
        with pytest.raises(TrustSourceUnavailableError, match=r"took longer than 0\.15s") as ei:
            await source.resolve(GUN, "v1", TOFU)
        # names the file that was still coming (timestamp.json, unless the host is slow)
        assert re.search(r"waiting for \S+\.json, [0-9] file\(s\) received", str(ei.value))
    finally:
        await source.aclose()
    fast = SimServer(repos=server.repos)
    source = make_source(fast, clock=clock, options=options)
    try:
        assert (await source.resolve(GUN, "v1", TOFU)).digest == digest(M2)
    finally:
        await source.aclose()


def test_from_settings_bounds_a_refresh_like_one_fetch() -> None:
    from proxy.settings import LimitSettings, TrustSourceSettings

    settings = TrustSourceSettings(name="notary", type="notary", url="https://notary.example")
    for limits, seconds in (
        (LimitSettings(connect_timeout=2.0, read_timeout=5.0), 10),  # default: 2 x read
        (LimitSettings(read_timeout=5.0, request_timeout=7.0), 7),
    ):
        source = NotarySource.from_settings(settings, limits, MemoryTrustStateStore())
        assert source.options.refresh_deadline == timedelta(seconds=seconds)
        assert source._fetcher._deadline == seconds


async def test_concurrent_requests_share_one_refresh() -> None:
    server = SimServer(gate=asyncio.Event())
    server.add(repo_with_roles())
    source = make_source(server)
    try:
        tasks = [asyncio.create_task(source.resolve(GUN, "v1", TOFU)) for _ in range(20)]
        await asyncio.sleep(0.01)
        assert server.gate is not None
        server.gate.set()
        results = await asyncio.gather(*tasks)
        assert {r.digest for r in results} == {digest(M2)}
        assert server.names.count("root.json") == 1
        assert server.names.count("timestamp.json") == 1
    finally:
        await source.aclose()


async def test_cancelled_request_does_not_cancel_the_shared_refresh() -> None:
    server = SimServer(gate=asyncio.Event())
    server.add(repo_with_roles())
    source = make_source(server)
    try:
        first = asyncio.create_task(source.resolve(GUN, "v1", TOFU))
        second = asyncio.create_task(source.resolve(GUN, "v1", TOFU))
        await asyncio.sleep(0.01)
        first.cancel()
        assert server.gate is not None
        server.gate.set()
        assert (await second).digest == digest(M2)
        with pytest.raises(asyncio.CancelledError):
            await first
    finally:
        await source.aclose()


async def test_rollback_across_refreshes_is_refused_via_stored_floors() -> None:
    server = SimServer()
    repo = server.add(repo_with_roles())
    old = repo.checkpoint()
    repo.add_target("v1", M3, role="targets/releases")  # re-point v1
    repo.publish()
    clock = Clock()
    store = MemoryTrustStateStore()
    a = make_source(server, clock=clock, store=store)
    try:
        assert (await a.resolve(GUN, "v1", TOFU)).digest == digest(M3)
        repo.serve(old)  # a compromised mirror replays the older, validly signed files
        clock.advance(seconds=61)
        with pytest.raises(RollbackError):
            await a.resolve(GUN, "v1", TOFU)
    finally:
        await a.aclose()
    # A restarted proxy (state from the store) refuses it too.
    clock.advance(seconds=61)
    b = make_source(server, clock=clock, store=store)
    try:
        with pytest.raises(RollbackError):
            await b.resolve(GUN, "v1", TOFU)
    finally:
        await b.aclose()


async def test_root_rotation_is_walked() -> None:
    server = SimServer()
    repo = server.add(repo_with_roles())
    clock = Clock()
    source = make_source(server, clock=clock)
    try:
        assert (await source.load(GUN, TOFU)).root.version == 1
        repo.rotate_root()
        repo.publish()
        repo.rotate_root()
        repo.publish()
        server.reset()
        clock.advance(seconds=61)
        ts = await source.load(GUN, TOFU)
        assert ts.root.version == 3
        # The root chain in order (timestamp.json is fetched beside the first probe).
        roots = [n for n in server.names if n.endswith(".root.json")]
        assert roots == ["2.root.json", "3.root.json", "4.root.json"]
    finally:
        await source.aclose()


async def test_root_not_signed_by_previous_root_is_refused() -> None:
    server = SimServer()
    repo = server.add(repo_with_roles())
    clock = Clock()
    source = make_source(server, clock=clock)
    try:
        await source.load(GUN, TOFU)
        repo.rotate_root(sign_with_previous=False)
        repo.publish()
        clock.advance(seconds=61)
        with pytest.raises(RootRotationError, match="not signed by a threshold"):
            await source.load(GUN, TOFU)
    finally:
        await source.aclose()


async def test_pinned_root_key() -> None:
    server = SimServer()
    repo = server.add(repo_with_roles())
    root_key = repo.roles["root"].keys[0]
    source = make_source(server)
    try:
        good = SigningRule(PinnedRootKeys([root_key.canonical_id]))
        assert (await source.resolve(GUN, "v1", good)).digest == digest(M2)
        bad = SigningRule(PinnedRootKeys([generate_key().key_id]))
        with pytest.raises(RootOfTrustError):
            await source.resolve(GUN, "v1", bad)
    finally:
        await source.aclose()


async def test_bad_data_is_refused_and_not_refetched_in_a_burst() -> None:
    server = SimServer()
    repo = server.add(repo_with_roles())
    repo.signing_keys["targets"] = [generate_key()]
    repo.touch("targets")
    repo.publish()
    clock = Clock()
    source = make_source(server, clock=clock)
    try:
        with pytest.raises(ThresholdError):
            await source.resolve(GUN, "v1", TOFU)
        n = len(server.requests)
        with pytest.raises(ThresholdError):
            await source.resolve(GUN, "v1", TOFU)
        assert len(server.requests) == n
        clock.advance(seconds=11)
        with pytest.raises(ThresholdError):
            await source.resolve(GUN, "v1", TOFU)
        assert len(server.requests) > n
    finally:
        await source.aclose()


async def test_invalid_delegation_is_skipped_not_fatal() -> None:
    server = SimServer()
    repo = server.add(repo_with_roles())
    repo.signing_keys["targets/releases"] = [generate_key()]
    repo.touch("targets/releases")
    repo.publish()
    source = make_source(server)
    try:
        got = await source.resolve(GUN, "v1", TOFU)
        assert (got.digest, got.role) == (digest(M1), "targets")  # releases ignored
    finally:
        await source.aclose()


async def test_rolled_back_delegation_ends_the_refresh() -> None:
    """Found by the hostile trust server suite: a server holding the snapshot key announced
    an older targets/releases; it was skipped like an invalid one, so ``targets`` answered
    v1 with the digest releases had replaced."""
    server = SimServer()
    repo = server.add(repo_with_roles())
    old_releases = repo.current["targets/releases"]
    repo.add_target("v1", M3, role="targets/releases")  # releases re-points v1
    repo.publish()
    clock = Clock()
    source = make_source(server, clock=clock)
    try:
        assert (await source.resolve(GUN, "v1", TOFU)).digest == digest(M3)
        snap = json.loads(repo.current["snapshot"])["signed"]
        snap["meta"]["targets/releases"] = meta_for(old_releases)
        snap["version"] += 1
        repo._store("snapshot", repo.sign("snapshot", snap))
        repo.versions["snapshot"] = snap["version"]
        repo.publish_timestamp()
        clock.advance(seconds=61)
        with pytest.raises(RollbackError) as info:
            await source.resolve(GUN, "v1", TOFU)  # never targets' M1
        assert info.value.role == "targets/releases"
        clock.advance(seconds=11)
        with pytest.raises(RollbackError):
            await source.signed_tags(GUN, TOFU)
    finally:
        await source.aclose()


async def test_withheld_delegation_ends_the_refresh_once_verified() -> None:
    """Found by the hostile trust server suite: a server holding the snapshot key dropped
    targets/releases from a new snapshot; skipped, it let targets answer v1 (M1) instead
    of releases (M2). Refused once releases has been verified (the stored state holds it,
    so a restarted proxy refuses too); a first contact keeps notary's skip."""
    server = SimServer()
    repo = server.add(repo_with_roles())
    clock = Clock()
    store = MemoryTrustStateStore()
    source = make_source(server, clock=clock, store=store)
    try:
        assert (await source.resolve(GUN, "v1", TOFU)).digest == digest(M2)
        snap = json.loads(repo.current["snapshot"])["signed"]
        del snap["meta"]["targets/releases"]
        snap["version"] += 1
        repo._store("snapshot", repo.sign("snapshot", snap))
        repo.versions["snapshot"] = snap["version"]
        repo.publish_timestamp()
        clock.advance(seconds=61)
        with pytest.raises(MissingMetadataError, match="withholding") as info:
            await source.resolve(GUN, "v1", TOFU)
        assert info.value.role == "targets/releases"
    finally:
        await source.aclose()
    restarted = make_source(server, clock=clock, store=store)
    try:
        with pytest.raises(MissingMetadataError, match="withholding"):
            await restarted.resolve(GUN, "v1", TOFU)
    finally:
        await restarted.aclose()
    first_contact = make_source(server, clock=clock)
    try:
        assert (await first_contact.resolve(GUN, "v1", TOFU)).digest == digest(M1)
    finally:
        await first_contact.aclose()


async def test_missing_delegation_file_is_skipped() -> None:
    server = SimServer()
    repo = server.add(repo_with_roles())
    server.faults[f"targets/releases.{sha(repo.current['targets/releases'])}.json"] = 404
    source = make_source(server)
    try:
        ts = await source.load(GUN, TOFU)
        assert "targets/releases" in ts.skipped
    finally:
        await source.aclose()


async def test_missing_targets_file_is_bad_data() -> None:
    server = SimServer()
    repo = server.add(repo_with_roles())
    server.faults[f"targets.{sha(repo.current['targets'])}.json"] = 404
    source = make_source(server)
    try:
        with pytest.raises(MissingMetadataError, match="not found"):
            await source.load(GUN, TOFU)
    finally:
        await source.aclose()


async def test_endless_timestamp_is_cut_by_the_role_limit() -> None:
    from proxy.sources.notary.tuf import Limits, OversizeMetadataError

    server = SimServer(faults={"timestamp.json": "endless"})
    server.add(repo_with_roles())
    source = make_source(
        server, options=NotarySourceOptions(limits=Limits(max_timestamp_bytes=100_000))
    )
    try:
        with pytest.raises(OversizeMetadataError):
            await source.load(GUN, TOFU)
    finally:
        await source.aclose()


async def test_hot_entry_is_not_used_past_expiry() -> None:
    server = SimServer()
    repo = server.add(repo_with_roles())
    clock = Clock()
    source = make_source(
        server, clock=clock, options=NotarySourceOptions(fresh_for=timedelta(days=365))
    )
    try:
        await source.load(GUN, TOFU)
        clock.advance(days=14)
        repo.expires["timestamp"] = clock.now + timedelta(days=14)
        repo.publish_timestamp()
        server.reset()
        await source.load(GUN, TOFU)
        assert "timestamp.json" in server.names
    finally:
        await source.aclose()


async def test_an_older_record_put_back_in_the_store_does_not_roll_back() -> None:
    """A store writer puts back an older, genuine record dated now: this process has seen
    newer versions, so it refuses the record and refreshes instead of serving v1's view."""
    server = SimServer()
    repo = server.add(repo_with_roles())
    clock = Clock()
    store = MemoryTrustStateStore()
    source = make_source(server, clock=clock, store=store)
    try:
        assert (await source.resolve(GUN, "v1", TOFU)).digest == digest(M2)
        old_record = await store.load(GUN)
        assert old_record is not None
        repo.add_target("v1", M3, role="targets/releases")  # re-point v1
        repo.publish()
        clock.advance(seconds=61)
        assert (await source.resolve(GUN, "v1", TOFU)).digest == digest(M3)
        _, old_state = decode_record(old_record, max_bytes=1 << 26)
        clock.advance(seconds=61)  # the hot entry is due for a refresh...
        await store.save(GUN, encode_record(old_state, clock()))  # ...and v1 looks fresh
        server.reset()
        assert (await source.resolve(GUN, "v1", TOFU)).digest == digest(M3)
        assert "timestamp.json" in server.names  # refreshed from the server, not replayed
    finally:
        await source.aclose()


async def test_trust_info_is_built_once_per_verified_set_and_follows_refreshes() -> None:
    """The warm path asks for trust_info on every request: the same read-only answer
    until the hot entry is replaced, then the new set's versions (and the stale flag)."""
    server = SimServer()
    repo = server.add(repo_with_roles())
    clock = Clock()
    source = make_source(server, clock=clock)
    try:
        first = await source.trust_info(GUN, TOFU)
        assert await source.trust_info(GUN, TOFU) is first
        assert first.stale is False
        with pytest.raises(TypeError):
            versions_of(first)["timestamp"] = 0  # type: ignore[index]  # shared: read-only
        repo.add_target("v2", M3, role="targets/releases")
        repo.publish()
        clock.advance(seconds=61)
        second = await source.trust_info(GUN, TOFU)
        assert second is not first
        assert versions_of(second)["timestamp"] > versions_of(first)["timestamp"]
        server.down = lambda r: httpx.ConnectError("refused", request=r)
        clock.advance(seconds=61)
        stale = await source.trust_info(GUN, TOFU)
        assert stale.stale is True
        assert dict(versions_of(stale)) == dict(versions_of(second))
    finally:
        await source.aclose()


async def test_signed_tags_is_computed_once_per_verified_set_and_rule() -> None:
    server = SimServer()
    repo = server.add(repo_with_roles())
    clock = Clock()
    source = make_source(server, clock=clock)
    qa_rule = SigningRule(TrustOnFirstUse(), required_roles=(RoleRequirement("targets/qa"),))
    try:
        first = await source.signed_tags(GUN, TOFU)
        assert set(first) == {"v1", "owner-only"}
        assert first["v1"].digest == digest(M2)  # releases wins
        first.clear()  # each caller gets its own copy: the cached answer is untouched
        again = await source.signed_tags(GUN, TOFU)
        assert set(again) == {"v1", "owner-only"}
        assert set(await source.signed_tags(GUN, qa_rule)) == {"qa-build"}  # per rule
        repo.add_target("v2", M3, role="targets/releases")
        repo.publish()
        clock.advance(seconds=61)  # refreshed set, new answer
        assert set(await source.signed_tags(GUN, TOFU)) == {"v1", "v2", "owner-only"}
    finally:
        await source.aclose()


def versions_of(info: TrustInfo) -> Mapping[str, int]:
    """A Notary state's role versions, as its TrustInfo shows them to the audit record."""
    versions: Mapping[str, int] = info.evidence["metadata_versions"]
    return versions
