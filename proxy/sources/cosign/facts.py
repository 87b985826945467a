"""What the verifiers hand to the policy: signatures that verified, and why others did not.

A :class:`VerifiedSignature` means the cryptography holds (signature over the exact bytes,
certificate chain at the signing time, log entry consistent with the signature) and the
signed payload names the digest being served. Whether that signer *counts* is the
policy's question (:mod:`proxy.sources.cosign.policy`).
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.sources.cosign.fulcio import CertIdentity
from proxy.sources.cosign.rekor import LogEntry

__all__ = ["CertSigner", "KeySigner", "Rejected", "Signer", "VerifiedSignature"]


@dataclass(frozen=True)
class KeySigner:
    """Signed with a key the caller offered; ``key_id`` is hex sha256 of its SPKI DER."""

    key_id: str

    def describe(self) -> str:
        return f"key {self.key_id[:12]}…"


@dataclass(frozen=True)
class CertSigner:
    """Signed with a Fulcio certificate that chains to the trusted root."""

    identity: CertIdentity

    def describe(self) -> str:
        who = ", ".join(self.identity.sans) or "no SAN"
        return f"identity {who} (issuer {self.identity.issuer or 'none'})"


Signer = KeySigner | CertSigner


@dataclass(frozen=True)
class VerifiedSignature:
    """One signature that verified for ``digest``."""

    digest: str
    signer: Signer
    #: the repository the signer named (simple-signing ``docker-reference``, in-toto
    #: subject ``name``), normalised (``docker.io/library/x``); None when the format has none
    reference: str | None
    #: the verified Rekor entry, None when there is none (or it could not be checked)
    log_entry: LogEntry | None
    #: ``classic`` (``.sig`` tag layer) or ``bundle`` (Sigstore bundle)
    layout: str
    #: where it came from, for messages: ``layer 2``, ``bundle sha256:…``
    origin: str


@dataclass(frozen=True)
class Rejected:
    """A signature that did not verify, or verified for something else."""

    origin: str
    reason: str
