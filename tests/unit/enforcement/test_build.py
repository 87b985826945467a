"""build_enforcement / FailClosedGate: what ``serve`` installs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from proxy.enforcement import (
    EnforcingGate,
    FailClosedGate,
    UnavailableSource,
    build_enforcement,
    policy_unavailable,
)
from proxy.policy.model import Policy
from proxy.settings import Settings, TrustSettings, TrustSourceSettings
from proxy.sources.notary.source import NotarySource
from proxy.trust_gate import PassThroughGate, RequestContext
from tests.unit.enforcement.helpers import (
    Recorder,
    fake_match_rule,
    fake_tag_allowed,
    rule,
    serve,
    sha256,
)
from tests.unit.test_handlers import REPO, FakeRegistry, error_of, make_settings

pytestmark = pytest.mark.anyio


def settings_with(*sources: TrustSourceSettings) -> Settings:
    return dataclasses.replace(make_settings(), trust=TrustSettings(sources=sources))


NOTARY = TrustSourceSettings("notary", "notary", "https://notary.example:4443")


async def test_no_policy_is_pass_through() -> None:
    enforcement = build_enforcement(settings_with(NOTARY), None, recorder=Recorder())
    assert isinstance(enforcement.gate, PassThroughGate)
    assert enforcement.sources == {}
    await enforcement.aclose()


async def test_policy_builds_an_enforcing_gate_over_notary_sources() -> None:
    other = dataclasses.replace(NOTARY, name="other", url="https://other.example")
    enforcement = build_enforcement(
        settings_with(NOTARY, other),
        Policy((rule(),)),
        recorder=Recorder(),
        match_rule=fake_match_rule,
        tag_allowed=fake_tag_allowed,
    )
    try:
        assert isinstance(enforcement.gate, EnforcingGate)
        assert set(enforcement.sources) == {"notary", "other"}
        assert all(isinstance(s, NotarySource) for s in enforcement.sources.values())
        assert enforcement.gate.sources == enforcement.sources
    finally:
        await enforcement.aclose()


async def test_source_that_cannot_be_built_fails_closed_for_its_repositories(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = dataclasses.replace(NOTARY, ca_file=tmp_path / "missing-ca.pem")
    rec = Recorder()
    enforcement = build_enforcement(
        settings_with(broken), Policy((rule(),)), recorder=rec,
        match_rule=fake_match_rule, tag_allowed=fake_tag_allowed,
    )  # fmt: skip
    assert isinstance(enforcement.sources["notary"], UnavailableSource)
    registry = FakeRegistry(manifests={"v1": b"{}"}, tags=["v1"])
    with serve(registry, enforcement.gate) as tc:
        r = tc.get(f"/v2/{REPO}/manifests/v1")
    assert r.status_code == 503
    assert error_of(r)["detail"] == {"trust_source": "notary"}
    assert error_of(r)["message"] == "trust source notary: is misconfigured (see the proxy's log)"
    assert "missing-ca.pem" in caplog.text
    assert rec.outcomes == [("manifest", "unavailable")]
    await enforcement.aclose()


def test_fail_closed_gate_refuses_every_decision_with_503_but_not_blobs() -> None:
    blob = b"layer"
    registry = FakeRegistry(
        manifests={"v1": b"{}", sha256(b"{}"): b"{}"}, blobs={sha256(blob): blob}, tags=["v1"]
    )
    rec = Recorder()
    reason = "policy not loaded: repositories[0].mode: must be enforce, audit or off"
    enforcement = policy_unavailable(reason, recorder=rec)
    assert isinstance(enforcement.gate, FailClosedGate)
    with serve(registry, enforcement.gate) as tc:
        answers = [
            tc.get(f"/v2/{REPO}/manifests/v1"),
            tc.head(f"/v2/{REPO}/manifests/v1"),
            tc.get(f"/v2/{REPO}/manifests/{sha256(b'{}')}"),
            tc.get(f"/v2/{REPO}/tags/list"),
            tc.get(f"/v2/{REPO}/referrers/{sha256(b'{}')}"),
        ]
        asked = len(registry.requests)
        blob_answer = tc.get(f"/v2/{REPO}/blobs/{sha256(blob)}")
    assert [r.status_code for r in answers] == [503] * 5
    assert asked == 0  # listings too are refused before the upstream is asked
    entry = error_of(answers[0])
    assert entry["message"] == reason
    assert entry["detail"] == {"trust_source": "policy"}
    assert blob_answer.status_code == 200
    assert [d.outcome for d in rec.decisions] == ["unavailable"] * 5
    assert {d.kind for d in rec.decisions} == {"manifest", "digest", "tags", "referrers"}


async def test_fail_closed_gate_with_one_argument() -> None:
    """``proxy.reload`` builds it as ``FailClosedGate(reason)``."""
    from proxy.enforcement.fail_closed import FailClosedGate as Direct
    from proxy.routing import Router

    gate = Direct("broken")
    route = Router(make_settings().upstreams).route(REPO)
    with pytest.raises(Exception, match="broken"):
        await gate.decide_tag(route, "v1", RequestContext())
