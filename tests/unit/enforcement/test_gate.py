"""EnforcingGate through the real app: a scripted trust source, the fake registry, every
outcome under every mode, the reasons users see, and the records the recorder gets."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.enforcement.enforcing_gate import Finding, decide
from proxy.errors import NotSignedError, TrustSourceUnavailableError
from proxy.metrics import UPSTREAM_ERRORS
from proxy.policy.model import Mode
from proxy.sources.base import NoTrustDataError
from proxy.sources.notary.rules import SignersDisagreeError, TooFewSignaturesError
from proxy.sources.notary.tuf import ThresholdError
from tests.unit.enforcement.helpers import (
    GUN,
    FakeSource,
    Recorder,
    index,
    make_gate,
    manifest,
    rule,
    serve,
    sha256,
    target,
)
from tests.unit.test_handlers import REPO, FakeRegistry, error_of, respond

SIGNED = manifest("signed")
PUSHED_OVER = manifest("unsigned, pushed over the signed tag")
CHILD_A, CHILD_B = manifest("amd64"), manifest("arm64")
INDEX = index(CHILD_A, CHILD_B)
UNRELATED = manifest("unrelated")
URL = f"/v2/{REPO}/manifests"


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry(
        manifests={
            "v1": PUSHED_OVER,  # the upstream's current tag: must not matter
            "v2": PUSHED_OVER,
            "latest": PUSHED_OVER,
            sha256(SIGNED): SIGNED,
            sha256(PUSHED_OVER): PUSHED_OVER,
            sha256(INDEX): INDEX,
            sha256(CHILD_A): CHILD_A,
            sha256(CHILD_B): CHILD_B,
            sha256(UNRELATED): UNRELATED,
        },
        tags=["v1", "v2", "latest", "multi"],
    )


def signed_source() -> FakeSource:
    return FakeSource({"v1": target("v1", SIGNED), "multi": target("multi", INDEX)})


# --------------------------------------------------------------------------- decide()

MODES: tuple[Mode | None, ...] = ("enforce", "audit", "off", None)
FINDINGS: tuple[Finding, ...] = ("signed", "allowed", "refused", "unavailable", "bad_trust_data")
EXPECTED: dict[tuple[Mode | None, Finding], tuple[str, str]] = {
    # (mode, finding): (outcome, action)
    **{("off", f): ("passed_through", "pass_through") for f in FINDINGS},
    **{(m, "signed"): ("served_signed", "serve_signed") for m in ("enforce", "audit", None)},
    **{(m, "allowed"): ("passed_through", "pass_through") for m in ("enforce", "audit", None)},
    **{("audit", f): ("audit_would_deny", "pass_through")
       for f in ("refused", "unavailable", "bad_trust_data")},
    **{(m, "refused"): ("denied", "refuse") for m in ("enforce", None)},
    **{(m, "unavailable"): ("unavailable", "fail") for m in ("enforce", None)},
    **{(m, "bad_trust_data"): ("bad_trust_data", "fail") for m in ("enforce", None)},
}  # fmt: skip


@pytest.mark.parametrize(
    ("mode", "finding"),
    [(m, f) for m in MODES for f in FINDINGS],
    ids=[f"{m or 'no-rule'}-{f}" for m in MODES for f in FINDINGS],
)
def test_decide_every_mode_and_finding(mode: Mode | None, finding: Finding) -> None:
    v = decide(mode, finding, "why")
    assert (v.outcome, v.action) == EXPECTED[(mode, finding)]
    assert "why" in v.reason


# --------------------------------------------------------------------------- tags, enforce


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_signed_tag_serves_the_signed_digest_not_the_upstreams_tag(
    registry: FakeRegistry, method: str
) -> None:
    rec = Recorder()
    gate = make_gate(signed_source(), rec, rule())
    with serve(registry, gate) as tc:
        r = tc.request(method, f"{URL}/v1", headers={"User-Agent": "skopeo/1.18"})
    assert r.status_code == 200
    assert r.headers["docker-content-digest"] == sha256(SIGNED)
    assert r.headers["content-length"] == str(len(SIGNED))
    assert r.content == (SIGNED if method == "GET" else b"")
    assert registry.paths() == [f"{URL}/{sha256(SIGNED)}"]
    (d,) = rec.decisions
    assert (d.kind, d.outcome, d.repository, d.reference) == (
        "manifest",
        "served_signed",
        GUN,
        "v1",
    )
    assert d.served_digest == sha256(SIGNED)
    assert d.signers == ("targets/releases",)
    assert d.evidence == {
        "roles": ("targets/releases",),
        "key_ids": ("key1",),
        "metadata_versions": {"root": 1, "targets": 1},
    }
    assert (d.rule, d.mode, d.method, d.user_agent) == (
        "registry.test/team/*", "enforce", method, "skopeo/1.18"
    )  # fmt: skip
    assert d.client == "testclient"
    assert d.time == "2026-03-01T12:00:00Z"


def test_head_and_get_answer_the_same_headers(registry: FakeRegistry) -> None:
    gate = make_gate(signed_source(), Recorder(), rule())
    with serve(registry, gate) as tc:
        get = tc.get(f"{URL}/v1")
        head = tc.head(f"{URL}/v1")
    for name in ("docker-content-digest", "content-length", "content-type", "etag"):
        assert get.headers[name] == head.headers[name]


@pytest.mark.parametrize(
    ("source", "tag", "reason"),
    [
        (FakeSource(error=NoTrustDataError("notary", GUN)), "v1", f"no trust data for {GUN}"),
        (signed_source(), "v2", "tag v2 is not signed by targets/releases or targets"),
        (
            FakeSource(error=SignersDisagreeError("v1", (("targets/a", "sha256:aa"),
                                                         ("targets/b", "sha256:bb")))),
            "v1",
            "signers disagree on tag v1: targets/a signs sha256:aa, targets/b signs sha256:bb",
        ),
        (
            FakeSource(error=TooFewSignaturesError("v1", "targets/sec", 1, 2)),
            "v1",
            "tag v1 is signed by targets/sec with 1 valid signature(s), 2 required",
        ),
    ],
    ids=["no-trust-data", "not-signed", "disagree", "threshold"],
)  # fmt: skip
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_refusals_are_manifest_unknown_with_the_reason(
    registry: FakeRegistry, source: FakeSource, tag: str, reason: str, method: str
) -> None:
    rec = Recorder()
    with serve(registry, make_gate(source, rec, rule())) as tc:
        r = tc.request(method, f"{URL}/{tag}")
    assert r.status_code == 404
    if method == "GET":
        assert error_of(r)["code"] == "MANIFEST_UNKNOWN"
        assert error_of(r)["detail"] == {"reason": reason}
    assert registry.requests == []
    (d,) = rec.decisions
    assert (d.outcome, d.reason, d.served_digest) == ("denied", reason, None)


def test_no_rule_is_refused(registry: FakeRegistry) -> None:
    rec = Recorder()
    source = signed_source()
    gate = make_gate(source, rec, rule(pattern="other.example/*"))
    with serve(registry, gate) as tc:
        r = tc.get(f"{URL}/v1")
        tags = tc.get(f"/v2/{REPO}/tags/list")
        by_digest = tc.get(f"{URL}/{sha256(SIGNED)}")
    assert r.status_code == by_digest.status_code == 404
    assert error_of(r)["detail"] == {"reason": f"no policy rule matches {GUN}"}
    assert tags.json() == {"name": REPO, "tags": []}
    assert source.calls == []
    assert [(d.outcome, d.rule) for d in rec.decisions] == [("denied", None)] * 3
    assert registry.requests == []  # refused before the upstream was asked, lists too


def test_no_rule_listings_never_reach_upstream(registry: FakeRegistry) -> None:
    """Issue 17, finding 7: the tag list and the referrers of a repository no rule matches
    were relayed from the upstream before the gate ran (its tags, its errors, its
    referrers). Now the gate refuses first: an empty listing, a record, no upstream call."""
    rec = Recorder()
    gate = make_gate(signed_source(), rec, rule(pattern="other.example/*"))
    registry.overrides[f"/v2/{REPO}/tags/list"] = lambda _: respond(500, b"must not be asked")
    digest = sha256(SIGNED)
    with serve(registry, gate) as tc:
        tags = tc.get(f"/v2/{REPO}/tags/list")
        refs = tc.get(f"/v2/{REPO}/referrers/{digest}")
    assert registry.requests == []
    assert tags.status_code == refs.status_code == 200
    assert tags.json() == {"name": REPO, "tags": []}
    assert refs.json()["manifests"] == []
    assert [(d.kind, d.reference, d.outcome, d.reason) for d in rec.decisions] == [
        ("tags", "", "denied", f"no policy rule matches {GUN}"),
        ("referrers", digest, "denied", f"no policy rule matches {GUN}"),
    ]


def test_listings_under_a_rule_still_ask_the_upstream(registry: FakeRegistry) -> None:
    registry.tags = ["v1", "v2"]
    rec = Recorder()
    with serve(registry, make_gate(signed_source(), rec, rule())) as tc:
        tags = tc.get(f"/v2/{REPO}/tags/list")
    assert tags.json() == {"name": REPO, "tags": ["v1"]}
    assert [q.url.path for q in registry.requests] == [f"/v2/{REPO}/tags/list"]
    assert rec.outcomes == [("tags", "denied")]  # v2 hidden: one record, from filter_tags


def test_tag_pattern_is_checked_first(registry: FakeRegistry) -> None:
    rec = Recorder()
    source = FakeSource({"latest": target("latest", SIGNED)})
    gate = make_gate(source, rec, rule(tag_patterns=("v*.*.*",)))
    with serve(registry, gate) as tc:
        r = tc.get(f"{URL}/latest")
    assert r.status_code == 404
    assert error_of(r)["detail"] == {"reason": "tag latest does not match allowed pattern v*.*.*"}
    assert source.calls == []  # cheap check first: no trust data needed


def test_unreachable_trust_source_is_503_never_a_pass_through(registry: FakeRegistry) -> None:
    rec = Recorder()
    source = FakeSource(error=TrustSourceUnavailableError("notary", "connection refused"))
    with serve(registry, make_gate(source, rec, rule())) as tc:
        r = tc.get(f"{URL}/v1")
        head = tc.head(f"{URL}/v1")
        tags = tc.get(f"/v2/{REPO}/tags/list")
    assert r.status_code == head.status_code == tags.status_code == 503
    assert error_of(r)["detail"] == {"trust_source": "notary"}
    assert PUSHED_OVER not in r.content
    assert not any("/manifests/" in p for p in registry.paths())
    assert [d.outcome for d in rec.decisions] == ["unavailable"] * 3


def test_bad_trust_data_is_503(registry: FakeRegistry) -> None:
    rec = Recorder()
    source = FakeSource(error=ThresholdError("1 of 2 signatures", role="targets"))
    with serve(registry, make_gate(source, rec, rule())) as tc:
        r = tc.get(f"{URL}/v1")
    assert r.status_code == 503
    assert rec.outcomes == [("manifest", "bad_trust_data")]


@pytest.mark.parametrize(
    ("rule_source", "configured"),
    [("elsewhere", "notary"), (None, None)],
    ids=["unknown-source", "no-source-two-configured"],
)
def test_misconfigured_source_fails_closed(
    registry: FakeRegistry, rule_source: str | None, configured: str | None
) -> None:
    from proxy.enforcement.enforcing_gate import EnforcingGate
    from proxy.policy.model import Policy
    from tests.unit.enforcement.helpers import fake_match_rule, fake_tag_allowed

    sources: dict[str, Any] = {"notary": signed_source()}
    if configured is None:
        sources["other"] = signed_source()
    gate = EnforcingGate(
        Policy((rule(source=rule_source),)), sources, Recorder(),
        match_rule=fake_match_rule, tag_allowed=fake_tag_allowed,
    )  # fmt: skip
    with serve(registry, gate) as tc:
        assert tc.get(f"{URL}/v1").status_code == 503


def test_one_configured_source_is_used_when_the_rule_names_none(
    registry: FakeRegistry,
) -> None:
    gate = make_gate(signed_source(), Recorder(), rule(source=None))
    with serve(registry, gate) as tc:
        assert tc.get(f"{URL}/v1").status_code == 200


# --------------------------------------------------------------------------- mismatch


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_upstream_bytes_not_the_signed_digest_is_502_alert_and_record(
    registry: FakeRegistry, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    registry.manifests[sha256(SIGNED)] = PUSHED_OVER
    rec = Recorder()
    before = UPSTREAM_ERRORS.labels("internal", "mismatch")._value.get()
    with serve(registry, make_gate(signed_source(), rec, rule())) as tc:
        r = tc.request(method, f"{URL}/v1")
    assert r.status_code == 502
    assert PUSHED_OVER not in r.content
    assert rec.outcomes == [("manifest", "served_signed"), ("manifest", "upstream_mismatch")]
    mismatch = rec.decisions[1]
    assert sha256(PUSHED_OVER) in mismatch.reason
    assert sha256(SIGNED) in mismatch.reason
    assert (mismatch.rule, mismatch.mode, mismatch.method) == ("registry.test/team/*", "enforce",
                                                               method)  # fmt: skip
    assert UPSTREAM_ERRORS.labels("internal", "mismatch")._value.get() == before + 1
    assert any(rec_.levelname == "CRITICAL" for rec_ in caplog.records)


# --------------------------------------------------------------------------- modes


def test_audit_serves_signed_and_passes_the_rest_through_with_a_record(
    registry: FakeRegistry,
) -> None:
    rec = Recorder()
    with serve(registry, make_gate(signed_source(), rec, rule("audit"))) as tc:
        signed = tc.get(f"{URL}/v1")
        unsigned = tc.get(f"{URL}/v2")
        tags = tc.get(f"/v2/{REPO}/tags/list")
    assert signed.content == SIGNED  # what enforce would serve, where it can
    assert unsigned.status_code == 200
    assert unsigned.content == PUSHED_OVER
    assert tags.json()["tags"] == ["latest", "multi", "v1", "v2"]
    assert rec.outcomes == [
        ("manifest", "served_signed"),
        ("manifest", "audit_would_deny"),
        ("tags", "audit_would_deny"),
    ]
    assert rec.decisions[1].reason == "tag v2 is not signed by targets/releases or targets"
    assert rec.decisions[1].mode == "audit"
    assert rec.decisions[2].reason == "2 of 4 tags are not signed or not allowed"


def test_audit_with_trust_source_down_passes_through_and_records(
    registry: FakeRegistry,
) -> None:
    rec = Recorder()
    source = FakeSource(error=TrustSourceUnavailableError("notary", "timed out"))
    with serve(registry, make_gate(source, rec, rule("audit", digests="signed"))) as tc:
        r = tc.get(f"{URL}/v1")
        by_digest = tc.get(f"{URL}/{sha256(UNRELATED)}")
    assert r.status_code == by_digest.status_code == 200
    assert r.content == PUSHED_OVER
    assert rec.outcomes == [("manifest", "audit_would_deny"), ("digest", "audit_would_deny")]
    assert "timed out" in rec.decisions[0].reason


def test_off_passes_through_without_asking_the_source(registry: FakeRegistry) -> None:
    rec = Recorder()
    source = signed_source()
    with serve(registry, make_gate(source, rec, rule("off", digests="signed"))) as tc:
        r = tc.get(f"{URL}/v2")
        tags = tc.get(f"/v2/{REPO}/tags/list")
        by_digest = tc.get(f"{URL}/{sha256(UNRELATED)}")
    assert r.content == PUSHED_OVER
    assert tags.json()["tags"] == ["latest", "multi", "v1", "v2"]
    assert by_digest.status_code == 200
    assert source.calls == []
    assert [d.outcome for d in rec.decisions] == ["passed_through"] * 3


# --------------------------------------------------------------------------- tag lists


def test_tag_list_shows_signed_allowed_tags_with_one_source_call(
    registry: FakeRegistry,
) -> None:
    registry.tags = [f"v1.{i}.0" for i in range(10)] + ["latest", "v1"]
    registry.page_size = 4  # the upstream paginates too
    source = FakeSource({t: target(t, SIGNED) for t in ["v1.2.0", "v1.5.0", "v1.7.0", "latest",
                                                        "v1", "not-upstream"]})  # fmt: skip
    rec = Recorder()
    gate = make_gate(source, rec, rule(tag_patterns=("v*.*.*",)))
    with serve(registry, gate) as tc:
        first = tc.get(f"/v2/{REPO}/tags/list", params={"n": "2"})
        link = first.headers["link"]
        second = tc.get(link[1 : link.index(">")])
    assert first.json()["tags"] == ["v1.2.0", "v1.5.0"]
    assert second.json()["tags"] == ["v1.7.0"]
    assert "link" not in second.headers
    assert source.calls == [f"signed_state {GUN}"] * 2  # once per listing, not per tag
    assert rec.outcomes == [("tags", "denied")] * 2


def test_tag_list_without_trust_data_is_empty(registry: FakeRegistry) -> None:
    source = FakeSource(error=NoTrustDataError("notary", GUN))
    with serve(registry, make_gate(source, Recorder(), rule())) as tc:
        r = tc.get(f"/v2/{REPO}/tags/list")
    assert r.status_code == 200
    assert r.json() == {"name": REPO, "tags": []}


# --------------------------------------------------------------------------- by digest


def test_digest_allow_serves_any_digest(registry: FakeRegistry) -> None:
    rec = Recorder()
    source = signed_source()
    with serve(registry, make_gate(source, rec, rule(digests="allow"))) as tc:
        r = tc.get(f"{URL}/{sha256(UNRELATED)}")
    assert r.status_code == 200
    assert r.content == UNRELATED
    assert source.calls == []
    (d,) = rec.decisions
    assert (d.kind, d.outcome, d.served_digest) == ("digest", "passed_through", sha256(UNRELATED))


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_digest_signed_allows_signed_targets_and_index_children(
    registry: FakeRegistry, method: str
) -> None:
    rec = Recorder()
    with serve(registry, make_gate(signed_source(), rec, rule(digests="signed"))) as tc:
        answers = {
            name: tc.request(method, f"{URL}/{sha256(body)}")
            for name, body in [("signed", SIGNED), ("index", INDEX), ("child-a", CHILD_A),
                               ("child-b", CHILD_B), ("unrelated", UNRELATED)]
        }  # fmt: skip
    assert {k: r.status_code for k, r in answers.items()} == {
        "signed": 200, "index": 200, "child-a": 200, "child-b": 200, "unrelated": 404
    }  # fmt: skip
    if method == "GET":
        reason = error_of(answers["unrelated"])["detail"]["reason"]
        assert reason == f"digest {sha256(UNRELATED)} is not signed for {GUN}"
    assert [d.outcome for d in rec.decisions] == ["served_signed"] * 4 + ["denied"]
    # Each signed manifest was fetched once, to be served (HEAD by digest also fetches the
    # bytes to hash them); the gate's reads for the allowlist hit the manifest cache.
    assert registry.paths().count(f"{URL}/{sha256(INDEX)}") == 1
    assert registry.paths().count(f"{URL}/{sha256(SIGNED)}") == 1


def test_digest_signed_respects_tag_patterns(registry: FakeRegistry) -> None:
    gate = make_gate(signed_source(), Recorder(), rule(digests="signed", tag_patterns=("v*",)))
    with serve(registry, gate) as tc:
        assert tc.get(f"{URL}/{sha256(SIGNED)}").status_code == 200  # v1
        assert tc.get(f"{URL}/{sha256(INDEX)}").status_code == 404  # multi: not a v* tag
        assert tc.get(f"{URL}/{sha256(CHILD_A)}").status_code == 404


def test_digest_signed_with_trust_source_down_is_503(registry: FakeRegistry) -> None:
    source = FakeSource(error=TrustSourceUnavailableError("notary", "connection refused"))
    with serve(registry, make_gate(source, Recorder(), rule(digests="signed"))) as tc:
        r = tc.get(f"{URL}/{sha256(SIGNED)}")
    assert r.status_code == 503
    assert registry.requests == []


def test_digest_signed_never_allows_when_the_index_cannot_be_read(
    registry: FakeRegistry,
) -> None:
    registry.overrides[f"{URL}/{sha256(INDEX)}"] = lambda _: respond(503, b"down")
    rec = Recorder()
    with serve(registry, make_gate(signed_source(), rec, rule(digests="signed"))) as tc:
        r = tc.get(f"{URL}/{sha256(CHILD_A)}")
        del registry.overrides[f"{URL}/{sha256(INDEX)}"]
        again = tc.get(f"{URL}/{sha256(CHILD_A)}")  # nothing cached from the failure
    assert r.status_code == 502
    assert again.status_code == 200
    assert [d.outcome for d in rec.decisions] == ["unavailable", "served_signed"]


def test_digest_signed_index_with_wrong_bytes_adds_no_children(
    registry: FakeRegistry,
) -> None:
    registry.manifests[sha256(INDEX)] = index(UNRELATED)  # swapped behind the signed digest
    with serve(registry, make_gate(signed_source(), Recorder(), rule(digests="signed"))) as tc:
        child = tc.get(f"{URL}/{sha256(CHILD_A)}")
        swapped_in = tc.get(f"{URL}/{sha256(UNRELATED)}")
    assert child.status_code == swapped_in.status_code == 404
    assert "is not usable" in error_of(child)["detail"]["reason"]


def test_digest_allowlist_follows_the_trust_state(registry: FakeRegistry) -> None:
    source = signed_source()
    with serve(registry, make_gate(source, Recorder(), rule(digests="signed"))) as tc:
        assert tc.get(f"{URL}/{sha256(CHILD_A)}").status_code == 200
        del source.targets["multi"]
        source.version = 2  # new trust data: the cached allowlist no longer applies
        assert tc.get(f"{URL}/{sha256(CHILD_A)}").status_code == 404


def test_blobs_are_not_gated(registry: FakeRegistry) -> None:
    blob = b"layer bytes"
    registry.blobs[sha256(blob)] = blob
    source = FakeSource(error=TrustSourceUnavailableError("notary", "down"))
    with serve(registry, make_gate(source, Recorder(), rule(digests="signed"))) as tc:
        r = tc.get(f"/v2/{REPO}/blobs/{sha256(blob)}")
    assert r.status_code == 200
    assert r.content == blob


def test_a_failing_recorder_does_not_change_the_answer(registry: FakeRegistry) -> None:
    class Broken:
        def record(self, decision: object) -> None:
            raise OSError("disk full")

    gate = make_gate(signed_source(), Broken(), rule())  # type: ignore[arg-type]
    with serve(registry, gate) as tc:
        assert tc.get(f"{URL}/v1").status_code == 200
        assert tc.get(f"{URL}/v2").status_code == 404


def test_not_signed_error_reason_is_shown_verbatim(registry: FakeRegistry) -> None:
    source = FakeSource(error=NotSignedError("trust data for v1 in targets has no sha256 hash"))
    with serve(registry, make_gate(source, Recorder(), rule())) as tc:
        r = tc.get(f"{URL}/v1")
    assert error_of(r)["detail"]["reason"] == "trust data for v1 in targets has no sha256 hash"
