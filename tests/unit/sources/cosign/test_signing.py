"""The writing side of classic cosign signatures: what it makes verifies with the reading
side (and with the layout of the connaisseur vectors), other signers' layers are kept, and
keys it cannot use are refused with a reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from proxy.sources.cosign.classic import parse_sig_manifest, verify_classic
from proxy.sources.cosign.errors import CosignFormatError
from proxy.sources.cosign.signing import load_signing_key, sign_digest, simple_signing_payload

NOW = datetime(2026, 12, 5, tzinfo=UTC)
DIGEST = "sha256:" + "ab" * 32
REPO = "registry.example:5000/team/app"


def pem(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: ec.generate_private_key(ec.SECP384R1()),
        ed25519.Ed25519PrivateKey.generate,
    ],
    ids=["p256", "p384", "ed25519"],
)
def test_a_signature_verifies_with_the_reading_side(make: object) -> None:
    key = load_signing_key(pem(make()))  # type: ignore[operator]
    made = sign_digest(key, DIGEST, REPO)
    got = verify_classic(
        made.manifest, made.blobs, digest=DIGEST, keys=[key.public], root=None, now=NOW
    )
    assert [v.digest for v in got.verified] == [DIGEST]
    assert got.verified[0].reference == REPO
    # ... and for no other digest (the payload names exactly this one).
    other = "sha256:" + "cd" * 32
    assert not verify_classic(
        made.manifest, made.blobs, digest=other, keys=[key.public], root=None, now=NOW
    ).verified


def test_appending_keeps_the_other_signers() -> None:
    first = load_signing_key(pem(ec.generate_private_key(ec.SECP256R1())))
    second = load_signing_key(pem(ed25519.Ed25519PrivateKey.generate()))
    one = sign_digest(first, DIGEST, REPO)
    two = sign_digest(second, DIGEST, REPO, existing=one.manifest)
    assert len(parse_sig_manifest(two.manifest)) == 2
    blobs = {**one.blobs, **two.blobs}
    got = verify_classic(
        two.manifest, blobs, digest=DIGEST, keys=[first.public, second.public], root=None, now=NOW
    )
    assert len(got.verified) == 2
    config = json.loads(blobs[json.loads(two.manifest)["config"]["digest"]])
    assert len(config["rootfs"]["diff_ids"]) == 2


def test_the_payload_has_cosigns_layout() -> None:
    payload = json.loads(simple_signing_payload(DIGEST, REPO))
    assert payload == {
        "critical": {
            "identity": {"docker-reference": REPO},
            "image": {"docker-manifest-digest": DIGEST},
            "type": "cosign container image signature",
        },
        "optional": None,
    }


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (pem(rsa.generate_private_key(65537, 2048)), "unsupported key type"),
        (
            b"-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----\nx\n"
            b"-----END ENCRYPTED COSIGN PRIVATE KEY-----\n",
            "cosign's encrypted key format",
        ),
        (b"not a key", "not a PEM private key"),
        (b"x" * 70_000, "more than"),
    ],
    ids=["rsa", "cosign-encrypted", "garbage", "huge"],
)
def test_keys_it_cannot_use_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(CosignFormatError, match=why):
        load_signing_key(data)
