"""The contract every trust source passes, parametrised over the registered kinds that can
run in-process: ``notary`` (against the notary-server simulator), ``static`` (a pins
file) and ``cosign`` (signatures in a registry in memory, judged by the cosign core). Each
world can publish a signed (pinned) tag, break its data, and go down; the source and the
enforcing gate over it must answer the same way for all.

Sources that judge signatures on digests (cosign) read the registry as the requesting
client, so every call here hands them one (``world.registry()``); the others ignore it.
Where such a source differs by design, the test says so: it resolves tags upstream (so it
does read the tag), "no trust data" is an unsigned image, and bad signature data is a
refusal with the reason.

Not here: Redis shared state across two replicas (the notary source's integration tests,
tests/integration/test_replicas*.py, cover it against a real redis-server; the static source
keeps no shared state).
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
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.decisions import NullRecorder
from proxy.enforcement.enforcing_gate import EnforcingGate, utc_now
from proxy.errors import NotSignedError, TrustDataError, TrustSourceUnavailableError
from proxy.policy.model import Policy, RepositoryRule, Verification
from proxy.routing import Route
from proxy.settings import UpstreamSettings
from proxy.sources.base import NoTrustDataError, RegistryReads, TrustSource
from proxy.sources.cosign.judge import CosignJudge
from proxy.sources.cosign.keys import VerifyingKey
from proxy.sources.cosign.policy import CosignPolicy, KeyAuthority
from proxy.sources.cosign.rule import CosignRule, CosignVerification
from proxy.sources.cosign.verify import CosignVerifier
from proxy.sources.notary.policy import NotaryVerification
from proxy.sources.notary.tuf import TrustOnFirstUse
from proxy.sources.signed_digests import SignedDigestSource
from proxy.sources.static.entry import StaticVerification
from proxy.sources.static.source import StaticSource
from proxy.sources.store import MemoryTrustStateStore, TrustStateStore
from proxy.trust_gate import RequestContext, ServeDigest
from tests.simulators.notary_repo import NotaryRepository
from tests.simulators.registry_reads import DictRegistry
from tests.simulators.sigstore_instance import SigstoreInstance, blobs_of, sig_manifest
from tests.unit.sources.cosign.fake_registry import FakeRegistry
from tests.unit.sources.sim import GUN, SimServer, make_source

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
    #: signatures on digests, in the registry (resolves tags upstream)
    signs_digests: bool

    def publish(self, tags: Mapping[str, bytes]) -> None: ...
    def break_data(self) -> None: ...
    def go_down(self) -> None: ...
    def reads(self) -> int: ...
    def source(self) -> TrustSource: ...
    def registry(self, manifests: Mapping[str, bytes] = ...) -> RegistryReads: ...


class NotaryWorld:
    verification: Verification = NotaryVerification(TrustOnFirstUse())
    signs_digests = False

    def __init__(self) -> None:
        self.server = SimServer()
        self._sources: list[TrustSource] = []

    def publish(self, tags: Mapping[str, bytes]) -> None:
        repo = self.server.add(NotaryRepository(GUN))
        for tag, body in tags.items():
            repo.add_target(tag, body)
        repo.publish()

    def break_data(self) -> None:
        for repo in self.server.repos.values():
            repo.overrides["timestamp.json"] = b'{"signed": {}, "signatures": []}'

    def go_down(self) -> None:
        self.server.down = 503

    def reads(self) -> int:
        return len(self.server.requests)

    def source(self) -> TrustSource:
        made = make_source(self.server)
        self._sources.append(made)
        return made

    def registry(self, manifests: Mapping[str, bytes] = {}) -> RegistryReads:
        return DictRegistry(manifests)

    async def aclose(self) -> None:
        for s in self._sources:
            await s.aclose()


class StaticWorld:
    verification: Verification = StaticVerification()
    signs_digests = False

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

    def source(self) -> TrustSource:
        made = StaticSource("pins", self.path)
        self._sources.append(made)
        return made

    def registry(self, manifests: Mapping[str, bytes] = {}) -> RegistryReads:
        return DictRegistry(manifests)

    async def aclose(self) -> None:
        return None


class CosignWorld:
    """Key-signed classic ``.sig`` signatures in a registry in memory; the rule remembers
    the last signed digest of a tag (``onUnsignedTag: lastSigned``) in one shared store."""

    signs_digests = True

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.instance = SigstoreInstance()
        self.upstream = FakeRegistry(name=GUN)
        self.store: TrustStateStore = MemoryTrustStateStore()
        self._sources: list[TrustSource] = []
        policy = CosignPolicy(
            (KeyAuthority(VerifyingKey(self.key.public_key()), name="release"),),
            tlog="optional",
            rule=f"{REGISTRY}/**",
        )
        self.verification: Verification = CosignVerification(
            CosignRule(policy, on_unsigned_tag="lastSigned")
        )

    def publish(self, tags: Mapping[str, bytes]) -> None:
        for tag, body in tags.items():
            digest = self.upstream.put_image(tag, body)
            layer = self.instance.key_layer(digest, GUN, self.key)
            self.upstream.put_sig(digest, sig_manifest([layer]), blobs_of([layer]))

    def break_data(self) -> None:
        for tag, body in list(self.upstream.tags.items()):
            if tag.endswith(".sig"):  # a signature over other bytes
                self.upstream.tags[tag] = body.replace(b'"layers"', b'"layers" ', 1)
        for digest in list(self.upstream.blobs):
            self.upstream.blobs[digest] = self.upstream.blobs[digest].replace(
                b"sha256:", b"sha256:0"
            )

    def go_down(self) -> None:
        self.upstream.down = True

    def reads(self) -> int:
        return len(self.upstream.reads)

    def source(self) -> TrustSource:
        judge = CosignJudge(CosignVerifier(None), source="src")
        made = SignedDigestSource("src", judge, store=self.store, clock=utc_now)
        self._sources.append(made)
        return made

    def registry(self, manifests: Mapping[str, bytes] = {}) -> RegistryReads:
        for body in manifests.values():
            self.upstream.manifests[sha256(body)] = body
        return self.upstream

    async def aclose(self) -> None:
        for s in self._sources:
            await s.aclose()


@pytest.fixture(params=["notary", "static", "cosign"])
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    w: NotaryWorld | StaticWorld | CosignWorld
    if request.param == "notary":
        w = NotaryWorld()
    elif request.param == "static":
        w = StaticWorld(tmp_path)
    else:
        w = CosignWorld()
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
    reads = world.registry()
    answer = await source.resolve(GUN, "v1", rule_of(world, source), registry=reads)
    assert (answer.digest, answer.signers != ()) == (sha256(M1), True)
    ctx = RequestContext(registry=reads)
    decision = await gate(world, source).decide_tag(ROUTE, "v1", ctx)
    assert decision == ServeDigest(sha256(M1), decision.length, decision.signers)  # type: ignore[union-attr]


async def test_a_tag_not_signed_is_refused(world: World) -> None:
    world.publish({"v1": M1})
    source = world.source()
    reads = world.registry()
    with pytest.raises(NotSignedError):
        await source.resolve(GUN, "v2", rule_of(world, source), registry=reads)
    with pytest.raises(NotSignedError):
        await gate(world, source).decide_tag(ROUTE, "v2", RequestContext(registry=reads))


async def test_no_trust_data_is_its_own_refusal(world: World) -> None:
    """A repository without trust data: Notary and pins say so (NoTrustDataError); for
    signatures on digests it is an unsigned image, refused with its reason."""
    world.publish({"v1": M1})
    source = world.source()
    other = "registry.example:5000/other/app"
    expected = NotSignedError if world.signs_digests else NoTrustDataError
    with pytest.raises(expected):
        await source.resolve(other, "v1", rule_of(world, source), registry=world.registry())


async def test_unavailable_is_a_503_never_an_allow(world: World) -> None:
    world.publish({"v1": M1})
    world.go_down()
    source = world.source()
    reads = world.registry()
    with pytest.raises(TrustSourceUnavailableError):
        await source.resolve(GUN, "v1", rule_of(world, source), registry=reads)
    with pytest.raises(TrustSourceUnavailableError):
        await gate(world, source).decide_tag(ROUTE, "v1", RequestContext(registry=reads))


async def test_bad_data_is_never_trusted(world: World) -> None:
    """Bad trust data: never an allow. Signatures on digests that do not verify are a
    refusal with the reason (one signer's bad data must not hide another's)."""
    world.publish({"v1": M1})
    world.break_data()
    source = world.source()
    reads = world.registry()
    expected = NotSignedError if world.signs_digests else TrustDataError
    with pytest.raises(expected):
        await source.resolve(GUN, "v1", rule_of(world, source), registry=reads)
    with pytest.raises((TrustDataError, NotSignedError, TrustSourceUnavailableError)):
        await gate(world, source).decide_tag(ROUTE, "v1", RequestContext(registry=reads))


async def test_the_answer_names_a_digest_not_what_the_tag_points_at_upstream(world: World) -> None:
    """The tag moved upstream to unsigned bytes: the gate still says the signed digest (the
    handler then fetches by that digest, never by tag). For signatures on digests this is
    ``onUnsignedTag: lastSigned``, remembered in the shared store: a second replica that
    never saw the signed digest answers it too."""
    world.publish({"v1": M1})
    source = world.source()
    if world.signs_digests:
        reads = world.registry()
        await source.resolve(GUN, "v1", rule_of(world, source), registry=reads)
        world.registry({"m2": M2})
        world.upstream.tags["v1"] = M2  # type: ignore[attr-defined]
        source = world.source()  # another replica on the same shared store
        registry: Any = reads
    else:
        registry = DictRegistry(tags={"v1": M2})
    decision = await gate(world, source).decide_tag(ROUTE, "v1", RequestContext(registry=registry))
    assert isinstance(decision, ServeDigest)
    assert decision.digest == sha256(M1)
    if not world.signs_digests:
        assert registry.reads == []  # the gate never reads a tag upstream


async def test_tag_lists_show_signed_tags_only(world: World) -> None:
    world.publish({"v1": M1, "v2": M2})
    source = world.source()
    visible = await gate(world, source).filter_tags(
        ROUTE, ["v1", "v3", "v2", "latest"], RequestContext(registry=world.registry())
    )
    assert visible == ["v1", "v2"]


async def test_digest_pulls_under_digests_signed(world: World) -> None:
    world.publish({"v1": INDEX})
    source = world.source()
    g = gate(world, source, digests="signed")
    ctx = RequestContext(registry=world.registry({sha256(INDEX): INDEX, sha256(CHILD): CHILD}))
    await g.decide_digest(ROUTE, sha256(INDEX), ctx)  # the signed index
    await g.decide_digest(ROUTE, sha256(CHILD), ctx)  # a manifest it lists
    with pytest.raises(NotSignedError):
        await g.decide_digest(ROUTE, sha256(M2), ctx)


async def test_many_cold_requests_make_one_read(world: World) -> None:
    world.publish({"v1": M1})
    source = world.source()
    rule = rule_of(world, source)
    reads = world.registry()
    before = world.reads()
    answers = await asyncio.gather(
        *(source.resolve(GUN, "v1", rule, registry=reads) for _ in range(50))
    )
    assert {a.digest for a in answers} == {sha256(M1)}
    one_walk = world.reads() - before
    await asyncio.gather(*(source.resolve(GUN, "v1", rule, registry=reads) for _ in range(50)))
    assert world.reads() - before == one_walk  # warm: nothing read again
    assert one_walk <= 6  # one walk (notary: root probe, timestamp, snapshot, targets...)
    if world.signs_digests:
        assert one_walk == 3  # HEAD of the tag, the .sig manifest, its payload blob
