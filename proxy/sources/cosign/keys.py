"""Public keys as Cosign users hold them (PEM SubjectPublicKeyInfo) and raw signature checks.

Accepted, as sigstore/sigstore ``pkg/signature`` loads them for ``cosign verify --key``:
ECDSA P-256/P-384/P-521, RSA (PKCS#1 v1.5, 2048..8192 bits) and ed25519 (pure, over the
message). The hash for ECDSA and RSA is the authority's ``hashAlgorithm``, sha256 by default:
that is ``cosign verify``'s ``--signature-digest-algorithm`` default and policy-controller's
``key.hashAlgorithm`` default. A key ID is the lowercase hex sha256 of the SPKI DER, the
``logID`` convention of Rekor and the ``keyid`` cosign writes into DSSE envelopes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from proxy.sources.cosign.errors import CosignFormatError, CosignSignatureError

__all__ = ["HASHES", "PublicKeyObject", "VerifyingKey", "load_der_key", "load_pem_key"]

PublicKeyObject = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

HASHES: Final[dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_CURVES: Final = frozenset({"secp256r1", "secp384r1", "secp521r1"})
MIN_RSA_BITS: Final = 2048
MAX_RSA_BITS: Final = 8192
#: A PEM public key is well under 2 KiB (RSA-8192: about 1.5 KiB).
MAX_PEM_BYTES: Final = 16 * 1024


@dataclass(frozen=True)
class VerifyingKey:
    """A public key and the hash its signatures use. ``verify`` raises
    :class:`CosignSignatureError` on any failure and returns None otherwise."""

    key: PublicKeyObject
    hash_name: str = "sha256"

    @property
    def key_id(self) -> str:
        """Lowercase hex sha256 of the SubjectPublicKeyInfo DER."""
        return hashlib.sha256(self.spki_der).hexdigest()

    @property
    def spki_der(self) -> bytes:
        return self.key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def pem(self) -> bytes:
        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def verify(self, signature: bytes, message: bytes) -> None:
        """Raises CosignSignatureError unless ``signature`` signs ``message``."""
        try:
            if isinstance(self.key, ed25519.Ed25519PublicKey):
                self.key.verify(signature, message)
            elif isinstance(self.key, ec.EllipticCurvePublicKey):
                self.key.verify(signature, message, ec.ECDSA(HASHES[self.hash_name]()))
            else:
                self.key.verify(signature, message, padding.PKCS1v15(), HASHES[self.hash_name]())
        except InvalidSignature as e:
            raise CosignSignatureError("signature does not verify") from e


def _check(key: object, hash_name: str, what: str) -> VerifyingKey:
    if hash_name not in HASHES:
        raise CosignFormatError(f"unsupported hash algorithm {hash_name!r}", field=what)
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVES:
            raise CosignFormatError(f"unsupported curve {key.curve.name}", field=what)
        return VerifyingKey(key, hash_name)
    if isinstance(key, rsa.RSAPublicKey):
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise CosignFormatError(f"RSA key of {key.key_size} bits is not accepted", field=what)
        return VerifyingKey(key, hash_name)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return VerifyingKey(key, hash_name)
    raise CosignFormatError(f"unsupported key type {type(key).__name__}", field=what)


def load_pem_key(pem: bytes, *, hash_name: str = "sha256", what: str = "key") -> VerifyingKey:
    """A PEM SubjectPublicKeyInfo (``cosign.pub``).

    Raises:
        CosignFormatError: not a PEM public key, an unsupported type/curve/size or hash.
    """
    if len(pem) > MAX_PEM_BYTES:
        raise CosignFormatError(f"more than {MAX_PEM_BYTES} bytes", field=what)
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise CosignFormatError(f"not a PEM public key ({e})", field=what) from e
    return _check(key, hash_name, what)


def load_der_key(der: bytes, *, hash_name: str = "sha256", what: str = "key") -> VerifyingKey:
    """A DER SubjectPublicKeyInfo (trusted_root.json ``publicKey.rawBytes``).

    Raises:
        CosignFormatError: as :func:`load_pem_key`.
    """
    if len(der) > MAX_PEM_BYTES:
        raise CosignFormatError(f"more than {MAX_PEM_BYTES} bytes", field=what)
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise CosignFormatError(f"not a DER public key ({e})", field=what) from e
    return _check(key, hash_name, what)
