"""Classic ``.sig`` signatures under attack: bounded, refused with a reason, never accepted.

Made with the in-memory Sigstore instance (tests/simulators/sigstore_instance.py); each case
breaks one thing of an otherwise valid signature.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.sources.cosign import (
    ClassicLimits,
    CosignFormatError,
    CosignLimitError,
    CosignPolicy,
    KeyAuthority,
    KeylessAuthority,
    Match,
    evaluate,
    parse_sig_manifest,
    parse_trusted_root,
    verify_classic,
)
from proxy.sources.cosign.keys import VerifyingKey
from tests.simulators.sigstore_instance import (
    T0,
    Layer,
    SigstoreInstance,
    b64,
    blobs_of,
    sig_manifest,
    simple_signing_payload,
)

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
REPO = "ghcr.io/myorg/app"
NOW = T0 + timedelta(days=30)


@pytest.fixture(scope="module")
def sigstore() -> SigstoreInstance:
    return SigstoreInstance()


@pytest.fixture(scope="module")
def signing_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def verifying(key: ec.EllipticCurvePrivateKey) -> VerifyingKey:
    return VerifyingKey(key.public_key())


# --- the whole manifest is refused -----------------------------------------------------


def _layers(n: int) -> bytes:
    layer = {"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
             "size": 1, "digest": DIGEST, "annotations": {}}  # fmt: skip
    return json.dumps({"schemaVersion": 2, "layers": [layer] * n}).encode()


def _annotation(size: int) -> bytes:
    annotations = {"dev.cosignproject.cosign/signature": "A" * size}
    layer = {"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "size": 1,
             "digest": DIGEST, "annotations": annotations}  # fmt: skip
    return json.dumps({"schemaVersion": 2, "layers": [layer]}).encode()


MANIFEST_CASES: list[tuple[str, bytes, type[Exception], str]] = [
    ("thousands-of-layers", _layers(5000), CosignLimitError, "5000 signature layers, limit 64"),
    ("huge-annotation", _annotation(10_000_000), CosignLimitError, "limit"),
    ("many-large-annotations", _annotation(60_000), CosignLimitError, "annotations total"),
    ("deep-nesting", b"[" * 100_000 + b"]" * 100_000, CosignLimitError, "nested deeper"),
    ("duplicate-keys", b'{"schemaVersion":2,"layers":[],"layers":[]}', CosignFormatError,
     "duplicate key 'layers'"),
    ("not-json", b"\x00\xff", CosignFormatError, "not valid JSON"),
    ("nan", b'{"schemaVersion":NaN,"layers":[]}', CosignFormatError, "NaN is not JSON"),
    ("schema-1", b'{"schemaVersion":1,"layers":[]}', CosignFormatError, "schemaVersion"),
    ("index-not-manifest", json.dumps({"schemaVersion": 2, "mediaType":
     "application/vnd.oci.image.index.v1+json", "manifests": []}).encode(),
     CosignFormatError, "not an image manifest"),
    ("layers-not-list", b'{"schemaVersion":2,"layers":{}}', CosignFormatError, "layers"),
    ("bad-layer-digest", json.dumps({"schemaVersion": 2, "layers": [
     {"digest": "md5:x", "size": 1}]}).encode(), CosignFormatError, "digest"),
    ("oversized", b" " * (2 * 1024 * 1024), CosignLimitError, "limit"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [c[1:] for c in MANIFEST_CASES],
    ids=[c[0] for c in MANIFEST_CASES],
)
def test_bad_manifest_is_refused(data: bytes, error: type[Exception], message: str) -> None:
    limits = ClassicLimits(max_layer_annotation_bytes=50_000)
    with pytest.raises(error, match=re.escape(message)):
        parse_sig_manifest(data, limits)
    with pytest.raises(error):
        verify_classic(data, {}, digest=DIGEST, keys=(), root=None, now=NOW, limits=limits)


# --- one layer is refused, with a reason -----------------------------------------------


def _key_layer(sigstore: SigstoreInstance, key: ec.EllipticCurvePrivateKey, **kw: object) -> Layer:
    return sigstore.key_layer(DIGEST, REPO, key, **kw)  # type: ignore[arg-type]


def _signed(key: ec.EllipticCurvePrivateKey, payload: bytes) -> Layer:
    sig = key.sign(payload, ec.ECDSA(hashes.SHA256()))
    return Layer(payload, {"dev.cosignproject.cosign/signature": b64(sig)})


def case_other_digest(s: SigstoreInstance, k: ec.EllipticCurvePrivateKey) -> list[Layer]:
    return [s.key_layer(OTHER, REPO, k)]


def case_duplicate_key_payload(s: SigstoreInstance, k: ec.EllipticCurvePrivateKey) -> list[Layer]:
    # A signed payload naming two digests: parsers disagree on which one counts.
    first = f'"docker-manifest-digest":"{DIGEST}",'.encode()
    payload = simple_signing_payload(OTHER, REPO).replace(
        b'"docker-manifest-digest":', first + b'"docker-manifest-digest":'
    )
    return [_signed(k, payload)]


def case_wrong_type(s: SigstoreInstance, k: ec.EllipticCurvePrivateKey) -> list[Layer]:
    payload = simple_signing_payload(DIGEST, REPO).replace(b"cosign container image", b"x")
    return [_signed(k, payload)]


def case_blob_swapped(s: SigstoreInstance, k: ec.EllipticCurvePrivateKey) -> list[Layer]:
    layer = s.key_layer(DIGEST, REPO, k)
    return [Layer(layer.payload + b" ", layer.annotations, claimed_digest=layer.digest)]


def case_bad_base64(s: SigstoreInstance, k: ec.EllipticCurvePrivateKey) -> list[Layer]:
    layer = s.key_layer(DIGEST, REPO, k)
    return [Layer(layer.payload, {"dev.cosignproject.cosign/signature": "%%%"})]


def case_no_signature(s: SigstoreInstance, k: ec.EllipticCurvePrivateKey) -> list[Layer]:
    layer = s.key_layer(DIGEST, REPO, k)
    return [Layer(layer.payload, {"dev.cosignproject.cosign/signature": ""})]


def case_other_key(s: SigstoreInstance, k: ec.EllipticCurvePrivateKey) -> list[Layer]:
    return [s.key_layer(DIGEST, REPO, ec.generate_private_key(ec.SECP256R1()))]


def case_not_simple_signing(s: SigstoreInstance, k: ec.EllipticCurvePrivateKey) -> list[Layer]:
    layer = s.key_layer(DIGEST, REPO, k)
    return [Layer(layer.payload, layer.annotations, "application/vnd.dsse.envelope.v1+json")]


def case_rekor_other_artifact(s: SigstoreInstance, k: ec.EllipticCurvePrivateKey) -> list[Layer]:
    # A genuine SET over an entry for another artifact (CVE-2022-36056).
    return [s.key_layer(DIGEST, REPO, k, logged=True, body_hash="00" * 32)]


def case_rekor_forged_set(s: SigstoreInstance, k: ec.EllipticCurvePrivateKey) -> list[Layer]:
    return [
        s.key_layer(DIGEST, REPO, k, logged=True, set_key=ec.generate_private_key(ec.SECP256R1()))
    ]


def case_expired_cert_no_log(s: SigstoreInstance, k: ec.EllipticCurvePrivateKey) -> list[Layer]:
    return [s.keyless_layer(DIGEST, REPO, logged=False)]


def case_log_time_outside_cert(s: SigstoreInstance, k: ec.EllipticCurvePrivateKey) -> list[Layer]:
    return [s.keyless_layer(DIGEST, REPO, integrated_time=T0 + timedelta(hours=1))]


def case_no_sct(s: SigstoreInstance, k: ec.EllipticCurvePrivateKey) -> list[Layer]:
    return [s.keyless_layer(DIGEST, REPO, cert=s.issue(sct=False))]


def case_not_code_signing(s: SigstoreInstance, k: ec.EllipticCurvePrivateKey) -> list[Layer]:
    return [s.keyless_layer(DIGEST, REPO, cert=s.issue(code_signing=False))]


def case_untrusted_ca(s: SigstoreInstance, k: ec.EllipticCurvePrivateKey) -> list[Layer]:
    other = SigstoreInstance()
    # Signed by another CA, logged in *our* Rekor: only the chain is wrong.
    cert = other.issue()
    return [s.keyless_layer(DIGEST, REPO, cert=cert, chain=[other.intermediate, other.root])]


def case_deep_chain(s: SigstoreInstance, k: ec.EllipticCurvePrivateKey) -> list[Layer]:
    # root <- 5 intermediates <- leaf: deeper than MAX_CHAIN_DEPTH.
    parent, parent_key = s.root, s.root_key
    chain: list[x509.Certificate] = []
    for i in range(5):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = s._ca(
            _sub(f"deep-{i}"),
            key, parent_key, T0 - timedelta(days=1), T0 + timedelta(days=1), None,
            issuer=parent.subject,
        )  # fmt: skip
        chain.insert(0, cert)
        parent, parent_key = cert, key
    leaf = s.issue(signer=(parent, parent_key))
    return [s.keyless_layer(DIGEST, REPO, cert=leaf, chain=chain)]


def case_too_many_chain_certs(s: SigstoreInstance, k: ec.EllipticCurvePrivateKey) -> list[Layer]:
    return [s.keyless_layer(DIGEST, REPO, chain=[s.intermediate] * 9)]


def _sub(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


LAYER_CASES: list[tuple[str, Callable[..., list[Layer]], str]] = [
    ("signature-for-another-digest", case_other_digest, f"signature is for {OTHER}, not {DIGEST}"),
    ("duplicate-key-payload", case_duplicate_key_payload, "duplicate key 'docker-manifest-digest'"),
    ("wrong-payload-type", case_wrong_type, "critical.type is not"),
    ("payload-not-the-layer-blob", case_blob_swapped, "do not match the layer digest"),
    ("signature-not-base64", case_bad_base64, "not valid base64"),
    ("empty-signature", case_no_signature, "no signature annotation"),
    ("signed-by-another-key", case_other_key, "does not verify with any key of the rule"),
    ("not-a-simple-signing-layer", case_not_simple_signing, "not a simple-signing layer"),
    ("rekor-entry-for-another-artifact", case_rekor_other_artifact,
     "Rekor entry is for another artifact"),
    ("rekor-set-by-another-key", case_rekor_forged_set, "signed entry timestamp does not verify"),
    ("expired-cert-without-log-entry", case_expired_cert_no_log,
     "does not chain to a trusted Fulcio CA"),
    ("log-time-outside-cert-validity", case_log_time_outside_cert,
     "does not chain to a trusted Fulcio CA at 2026-06-01T13:00:00Z"),
    ("cert-without-sct", case_no_sct, "certificate has no embedded SCT"),
    ("cert-not-for-code-signing", case_not_code_signing, "not a code-signing certificate"),
    ("cert-from-untrusted-ca", case_untrusted_ca, "does not chain to a trusted Fulcio CA"),
    ("chain-too-deep", case_deep_chain, "chain construction exceeds max depth"),
    ("too-many-chain-certs", case_too_many_chain_certs, "more than 8 certificates"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "reason"), [c[1:] for c in LAYER_CASES], ids=[c[0] for c in LAYER_CASES]
)
def test_bad_layer_is_rejected_with_a_reason(
    sigstore: SigstoreInstance,
    signing_key: ec.EllipticCurvePrivateKey,
    make: Callable[..., list[Layer]],
    reason: str,
) -> None:
    layers = make(sigstore, signing_key)
    root = parse_trusted_root(sigstore.trusted_root())
    result = verify_classic(sig_manifest(layers), blobs_of(layers), digest=DIGEST,
                            keys=[verifying(signing_key)], root=root, now=NOW)  # fmt: skip
    assert result.verified == ()
    assert len(result.rejected) == 1
    assert reason in result.rejected[0].reason
    policy = CosignPolicy(
        (KeyAuthority(verifying(signing_key)),
         KeylessAuthority(Match(regexp=re.compile(".")), Match(regexp=re.compile(".")))),
        tlog="optional", rule=REPO,
    )  # fmt: skip
    verdict = evaluate(policy, repository=REPO, digest=DIGEST, signatures=result.verified,
                       rejected=result.rejected)  # fmt: skip
    assert not verdict.accepted
    assert verdict.reasons[0] == f"no cosign signature for {DIGEST} by any authority of rule {REPO}"


# --- the same material, unbroken, verifies (the cases above fail for their reason) ------


def test_valid_keyless_and_key_layers_verify(
    sigstore: SigstoreInstance, signing_key: ec.EllipticCurvePrivateKey
) -> None:
    layers = [
        sigstore.keyless_layer(DIGEST, REPO),
        sigstore.key_layer(DIGEST, REPO, signing_key, logged=True),
        sigstore.keyless_layer(DIGEST, REPO, cert=sigstore.issue(
            san="https://github.com/myorg/app/.github/workflows/release.yml@refs/heads/main",
            issuer="https://token.actions.githubusercontent.com", legacy_issuer=True)),
    ]  # fmt: skip
    root = parse_trusted_root(sigstore.trusted_root())
    result = verify_classic(sig_manifest(layers), blobs_of(layers), digest=DIGEST,
                            keys=[verifying(signing_key)], root=root, now=NOW)  # fmt: skip
    assert result.rejected == ()
    assert all(sig.log_entry is not None for sig in result.verified)
    workflow = KeylessAuthority(
        Match(regexp=re.compile(r"^https://github\.com/myorg/app/")),
        Match(exact="https://token.actions.githubusercontent.com"),
        name="release workflow",
    )
    dev = KeylessAuthority(Match(exact="dev@example.com"), Match(exact="https://issuer.example"))
    key = KeyAuthority(verifying(signing_key), name="release key")
    verdict = evaluate(CosignPolicy((key, dev, workflow), threshold=3), repository=REPO,
                       digest=DIGEST, signatures=result.verified)  # fmt: skip
    assert verdict.accepted
    assert verdict.satisfied == ("release key", dev.label, "release workflow")


def test_sct_check_can_be_switched_off(sigstore: SigstoreInstance) -> None:
    layers = case_no_sct(sigstore, ec.generate_private_key(ec.SECP256R1()))
    root = parse_trusted_root(sigstore.trusted_root())
    result = verify_classic(sig_manifest(layers), blobs_of(layers), digest=DIGEST, keys=(),
                            root=root, now=NOW, require_sct=False)  # fmt: skip
    assert len(result.verified) == 1


def test_ca_used_outside_its_window_is_refused(sigstore: SigstoreInstance) -> None:
    layers = [sigstore.keyless_layer(DIGEST, REPO)]
    root = parse_trusted_root(
        sigstore.trusted_root(ca_window=(T0 - timedelta(days=10), T0 - timedelta(days=1)))
    )
    result = verify_classic(sig_manifest(layers), blobs_of(layers), digest=DIGEST, keys=(),
                            root=root, now=NOW)  # fmt: skip
    assert "no Fulcio CA of the trusted root is valid at 2026-06-01T12:00:05Z" in (
        result.rejected[0].reason
    )


def test_one_bad_layer_does_not_spoil_the_others(
    sigstore: SigstoreInstance, signing_key: ec.EllipticCurvePrivateKey
) -> None:
    layers = [
        case_other_digest(sigstore, signing_key)[0],
        sigstore.key_layer(DIGEST, REPO, signing_key),
    ]
    result = verify_classic(sig_manifest(layers), blobs_of(layers), digest=DIGEST,
                            keys=[verifying(signing_key)], root=None, now=NOW)  # fmt: skip
    assert [s.origin for s in result.verified] == ["layer 1"]
    assert [r.origin for r in result.rejected] == ["layer 0"]


def test_missing_blob_is_a_rejection(
    sigstore: SigstoreInstance, signing_key: ec.EllipticCurvePrivateKey
) -> None:
    layers = [sigstore.key_layer(DIGEST, REPO, signing_key)]
    result = verify_classic(sig_manifest(layers), {}, digest=DIGEST,
                            keys=[verifying(signing_key)], root=None, now=NOW)  # fmt: skip
    assert result.rejected[0].reason == "payload blob not available"


@pytest.mark.parametrize(
    "make_key",
    [
        lambda: ec.generate_private_key(ec.SECP384R1()),
        lambda: ec.generate_private_key(ec.SECP521R1()),
    ],
    ids=["p384", "p521"],
)
def test_other_curves_with_sha256(make_key: Callable[[], ec.EllipticCurvePrivateKey]) -> None:
    sigstore = SigstoreInstance()
    key = make_key()
    layers = [sigstore.key_layer(DIGEST, REPO, key)]
    result = verify_classic(sig_manifest(layers), blobs_of(layers), digest=DIGEST,
                            keys=[verifying(key)], root=None, now=NOW)  # fmt: skip
    assert len(result.verified) == 1


def test_rsa_and_ed25519_keys() -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

    payload = simple_signing_payload(DIGEST, REPO)
    rsa_key = rsa.generate_private_key(65537, 2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    layers = [
        Layer(payload, {"dev.cosignproject.cosign/signature": base64.b64encode(
            rsa_key.sign(payload, padding.PKCS1v15(), hashes.SHA256())).decode()}),
        Layer(payload + b"\n", {"dev.cosignproject.cosign/signature": base64.b64encode(
            ed_key.sign(payload + b"\n")).decode()}),
    ]  # fmt: skip
    keys = [VerifyingKey(rsa_key.public_key()), VerifyingKey(ed_key.public_key())]
    result = verify_classic(sig_manifest(layers), blobs_of(layers), digest=DIGEST, keys=keys,
                            root=None, now=NOW)  # fmt: skip
    assert [s.signer.key_id for s in result.verified] == [k.key_id for k in keys]  # type: ignore[union-attr]
    pem = keys[0].key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert pem == keys[0].pem
