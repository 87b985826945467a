"""The operator keys that sign trust snapshots: ECDSA P-256 (sha256) or ed25519, as PEM.

Two kinds only, on purpose: both are what ``cosign generate-key-pair``, ``openssl`` and
every KMS hand out, and a short list leaves no weak choice (RSA sizes, other curves) to
make. A key ID is the lowercase hex sha256 of the public key's SubjectPublicKeyInfo DER
(the ``keyid`` convention of Rekor and of cosign's DSSE envelopes), so other tools name the
same key the same way.

Pure: bytes in, keys or :class:`SnapshotKeyError` out.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from proxy.errors import TrustDataError

__all__ = [
    "MAX_KEY_PEM_BYTES",
    "SigningKey",
    "SnapshotKeyError",
    "SnapshotSignatureError",
    "VerifyingKey",
    "load_private_key",
    "load_public_key",
]

#: A PEM key of either kind is a few hundred bytes; anything far larger is not one.
MAX_KEY_PEM_BYTES: Final = 16 * 1024

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class SnapshotKeyError(TrustDataError):
    """A key file is not an ECDSA P-256 or ed25519 PEM key."""


class SnapshotSignatureError(TrustDataError):
    """A signature does not verify (or none of a pinned key's)."""


def _key_id(public: PublicKey) -> str:
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _kind(key: object) -> str:
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if key.curve.name == "secp256r1":
            return "ecdsa-p256"
        raise SnapshotKeyError(f"ECDSA curve {key.curve.name} is not supported: use P-256")
    raise SnapshotKeyError(
        f"{type(key).__name__.lstrip('_')} keys are not supported: use ECDSA P-256 or ed25519"
    )


@dataclass(frozen=True)
class VerifyingKey:
    """A pinned public key. ``verify`` raises SnapshotSignatureError, else returns None."""

    key: PublicKey
    kind: str  # "ecdsa-p256" | "ed25519"

    @property
    def key_id(self) -> str:
        return _key_id(self.key)

    @property
    def pem(self) -> bytes:
        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def verify(self, signature: bytes, message: bytes) -> None:
        try:
            if isinstance(self.key, ed25519.Ed25519PublicKey):
                self.key.verify(signature, message)
            else:
                self.key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature as e:
            raise SnapshotSignatureError("signature does not verify") from e


@dataclass(frozen=True)
class SigningKey:
    """The operator's private key (only ``trustproxy trust snapshot export`` holds it)."""

    key: PrivateKey
    kind: str

    @property
    def public(self) -> VerifyingKey:
        return VerifyingKey(self.key.public_key(), self.kind)

    def sign(self, message: bytes) -> bytes:
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            return self.key.sign(message)
        # DER-encoded (r, s), as DSSE tools (cosign, in-toto) write ECDSA signatures.
        return self.key.sign(message, ec.ECDSA(hashes.SHA256()))


def load_public_key(pem: bytes, *, name: str = "key") -> VerifyingKey:
    """A PEM SubjectPublicKeyInfo (``-----BEGIN PUBLIC KEY-----``). Raises SnapshotKeyError."""
    if len(pem) > MAX_KEY_PEM_BYTES:
        raise SnapshotKeyError(f"{name}: larger than {MAX_KEY_PEM_BYTES} bytes: not a PEM key")
    if b"PRIVATE KEY" in pem:
        # Pinning a private key would put it where the proxy's config lives: refuse, and say so.
        raise SnapshotKeyError(f"{name}: a private key: pin the public key (PEM PUBLIC KEY)")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise SnapshotKeyError(f"{name}: not a PEM public key ({e})") from e
    kind = _kind(key)
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise SnapshotKeyError(f"{name}: not an ECDSA P-256 or ed25519 key")  # pragma: no cover
    return VerifyingKey(key, kind)


def load_private_key(pem: bytes, *, password: bytes | None = None, name: str = "key") -> SigningKey:
    """A PEM private key (PKCS#8 or SEC1, encrypted when ``password`` is given). Raises
    SnapshotKeyError."""
    if len(pem) > MAX_KEY_PEM_BYTES:
        raise SnapshotKeyError(f"{name}: larger than {MAX_KEY_PEM_BYTES} bytes: not a PEM key")
    try:
        key = serialization.load_pem_private_key(pem, password=password)
    except TypeError as e:  # encrypted without a password, or a password for a plain key
        raise SnapshotKeyError(f"{name}: {e}") from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise SnapshotKeyError(f"{name}: not a PEM private key, or a wrong password ({e})") from e
    kind = _kind(key)
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise SnapshotKeyError(f"{name}: not an ECDSA P-256 or ed25519 key")  # pragma: no cover
    return SigningKey(key, kind)
