"""Fulcio certificates: chain to the trusted root at a given time, identity, embedded SCT.

- **Chain**: built with ``cryptography``'s X.509 path validation (the same builder
  sigstore-python uses) against the CAs of the trusted root whose ``validFor`` holds the
  signing time; certificates the signature carries (cosign's ``chain`` annotation) are only
  untrusted intermediates, a hint for path building, as in cosign. The leaf must have key
  usage digitalSignature and extended key usage codeSigning (Fulcio's profile).
- **Time**: the chain is checked at the *verified signing time* (Rekor ``integratedTime``),
  not now: Fulcio certificates live ten minutes. Without a verified time the caller passes
  the current time, which rejects an expired certificate, as ``cosign verify`` does when
  there is neither a log entry nor a timestamp.
- **Identity**: the SAN (email, URI, or other name) and the OIDC issuer, from Fulcio's
  extension 1.3.6.1.4.1.57264.1.8 (a DER UTF8String), else the legacy .1.1 (raw bytes).
- **SCT**: the leaf embeds a precertificate SCT list (RFC 6962 §3.2); each is checked
  against the CT log of the trusted root with that log ID, over the precertificate TBS.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification as xv
from cryptography.x509.oid import ExtendedKeyUsageOID

from proxy.sources.cosign.errors import CosignFormatError, CosignLimitError, CosignSignatureError
from proxy.sources.cosign.keys import VerifyingKey
from proxy.sources.cosign.trusted_root import TrustedRoot

__all__ = [
    "MAX_CHAIN_DEPTH",
    "CertIdentity",
    "cert_identity",
    "load_pem_certs",
    "verify_chain",
    "verify_embedded_scts",
]

OID_ISSUER_V1: Final = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
OID_ISSUER_V2: Final = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
#: Extensions users match on for CI identities (Fulcio OID registry), by a short name.
EXTRA_OIDS: Final = {
    "buildSignerURI": x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.9"),
    "runnerEnvironment": x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.11"),
    "sourceRepositoryURI": x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.12"),
    "sourceRepositoryRef": x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.14"),
}
#: Fulcio issues leaf <- intermediate <- root; a little room for private instances.
MAX_CHAIN_DEPTH: Final = 4
#: Certificates read from one annotation or bundle (leaf plus hints).
MAX_CERTS: Final = 8
MAX_PEM_BYTES: Final = 64 * 1024
MAX_SCTS: Final = 16


@dataclass(frozen=True)
class CertIdentity:
    """Who a Fulcio certificate names."""

    #: SAN values (emails, URIs, other names), in certificate order
    sans: tuple[str, ...]
    #: OIDC issuer ("" when the certificate has neither issuer extension)
    issuer: str
    #: other Fulcio extensions present, by short name (see ``EXTRA_OIDS``)
    extras: tuple[tuple[str, str], ...] = ()


def load_pem_certs(pem: bytes, *, field: str) -> list[x509.Certificate]:
    """Certificates of a PEM bundle, in order.

    Raises:
        CosignLimitError / CosignFormatError: too large, too many, or not PEM certificates.
    """
    if len(pem) > MAX_PEM_BYTES:
        raise CosignLimitError(f"more than {MAX_PEM_BYTES} bytes of PEM", field=field)
    if pem.count(b"-----BEGIN CERTIFICATE-----") > MAX_CERTS:
        raise CosignLimitError(f"more than {MAX_CERTS} certificates", field=field)
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise CosignFormatError(f"not PEM certificates ({e})", field=field) from e
    return certs


def verify_chain(
    leaf: x509.Certificate,
    hints: Sequence[x509.Certificate],
    root: TrustedRoot,
    at: datetime,
) -> list[x509.Certificate]:
    """Check that ``leaf`` chains to a Fulcio CA of ``root`` valid at ``at``, and has
    Fulcio's key usages. Returns the chain above the leaf (issuer first).

    Raises:
        CosignSignatureError: no valid path at ``at``, or the leaf is not a code-signing
            certificate.
    """
    if len(hints) > MAX_CERTS:
        raise CosignSignatureError(f"more than {MAX_CERTS} chain certificates")
    anchors = [c for ca in root.fulcio if ca.valid.contains(at) for c in ca.chain]
    if not anchors:
        raise CosignSignatureError(f"no Fulcio CA of the trusted root is valid at {at:%FT%TZ}")
    # As sigstore-python: web-PKI defaults, except that Fulcio leaves carry codeSigning,
    # not clientAuth, which is checked below instead.
    ca_policy = xv.ExtensionPolicy.webpki_defaults_ca().may_be_present(
        x509.ExtendedKeyUsage, xv.Criticality.NON_CRITICAL, None
    )
    ee_policy = xv.ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.ExtendedKeyUsage, xv.Criticality.NON_CRITICAL, None
    )
    verifier = (
        xv.PolicyBuilder()
        .store(xv.Store(anchors))
        .time(at)
        .max_chain_depth(MAX_CHAIN_DEPTH)
        .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
        .build_client_verifier()
    )
    try:
        chain = verifier.verify(leaf, list(hints)).chain[1:]
    except (xv.VerificationError, x509.UnsupportedGeneralNameType, ValueError) as e:
        raise CosignSignatureError(
            f"certificate does not chain to a trusted Fulcio CA at {at:%FT%TZ}: {e}"
        ) from e
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound as e:
        raise CosignSignatureError("certificate lacks key usage or extended key usage") from e
    if not usage.digital_signature or ExtendedKeyUsageOID.CODE_SIGNING not in eku:
        raise CosignSignatureError("certificate is not a code-signing certificate")
    return chain


def _utf8_der(value: bytes) -> str:
    # A DER UTF8String: tag 0x0c, a short or long length, the text.
    if len(value) < 2 or value[0] != 0x0C:
        raise CosignFormatError("issuer extension is not a UTF8String")
    length, offset = value[1], 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 2 or len(value) < 2 + count:
            raise CosignFormatError("issuer extension has a bad length")
        length, offset = int.from_bytes(value[2 : 2 + count], "big"), 2 + count
    if len(value) != offset + length:
        raise CosignFormatError("issuer extension has a bad length")
    return value[offset:].decode("utf-8")


def _ext_text(cert: x509.Certificate, oid: x509.ObjectIdentifier, der: bool) -> str | None:
    try:
        ext = cert.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None
    if not isinstance(ext, x509.UnrecognizedExtension):
        return None
    try:
        return _utf8_der(ext.value) if der else ext.value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CosignFormatError(f"extension {oid.dotted_string} is not UTF-8") from e


def cert_identity(cert: x509.Certificate) -> CertIdentity:
    """SANs and OIDC issuer of a Fulcio certificate.

    Raises:
        CosignFormatError: an issuer extension that is not UTF-8 / a UTF8String.
    """
    sans: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        sans.extend(san.get_values_for_type(x509.RFC822Name))
        sans.extend(san.get_values_for_type(x509.UniformResourceIdentifier))
        for other in san.get_values_for_type(x509.OtherName):
            # Fulcio's "username" SAN (1.3.6.1.4.1.57264.1.7) is a DER UTF8String.
            try:
                sans.append(_utf8_der(other.value))
            except (CosignFormatError, UnicodeDecodeError):
                continue
    issuer = _ext_text(cert, OID_ISSUER_V2, der=True)
    if issuer is None:
        issuer = _ext_text(cert, OID_ISSUER_V1, der=False)
    extras = []
    for name, oid in EXTRA_OIDS.items():
        value = _ext_text(cert, oid, der=True)
        if value is not None:
            extras.append((name, value))
    return CertIdentity(tuple(sans), issuer or "", tuple(extras))


def verify_embedded_scts(
    leaf: x509.Certificate, issuer: x509.Certificate, root: TrustedRoot
) -> int:
    """Verify the leaf's embedded SCTs against the CT logs of ``root``; returns how many
    verified (at least one, else raises).

    Raises:
        CosignSignatureError: no SCT, or none from a known log verifies.
    """
    try:
        scts = leaf.extensions.get_extension_for_class(
            x509.PrecertificateSignedCertificateTimestamps
        ).value
    except x509.ExtensionNotFound as e:
        raise CosignSignatureError("certificate has no embedded SCT") from e
    issuer_key_hash = hashlib.sha256(
        issuer.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).digest()
    tbs = leaf.tbs_precertificate_bytes
    verified = 0
    problems = []
    for sct in list(scts)[:MAX_SCTS]:
        log = root.ctlog(sct.log_id)
        if log is None:
            problems.append(f"SCT from unknown log {sct.log_id.hex()[:16]}")
            continue
        # cryptography gives a naive UTC datetime here.
        when = sct.timestamp
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        timestamp_ms = int(when.timestamp() * 1000)
        # RFC 6962 §3.2 digitally-signed struct for a precert entry.
        message = (
            b"\x00\x00"
            + struct.pack(">Q", timestamp_ms)
            + b"\x00\x01"
            + issuer_key_hash
            + len(tbs).to_bytes(3, "big")
            + tbs
            + len(sct.extension_bytes).to_bytes(2, "big")
            + sct.extension_bytes
        )
        try:
            VerifyingKey(log.key.key, "sha256").verify(sct.signature, message)
        except CosignSignatureError:
            problems.append(f"SCT from log {sct.log_id.hex()[:16]} does not verify")
            continue
        if not log.valid.contains(when):
            problems.append(f"SCT from log {sct.log_id.hex()[:16]} outside the key's window")
            continue
        verified += 1
    if not verified:
        raise CosignSignatureError("no embedded SCT verifies: " + "; ".join(problems))
    return verified
