"""NotationJudge over a fake registry: the upstream e2e OCI layouts (read in place) at the
levels their README states, both discovery paths (referrers API, tag index), both
signature-manifest shapes, and hostile registry content."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from proxy.errors import NotSignedError, UpstreamUnavailableError
from proxy.sources.notation.judge import NotationJudge, NotationLimits, served_media_type
from proxy.sources.notation.rule import NotationRule
from proxy.sources.notation.trustpolicy import (
    StoreRef,
    StoreType,
    TrustPolicyDocument,
    parse_statement_core,
    parse_trust_policy,
)
from proxy.sources.notation.truststore import TrustStore
from testbed.notation_signer import Signer, make_cert, signature_artifact
from tests.unit.sources.notation.fake_registry import FakeRegistry, digest_of
from tests.unit.sources.notation.helpers import (
    LAYOUTS,
    LOCALKEYS,
    NOW,
    POLICIES,
    SIGNATURE_TYPE,
    needs_vectors,
    store_of,
)

pytestmark = pytest.mark.anyio

SUBJECT = "sha256:b8479de3f88fb259a0a9ea82a5b2a052a1ef3c4ebbcfc61482d5ae4c831f8af9"
REPO = "localhost:5000/test-repo"


def policy(name: str) -> TrustPolicyDocument:
    return parse_trust_policy((POLICIES / name).read_bytes(), source=name)


def judge_for(document: TrustPolicyDocument, store: TrustStore, **limits: int) -> NotationJudge:
    return NotationJudge(
        source="notation", document=document, trust_store=store, limits=NotationLimits(**limits)
    )


def e2e_store(cert: str = "e2e.crt") -> TrustStore:
    return store_of(ca__e2e=[LOCALKEYS / cert])


def layout(name: str, *, api: bool = False) -> FakeRegistry:
    return FakeRegistry.from_layout(LAYOUTS / name, referrers_api=api)


# --- the upstream e2e layouts -------------------------------------------------------------

E2E_CASES = [
    # (layout, policy document, store certificate, signed?, reason fragment)
    ("e2e", "trustpolicy.json", "e2e.crt", False, "no Notation signature"),
    ("e2e-valid-signature", "trustpolicy.json", "e2e.crt", True, ""),
    ("e2e-valid-signature", "trustpolicy.json", "new_e2e.crt", False, "authenticity"),
    ("e2e-valid-signature", "audit_trustpolicy.json", "new_e2e.crt", True, ""),
    ("e2e-valid-signature", "invalid_trusted_identity_trustpolicy.json", "e2e.crt", False, "X.509"),
    ("e2e-valid-signature", "valid_trusted_identity_trustpolicy.json", "e2e.crt", True, ""),
    ("e2e-valid-multiple-signatures", "trustpolicy.json", "e2e.crt", True, ""),
    ("e2e-expired-signature", "trustpolicy.json", "e2e.crt", False, "expiry"),
    ("e2e-expired-signature", "permissive_trustpolicy.json", "e2e.crt", True, ""),
    ("e2e-expired-signature", "audit_trustpolicy.json", "e2e.crt", True, ""),
    ("e2e-expired-signature", "override_strict_trustpolicy.json", "e2e.crt", True, ""),
    ("e2e-expired-signature", "override_permissive_trustpolicy.json", "e2e.crt", False, "expir"),
    ("e2e-invalid-signature", "trustpolicy.json", "e2e.crt", False, "integrity"),
    ("e2e-invalid-signature", "audit_trustpolicy.json", "e2e.crt", False, "integrity"),
    ("e2e-invalid-signature", "skip_trustpolicy.json", "e2e.crt", True, ""),
    ("e2e-with-expired-cert", "trustpolicy.json", "expired_e2e.crt", False, "authenticTimestamp"),
    ("e2e-with-expired-cert", "permissive_trustpolicy.json", "expired_e2e.crt", True, ""),
    ("e2e-with-expired-cert", "audit_trustpolicy.json", "expired_e2e.crt", True, ""),
]


@needs_vectors
@pytest.mark.parametrize("api", [False, True], ids=["tag-index", "referrers-api"])
@pytest.mark.parametrize(("name", "document", "cert", "signed", "reason"), E2E_CASES)
async def test_e2e_layouts(
    name: str, document: str, cert: str, signed: bool, reason: str, api: bool
) -> None:
    registry = layout(name, api=api)
    judge = judge_for(policy(document), e2e_store(cert))
    digest = registry.tags["v1"]
    if not signed:
        with pytest.raises(NotSignedError) as info:
            await judge.judge(registry, REPO, digest, NotationRule(), NOW)
        assert reason in info.value.reason
        return
    answer = await judge.judge(registry, REPO, digest, NotationRule(), NOW)
    assert answer.digest == digest
    if document == "skip_trustpolicy.json":
        assert answer.evidence["verification_skipped"] is True
        assert registry.reads == []  # skip: nothing is read
        return
    assert answer.length == len(registry.manifests[digest])
    assert answer.evidence["trust_policy"] == "e2e"
    assert answer.evidence["signature_manifest"] in registry.manifests
    if "authenticity" not in json.dumps(answer.evidence["logged_failures"]):
        assert answer.evidence["trust_store"] == "ca:e2e"
        assert len(answer.evidence["cert_fingerprints"][0]) == 64
        assert answer.evidence["anchor_fingerprint"]
    if name == "e2e-valid-signature" and document == "trustpolicy.json":
        assert answer.signers == ("CN=e2e,O=Notary,L=Seattle,ST=WA,C=US",)
        assert answer.evidence["logged_failures"] == []
    if name == "e2e-expired-signature":
        assert any("expired" in f for f in answer.evidence["logged_failures"])


@needs_vectors
async def test_the_stale_tag_index_lists_one_of_two_signatures() -> None:
    """e2e-valid-multiple-signatures: the index lists only the trusted signature; through
    the API both are listed, and the trusted one is still found."""
    judge = judge_for(policy("trustpolicy.json"), e2e_store())
    for api, listed in ((False, 1), (True, 2)):
        registry = layout("e2e-valid-multiple-signatures", api=api)
        sigs = [d for d in await registry.referrers(SUBJECT) if "artifactType" in d]
        assert len(sigs) == listed
        answer = await judge.judge(registry, REPO, SUBJECT, NotationRule(), NOW)
        assert answer.signers == ("CN=e2e,O=Notary,L=Seattle,ST=WA,C=US",)


@needs_vectors
async def test_registry_scopes_pick_the_statement() -> None:
    judge = judge_for(policy("registry_scope_trustpolicy.json"), e2e_store())
    registry = layout("e2e-valid-signature")
    answer = await judge.judge(registry, REPO, SUBJECT, NotationRule(), NOW)
    assert answer.digest == SUBJECT
    with pytest.raises(NotSignedError, match="no applicable oci trust policy"):
        await judge.judge(registry, "localhost:5000/other", SUBJECT, NotationRule(), NOW)


@needs_vectors
async def test_an_inline_statement_overrides_the_document() -> None:
    registry = layout("e2e-expired-signature")
    judge = judge_for(policy("trustpolicy.json"), e2e_store())
    inline = parse_statement_core(
        {
            "signatureVerification": {"level": "strict", "override": {"expiry": "log"}},
            "trustStores": ["ca:e2e"],
            "trustedIdentities": ["x509.subject: C=US, ST=WA, O=Notary"],
        },
        "rule",
        name="rule",
        scopes=(),
    )
    answer = await judge.judge(registry, REPO, SUBJECT, NotationRule(inline=inline), NOW)
    assert answer.evidence["trust_policy"] == "rule"
    with pytest.raises(NotSignedError, match="expir"):
        await judge.judge(registry, REPO, SUBJECT, NotationRule(), NOW)


@needs_vectors
async def test_inspect_reports_every_signature() -> None:
    registry = layout("e2e-valid-multiple-signatures", api=True)
    judge = judge_for(policy("trustpolicy.json"), e2e_store())
    reports = await judge.inspect(registry, REPO, SUBJECT, NotationRule(), NOW)
    assert sorted(r.passed for r in reports) == [False, True]
    passed = next(r for r in reports if r.passed)
    assert passed.trust_store == "ca:e2e"
    assert "integrity: passed" in passed.checks
    refused = next(r for r in reports if not r.passed)
    assert "CN=testcert11" in refused.signer_subject
    assert "authenticity" in refused.reason


# --- helper-made signatures: shapes, envelopes, hostile content ------------------------

T = datetime(2026, 6, 1, tzinfo=UTC)
IMAGE = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:"
                   + "0" * 64, "size": 2},
        "layers": [],
    }
).encode()  # fmt: skip


@dataclasses.dataclass
class World:
    registry: FakeRegistry
    judge: NotationJudge
    signer: Signer
    digest: str

    def subject(self, body: bytes = IMAGE) -> dict[str, object]:
        return {
            "mediaType": served_media_type(body),
            "digest": digest_of(body),
            "size": len(body),
        }

    def sign(self, *, cose: bool = False, final_form: bool = False, index: bool = True,
             payload: bytes | None = None, signer: Signer | None = None) -> str:  # fmt: skip
        s = signer or self.signer
        subject = self.subject()
        body = payload or Signer.payload(
            str(subject["mediaType"]), str(subject["digest"]), len(IMAGE)
        )
        envelope = s.cose(body) if cose else s.jws(body)
        media_type = "application/cose" if cose else "application/jose+json"
        artifact = signature_artifact(subject, envelope, media_type, final_form=final_form)
        self.registry.put_signature(artifact, index=index)
        return artifact.digest


def world(*, api: bool = False, level: str = "strict", chain: int = 1, **limits: int) -> World:
    root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    root = make_cert("root", root_key, ca=chain > 1)
    certs = [root]
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = root_key
    issuer: tuple[x509.Certificate, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey] = (
        root,
        root_key,
    )
    for i in range(chain - 1):
        k = ec.generate_private_key(ec.SECP256R1())
        last = i == chain - 2
        cert = make_cert(f"level{i}", k, issuer=issuer, ca=not last)
        certs.insert(0, cert)
        issuer, key = (cert, k), k
    signer = Signer(key, certs, alg="ES256" if chain > 1 else "PS256")
    doc = json.dumps(
        {
            "version": "1.0",
            "trustPolicies": [
                {
                    "name": "helper",
                    "registryScopes": ["*"],
                    "signatureVerification": {"level": level},
                    "trustStores": ["ca:helper"],
                    "trustedIdentities": ["x509.subject: C=US, ST=WA, O=trustproxy-test"],
                }
            ],
        }
    ).encode()
    store = TrustStore.of({StoreRef(StoreType.CA, "helper"): [root]})
    registry = FakeRegistry(referrers_api=api)
    digest = registry.put_manifest(IMAGE, "v1")
    return World(registry, judge_for(parse_trust_policy(doc), store, **limits), signer, digest)


@pytest.mark.parametrize("cose", [False, True], ids=["jws", "cose"])
@pytest.mark.parametrize("final_form", [False, True], ids=["rc-form", "final-form"])
@pytest.mark.parametrize("api", [False, True], ids=["tag-index", "referrers-api"])
async def test_helper_signatures_in_both_shapes(cose: bool, final_form: bool, api: bool) -> None:
    w = world(api=api)
    sig = w.sign(cose=cose, final_form=final_form)
    answer = await w.judge.judge(w.registry, "r.example/app", w.digest, NotationRule(), T)
    assert answer.evidence["signature_manifest"] == sig
    assert answer.signers == ("CN=root,O=trustproxy-test,ST=WA,C=US",)


async def test_a_three_certificate_chain() -> None:
    w = world(chain=3)
    w.sign()
    answer = await w.judge.judge(w.registry, "r.example/app", w.digest, NotationRule(), T)
    assert answer.signers[0].startswith("CN=level1")
    assert answer.evidence["cert_fingerprints"][0] != answer.evidence["anchor_fingerprint"]


async def test_required_annotations() -> None:
    w = world()
    payload = Signer.payload(served_media_type(IMAGE), w.digest, len(IMAGE), {"build": "7"})
    w.sign(payload=payload)
    ok = NotationRule(required_annotations={"build": "7"})
    assert (await w.judge.judge(w.registry, "r/a", w.digest, ok, T)).digest == w.digest
    bad = NotationRule(required_annotations={"build": "8"})
    with pytest.raises(NotSignedError, match="build=8"):
        await w.judge.judge(w.registry, "r/a", w.digest, bad, T)


BAD = [
    # (what, how to break the one signature, reason fragment)
    ("signature over another digest", "other-digest", "descriptor mismatch"),
    ("payload media type not the served one", "other-type", "descriptor mismatch"),
    ("payload size not the served one", "other-size", "descriptor mismatch"),
    ("envelope blob missing", "no-blob", "does not exist"),
    ("envelope larger than the limit", "huge", "not between 1 and"),
    ("subject is another artifact", "subject", "subject is another artifact"),
    ("not a signature artifact", "artifact-type", "not a Notation signature"),
    ("two layers", "layers", "exactly one layer"),
    ("unknown envelope type", "envelope-type", "unsupported signature envelope"),
    ("listed but absent", "absent", "listed but does not exist"),
    ("signed by an untrusted key", "untrusted", "authenticity"),
    ("expired signature", "expired", "expired"),
    ("plugin required", "plugin", "plugin"),
]


@pytest.mark.parametrize(("what", "how", "reason"), BAD, ids=[b[0] for b in BAD])
async def test_bad_signatures_are_refused_with_a_reason(what: str, how: str, reason: str) -> None:
    w = world()
    media = served_media_type(IMAGE)
    if how in ("other-digest", "other-type", "other-size"):
        payload = Signer.payload(
            "application/vnd.oci.image.index.v1+json" if how == "other-type" else media,
            "sha256:" + "1" * 64 if how == "other-digest" else w.digest,
            len(IMAGE) + (1 if how == "other-size" else 0),
        )
        w.sign(payload=payload)
    elif how in ("untrusted", "expired", "plugin"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        signer = w.signer
        if how == "untrusted":
            signer = Signer(key, [make_cert("root", key)])
        elif how == "expired":
            signer = dataclasses.replace(w.signer, expiry=T - timedelta(days=1))
        else:
            signer = dataclasses.replace(
                w.signer,
                extra_protected={"io.cncf.notary.verificationPlugin": "com.example.plugin"},
                crit_extra=["io.cncf.notary.verificationPlugin"],
            )
        w.sign(signer=signer)
    else:
        sig = w.sign()
        doc = json.loads(w.registry.manifests.pop(sig))
        if how == "no-blob":
            w.registry.blobs.pop(doc["layers"][0]["digest"])
        elif how == "huge":
            doc["layers"][0]["size"] = 600 * 1024
        elif how == "subject":
            doc["subject"]["digest"] = "sha256:" + "2" * 64
        elif how == "artifact-type":
            doc["config"]["mediaType"] = "application/vnd.dev.cosign.artifact.sig.v1+json"
        elif how == "layers":
            doc["layers"].append(doc["layers"][0])
        elif how == "envelope-type":
            doc["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar"
        if how != "absent":
            body = json.dumps(doc).encode()
            w.registry.put_manifest(body)
            index_tag = w.digest.replace(":", "-", 1)
            listing = json.loads(w.registry.manifests[w.registry.tags[index_tag]])
            listing["manifests"][0]["digest"] = (
                "sha256:" + __import__("hashlib").sha256(body).hexdigest()
            )
            w.registry.put_manifest(json.dumps(listing).encode(), index_tag)
    with pytest.raises(NotSignedError) as info:
        await w.judge.judge(w.registry, "r.example/app", w.digest, NotationRule(), T)
    assert reason in info.value.reason, what
    # A good signature beside the bad one still passes: bad data refuses only itself.
    w.sign()
    answer = await w.judge.judge(w.registry, "r.example/app", w.digest, NotationRule(), T)
    assert answer.digest == w.digest


async def test_referrers_are_capped_and_filtered() -> None:
    w = world(max_signatures=2)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    stranger = Signer(key, [make_cert("root", key)])
    w.sign(signer=stranger)
    w.sign(signer=stranger)
    w.sign()  # the third: beyond max_signatures, never read
    index_tag = w.digest.replace(":", "-", 1)
    listing = json.loads(w.registry.manifests[w.registry.tags[index_tag]])
    listing["manifests"].insert(0, {"digest": "sha256:" + "3" * 64, "artifactType": "x/y"})
    listing["manifests"].insert(0, {"digest": "not a digest"})
    w.registry.put_manifest(json.dumps(listing).encode(), index_tag)
    with pytest.raises(NotSignedError, match="none of the 2"):
        await w.judge.judge(w.registry, "r.example/app", w.digest, NotationRule(), T)
    assert f"manifest {'sha256:' + '3' * 64}" not in w.registry.reads


async def test_the_first_passing_signature_wins_and_later_ones_are_not_read() -> None:
    w = world()
    first = w.sign()
    w.sign()
    answer = await w.judge.judge(w.registry, "r.example/app", w.digest, NotationRule(), T)
    assert answer.evidence["signature_manifest"] == first
    assert answer.evidence["signatures_tried"] == 1
    assert sum(r.startswith("blob") for r in w.registry.reads) == 1


async def test_an_unreachable_registry_is_an_outage_not_a_verdict() -> None:
    w = world()
    w.sign()
    w.registry.down = True
    with pytest.raises(UpstreamUnavailableError):
        await w.judge.judge(w.registry, "r.example/app", w.digest, NotationRule(), T)


async def test_a_missing_manifest_and_a_non_json_manifest() -> None:
    w = world()
    with pytest.raises(NotSignedError, match="does not exist"):
        await w.judge.judge(w.registry, "r/a", "sha256:" + "4" * 64, NotationRule(), T)
    junk = w.registry.put_manifest(b"\xff not json")
    with pytest.raises(NotSignedError, match="not JSON"):
        await w.judge.judge(w.registry, "r/a", junk, NotationRule(), T)


def test_served_media_type() -> None:
    assert served_media_type(b'{"mediaType":"a/b"}') == "a/b"
    assert served_media_type(b'{"manifests":[]}') == "application/vnd.oci.image.index.v1+json"
    assert served_media_type(b'{"layers":[]}') == "application/vnd.oci.image.manifest.v1+json"


def test_vectors_dir_is_where_helpers_say() -> None:
    assert isinstance(LAYOUTS, Path)


async def test_thousands_of_referrers_cost_at_most_max_signatures_reads() -> None:
    w = world()
    index_tag = w.digest.replace(":", "-", 1)
    junk = [
        {"digest": f"sha256:{i:064x}", "artifactType": SIGNATURE_TYPE if i % 2 else "x/y"}
        for i in range(5000)
    ]
    w.registry.put_manifest(json.dumps({"manifests": junk}).encode(), index_tag)
    with pytest.raises(NotSignedError, match="none of the 100"):
        await w.judge.judge(w.registry, "r.example/app", w.digest, NotationRule(), T)
    assert sum(r.startswith("manifest") for r in w.registry.reads) == 1 + 100


async def test_metrics_name_the_anchor_and_the_refusing_check() -> None:
    from proxy.metrics import REGISTRY

    def count(**labels: str) -> float:
        found = REGISTRY.get_sample_value(
            "trustproxy_notation_signatures_total", {"source": "notation", **labels}
        )
        return found or 0.0

    w = world()  # a fresh key: its anchor fingerprint is new to the counter
    w.sign()
    answer = await w.judge.judge(w.registry, "r.example/app", w.digest, NotationRule(), T)
    anchor = {"trust_policy": "helper", "anchor_store": "ca:helper"}
    fingerprint = answer.evidence["anchor_fingerprint"]
    assert count(**anchor, anchor_fingerprint=fingerprint, result="passed") == 1
    refused = world()
    refused.sign(signer=dataclasses.replace(refused.signer, expiry=T))
    expired = {"trust_policy": "helper", "anchor_store": "", "anchor_fingerprint": ""}
    before = count(**expired, result="expiry")
    with pytest.raises(NotSignedError):
        await refused.judge.judge(refused.registry, "r/a", refused.digest, NotationRule(), T)
    assert count(**expired, result="expiry") == before + 1
