"""The contract every trust source passes, parametrised over the registered kinds that can
run in-process: ``notary`` (against the notary-server simulator) and ``static`` (a pins
file). Each world can publish a signed (pinned) tag, break its data, and go down; the
source and the enforcing gate over it must answer the same way for both.

The last case runs two replicas of a source over one real redis-server (testbed's
``RedisServer``; an integration test, skipped without ``redis-server``): they agree, the
second costs no more reads than the first (Notary: it walks from the state the first
saved, fetching only the signed timestamp and a root probe), and a change is seen by both.
The static source keeps no shared state (its file is the shared state): the case holds
that a store changes nothing in its answers. The Notary-specific cross-replica properties
(the refresh lock, shared rollback floors) are in tests/integration/test_redis_store.py and
test_replicas*.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml

from proxy.decisions import NullRecorder
from proxy.enforcement.enforcing_gate import EnforcingGate
from proxy.errors import NotSignedError, TrustDataError, TrustSourceUnavailableError
from proxy.policy.model import Policy, RepositoryRule, Verification
from proxy.routing import Route
from proxy.settings import UpstreamSettings
from proxy.sources.base import NoTrustDataError, TrustSource
from proxy.sources.notary.policy import NotaryVerification
from proxy.sources.notary.tuf import TrustOnFirstUse
from proxy.sources.static.entry import StaticVerification
from proxy.sources.static.source import StaticSource
from proxy.sources.store import TrustStateStore
from proxy.trust_gate import RequestContext, ServeDigest
from testbed.redis_server import RedisServer, redis_binary
from tests.simulators.notary_repo import NotaryRepository
from tests.simulators.registry_reads import DictRegistry
from tests.unit.sources.sim import GUN, Clock, SimServer, make_source

pytestmark = pytest.mark.anyio

REGISTRY, _, REPO = GUN.partition("/")
ROUTE = Route(UpstreamSettings(name="up", url=f"http://{REGISTRY}", registry=REGISTRY), REPO, REPO)
M1 = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","n":1}'
M2 = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","n":2}'
CHILD = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","c":1}'


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


INDEX = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": sha256(CHILD), "size": len(CHILD)}],
    }
).encode()  # fmt: skip


class World(Protocol):
    verification: Verification
    #: keeps state in the store it is given (a second replica then reads less)
    shares_state: bool

    def publish(self, tags: Mapping[str, bytes]) -> None: ...
    def break_data(self) -> None: ...
    def go_down(self) -> None: ...
    def reads(self) -> int: ...
    def source(self, store: TrustStateStore | None = None) -> TrustSource: ...
    def later(self) -> None:
        """Past the time a source may answer from what it verified without asking again."""


class NotaryWorld:
    verification: Verification = NotaryVerification(TrustOnFirstUse())
    shares_state = True

    def __init__(self) -> None:
        self.server = SimServer()
        self.clock = Clock()
        self._sources: list[TrustSource] = []

    def publish(self, tags: Mapping[str, bytes]) -> None:
        repo = self.server.repos.get(GUN) or self.server.add(NotaryRepository(GUN))
        for tag, body in tags.items():
            repo.add_target(tag, body)
        repo.publish()

    def later(self) -> None:
        self.clock.advance(seconds=61)  # past fresh_for (60 s)

    def break_data(self) -> None:
        for repo in self.server.repos.values():
            repo.overrides["timestamp.json"] = b'{"signed": {}, "signatures": []}'

    def go_down(self) -> None:
        self.server.down = 503

    def reads(self) -> int:
        return len(self.server.requests)

    def source(self, store: TrustStateStore | None = None) -> TrustSource:
        made = make_source(self.server, clock=self.clock, store=store)
        self._sources.append(made)
        return made

    async def aclose(self) -> None:
        for s in self._sources:
            await s.aclose()


class StaticWorld:
    verification: Verification = StaticVerification()
    shares_state = False

    def __init__(self, folder: Path) -> None:
        self.path = folder / "pins.yaml"
        self._sources: list[StaticSource] = []

    def publish(self, tags: Mapping[str, bytes]) -> None:
        doc = {"repositories": {GUN: {"tags": {t: sha256(b) for t, b in tags.items()}}}}
        self.path.write_text(yaml.safe_dump(doc), encoding="utf-8")

    def break_data(self) -> None:
        self.path.write_text("repositories: {x: {tags: {v1: not-a-digest}}}\n", encoding="utf-8")

    def go_down(self) -> None:
        self.path.unlink()

    def reads(self) -> int:
        return sum(s.reads for s in self._sources)

    def source(self, store: TrustStateStore | None = None) -> TrustSource:
        made = StaticSource("pins", self.path)  # no shared state: the file is the state
        self._sources.append(made)
        return made

    def later(self) -> None:
        return None  # re-read whenever the file changes

    async def aclose(self) -> None:
        return None


@pytest.fixture(params=["notary", "static"])
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    w: NotaryWorld | StaticWorld = (
        NotaryWorld() if request.param == "notary" else StaticWorld(tmp_path)
    )
    yield w
    await w.aclose()


def rule_of(world: World, source: TrustSource) -> Any:
    """What the gate hands ``source`` for a rule over it (opaque, per source type)."""
    return world.verification.signing_rule(timedelta(0))


def gate(world: World, source: TrustSource, digests: str = "allow") -> EnforcingGate:
    rule = RepositoryRule(
        pattern=f"{REGISTRY}/**",
        mode="enforce",
        source="src",
        verification=world.verification,
        digests=digests,  # type: ignore[arg-type]
    )
    return EnforcingGate(Policy(rules=(rule,)), {"src": source}, NullRecorder())


async def test_signed_tag_resolves_to_its_digest(world: World) -> None:
    world.publish({"v1": M1})
    source = world.source()
    answer = await source.resolve(GUN, "v1", rule_of(world, source))
    assert (answer.digest, answer.signers != ()) == (sha256(M1), True)
    decision = await gate(world, source).decide_tag(ROUTE, "v1", RequestContext())
    assert decision == ServeDigest(sha256(M1), decision.length, decision.signers)  # type: ignore[union-attr]


async def test_a_tag_not_signed_is_refused(world: World) -> None:
    world.publish({"v1": M1})
    source = world.source()
    with pytest.raises(NotSignedError):
        await source.resolve(GUN, "v2", rule_of(world, source))
    with pytest.raises(NotSignedError):
        await gate(world, source).decide_tag(ROUTE, "v2", RequestContext())


async def test_no_trust_data_is_its_own_refusal(world: World) -> None:
    world.publish({"v1": M1})
    source = world.source()
    other = "registry.example:5000/other/app"
    with pytest.raises(NoTrustDataError):
        await source.resolve(other, "v1", rule_of(world, source))


async def test_unavailable_is_a_503_never_an_allow(world: World) -> None:
    world.publish({"v1": M1})
    world.go_down()
    source = world.source()
    with pytest.raises(TrustSourceUnavailableError):
        await source.resolve(GUN, "v1", rule_of(world, source))
    with pytest.raises(TrustSourceUnavailableError):
        await gate(world, source).decide_tag(ROUTE, "v1", RequestContext())


async def test_bad_data_is_never_trusted(world: World) -> None:
    world.publish({"v1": M1})
    world.break_data()
    source = world.source()
    with pytest.raises(TrustDataError):
        await source.resolve(GUN, "v1", rule_of(world, source))
    with pytest.raises((TrustDataError, NotSignedError, TrustSourceUnavailableError)):
        await gate(world, source).decide_tag(ROUTE, "v1", RequestContext())


async def test_the_answer_names_a_digest_not_what_the_tag_points_at_upstream(world: World) -> None:
    """The tag moved upstream to unsigned bytes: the gate still says the signed digest (the
    handler then fetches by that digest, never by tag)."""
    world.publish({"v1": M1})
    source = world.source()
    registry = DictRegistry(tags={"v1": M2})
    decision = await gate(world, source).decide_tag(ROUTE, "v1", RequestContext(registry=registry))
    assert isinstance(decision, ServeDigest)
    assert decision.digest == sha256(M1)
    assert registry.reads == []  # the gate never reads a tag upstream


async def test_tag_lists_show_signed_tags_only(world: World) -> None:
    world.publish({"v1": M1, "v2": M2})
    source = world.source()
    visible = await gate(world, source).filter_tags(
        ROUTE, ["v1", "v3", "v2", "latest"], RequestContext()
    )
    assert visible == ["v1", "v2"]


async def test_digest_pulls_under_digests_signed(world: World) -> None:
    world.publish({"v1": INDEX})
    source = world.source()
    g = gate(world, source, digests="signed")
    ctx = RequestContext(registry=DictRegistry({sha256(INDEX): INDEX, sha256(CHILD): CHILD}))
    await g.decide_digest(ROUTE, sha256(INDEX), ctx)  # the signed index
    await g.decide_digest(ROUTE, sha256(CHILD), ctx)  # a manifest it lists
    with pytest.raises(NotSignedError):
        await g.decide_digest(ROUTE, sha256(M2), ctx)


async def test_many_cold_requests_make_one_read(world: World) -> None:
    world.publish({"v1": M1})
    source = world.source()
    rule = rule_of(world, source)
    before = world.reads()
    answers = await asyncio.gather(*(source.resolve(GUN, "v1", rule) for _ in range(50)))
    assert {a.digest for a in answers} == {sha256(M1)}
    one_walk = world.reads() - before
    await asyncio.gather(*(source.resolve(GUN, "v1", rule) for _ in range(50)))
    assert world.reads() - before == one_walk  # warm: nothing read again
    assert one_walk <= 6  # one walk (notary: root probe, timestamp, snapshot, targets...)


@pytest.mark.integration
@pytest.mark.skipif(redis_binary() is None, reason="redis-server not installed")
async def test_two_replicas_share_one_redis(world: World, tmp_path: Path) -> None:
    from proxy.sources.redis_store import RedisConnection

    world.publish({"v1": M1})
    with RedisServer(tmp_path / "redis") as redis:
        # Two replicas: their own connection, store and source; one redis-server.
        conns = [RedisConnection(redis.url, timeout=1.0) for _ in range(2)]
        try:
            a, b = (world.source(c.store("contract:")) for c in conns)
            rule = rule_of(world, a)
            before = world.reads()
            assert (await a.resolve(GUN, "v1", rule)).digest == sha256(M1)
            first = world.reads() - before
            assert (await b.resolve(GUN, "v1", rule)).digest == sha256(M1)
            second = world.reads() - before - first
            assert 0 < second <= first  # the second replica never costs more than the first
            if world.shares_state:
                assert second < first, (first, second)  # it started from the shared state
            state_a = await a.trust_info(GUN, rule)
            state_b = await b.trust_info(GUN, rule)
            assert state_a.state_key == state_b.state_key  # the same trust state
            # A change (the tag re-signed elsewhere) is seen by both replicas.
            world.publish({"v1": M2})
            world.later()
            answers = await asyncio.gather(a.resolve(GUN, "v1", rule), b.resolve(GUN, "v1", rule))
            assert {x.digest for x in answers} == {sha256(M2)}
            assert (await a.trust_info(GUN, rule)).state_key != state_a.state_key
            # Tag listings agree too, through the gate of each replica.
            for source in (a, b):
                visible = await gate(world, source).filter_tags(
                    ROUTE, ["v1", "v2"], RequestContext()
                )
                assert visible == ["v1"]
        finally:
            for c in conns:
                await c.aclose()
