"""Roots of trust: how a repository's root metadata is anchored (notary ``trustpinning``).

The caller chooses one per repository:

* :class:`PinnedRootKeys` - canonical root key IDs (``docker trust inspect`` "Root Key",
  Mirantis ``trust-pinning.root-keys``); survives certificate renewal, not key rotation.
* :class:`PinnedRootCerts` - root certificate IDs (the key IDs in ``root.json``; notary
  ``trust_pinning.certs``).
* :class:`RootCA` - the root leaf certificate must chain to one of these CA certificates
  (notary ``trust_pinning.ca``), through intermediates bundled after the leaf.
* :class:`TrustOnFirstUse` - accept the first root seen; later roots must be signed by it.

Whatever the choice, the root leaf certificate's CN must equal the GUN and it must not be
signed with SHA-1 (notary ``validRootLeafCerts``); expiry is checked by the trusted set.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from proxy.sources.notary.tuf.keys import PublicKey

__all__ = [
    "PinnedRootCerts",
    "PinnedRootKeys",
    "RootCA",
    "RootOfTrust",
    "TrustOnFirstUse",
    "is_expired",
    "leaf_problem",
]

MAX_CHAIN_DEPTH = 5


@dataclass(frozen=True)
class PinnedRootKeys:
    """Accept root keys whose canonical key ID is one of ``key_ids``."""

    key_ids: frozenset[str]

    def __init__(self, key_ids: Iterable[str]) -> None:
        object.__setattr__(self, "key_ids", frozenset(k.lower() for k in key_ids))
        if not self.key_ids:
            raise ValueError("PinnedRootKeys needs at least one key ID")

    def accepts(self, key: PublicKey, reference_time: datetime, *, first_use: bool) -> bool:
        return key.canonical_id in self.key_ids


@dataclass(frozen=True)
class PinnedRootCerts:
    """Accept root certificates whose certificate ID (key ID in root.json) is pinned."""

    cert_ids: frozenset[str]

    def __init__(self, cert_ids: Iterable[str]) -> None:
        object.__setattr__(self, "cert_ids", frozenset(k.lower() for k in cert_ids))
        if not self.cert_ids:
            raise ValueError("PinnedRootCerts needs at least one certificate ID")

    def accepts(self, key: PublicKey, reference_time: datetime, *, first_use: bool) -> bool:
        return key.key_id in self.cert_ids


@dataclass(frozen=True)
class RootCA:
    """Accept root leaf certificates that chain to one of the CA certificates in ``pem``."""

    pem: bytes
    cas: tuple[x509.Certificate, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        try:
            cas = tuple(x509.load_pem_x509_certificates(self.pem))
        except ValueError as e:
            raise ValueError(f"RootCA: not PEM certificates: {e}") from e
        object.__setattr__(self, "cas", cas)

    def accepts(self, key: PublicKey, reference_time: datetime, *, first_use: bool) -> bool:
        if not key.certificates:
            return False
        return _chains_to(key.certificates[0], key.certificates[1:], self.cas, reference_time)


@dataclass(frozen=True)
class TrustOnFirstUse:
    """Accept any root the first time; afterwards the trusted root's keys must sign."""

    def accepts(self, key: PublicKey, reference_time: datetime, *, first_use: bool) -> bool:
        # notary: with a previous root and no pins, every CN-valid cert passes the pin check;
        # the rotation check against the previous root is what protects later versions.
        return True


RootOfTrust = PinnedRootKeys | PinnedRootCerts | RootCA | TrustOnFirstUse


def leaf_problem(key: PublicKey, gun: str) -> str | None:
    """Why a root key cannot anchor ``gun`` (expiry aside), or None when it can."""
    cert = key.certificate
    if cert is None:
        return "root key is not an x509 certificate"
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = cns[0].value if len(cns) == 1 else None
    if cn != gun:
        return f"root certificate CN {cn!r} does not match GUN {gun!r}"
    algo = cert.signature_hash_algorithm
    if algo is None or isinstance(algo, hashes.SHA1):
        return "root certificate is signed with SHA-1 or an unknown hash"
    return None


def is_expired(cert: x509.Certificate, reference_time: datetime) -> bool:
    return not cert.not_valid_before_utc <= reference_time <= cert.not_valid_after_utc


def _chains_to(
    leaf: x509.Certificate,
    intermediates: tuple[x509.Certificate, ...],
    cas: tuple[x509.Certificate, ...],
    reference_time: datetime,
) -> bool:
    # The leaf's own validity is the trusted set's business (allow_expired_root_cert);
    # intermediates and CAs must be valid at the reference time.
    cert = leaf
    for _ in range(MAX_CHAIN_DEPTH):
        if cert is not leaf and is_expired(cert, reference_time):
            return False
        for ca in cas:
            if _issued_by(cert, ca) and not is_expired(ca, reference_time):
                return True
        nxt = next(
            (i for i in intermediates if i is not cert and _is_ca(i) and _issued_by(cert, i)),
            None,
        )
        if nxt is None:
            return False
        cert = nxt
    return False


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if not _is_ca(issuer):
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bc.ca
