"""X.509 helpers for Notation: chain shape, key rules, signature algorithms, subject DNs.

Pure functions over ``cryptography`` objects. Chain rules follow notation-core-go
``x509/codesigning_cert_validations.go`` and ``timestamp_cert_validations.go``
**[read]**: leaf first, each certificate issued (name and signature) by the next, the last
one self-signed; CAs carry ``basicConstraints CA=true`` and ``keyCertSign``; the code
signing leaf is not a CA, has ``digitalSignature`` and, when an EKU is present, codeSigning;
the TSA leaf has the timeStamping EKU. Chains are at most :data:`MAX_CHAIN` long and a
certificate may not appear twice (looping chains).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "ALGORITHMS",
    "MAX_CHAIN",
    "check_key_matches_alg",
    "fingerprint",
    "is_ca",
    "is_self_signed",
    "subject_attributes",
    "valid_at",
    "validate_chain",
    "verify_raw",
]

MAX_CHAIN = 10

# alg → (hash, key kind); JWS names and COSE ids map onto these (signature-specification.md).
ALGORITHMS: dict[str, tuple[type[hashes.HashAlgorithm], str]] = {
    "PS256": (hashes.SHA256, "rsa"),
    "PS384": (hashes.SHA384, "rsa"),
    "PS512": (hashes.SHA512, "rsa"),
    "ES256": (hashes.SHA256, "ec"),
    "ES384": (hashes.SHA384, "ec"),
    "ES512": (hashes.SHA512, "ec"),
}
_CURVE_ALG = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_CURVE_BYTES = {"secp256r1": 32, "secp384r1": 48, "secp521r1": 66}


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _ext(cert: x509.Certificate, cls: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None
    except ValueError:  # a malformed extension: treat the cert as not having it right
        return None


def is_ca(cert: x509.Certificate) -> bool:
    bc = _ext(cert, x509.BasicConstraints)
    return isinstance(bc, x509.BasicConstraints) and bc.ca


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def is_self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject and _signed_by(cert, cert)


def valid_at(cert: x509.Certificate, when: datetime) -> bool:
    return cert.not_valid_before_utc <= when <= cert.not_valid_after_utc


def _check_key(cert: x509.Certificate, where: str) -> None:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ValueError(f"{where}: RSA key of {key.key_size} bits (at least 2048)")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVE_ALG:
            raise ValueError(f"{where}: EC curve {key.curve.name} is not P-256/384/521")
    else:
        raise ValueError(f"{where}: unsupported public key type {type(key).__name__}")


def validate_chain(chain: Sequence[x509.Certificate], *, purpose: str) -> None:
    """Chain shape for ``purpose`` ``codeSigning`` or ``timeStamping``. Raises ValueError."""
    if not chain:
        raise ValueError("empty certificate chain")
    if len(chain) > MAX_CHAIN:
        raise ValueError(f"certificate chain longer than {MAX_CHAIN}")
    seen: set[str] = set()
    for i, cert in enumerate(chain):
        fp = fingerprint(cert)
        if fp in seen:
            raise ValueError(f"certificate #{i + 1} appears twice in the chain (loop)")
        seen.add(fp)
        _check_key(cert, f"certificate #{i + 1}")
    for i in range(len(chain) - 1):
        child, parent = chain[i], chain[i + 1]
        if child.issuer != parent.subject or not _signed_by(child, parent):
            raise ValueError(
                f"certificate #{i + 1} ({child.subject.rfc4514_string()}) is not issued by "
                f"certificate #{i + 2} ({parent.subject.rfc4514_string()})"
            )
        bc = _ext(parent, x509.BasicConstraints)
        if not isinstance(bc, x509.BasicConstraints) or not bc.ca:
            raise ValueError(f"certificate #{i + 2} issues certificates but is not a CA")
        # path length: number of CA certificates below this one (excluding the leaf).
        if bc.path_length is not None and i > bc.path_length:
            raise ValueError(f"certificate #{i + 2} path length constraint exceeded")
        ku = _ext(parent, x509.KeyUsage)
        if isinstance(ku, x509.KeyUsage) and not ku.key_cert_sign:
            raise ValueError(f"certificate #{i + 2} lacks the keyCertSign key usage")
    root = chain[-1]
    if not is_self_signed(root):
        raise ValueError("the certificate chain does not end in a self-signed certificate")
    leaf = chain[0]
    if len(chain) > 1 and is_ca(leaf):
        raise ValueError("the signing certificate is a CA certificate")
    ku = _ext(leaf, x509.KeyUsage)
    if isinstance(ku, x509.KeyUsage) and not ku.digital_signature:
        raise ValueError("the signing certificate lacks the digitalSignature key usage")
    eku = _ext(leaf, x509.ExtendedKeyUsage)
    wanted = (
        ExtendedKeyUsageOID.CODE_SIGNING
        if purpose == "codeSigning"
        else ExtendedKeyUsageOID.TIME_STAMPING
    )
    if purpose == "timeStamping":
        if not isinstance(eku, x509.ExtendedKeyUsage) or wanted not in eku:
            raise ValueError("the timestamping certificate lacks the timeStamping EKU")
    elif isinstance(eku, x509.ExtendedKeyUsage) and wanted not in eku:
        raise ValueError("the signing certificate's EKU does not include codeSigning")


def check_key_matches_alg(cert: x509.Certificate, alg: str) -> None:
    """Notation's key spec ↔ algorithm table: RSA 2048 → PS256, 3072 → PS384, 4096 → PS512;
    P-256/384/521 → ES256/384/512 (signature-specification.md "Algorithm Selection").
    Raises ValueError."""
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        expected = {2048: "PS256", 3072: "PS384", 4096: "PS512"}.get(key.key_size)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        expected = _CURVE_ALG.get(key.curve.name)
    else:
        expected = None
    if expected != alg:
        raise ValueError(
            f"signature algorithm {alg} does not match the signing key "
            f"({expected or 'unsupported'})"
        )


def verify_raw(cert: x509.Certificate, alg: str, data: bytes, signature: bytes) -> None:
    """JOSE/COSE signature (PSS with salt = hash length, or ECDSA raw r‖s). Raises
    ValueError."""
    if alg not in ALGORITHMS:
        raise ValueError(f"unsupported signature algorithm {alg!r}")
    hash_cls, kind = ALGORITHMS[alg]
    key = cert.public_key()
    try:
        if kind == "rsa" and isinstance(key, rsa.RSAPublicKey):
            h = hash_cls()
            key.verify(
                signature,
                data,
                padding.PSS(mgf=padding.MGF1(hash_cls()), salt_length=h.digest_size),
                h,
            )
            return
        if kind == "ec" and isinstance(key, ec.EllipticCurvePublicKey):
            size = _CURVE_BYTES[key.curve.name]
            if len(signature) != 2 * size:
                raise ValueError("ECDSA signature is not r||s of the curve size")
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hash_cls()))
            return
    except InvalidSignature:
        raise ValueError("signature is invalid") from None
    raise ValueError(f"algorithm {alg} does not fit the signing key")


# Go's pkix.Name.String() short names (crypto/x509/pkix attributeTypeNames); other
# attributes print as dotted OIDs with hex values, which notation's DN parser refuses.
_SHORT = {
    NameOID.COUNTRY_NAME: "C",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.COMMON_NAME: "CN",
    NameOID.SERIAL_NUMBER: "SERIALNUMBER",
    NameOID.LOCALITY_NAME: "L",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.STREET_ADDRESS: "STREET",
    NameOID.POSTAL_CODE: "POSTALCODE",
}


def subject_attributes(cert: x509.Certificate) -> dict[str, str]:
    """The leaf subject as notation-go sees it for identity matching. Raises ValueError
    when notation-go could not parse it either (multi-valued or repeated attributes,
    attributes without a short name, missing C/ST/O)."""
    attrs: dict[str, str] = {}
    for rdn in cert.subject.rdns:
        if len(rdn) > 1:
            raise ValueError("the certificate subject has a multi-valued RDN")
        (attr,) = tuple(rdn)
        short = _SHORT.get(attr.oid)
        if short is None:
            raise ValueError(
                f"the certificate subject has attribute {attr.oid.dotted_string}, unsupported"
            )
        if short in attrs:
            raise ValueError(f"the certificate subject repeats {short}")
        value = attr.value
        text = value if isinstance(value, str) else value.decode(errors="replace")
        # notation-go parses the subject's string form and refuses any "=#" in it
        # (verifier/testdata/verifier/bad-cert.pem: CN=Bad=#CN): such a leaf matches no
        # x509.subject identity.
        if "=#" in text:
            raise ValueError(f"the certificate subject's {short} contains '=#', unsupported")
        attrs[short] = text
    for mandatory in ("C", "ST", "O"):
        if not attrs.get(mandatory):
            raise ValueError(f"the certificate subject has no {mandatory}")
    return attrs
