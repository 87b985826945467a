"""Public keys as notary publishes them, their key IDs, and signature verification.

A key in metadata is ``{"keytype": T, "keyval": {"private": null, "public": B64}}``:

======================  ===========================================================
``ecdsa``, ``rsa``      base64 of a DER SubjectPublicKeyInfo
``ecdsa-x509``,         base64 of PEM text of an X.509 certificate, possibly a bundle
``rsa-x509``            (leaf first); notary verifies with the leaf's key
``ed25519``             base64 of the 32 raw public key bytes
======================  ===========================================================

Key ID (notary ``data.PublicKey.ID``): lowercase hex sha256 of the canonical JSON of the key
with ``private: null``. For ``*-x509`` keys this is the *certificate* ID; the *canonical*
ID (notary ``utils.CanonicalKeyID``, what ``docker trust inspect`` prints as "Root Key") is
the ID of the leaf's SPKI re-wrapped as ``ecdsa``/``rsa``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from proxy.sources.notary.tuf.canonical import encode_canonical
from proxy.sources.notary.tuf.errors import MetadataFormatError, SignatureError, UnsupportedKeyError

__all__ = [
    "KEY_TYPES",
    "METHODS",
    "PublicKey",
    "compute_key_id",
    "parse_key",
]

PublicKeyObject = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

KEY_TYPES: Final = frozenset({"ecdsa", "ecdsa-x509", "rsa", "rsa-x509", "ed25519"})
#: Signature method -> the key families it may be used with (notary ``tuf/signed/verifiers``).
METHODS: Final = {
    "ecdsa": "ec",
    "eddsa": "ed25519",
    "rsapss": "rsa",
    "rsapkcs1v15": "rsa",
}
_CURVES: Final = {"secp256r1", "secp384r1"}
MIN_RSA_BITS: Final = 2048
MAX_RSA_BITS: Final = 8192


@dataclass(frozen=True)
class PublicKey:
    """A parsed public key. ``verify`` raises :class:`SignatureError` on any failure."""

    key_type: str
    #: base64 of ``keyval.public`` as notary re-serialises it (canonical padding).
    public: str
    #: the key ID notary computes for this exact key (certificate ID for x509 keys).
    key_id: str
    #: for x509 keys, the ID of the leaf's SPKI as a bare key; else equal to ``key_id``.
    canonical_id: str
    #: for x509 keys, the PEM bundle's certificates, leaf first; else empty.
    certificates: tuple[x509.Certificate, ...] = field(compare=False, repr=False)
    _key: PublicKeyObject = field(compare=False, repr=False)

    @property
    def certificate(self) -> x509.Certificate | None:
        """The leaf certificate of an x509 key, else None."""
        return self.certificates[0] if self.certificates else None

    @property
    def family(self) -> str:
        """``ec``, ``rsa`` or ``ed25519``."""
        if isinstance(self._key, ec.EllipticCurvePublicKey):
            return "ec"
        if isinstance(self._key, rsa.RSAPublicKey):
            return "rsa"
        return "ed25519"

    def verify(self, method: str, signature: bytes, message: bytes) -> None:
        """Verify ``signature`` over ``message`` with ``method`` (case-insensitive).

        Raises:
            SignatureError: unknown method, method not valid for this key type, malformed
                signature bytes, or the signature does not verify.
        """
        method = method.lower()  # notary lower-cases the method when unmarshalling
        family = METHODS.get(method)
        if family is None:
            raise SignatureError(f"unknown signature method {method!r}", field="method")
        if family != self.family:
            raise SignatureError(
                f"method {method!r} cannot be used with a {self.key_type} key", field="method"
            )
        try:
            key = self._key
            if isinstance(key, ec.EllipticCurvePublicKey):
                # notary: raw r||s, each left-padded to the curve size; digest is always SHA-256
                size = (key.curve.key_size + 7) // 8
                if len(signature) != 2 * size:
                    raise SignatureError("ecdsa signature has the wrong length", field="sig")
                r = int.from_bytes(signature[:size], "big")
                s = int.from_bytes(signature[size:], "big")
                key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
            elif isinstance(key, rsa.RSAPublicKey):
                pad: padding.AsymmetricPadding
                if method == "rsapss":
                    # notary: rsa.PSSSaltLengthEqualsHash
                    pad = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
                else:
                    pad = padding.PKCS1v15()
                key.verify(signature, message, pad, hashes.SHA256())
            else:
                key.verify(signature, message)
        except InvalidSignature as e:
            raise SignatureError("signature does not verify", field="sig") from e
        except ValueError as e:  # malformed DER/length inside cryptography
            raise SignatureError(f"malformed signature: {e}", field="sig") from e


def compute_key_id(key_type: str, public_b64: str) -> str:
    """The notary key ID of a key given its type and base64 public value."""
    obj = {"keytype": key_type, "keyval": {"private": None, "public": public_b64}}
    return hashlib.sha256(encode_canonical(obj)).hexdigest()


def parse_key(
    value: object, *, role: str = "", field: str = "", max_certificates: int = 10
) -> PublicKey:
    """Parse a key object from metadata.

    Raises:
        MetadataFormatError: the object is not shaped like a notary key, or its public value
            is not valid base64 / DER / PEM for its type.
        UnsupportedKeyError: unknown ``keytype``, unsupported curve or RSA size, or an
            x509 certificate whose public key does not match the declared type.
    """
    if not isinstance(value, dict):
        raise MetadataFormatError("key is not an object", role=role, field=field)
    key_type = value.get("keytype")
    keyval = value.get("keyval")
    if not isinstance(key_type, str):
        raise MetadataFormatError("keytype is not a string", role=role, field=f"{field}.keytype")
    if key_type not in KEY_TYPES:
        raise UnsupportedKeyError(
            f"unsupported key type {key_type!r}", role=role, field=f"{field}.keytype"
        )
    if not isinstance(keyval, dict) or not isinstance(keyval.get("public"), str):
        raise MetadataFormatError(
            "keyval.public is not a string", role=role, field=f"{field}.keyval"
        )
    if keyval.get("private") is not None:
        # Published metadata never carries private material; refuse rather than hash it.
        raise MetadataFormatError(
            "keyval.private must be null", role=role, field=f"{field}.keyval.private"
        )
    where = f"{field}.keyval.public"
    raw = _b64decode(keyval["public"], role=role, field=where)
    public = base64.b64encode(raw).decode("ascii")  # as Go re-encodes []byte
    key_id = compute_key_id(key_type, public)

    certificates: tuple[x509.Certificate, ...] = ()
    pub: object
    try:
        if key_type in ("ecdsa-x509", "rsa-x509"):
            try:
                certificates = tuple(x509.load_pem_x509_certificates(raw))
            except ValueError as e:
                raise MetadataFormatError(
                    f"not a PEM certificate: {e}", role=role, field=where
                ) from e
            if len(certificates) > max_certificates:
                raise MetadataFormatError("too many certificates", role=role, field=where)
            try:
                # cryptography parses a certificate's fields lazily: bytes that frame as
                # PEM but hold a bad subject or key raise ValueError on first access, which
                # would escape as a 500 from wherever that is (root checks, chain checks).
                # Touch every field the trust checks read, here, once.
                for cert in certificates:
                    _ = (cert.subject, cert.issuer, cert.extensions)
                    _ = (cert.not_valid_before_utc, cert.not_valid_after_utc)
                    _ = cert.signature_hash_algorithm
                pub = certificates[0].public_key()
                spki = pub.public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            except (ValueError, x509.DuplicateExtension) as e:
                raise MetadataFormatError(
                    f"malformed certificate: {e}", role=role, field=where
                ) from e
            bare_type = key_type.removesuffix("-x509")
            canonical_id = compute_key_id(bare_type, base64.b64encode(spki).decode("ascii"))
        elif key_type == "ed25519":
            if len(raw) != 32:
                raise MetadataFormatError("ed25519 key is not 32 bytes", role=role, field=where)
            pub = ed25519.Ed25519PublicKey.from_public_bytes(raw)
            canonical_id = key_id
        else:
            try:
                pub = serialization.load_der_public_key(raw)
            except ValueError as e:
                raise MetadataFormatError(
                    f"not a DER public key: {e}", role=role, field=where
                ) from e
            canonical_id = key_id
    except UnsupportedAlgorithm as e:
        raise UnsupportedKeyError(f"unsupported key: {e}", role=role, field=where) from e

    checked = _check_public_key(pub, key_type, role=role, field=field)
    return PublicKey(
        key_type=key_type,
        public=public,
        key_id=key_id,
        canonical_id=canonical_id,
        certificates=certificates,
        _key=checked,
    )


def _check_public_key(pub: object, key_type: str, *, role: str, field: str) -> PublicKeyObject:
    where = f"{field}.keyval.public"
    family = key_type.removesuffix("-x509")
    if family == "ecdsa":
        if not isinstance(pub, ec.EllipticCurvePublicKey):
            raise UnsupportedKeyError(
                "ecdsa key is not an EC key", role=role, field=f"{field}.keytype"
            )
        if pub.curve.name not in _CURVES:
            raise UnsupportedKeyError(f"unsupported curve {pub.curve.name}", role=role, field=where)
        return pub
    if family == "rsa":
        if not isinstance(pub, rsa.RSAPublicKey):
            raise UnsupportedKeyError(
                "rsa key is not an RSA key", role=role, field=f"{field}.keytype"
            )
        if not MIN_RSA_BITS <= pub.key_size <= MAX_RSA_BITS:
            raise UnsupportedKeyError(
                f"unsupported RSA key size {pub.key_size}", role=role, field=where
            )
        return pub
    if not isinstance(pub, ed25519.Ed25519PublicKey):  # pragma: no cover - by construction
        raise UnsupportedKeyError("ed25519 key is not Ed25519", role=role, field=where)
    return pub


def _b64decode(text: str, *, role: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise MetadataFormatError("invalid base64", role=role, field=field) from e
