"""One Notation signature, judged by one trust policy statement: the verification walk.

:func:`verify_signature` is pure: envelope bytes, the statement, the loaded trust store,
the descriptor of the manifest actually served, operator CRLs and ``now`` in; a
:class:`SignatureVerdict` (every check's result, including failures that were only
logged) out, or :class:`SignatureVerificationError` when an *enforced* check fails.
:func:`verify_any` applies Notation's rule for several signatures: the first one that
passes wins (notation-go stops at the first success; there is no threshold).

Checks, in notation-go's order (``verifier.processSignature``):

1. **integrity**: envelope parses, signature verifies with the leaf key, headers are
   understood (:mod:`.envelope`). Always enforced (``override`` may not touch it).
   A signature that names a ``verificationPlugin`` is then refused with that reason
   (no plugins here; notation-go refuses the same way when the plugin is not installed).
2. **authenticity**: the x5c chain is well formed (:func:`.certs.validate_chain`), one of
   its certificates is byte-identical to a certificate in a named store of the scheme's
   type (``ca`` for ``notary.x509``, ``signingAuthority`` for
   ``notary.x509.signingAuthority``; a missing or broken store is this failure, as
   upstream), and the leaf's subject matches a trusted identity.
3. **expiry**: ``io.cncf.notary.expiry`` is after ``now``.
4. **authenticTimestamp**: ``notary.x509``: with a ``tsa`` store in the statement (and,
   under ``verifyTimestamp: afterCertExpiry``, only once a chain certificate has expired),
   an RFC 3161 countersignature is required; the chain must be valid over the whole
   ``genTime ± accuracy`` interval, which must lie after the claimed signing time.
   Otherwise every chain certificate must be valid at ``now``. The TSA chain's revocation
   is checked against the operator's CRLs (only "revoked" fails it: see the code).
   ``notary.x509.signingAuthority``: every chain
   certificate valid at ``authenticSigningTime``.
5. **revocation** (unless skipped): operator CRLs (:mod:`.revocation`).

Then, at every level but ``skip``: the payload's ``targetArtifact`` must equal the served
descriptor in digest, size *and* media type (computed from the served bytes by the caller,
see :func:`descriptor_of`), and any required annotations must be present with their values.
This is not a Notation "check": it cannot be logged away.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509

from proxy.errors import NotSignedError
from proxy.sources.notation.certs import fingerprint, subject_attributes, valid_at, validate_chain
from proxy.sources.notation.envelope import (
    SCHEME_SIGNING_AUTHORITY,
    SignerInfo,
    TargetArtifact,
    parse_envelope,
)
from proxy.sources.notation.errors import (
    EnvelopeError,
    SignatureVerificationError,
    TrustStoreError,
)
from proxy.sources.notation.revocation import CrlSet, RevocationStatus, check_chain
from proxy.sources.notation.timestamp import TrustedTimestamp, verify_timestamp
from proxy.sources.notation.trustpolicy import (
    Action,
    Check,
    StoreType,
    TrustPolicyStatement,
    VerifyTimestamp,
)
from proxy.sources.notation.truststore import TrustStore

__all__ = [
    "CheckResult",
    "SignatureVerdict",
    "descriptor_of",
    "verify_any",
    "verify_signature",
]

MAX_SIGNATURES = 100  # notation-go MaxSignatureAttempts default


@dataclass(frozen=True)
class CheckResult:
    check: Check
    action: Action
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None

    def __str__(self) -> str:
        if self.error is None:
            return f"{self.check}: passed"
        if self.action is Action.LOG:
            # notation's wording, so audit logs read the same as `notation verify -v`.
            return f'{self.check} was set to "log" and failed with error: {self.error}'
        return f"{self.check} validation failed: {self.error}"


@dataclass(frozen=True)
class SignatureVerdict:
    """What verification established about one signature that passed the statement."""

    statement: str
    results: tuple[CheckResult, ...]
    signer_subject: str = ""
    signer_fingerprint: str = ""
    signing_scheme: str = ""
    signing_time: datetime | None = None
    timestamp: TrustedTimestamp | None = None
    target: TargetArtifact | None = None
    skipped: bool = False
    #: the trust store (``ca:name``) holding the chain certificate that anchored it, and
    #: that certificate's SHA-256 fingerprint ("" when authenticity was only logged)
    anchor_store: str = ""
    anchor_fingerprint: str = ""

    @property
    def logged_failures(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if r.failed and r.action is Action.LOG)


@dataclass
class _Walk:
    statement: TrustPolicyStatement
    results: list[CheckResult] = field(default_factory=list)

    def record(self, check: Check, error: str | None) -> None:
        action = self.statement.action(check)
        result = CheckResult(check, action, error)
        self.results.append(result)
        if error is not None and action is Action.ENFORCE:
            raise SignatureVerificationError(str(check), error, tuple(self.results))


def _fmt(when: datetime) -> str:
    """Go's time.RFC1123Z, so messages read as notation's do."""
    return when.strftime("%a, %d %b %Y %H:%M:%S +0000")


def descriptor_of(manifest: bytes, media_type: str) -> TargetArtifact:
    """The descriptor of served bytes: digest and size computed here, never taken from
    registry headers."""
    return TargetArtifact(
        media_type, "sha256:" + hashlib.sha256(manifest).hexdigest(), len(manifest)
    )


def _trusted(
    store: TrustStore, statement: TrustPolicyStatement, kind: StoreType
) -> dict[bytes, x509.Certificate]:
    refs = statement.stores_of(kind)
    if not refs:
        raise TrustStoreError(
            statement.name, f"no trust store of type {kind} is named by the trust policy"
        )
    return store.fingerprints(refs)


def _authenticity(
    info: SignerInfo, statement: TrustPolicyStatement, store: TrustStore
) -> str | None:
    kind = (
        StoreType.SIGNING_AUTHORITY
        if info.signing_scheme == SCHEME_SIGNING_AUTHORITY
        else StoreType.CA
    )
    try:
        trusted = _trusted(store, statement, kind)
    except TrustStoreError as e:
        return str(e)
    try:
        validate_chain(info.chain, purpose="codeSigning")
    except ValueError as e:
        return f"invalid certificate chain: {e}"
    if not any(bytes.fromhex(fingerprint(c)) in trusted for c in info.chain):
        return "the signature's certificate chain does not contain any trusted certificate"
    if statement.any_identity:
        return None
    try:
        subject = subject_attributes(info.chain[0])
    except ValueError as e:
        return f"error while parsing the certificate subject from the digital signature: {e}"
    if any(identity.matches(subject) for identity in statement.trusted_identities):
        return None
    return (
        "signing certificate from the digital signature does not match the X.509 trusted "
        f"identities defined in the trust policy {statement.name!r}"
    )


def _anchor(
    info: SignerInfo, statement: TrustPolicyStatement, store: TrustStore
) -> tuple[str, str]:
    """The named store and certificate that anchor the chain (for audit records and
    metrics: bounded by the trust stores, unlike leaf certificates)."""
    kind = (
        StoreType.SIGNING_AUTHORITY
        if info.signing_scheme == SCHEME_SIGNING_AUTHORITY
        else StoreType.CA
    )
    chain = {fingerprint(c) for c in info.chain}
    for ref in statement.stores_of(kind):
        try:
            certs = store.certificates(ref)
        except TrustStoreError:
            continue
        for cert in certs:
            fp = fingerprint(cert)
            if fp in chain:
                return str(ref), fp
    return "", ""


def _expiry(info: SignerInfo, now: datetime) -> str | None:
    if info.expiry is not None and now >= info.expiry:
        return f"digital signature has expired on {_fmt(info.expiry)}"
    return None


def _authentic_timestamp(
    info: SignerInfo,
    statement: TrustPolicyStatement,
    store: TrustStore,
    crls: CrlSet,
    now: datetime,
) -> tuple[str | None, TrustedTimestamp | None]:
    if info.signing_scheme == SCHEME_SIGNING_AUTHORITY:
        when = info.authentic_signing_time
        for cert in info.chain:
            if when is None or not valid_at(cert, when):
                return (
                    f"certificate {cert.subject.rfc4514_string()!r} was not valid when the "
                    f"digital signature was produced at {when}",
                    None,
                )
        return None, None
    use_timestamp = bool(statement.stores_of(StoreType.TSA))
    if use_timestamp and statement.verify_timestamp is VerifyTimestamp.AFTER_CERT_EXPIRY:
        use_timestamp = any(now > c.not_valid_after_utc for c in info.chain)
    if not use_timestamp:
        for cert in info.chain:
            if now < cert.not_valid_before_utc:
                return (
                    f"verification time is before certificate {cert.subject.rfc4514_string()!r} "
                    f"validity period, it will be valid from {_fmt(cert.not_valid_before_utc)}",
                    None,
                )
            if now > cert.not_valid_after_utc:
                return (
                    f"verification time is after certificate {cert.subject.rfc4514_string()!r} "
                    f"validity period, it was expired at {_fmt(cert.not_valid_after_utc)}",
                    None,
                )
        return None, None
    if not info.timestamp_token:
        return "no timestamp countersignature was found in the signature envelope", None
    try:
        roots = list(_trusted(store, statement, StoreType.TSA).values())
        stamp = verify_timestamp(info.timestamp_token, info.signature, roots)
    except (EnvelopeError, TrustStoreError) as e:
        return f"failed to verify the timestamp countersignature: {e}", None
    if info.signing_time is not None and not stamp.earliest > info.signing_time:
        return (
            f"timestamp {stamp.gen_time.isoformat()} is not bounded after the signing time "
            f"{info.signing_time.isoformat()}",
            None,
        )
    for cert in info.chain:
        if stamp.earliest < cert.not_valid_before_utc:
            return (
                f"timestamp can be before certificate {cert.subject.rfc4514_string()!r} validity "
                f"period, it will be valid from {_fmt(cert.not_valid_before_utc)}",
                None,
            )
        if stamp.latest > cert.not_valid_after_utc:
            return (
                f"timestamp can be after certificate {cert.subject.rfc4514_string()!r} validity "
                f"period, it was expired at {_fmt(cert.not_valid_after_utc)}",
                None,
            )
    # The TSA chain against operator CRLs: revoked fails. Unlike notation-go (which fetches
    # and fails on "unknown"), unknown passes: public TSAs always point at online CRLs/OCSP
    # that this offline core does not fetch, so "unknown" would refuse every timestamp.
    status, why = check_chain(stamp.tsa_chain, crls, now)
    if status is RevocationStatus.REVOKED:
        return f"timestamping {why}", None
    return None, stamp


def verify_signature(
    envelope: bytes,
    envelope_media_type: str,
    *,
    statement: TrustPolicyStatement,
    trust_store: TrustStore,
    served: TargetArtifact,
    now: datetime,
    crls: CrlSet | None = None,
    required_annotations: Mapping[str, str] | None = None,
) -> SignatureVerdict:
    """Verify one signature of the served artifact. Raises
    :class:`SignatureVerificationError` (an enforced check failed, a plugin is required,
    or the payload does not describe ``served``)."""
    if statement.skips:
        return SignatureVerdict(
            statement.name, tuple(CheckResult(c, Action.SKIP) for c in Check), skipped=True
        )
    walk = _Walk(statement)
    try:
        info = parse_envelope(envelope, envelope_media_type)
    except EnvelopeError as e:
        walk.record(Check.INTEGRITY, str(e))
        raise RuntimeError("integrity is always enforced") from e  # pragma: no cover
    if info.verification_plugin:
        raise SignatureVerificationError(
            "plugin",
            f"the signature requires verification plugin {info.verification_plugin!r}"
            + (
                f" (>= {info.verification_plugin_min_version})"
                if info.verification_plugin_min_version
                else ""
            )
            + "; verification plugins are not supported",
        )
    if info.unknown_critical:
        walk.record(
            Check.INTEGRITY,
            f"critical header(s) {', '.join(info.unknown_critical)} are not understood",
        )
    walk.record(Check.INTEGRITY, None)
    walk.record(Check.AUTHENTICITY, _authenticity(info, statement, trust_store))
    walk.record(Check.EXPIRY, _expiry(info, now))
    error, stamp = _authentic_timestamp(info, statement, trust_store, crls or CrlSet(), now)
    walk.record(Check.AUTHENTIC_TIMESTAMP, error)
    if statement.action(Check.REVOCATION) is not Action.SKIP:
        status, why = check_chain(info.chain, crls or CrlSet(), now)
        walk.record(
            Check.REVOCATION,
            why if status in (RevocationStatus.REVOKED, RevocationStatus.UNKNOWN) else None,
        )
    results = tuple(walk.results)
    anchor_store, anchor_fingerprint = _anchor(info, statement, trust_store)
    target = info.target
    if (target.digest, target.size, target.media_type) != (
        served.digest,
        served.size,
        served.media_type,
    ):
        raise SignatureVerificationError(
            "target",
            f"content descriptor mismatch: the signature is for {target.media_type} "
            f"{target.digest} ({target.size} bytes), the artifact is {served.media_type} "
            f"{served.digest} ({served.size} bytes)",
            results,
        )
    for key, value in (required_annotations or {}).items():
        if target.annotations.get(key) != value:
            raise SignatureVerificationError(
                "metadata", f"required signed metadata {key}={value} is not present", results
            )
    return SignatureVerdict(
        statement=statement.name,
        results=results,
        signer_subject=info.chain[0].subject.rfc4514_string(),
        signer_fingerprint=fingerprint(info.chain[0]),
        signing_scheme=info.signing_scheme,
        signing_time=info.authentic_signing_time or info.signing_time,
        timestamp=stamp,
        target=target,
        anchor_store=anchor_store,
        anchor_fingerprint=anchor_fingerprint,
    )


def verify_any(
    envelopes: Sequence[tuple[bytes, str]],
    *,
    statement: TrustPolicyStatement,
    trust_store: TrustStore,
    served: TargetArtifact,
    now: datetime,
    crls: CrlSet | None = None,
    required_annotations: Mapping[str, str] | None = None,
    max_signatures: int = MAX_SIGNATURES,
) -> SignatureVerdict:
    """Notation's rule for an artifact: the first signature that passes wins.

    Raises :class:`NotSignedError` when there is none, and
    :class:`SignatureVerificationError` (carrying every signature's reason) when none
    passes. Only the first ``max_signatures`` are tried.
    """
    if statement.skips:
        return verify_signature(
            b"", "", statement=statement, trust_store=trust_store, served=served, now=now
        )
    if not envelopes:
        raise NotSignedError(f"no signature is associated with {served.digest}")
    reasons: list[str] = []
    last: SignatureVerificationError | None = None
    for data, media_type in envelopes[:max_signatures]:
        try:
            return verify_signature(
                data,
                media_type,
                statement=statement,
                trust_store=trust_store,
                served=served,
                now=now,
                crls=crls,
                required_annotations=required_annotations,
            )
        except SignatureVerificationError as e:
            reasons.append(str(e))
            last = e
    if last is None:  # pragma: no cover - the loop ran at least once
        raise RuntimeError("no signature was tried")
    if len(reasons) == 1:
        raise last
    raise SignatureVerificationError(
        last.check,
        f"no signature passed ({len(reasons)} tried): " + "; ".join(reasons),
        last.results,
    )
