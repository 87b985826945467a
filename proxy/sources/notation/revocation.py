"""Revocation from CRLs the operator provides (no network).

notation-go checks OCSP, then CRL, for the signing chain and for the TSA chain, fetching
from the URLs in the certificates **[read]**. This core fetches nothing: a CRL is used only
when the operator supplied it (:func:`parse_crls`). Per certificate:

- a CRL from its issuer (names equal *and* the CRL's signature verifies with the issuer's
  key) that lists its serial → ``revoked``; one that does not → ``ok``; one outside
  ``thisUpdate..nextUpdate`` at ``now`` → ``unknown`` (upstream: an expired CRL gives
  "revocation status is unknown", ``leaf_expired.crl``);
- no such CRL, but the certificate names a CRL distribution point or an OCSP responder →
  ``unknown`` (we did not check what the issuer says);
- neither → ``non-revocable`` (counts as ok, as upstream: self-signed vectors have none).

Like notation-go, both ``revoked`` and ``unknown`` fail the *revocation* check; the level
decides whether that is enforced (strict), logged (permissive, audit) or skipped
(``override: {revocation: skip}``). Left for later: OCSP, fetching CRLs through the
upstream client (with a host allow-list: URLs come from untrusted certificates), caching,
and signingAuthority's "revoked after the authentic signing time" nuance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID

__all__ = ["CrlSet", "RevocationStatus", "check_chain", "parse_crls"]

MAX_CRL_BYTES = 4 * 1024 * 1024


class RevocationStatus(StrEnum):
    OK = "ok"
    NON_REVOCABLE = "non-revocable"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class CrlSet:
    crls: tuple[x509.CertificateRevocationList, ...] = ()


def parse_crls(files: Mapping[str, bytes]) -> CrlSet:
    """DER or PEM CRLs. Raises ValueError naming the file."""
    out = []
    for name in sorted(files):
        data = files[name]
        if len(data) > MAX_CRL_BYTES:
            raise ValueError(f"{name}: larger than {MAX_CRL_BYTES} bytes")
        try:
            if b"-----BEGIN X509 CRL-----" in data:
                out.append(x509.load_pem_x509_crl(data))
            else:
                out.append(x509.load_der_x509_crl(data))
        except ValueError as e:
            raise ValueError(f"{name}: not a CRL: {e}") from None
    return CrlSet(tuple(out))


def _has_revocation_pointer(cert: x509.Certificate) -> bool:
    try:
        cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)
        return True
    except x509.ExtensionNotFound:
        pass
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return False
    return any(d.access_method == AuthorityInformationAccessOID.OCSP for d in aia)


def _status(
    cert: x509.Certificate, issuer: x509.Certificate, crls: CrlSet, now: datetime
) -> tuple[RevocationStatus, str]:
    usable = [
        c
        for c in crls.crls
        if c.issuer == cert.issuer and c.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    ]
    if not usable:
        if _has_revocation_pointer(cert):
            return RevocationStatus.UNKNOWN, "no CRL was provided for its issuer"
        return RevocationStatus.NON_REVOCABLE, ""
    for crl in usable:
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            return RevocationStatus.REVOKED, "listed in its issuer's CRL"
    fresh = [
        c
        for c in usable
        if c.last_update_utc <= now and (c.next_update_utc is None or now <= c.next_update_utc)
    ]
    if not fresh:
        return RevocationStatus.UNKNOWN, "the CRL is expired or not yet valid"
    return RevocationStatus.OK, ""


def check_chain(
    chain: Sequence[x509.Certificate], crls: CrlSet, now: datetime
) -> tuple[RevocationStatus, str]:
    """The chain's overall status and, unless ok, a reason naming the certificate."""
    worst = RevocationStatus.OK
    reason = ""
    for i, cert in enumerate(chain):
        issuer = chain[i + 1] if i + 1 < len(chain) else cert
        status, why = _status(cert, issuer, crls, now)
        subject = cert.subject.rfc4514_string()
        if status is RevocationStatus.REVOKED:
            return status, f"certificate {subject!r} is revoked ({why})"
        if status is RevocationStatus.UNKNOWN and worst is RevocationStatus.OK:
            worst, reason = status, f"certificate {subject!r} revocation status is unknown ({why})"
    return worst, reason
