"""Sigstore bundles: key-based ones made here and by sigstore-js, and bad inputs."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.sources.cosign import (
    BundleVerifier,
    CosignFormatError,
    CosignLimitError,
    CosignMismatchError,
    CosignPolicy,
    CosignSignatureError,
    KeyAuthority,
    evaluate,
    parse_trusted_root,
)
from proxy.sources.cosign.keys import VerifyingKey
from testbed import sigstore_js_signer
from tests.simulators.sigstore_instance import (
    SigstoreInstance,
    in_toto_statement,
    key_bundle,
)

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
REPO = "ghcr.io/myorg/app"


@pytest.fixture(scope="module")
def sigstore() -> SigstoreInstance:
    return SigstoreInstance()


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_key_bundle_with_log_entry_verifies(
    sigstore: SigstoreInstance, key: ec.EllipticCurvePrivateKey
) -> None:
    verifier = BundleVerifier(parse_trusted_root(sigstore.trusted_root()))
    data = key_bundle(sigstore, key, in_toto_statement(DIGEST), logged=True)
    sig = verifier.verify_image(data, digest=DIGEST, keys=[VerifyingKey(key.public_key())])
    assert sig.log_entry is not None
    assert sig.log_entry.log_index == sigstore.log_index
    policy = CosignPolicy((KeyAuthority(VerifyingKey(key.public_key()), name="release"),))
    assert evaluate(policy, repository=REPO, digest=DIGEST, signatures=[sig]).accepted


def test_key_bundle_without_log_entry_needs_tlog_optional(key: ec.EllipticCurvePrivateKey) -> None:
    data = key_bundle(None, key, in_toto_statement(DIGEST))
    sig = BundleVerifier(None).verify_image(
        data, digest=DIGEST, keys=[VerifyingKey(key.public_key())]
    )
    authority = KeyAuthority(VerifyingKey(key.public_key()))
    required = evaluate(CosignPolicy((authority,)), repository=REPO, digest=DIGEST,
                        signatures=[sig])  # fmt: skip
    assert not required.accepted
    assert "no verified transparency-log entry" in required.reason
    optional = CosignPolicy((authority,), tlog="optional")
    assert evaluate(optional, repository=REPO, digest=DIGEST, signatures=[sig]).accepted


def _bad(sigstore: SigstoreInstance, key: ec.EllipticCurvePrivateKey, case: str) -> bytes:
    good = key_bundle(sigstore, key, in_toto_statement(DIGEST))
    if case == "unknown-version":
        return key_bundle(sigstore, key, in_toto_statement(DIGEST),
                          media_type="application/vnd.dev.sigstore.bundle.v0.9+json")  # fmt: skip
    if case == "duplicate-keys":
        # A second envelope after the signed one: whichever a parser keeps, refuse both.
        return good[:-1] + b', "dsseEnvelope": {}}'
    if case == "oversized":
        return good[:-1] + b', "x": "' + b"A" * 300_000 + b'"}'
    if case == "other-key":
        return key_bundle(sigstore, ec.generate_private_key(ec.SECP256R1()),
                          in_toto_statement(DIGEST))  # fmt: skip
    if case == "other-digest":
        return key_bundle(sigstore, key, in_toto_statement(OTHER))
    if case == "other-predicate":
        return key_bundle(
            sigstore, key, in_toto_statement(DIGEST, "https://slsa.dev/provenance/v1")
        )
    if case == "not-in-toto":
        return key_bundle(sigstore, key, in_toto_statement(DIGEST), payload_type="text/plain")
    if case == "log-entry-for-another-payload":
        return key_bundle(sigstore, key, in_toto_statement(DIGEST), logged=True,
                          logged_payload=in_toto_statement(OTHER))  # fmt: skip
    if case == "message-signature-with-key":
        node = json.loads(good)
        del node["dsseEnvelope"]
        node["messageSignature"] = {"messageDigest": {"algorithm": "SHA2_256", "digest": ""},
                                    "signature": ""}  # fmt: skip
        return json.dumps(node).encode()
    if case == "too-many-signatures":
        node = json.loads(good)
        node["dsseEnvelope"]["signatures"] *= 20
        return json.dumps(node).encode()
    raise AssertionError(case)


BUNDLE_CASES = [
    ("unknown-version", CosignFormatError, "unknown bundle media type"),
    ("duplicate-keys", CosignFormatError, "duplicate key 'dsseEnvelope'"),
    ("oversized", CosignLimitError, "limit"),
    ("other-key", CosignSignatureError, "does not verify with any key"),
    ("other-digest", CosignMismatchError, f"bundle does not sign {DIGEST}"),
    ("other-predicate", CosignMismatchError, "predicate type 'https://slsa.dev/provenance/v1'"),
    ("not-in-toto", CosignMismatchError, "is not in-toto"),
    ("log-entry-for-another-payload", CosignMismatchError, "Rekor entry is for another payload"),
    ("message-signature-with-key", CosignFormatError, "without a DSSE envelope"),
    ("too-many-signatures", CosignLimitError, "more than 8 signatures"),
]


@pytest.mark.parametrize(
    ("case", "error", "message"), BUNDLE_CASES, ids=[c[0] for c in BUNDLE_CASES]
)
def test_bad_bundle_is_refused(
    sigstore: SigstoreInstance,
    key: ec.EllipticCurvePrivateKey,
    case: str,
    error: type[Exception],
    message: str,
) -> None:
    verifier = BundleVerifier(parse_trusted_root(sigstore.trusted_root()))
    with pytest.raises(error, match=re.escape(message)):
        verifier.verify_image(_bad(sigstore, key, case), digest=DIGEST,
                              keys=[VerifyingKey(key.public_key())])  # fmt: skip


def test_certificate_bundle_without_trusted_root_is_refused() -> None:
    node = {"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {"certificate": {"rawBytes": ""}}}  # fmt: skip
    with pytest.raises(CosignSignatureError, match="no trusted root"):
        BundleVerifier(None).verify(json.dumps(node).encode())


def test_bundle_made_by_sigstore_js_verifies(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    """An independent signer: npm @sigstore/sign makes a key-based cosign-3-shaped bundle
    offline (DSSE, in-toto statement with cosign's signature predicate)."""
    reason = sigstore_js_signer.ensure_installed()
    if reason is not None:
        pytest.skip(reason)
    pem = tmp_path / "key.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))  # fmt: skip
    statement = tmp_path / "statement.json"
    statement.write_bytes(in_toto_statement(DIGEST))
    data = sigstore_js_signer.sign_dsse_bundle(pem, statement, "application/vnd.in-toto+json")
    node = json.loads(data)
    assert node["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert "publicKey" in node["verificationMaterial"]
    authority = KeyAuthority(VerifyingKey(key.public_key()), name="release")
    sig = BundleVerifier(None).verify_image(data, digest=DIGEST, keys=[authority.key])
    policy = CosignPolicy((authority,), tlog="optional")
    assert evaluate(policy, repository=REPO, digest=DIGEST, signatures=[sig]).satisfied == (
        "release",
    )
    with pytest.raises(CosignMismatchError):
        BundleVerifier(None).verify_image(data, digest=OTHER, keys=[authority.key])
    # Tampered payload: sigstore-js signed the PAE, so one changed byte breaks it.
    node["dsseEnvelope"]["payload"] = node["dsseEnvelope"]["payload"][:-4] + "AAAA"
    with pytest.raises((CosignSignatureError, CosignFormatError)):
        BundleVerifier(None).verify_image(json.dumps(node).encode(), digest=DIGEST,
                                          keys=[authority.key])  # fmt: skip


def test_key_bundle_logged_in_rekor_v2_verifies_by_inclusion_proof(
    sigstore: SigstoreInstance, key: ec.EllipticCurvePrivateKey
) -> None:
    verifier = BundleVerifier(parse_trusted_root(sigstore.trusted_root()))
    data = key_bundle(sigstore, key, in_toto_statement(DIGEST), rekor_v2=True)
    sig = verifier.verify_image(data, digest=DIGEST, keys=[VerifyingKey(key.public_key())])
    assert sig.log_entry is not None
    assert sig.log_entry.log_index == 1
    assert sig.log_entry.integrated_time is None  # Rekor v2 signs no time
    policy = CosignPolicy((KeyAuthority(VerifyingKey(key.public_key())),))
    assert evaluate(policy, repository=REPO, digest=DIGEST, signatures=[sig]).accepted


def _tamper_proof(node: dict[str, Any], case: str, sigstore: SigstoreInstance) -> None:
    proof = node["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]
    if case == "proof-hash":
        proof["hashes"][0] = base64.b64encode(b"\0" * 32).decode()
    elif case == "proof-too-short":
        proof["hashes"].pop()
    elif case == "root-hash":
        proof["rootHash"] = base64.b64encode(b"\0" * 32).decode()
    elif case == "checkpoint-other-tree":
        proof["checkpoint"]["envelope"] = sigstore.checkpoint(4, b"\0" * 32)
    elif case == "checkpoint-forged":
        other = SigstoreInstance()
        our_hint = base64.b64decode(
            proof["checkpoint"]["envelope"].split(" ")[-1]
        )  # keep the hint, replace the signature
        forged = other.checkpoint(3, base64.b64decode(proof["rootHash"]))
        sig = base64.b64decode(forged.split(" ")[-1])[4:]
        proof["checkpoint"]["envelope"] = (
            forged.rsplit(" ", 1)[0] + " " + (base64.b64encode(our_hint[:4] + sig).decode() + "\n")
        )
    elif case == "no-checkpoint":
        del proof["checkpoint"]
    elif case == "index-outside-tree":
        proof["logIndex"] = "7"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("proof-hash", "inclusion proof does not lead to the root hash"),
        ("proof-too-short", "inclusion proof does not lead to the root hash"),
        ("root-hash", "inclusion proof does not lead to the root hash"),
        ("checkpoint-other-tree", "checkpoint is for another tree"),
        ("checkpoint-forged", "checkpoint signature does not verify"),
        ("no-checkpoint", "inclusion proof without a checkpoint"),
        ("index-outside-tree", "index outside the tree"),
    ],
)
def test_bad_inclusion_proof_rejects_the_bundle(
    sigstore: SigstoreInstance, key: ec.EllipticCurvePrivateKey, case: str, message: str
) -> None:
    node = json.loads(key_bundle(sigstore, key, in_toto_statement(DIGEST), rekor_v2=True))
    _tamper_proof(node, case, sigstore)
    verifier = BundleVerifier(parse_trusted_root(sigstore.trusted_root()))
    with pytest.raises(CosignSignatureError, match=re.escape(message)):
        verifier.verify_image(json.dumps(node).encode(), digest=DIGEST,
                              keys=[VerifyingKey(key.public_key())])  # fmt: skip


def test_rekor_v2_entry_for_another_payload(
    sigstore: SigstoreInstance, key: ec.EllipticCurvePrivateKey
) -> None:
    data = key_bundle(sigstore, key, in_toto_statement(DIGEST), rekor_v2=True,
                      logged_payload=in_toto_statement(OTHER))  # fmt: skip
    verifier = BundleVerifier(parse_trusted_root(sigstore.trusted_root()))
    with pytest.raises(CosignMismatchError, match="Rekor entry is for another artifact"):
        verifier.verify_image(data, digest=DIGEST, keys=[VerifyingKey(key.public_key())])
