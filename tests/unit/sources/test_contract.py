"""The contract every trust source passes, parametrised over the registered kinds that can
run in-process: ``notary`` (against the notary-server simulator), ``static`` (a pins
file), ``cosign`` (classic ``.sig`` signatures in a registry in memory, judged by the cosign
core) and ``notation`` (signatures in a fake registry). Each world can publish a signed
(pinned) tag, break its data, and go down; the source and the enforcing gate over it must
answer the same way for all.

Sources whose signatures live in the registry beside the image and sign digests
(``registry()`` is not None) read the tag upstream: the checks that a tag-signing source
never reads the tag, and that "no trust data" is its own refusal, are theirs only; bad
signature data is a refusal (NotSignedError) for them, since what is bad is one signature.

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
import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.decisions import NullRecorder
from proxy.enforcement.enforcing_gate import EnforcingGate
from proxy.errors import NotSignedError, TrustDataError, TrustSourceUnavailableError
from proxy.policy.model import Policy, RepositoryRule, Verification
from proxy.routing import Route
from proxy.settings import UpstreamSettings
from proxy.sources.base import NoTrustDataError, TrustSource
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
from testbed.redis_server import RedisServer, redis_binary
from tests.simulators.notary_repo import NotaryRepository
from tests.simulators.registry_reads import DictRegistry
from tests.simulators.sigstore_instance import SigstoreInstance, blobs_of, sig_manifest
from tests.unit.sources.cosign.fake_registry import FakeRegistry
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
    #: what the source raises for trust data that fails verification
    bad_data_error: type[Exception]
    #: keeps state in the store it is given (a second replica then reads less)
    shares_state: bool

    def publish(self, tags: Mapping[str, bytes]) -> None: ...
    def break_data(self) -> None: ...
    def go_down(self) -> None: ...
    def reads(self) -> int: ...
    def source(self, store: TrustStateStore | None = None) -> TrustSource: ...
    def later(self) -> None:
        """Past the time a source may answer from what it verified without asking again."""

    def registry(self) -> Any:
        """The registry the source reads signatures from (None: it reads none)."""


class NotaryWorld:
    verification: Verification = NotaryVerification(TrustOnFirstUse())
    bad_data_error: type[Exception] = TrustDataError

    def registry(self) -> Any:
        return None

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
    bad_data_error: type[Exception] = TrustDataError

    def registry(self) -> Any:
        return None

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


class CosignWorld:
    """Key-signed classic ``.sig`` signatures in a registry in memory; its sources share one
    store (the tag memory of ``onUnsignedTag: lastSigned``)."""

    bad_data_error: type[Exception] = NotSignedError
    #: verdicts are per process; only the lastSigned tag memory is shared
    shares_state = False

    def __init__(self) -> None:
        self.clock = Clock(datetime.now(UTC))
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
        self.verification: Verification = CosignVerification(CosignRule(policy))

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

    def source(self, store: TrustStateStore | None = None) -> TrustSource:
        judge = CosignJudge(CosignVerifier(None), source="src")
        made = SignedDigestSource(
            "src", judge, store=self.store if store is None else store, clock=self.clock
        )
        self._sources.append(made)
        return made

    def registry(self) -> Any:
        return self.upstream

    def later(self) -> None:
        self.clock.advance(hours=1)  # past the verdict and tag TTLs

    async def aclose(self) -> None:
        for s in self._sources:
            await s.aclose()


class NotationWorld:
    """Notation signatures in a registry without the referrers API (the tag index), judged
    by the source the ``type: notation`` entry builds from Notation's own files."""

    bad_data_error: type[Exception] = NotSignedError
    #: verdicts are per process; only the lastSigned tag memory is shared
    shares_state = False

    def __init__(self, folder: Path) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        from proxy.sources.notation.rule import NotationRule, NotationVerification
        from testbed.notation_signer import Signer, make_cert
        from tests.unit.sources.notation.fake_registry import FakeRegistry as NotationRegistry

        self.verification: Verification = NotationVerification(NotationRule())
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = make_cert("contract", key)
        self.signer = Signer(key, [cert])
        store = folder / "truststore" / "x509" / "ca" / "contract"
        store.mkdir(parents=True)
        (store / "contract.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        statement = {
            "name": "contract",
            "registryScopes": ["*"],
            "signatureVerification": {"level": "strict"},
            "trustStores": ["ca:contract"],
            "trustedIdentities": ["x509.subject: C=US, ST=WA, O=trustproxy-test"],
        }
        doc = {"version": "1.0", "trustPolicies": [statement]}
        (folder / "trustpolicy.json").write_text(json.dumps(doc), encoding="utf-8")
        self.folder = folder
        self.fake = NotationRegistry()
        self.clock = Clock(datetime.now(UTC))
        self._sources: list[TrustSource] = []

    def publish(self, tags: Mapping[str, bytes]) -> None:
        from proxy.sources.notation.judge import served_media_type
        from testbed.notation_signer import Signer, signature_artifact

        for tag, body in tags.items():
            digest = self.fake.put_manifest(body, tag)
            media_type = served_media_type(body)
            payload = Signer.payload(media_type, digest, len(body))
            subject = {"mediaType": media_type, "digest": digest, "size": len(body)}
            self.fake.put_signature(signature_artifact(subject, self.signer.jws(payload)))

    def break_data(self) -> None:
        """Every envelope's signature altered (and re-addressed, so the registry serves it)."""
        for digest, body in list(self.fake.manifests.items()):
            doc = json.loads(body)
            if "subject" not in doc:
                continue
            layer = doc["layers"][0]
            envelope = json.loads(self.fake.blobs[layer["digest"]])
            sig = envelope["signature"]
            envelope["signature"] = ("B" if sig[0] == "A" else "A") + sig[1:]
            data = json.dumps(envelope).encode()
            layer["digest"], layer["size"] = sha256(data), len(data)
            self.fake.blobs[layer["digest"]] = data
            del self.fake.manifests[digest]
            tag = doc["subject"]["digest"].replace(":", "-", 1)
            del self.fake.tags[tag]
            from testbed.notation_signer import SignatureArtifact

            self.fake.put_signature(SignatureArtifact(json.dumps(doc).encode(), {}))

    def go_down(self) -> None:
        self.fake.down = True

    def reads(self) -> int:
        return len(self.fake.reads)

    def registry(self) -> Any:
        return self.fake

    def later(self) -> None:
        self.clock.advance(hours=1)  # past the verdict and tag TTLs

    def source(self, store: TrustStateStore | None = None) -> TrustSource:
        from proxy.settings import CacheSettings, LimitSettings, parse_settings
        from proxy.sources.registry import source_type
        from proxy.sources.store import MemoryTrustStateStore

        raw = {
            "upstreams": [{"name": "up", "url": f"http://{REGISTRY}"}],
            "trust": {
                "sources": {
                    "notation": {
                        "type": "notation",
                        "trust_policy": "trustpolicy.json",
                        "trust_store": "truststore",
                    }
                }
            },
        }
        (settings,) = parse_settings(raw, base_dir=self.folder).trust.sources
        made = source_type("notation").build(
            settings,
            LimitSettings(),
            MemoryTrustStateStore() if store is None else store,
            clock=self.clock,
            cache=CacheSettings(),
        )
        self._sources.append(made)
        return made

    async def aclose(self) -> None:
        for s in self._sources:
            await s.aclose()


@pytest.fixture(params=["notary", "static", "cosign", "notation"])
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    w: NotaryWorld | StaticWorld | CosignWorld | NotationWorld
    if request.param == "notary":
        w = NotaryWorld()
    elif request.param == "static":
        w = StaticWorld(tmp_path)
    elif request.param == "cosign":
        w = CosignWorld()
    else:
        w = NotationWorld(tmp_path)
    yield w
    await w.aclose()


def reads_for(world: World, manifests: Mapping[str, bytes] | None = None) -> Any:
    """The registry a request reads: the world's own (signatures live there), else one with
    ``manifests``."""
    own = world.registry()
    if own is None:
        return DictRegistry(manifests)
    for body in (manifests or {}).values():
        own.put_manifest(body)
    return own


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
    decision = await gate(world, source).decide_tag(ROUTE, "v1", RequestContext(registry=reads))
    assert decision == ServeDigest(sha256(M1), decision.length, decision.signers)  # type: ignore[union-attr]


async def test_a_tag_not_signed_is_refused(world: World) -> None:
    world.publish({"v1": M1})
    source = world.source()
    reads = world.registry()
    if reads is not None:  # unsigned bytes under v2 upstream
        reads.put_manifest(M2, "v2")
    with pytest.raises(NotSignedError):
        await source.resolve(GUN, "v2", rule_of(world, source), registry=reads)
    with pytest.raises(NotSignedError):
        await gate(world, source).decide_tag(ROUTE, "v2", RequestContext(registry=reads))


async def test_no_trust_data_is_its_own_refusal(world: World) -> None:
    if world.registry() is not None:
        pytest.skip("signatures on digests: an unsigned digest is refused as not signed")
    world.publish({"v1": M1})
    source = world.source()
    other = "registry.example:5000/other/app"
    with pytest.raises(NoTrustDataError):
        await source.resolve(other, "v1", rule_of(world, source))


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
    world.publish({"v1": M1})
    world.break_data()
    source = world.source()
    reads = world.registry()
    with pytest.raises(world.bad_data_error):
        await source.resolve(GUN, "v1", rule_of(world, source), registry=reads)
    with pytest.raises((TrustDataError, NotSignedError, TrustSourceUnavailableError)):
        await gate(world, source).decide_tag(ROUTE, "v1", RequestContext(registry=reads))


async def test_the_answer_names_a_digest_not_what_the_tag_points_at_upstream(world: World) -> None:
    """The tag moved upstream to unsigned bytes: the gate still says the signed digest (the
    handler then fetches by that digest, never by tag)."""
    if world.registry() is not None:
        pytest.skip("signatures on digests: the tag is read upstream (see the next test)")
    world.publish({"v1": M1})
    source = world.source()
    registry = DictRegistry(tags={"v1": M2})
    decision = await gate(world, source).decide_tag(ROUTE, "v1", RequestContext(registry=registry))
    assert isinstance(decision, ServeDigest)
    assert decision.digest == sha256(M1)
    assert registry.reads == []  # the gate never reads a tag upstream


async def test_a_moved_tag_of_a_digest_signing_source(world: World) -> None:
    """Signatures on digests: a tag moved upstream to unsigned bytes is refused (deny), or
    answers the digest it last had while signed (lastSigned), never the unsigned bytes."""
    reads = world.registry()
    if reads is None:
        pytest.skip("tag-signing sources answer from their trust data (previous test)")
    world.publish({"v1": M1})
    source = world.source()
    deny = rule_of(world, source)
    last = dataclasses.replace(deny, on_unsigned_tag="lastSigned")
    assert (await source.resolve(GUN, "v1", last, registry=reads)).digest == sha256(M1)
    reads.put_manifest(M2, "v1")
    if isinstance(source, SignedDigestSource):
        source.invalidate(GUN)  # as after the refresh interval
    with pytest.raises(NotSignedError):
        await source.resolve(GUN, "v1", deny, registry=reads)
    answer = await source.resolve(GUN, "v1", last, registry=reads)
    assert (answer.digest, answer.evidence["last_signed"]) == (sha256(M1), True)


async def test_tag_lists_show_signed_tags_only(world: World) -> None:
    world.publish({"v1": M1, "v2": M2})
    source = world.source()
    reads = world.registry()
    if reads is not None:
        reads.put_manifest(M1, "v3")  # signed bytes (the digest is signed), another tag
        reads.put_manifest(b'{"unsigned":1}', "latest")
    visible = await gate(world, source).filter_tags(
        ROUTE, ["v1", "v3", "v2", "latest"], RequestContext(registry=reads)
    )
    if reads is not None:  # a digest is signed, whatever tag names it
        assert visible == ["v1", "v3", "v2"]
        return
    assert visible == ["v1", "v2"]


async def test_digest_pulls_under_digests_signed(world: World) -> None:
    world.publish({"v1": INDEX})
    source = world.source()
    g = gate(world, source, digests="signed")
    ctx = RequestContext(registry=reads_for(world, {sha256(INDEX): INDEX, sha256(CHILD): CHILD}))
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
    # one walk (notary: root probe, timestamp, snapshot, targets...; notation: the tag, the
    # manifest, its referrers, the signature manifest and its envelope)
    assert one_walk <= 6
    if isinstance(world, CosignWorld):
        assert one_walk == 3  # HEAD of the tag, the .sig manifest, its payload blob


@pytest.mark.integration
@pytest.mark.skipif(redis_binary() is None, reason="redis-server not installed")
@pytest.mark.parametrize("state_files", [False, True], ids=["redis-only", "state-file-each"])
async def test_two_replicas_share_one_redis(
    world: World, tmp_path: Path, state_files: bool
) -> None:
    """``state_files``: each replica on a host of its own, with its own state file and
    hand-over key (the store ``serve`` builds with Redis and ``cache.state_dir``)."""
    from proxy.sources.redis_store import RedisConnection
    from proxy.sources.sqlite_store import SqliteStateFile, with_host_floors

    world.publish({"v1": M1})
    files = [SqliteStateFile(tmp_path / f"host-{n}") for n in range(2)] if state_files else []

    def store_of(conn: RedisConnection, n: int) -> TrustStateStore:
        shared = conn.store("contract:")
        if not files:
            return shared
        vouched = files[n].store("contract:") if world.shares_state else None
        return with_host_floors(shared, files[n].floors("contract:"), vouched=vouched)

    with RedisServer(tmp_path / "redis") as redis:
        # Two replicas: their own connection, store and source; one redis-server.
        conns = [RedisConnection(redis.url, timeout=1.0) for _ in range(2)]
        try:
            a, b = (world.source(store_of(c, n)) for n, c in enumerate(conns))
            rule = rule_of(world, a)
            reads = world.registry()
            before = world.reads()
            assert (await a.resolve(GUN, "v1", rule, registry=reads)).digest == sha256(M1)
            first = world.reads() - before
            assert (await b.resolve(GUN, "v1", rule, registry=reads)).digest == sha256(M1)
            second = world.reads() - before - first
            assert 0 < second <= first  # the second replica never costs more than the first
            if world.shares_state:
                assert second < first, (first, second)  # it started from the shared state
            if isinstance(world, NotaryWorld):
                # ... but never from it alone: Redis is not freshness, and nothing another
                # host's replica saved is vouched for here (whatever the state files).
                assert "timestamp.json" in world.server.names[-second:], world.server.names
                if files:
                    # A sibling of the first on its host (the same file and key) takes what
                    # that one verified within its window: no read at all.
                    sibling = world.source(store_of(conns[0], 0))
                    done = world.reads()
                    found = await sibling.resolve(GUN, "v1", rule, registry=reads)
                    assert found.digest == sha256(M1)
                    assert world.reads() == done, world.server.names
            state_a = await a.trust_info(GUN, rule)
            state_b = await b.trust_info(GUN, rule)
            assert state_a.state_key == state_b.state_key  # the same trust state
            # A change (the tag re-signed elsewhere) is seen by both replicas.
            world.publish({"v1": M2})
            world.later()
            answers = await asyncio.gather(
                a.resolve(GUN, "v1", rule, registry=reads),
                b.resolve(GUN, "v1", rule, registry=reads),
            )
            assert {x.digest for x in answers} == {sha256(M2)}
            assert (await a.trust_info(GUN, rule)).state_key != state_a.state_key
            # Tag listings agree too, through the gate of each replica.
            for source in (a, b):
                visible = await gate(world, source).filter_tags(
                    ROUTE, ["v1", "v2"], RequestContext(registry=reads)
                )
                assert visible == ["v1"]
        finally:
            for c in conns:
                await c.aclose()
            for f in files:
                await f.aclose()
