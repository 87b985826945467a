"""Issue 17, finding 2: ``digests: signed`` answers come from one snapshot of the trust state.

The gate caches the allowed digests (signed targets and the children of signed indexes) under
the trust state's key. Reading the signed tags and the key apart let a refresh land between
the two reads: the old state's allowed set (a revoked index and its children) was cached
under the new state's key, and pulls by digest of the revoked index stayed allowed until the
trust data changed again. Both tests interleave a refresh right after the first read of the
trust state in a request, deterministically.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from types import MappingProxyType

import pytest

from proxy.enforcement.enforcing_gate import EnforcingGate
from proxy.errors import NotSignedError
from proxy.policy.model import Policy
from proxy.routing import Route
from proxy.settings import UpstreamSettings
from proxy.sources.base import SignedState, TrustInfo
from proxy.sources.notary.rules import SigningRule
from proxy.sources.notary.source import NotarySourceOptions, trust_info_of
from proxy.sources.notary.tuf import SignedTarget, TrustedSet, TrustOnFirstUse
from proxy.trust_gate import RequestContext
from tests.simulators.notary_repo import NotaryRepository
from tests.simulators.registry_reads import DictRegistry
from tests.unit.enforcement.helpers import Recorder, fake_match_rule, fake_tag_allowed, rule
from tests.unit.sources.sim import GUN, Clock, SimServer, make_source

pytestmark = pytest.mark.anyio

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CHILD = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "arch": "amd64"}).encode()


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


INDEX = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": sha256(CHILD), "size": len(CHILD)}],
    }
).encode()
REGISTRY, _, REPO = GUN.partition("/")
ROUTE = Route(UpstreamSettings(name="up", url=f"http://{REGISTRY}", registry=REGISTRY), REPO, REPO)
MANIFESTS = {sha256(INDEX): INDEX, sha256(CHILD): CHILD}


CTX = RequestContext(registry=DictRegistry(MANIFESTS))


def gate_over(source: object) -> EnforcingGate:
    return EnforcingGate(
        Policy(rules=(rule(pattern=f"{REGISTRY}/**", digests="signed"),)),
        {"notary": source},  # type: ignore[dict-item]
        Recorder(),
        match_rule=fake_match_rule,
        tag_allowed=fake_tag_allowed,
    )


async def allowed(gate: EnforcingGate, digest: str) -> bool:
    try:
        await gate.decide_digest(ROUTE, digest, CTX)
    except NotSignedError:
        return False
    return True


class FlippingSource:
    """A scripted source whose trust state changes right after the first read of it
    (whichever method reads it): version 1 signs the index, version 2 signs nothing."""

    def __init__(self) -> None:
        self.reads = 0

    @property
    def name(self) -> str:
        return "notary"

    def _read(self) -> tuple[dict[str, SignedTarget], TrustInfo]:
        self.reads += 1
        if self.reads == 1:  # the state before the refresh
            signed = {
                "multi": SignedTarget(
                    "multi", sha256(INDEX), len(INDEX), "targets", ("k",), ("targets",)
                )
            }
            return signed, trust_info_of({"root": 1, "targets": 1})
        return {}, trust_info_of({"root": 1, "targets": 2})

    async def resolve(self, gun: str, tag: str, rule: SigningRule, **_: object) -> SignedTarget:
        raise NotSignedError(f"tag {tag} is not signed")

    async def signed_tags(
        self, gun: str, rule: SigningRule, **_: object
    ) -> dict[str, SignedTarget]:
        return self._read()[0]

    async def trust_info(self, gun: str, rule: SigningRule) -> TrustInfo:
        return self._read()[1]

    async def signed_state(self, gun: str, rule: SigningRule, **_: object) -> SignedState:
        tags, info = self._read()
        return SignedState(MappingProxyType(tags), info)

    async def aclose(self) -> None:
        return None


async def test_a_refresh_between_reads_does_not_cache_the_old_allowlist_under_the_new_key() -> None:
    source = FlippingSource()
    gate = gate_over(source)
    # The first request is answered from the state it read first (the index was signed).
    assert await allowed(gate, sha256(CHILD))
    # The index is revoked now (version 2): neither it nor its child may be pulled.
    assert not await allowed(gate, sha256(CHILD))
    assert not await allowed(gate, sha256(INDEX))


async def test_notary_source_refresh_between_reads_revokes_the_index_children() -> None:
    """The same race against the real Notary source (simulated notary-server): the refresh
    lands right after the request's first load of the trust data."""
    server = SimServer()
    repo = server.add(NotaryRepository(GUN))
    repo.add_target("multi", INDEX)
    repo.publish()
    clock = Clock()
    fresh_for = timedelta(seconds=30)
    source = make_source(server, clock=clock, options=NotarySourceOptions(fresh_for=fresh_for))
    load = source.load
    interleaved = False

    async def load_then_revoke(gun: str, srule: SigningRule) -> TrustedSet:
        nonlocal interleaved
        ts = await load(gun, srule)
        if not interleaved:
            # `notary remove multi` + publish, and the cached state goes stale: the next
            # read of the trust state in this same request refreshes it.
            interleaved = True
            repo.remove_target("multi")
            repo.publish()
            clock.now += fresh_for + timedelta(seconds=1)
        return ts

    source.load = load_then_revoke  # type: ignore[method-assign,assignment]
    gate = gate_over(source)
    try:
        assert await allowed(gate, sha256(CHILD))
        assert interleaved
        assert not await allowed(gate, sha256(CHILD))
        assert not await allowed(gate, sha256(INDEX))
    finally:
        await source.aclose()


async def test_signed_state_is_one_load() -> None:
    server = SimServer()
    repo = server.add(NotaryRepository(GUN))
    repo.add_target("multi", INDEX)
    repo.publish()
    source = make_source(server)
    srule = SigningRule(TrustOnFirstUse())
    try:
        state = await source.signed_state(GUN, srule)
        assert set(state.tags) == {"multi"}
        assert state.info == await source.trust_info(GUN, srule)
        assert state.tags == await source.signed_tags(GUN, srule)
        with pytest.raises(TypeError):
            state.tags["x"] = state.tags["multi"]  # type: ignore[index]  # read-only view
    finally:
        await source.aclose()
