"""A policy rule's ``fallback`` (a signed trust snapshot served by the static source): asked
only when the rule's source has no trust data or is unreachable, never when it says "not
signed" or its data is bad; audited, counted, and listed for /readyz."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from proxy.enforcement.enforcing_gate import EnforcingGate
from proxy.errors import (
    NotSignedError,
    TrustDataError,
    TrustproxyError,
    TrustSourceUnavailableError,
)
from proxy.metrics import FALLBACK_ANSWERS
from proxy.policy.model import Policy
from proxy.routing import Route
from proxy.settings import UpstreamSettings
from proxy.sources.base import NoTrustDataError
from proxy.sources.static.entry import StaticVerification
from proxy.sources.static.snapshot import SnapshotRepository, SnapshotTag, statement_bytes
from proxy.sources.static.snapshot import verify_snapshot as verify
from proxy.sources.static.snapshot_keys import load_private_key
from proxy.sources.static.source import StaticSource
from proxy.trust_gate import FallbackReport, RequestContext, ServeDigest
from tests.simulators.registry_reads import DictRegistry
from tests.unit.enforcement.helpers import (
    FakeSource,
    Recorder,
    fake_match_rule,
    fake_tag_allowed,
    manifest,
    rule,
    sha256,
    target,
)

pytestmark = pytest.mark.anyio

REGISTRY = "registry.test"
REPO = "team/app"
GUN = f"{REGISTRY}/{REPO}"
ROUTE = Route(UpstreamSettings(name="up", url=f"http://{REGISTRY}", registry=REGISTRY), REPO, REPO)
NOW = datetime(2026, 12, 20, tzinfo=UTC)
LIVE = manifest("live")
ARCHIVED = manifest("archived")
CTX = RequestContext(registry=DictRegistry({sha256(LIVE): LIVE, sha256(ARCHIVED): ARCHIVED}))


def _snapshot_source() -> StaticSource:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from proxy.sources.static.snapshot import sign_snapshot

    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key = load_private_key(pem)
    t = SnapshotTag("v1", sha256(ARCHIVED), len(ARCHIVED), ("targets",), "2026-12-01T00:00:00Z", {})
    r = SnapshotRepository(
        GUN, "notary", "notary", "2026-12-01T00:00:00Z", {}, {"v1": t}, frozenset()
    )
    data = sign_snapshot(statement_bytes([r], datetime(2026, 12, 1, tzinfo=UTC)), key)
    snap = verify(data, [key.public], now=NOW, registries=[REGISTRY])
    return StaticSource.from_snapshot("archive", Path("snap.json"), snap)


def gate(primary: FakeSource, *, fallback: bool = True) -> tuple[EnforcingGate, Recorder]:
    r = rule(pattern=f"{REGISTRY}/team/*")
    if fallback:
        r = replace(r, fallback="archive", fallback_verification=StaticVerification())
    recorder = Recorder()
    g = EnforcingGate(
        Policy(rules=(r,)),
        {"notary": primary, "archive": _snapshot_source()},
        recorder,
        match_rule=fake_match_rule,
        tag_allowed=fake_tag_allowed,
        clock=lambda: NOW,
    )
    return g, recorder


def _count(outcome: str, kind: str = "manifest") -> float:
    value = FALLBACK_ANSWERS.labels(
        fallback="archive", primary="notary", kind=kind, outcome=outcome
    )._value.get()
    return float(value)


CAUSES = [
    pytest.param(NoTrustDataError("notary.test", GUN), "no_trust_data", id="no-trust-data"),
    pytest.param(
        TrustSourceUnavailableError("notary", "connect refused"), "unavailable", id="unreachable"
    ),
]


@pytest.mark.parametrize(("error", "cause"), CAUSES)
async def test_fallback_answers_when_the_primary_has_nothing(
    error: TrustproxyError, cause: str
) -> None:
    g, recorder = gate(FakeSource(error=error))
    before = _count("served_signed")
    decision = await g.decide_tag(ROUTE, "v1", CTX)
    assert decision == ServeDigest(sha256(ARCHIVED), len(ARCHIVED), signers=("targets",))
    (record,) = recorder.decisions
    assert record.outcome == "served_signed"
    assert record.evidence["fallback"]["source"] == "archive"
    assert record.evidence["fallback"]["primary"] == "notary"
    assert record.evidence["snapshot"]["source"] == "notary"
    assert "from fallback archive" in record.reason
    assert _count("served_signed") == before + 1
    assert isinstance(g, FallbackReport)
    entry = g.fallback_repositories()[GUN]
    assert (entry["fallback"], entry["cause"]) == ("archive", cause)
    # Tag lists and digest pulls take the same way.
    assert await g.filter_tags(ROUTE, ["v1", "v2"], CTX) == ["v1"]
    assert recorder.decisions[-1].evidence["fallback"]["source"] == "archive"


NEVER = [
    pytest.param(
        TrustDataError("signature does not verify", role="targets"), "fail", id="bad-trust-data"
    ),
    pytest.param(
        NotSignedError("tag v1 is not signed by targets/releases"), "refuse", id="not-signed"
    ),
]


@pytest.mark.parametrize(("error", "action"), NEVER)
async def test_fallback_never_overrules_not_signed_or_bad_data(
    error: TrustproxyError, action: str
) -> None:
    g, recorder = gate(FakeSource(error=error))
    with pytest.raises(TrustproxyError) as raised:
        await g.decide_tag(ROUTE, "v1", CTX)
    assert isinstance(raised.value, NotSignedError if action == "refuse" else TrustDataError)
    (record,) = recorder.decisions
    assert "fallback" not in record.evidence
    assert g.fallback_repositories() == {}


async def test_a_signed_primary_is_used_and_clears_the_fallback_listing() -> None:
    primary = FakeSource(error=TrustSourceUnavailableError("notary", "down"))
    g, recorder = gate(primary)
    await g.decide_tag(ROUTE, "v1", CTX)
    assert GUN in g.fallback_repositories()
    primary.error = None
    primary.targets = {"v1": target("v1", LIVE)}
    decision = await g.decide_tag(ROUTE, "v1", CTX)
    assert isinstance(decision, ServeDigest)
    assert decision.digest == sha256(LIVE)
    assert "fallback" not in recorder.decisions[-1].evidence
    assert g.fallback_repositories() == {}


async def test_a_tag_missing_from_the_snapshot_is_refused_with_both_reasons() -> None:
    g, recorder = gate(FakeSource(error=TrustSourceUnavailableError("notary", "down")))
    before = _count("denied")
    with pytest.raises(NotSignedError, match="not in the trust snapshot"):
        await g.decide_tag(ROUTE, "v2", CTX)
    assert "down" in recorder.decisions[-1].reason
    assert recorder.decisions[-1].evidence["fallback"]["source"] == "archive"
    assert _count("denied") == before + 1


async def test_without_the_repository_in_the_snapshot_the_primarys_answer_stands() -> None:
    g, recorder = gate(FakeSource(error=TrustSourceUnavailableError("notary", "down")))
    other = Route(ROUTE.upstream, "team/other", "team/other")
    with pytest.raises(TrustSourceUnavailableError):
        await g.decide_tag(other, "v1", CTX)
    assert "has no trust data for it either" in recorder.decisions[-1].reason
    assert "fallback" not in recorder.decisions[-1].evidence


async def test_without_a_fallback_rule_nothing_changes() -> None:
    g, _ = gate(FakeSource(error=TrustSourceUnavailableError("notary", "down")), fallback=False)
    with pytest.raises(TrustSourceUnavailableError):
        await g.decide_tag(ROUTE, "v1", CTX)


async def test_digest_pulls_under_digests_signed_use_the_fallback() -> None:
    primary = FakeSource(error=NoTrustDataError("notary.test", GUN))
    g, recorder = gate(primary)
    g.policy = Policy(rules=tuple(replace(r, digests="signed") for r in g.policy.rules))
    await g.decide_digest(ROUTE, sha256(ARCHIVED), CTX)
    assert recorder.decisions[-1].outcome == "served_signed"
    assert recorder.decisions[-1].evidence["fallback"]["source"] == "archive"
    with pytest.raises(NotSignedError):
        await g.decide_digest(ROUTE, sha256(LIVE), CTX)


async def test_readyz_lists_the_repositories_on_fallback() -> None:
    from tests.unit.enforcement.helpers import serve
    from tests.unit.test_handlers import FakeRegistry

    primary = FakeSource(error=TrustSourceUnavailableError("notary", "down"))
    g, _ = gate(primary)
    await g.decide_tag(ROUTE, "v1", CTX)
    with serve(FakeRegistry(), g) as client:
        body = client.get("/readyz").json()
    assert body["ready"] is True  # answering from the snapshot is not a reason to drain
    assert body["fallback"][GUN]["fallback"] == "archive"
    assert body["fallback"][GUN]["primary"] == "notary"
    primary.error = None
    primary.targets = {"v1": target("v1", LIVE)}
    await g.decide_tag(ROUTE, "v1", CTX)
    with serve(FakeRegistry(), g) as client:
        assert client.get("/readyz").json()["fallback"] == {}
