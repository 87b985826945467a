"""The Notation judge: find the signatures of one digest in the registry and verify them.

The I/O shell around the pure core (:mod:`.verify`), for
:class:`~proxy.sources.signed_digests.SignedDigestSource`. For one (repository, digest):

1. the trust policy statement: the rule's inline one, else the document's statement whose
   ``registryScopes`` names the repository (else ``"*"``; none: refused, as notation-go).
   Under ``skip`` nothing is read (Notation's semantics; the loader warns);
2. the manifest by digest (hash-checked by the reader): its length, and its media type as
   served, which the signed payload must name;
3. ``registry.referrers(digest)``: the referrers API, else the ``sha256-<hex>`` tag index
   (the reader does the fallback). Only descriptors whose ``artifactType`` is
   ``application/vnd.cncf.notary.signature``, at most ``max_signatures``;
4. each signature manifest by digest (hash-checked, bounded like any manifest): its own
   artifact type (top-level ``artifactType``, or ``config.mediaType`` in the 1.1-rc form),
   its ``subject`` naming this digest, one envelope layer of a known media type, no larger
   than ``max_envelope_bytes``; then the envelope blob (hash-checked, read up to that bound);
5. the core, one signature at a time; the first that passes wins (notation-go stops at the
   first success, so later signatures are not even read).

Everything read is untrusted: a bad, oversized or missing signature is a reason that
signature failed, never an allow and never an outage for the image (someone who can push a
signature beside an image must not be able to make the image unavailable); the other
signatures are still tried. Reads that fail because the registry is unreachable propagate
(the source answers 503 unless a verified verdict is kept within grace). A stale or partial
tag index (fewer signatures listed than pushed) can only refuse, never allow.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final

import httpx
from prometheus_client import Counter

from proxy.errors import FetchError, NotSignedError, TrustproxyError
from proxy.metrics import REGISTRY
from proxy.reference import validate_digest
from proxy.sources.base import RegistryReads
from proxy.sources.notation.crl_fetch import CrlFetcher
from proxy.sources.notation.envelope import (
    COSE_MEDIA_TYPE,
    JWS_MEDIA_TYPE,
    MAX_ENVELOPE_BYTES,
    TargetArtifact,
    parse_envelope,
)
from proxy.sources.notation.errors import SignatureVerificationError
from proxy.sources.notation.revocation import CrlSet
from proxy.sources.notation.rule import NotationRule
from proxy.sources.notation.trustpolicy import (
    Action,
    Check,
    TrustPolicyDocument,
    TrustPolicyStatement,
)
from proxy.sources.notation.truststore import TrustStore
from proxy.sources.notation.verify import (
    MAX_SIGNATURES,
    SignatureVerdict,
    descriptor_of,
    verify_signature,
)
from proxy.sources.signed_digests import DigestSigned

__all__ = [
    "SIGNATURE_ARTIFACT_TYPE",
    "NotationJudge",
    "NotationLimits",
    "SignatureReport",
    "evidence_of",
    "served_media_type",
]

log = logging.getLogger(__name__)

SIGNATURE_ARTIFACT_TYPE: Final = "application/vnd.cncf.notary.signature"
_ENVELOPE_TYPES: Final = (JWS_MEDIA_TYPE, COSE_MEDIA_TYPE)
_OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
_OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"

NOTATION_SIGNATURES = Counter(
    "trustproxy_notation_signatures_total",
    "Notation signatures verified, by source, trust policy statement, the trust store and "
    "certificate that anchored them (bounded by the trust stores) and result (passed, or "
    "the check that refused it).",
    ["source", "trust_policy", "anchor_store", "anchor_fingerprint", "result"],
    registry=REGISTRY,
)


@dataclass(frozen=True)
class NotationLimits:
    """Bounds on what one judgement reads (notation-go: 100 signatures per artifact)."""

    max_signatures: int = MAX_SIGNATURES
    max_envelope_bytes: int = MAX_ENVELOPE_BYTES


def served_media_type(manifest: bytes) -> str:
    """The media type the registry serves ``manifest`` under, as the signed payload must
    name it: the manifest's own ``mediaType``; without one (OCI allows it), an index when it
    lists ``manifests``, else an image manifest (what distribution serves such bytes as).
    Raises NotSignedError for bytes that are not a JSON object."""
    try:
        doc = json.loads(manifest)
    except (ValueError, UnicodeDecodeError) as e:
        raise NotSignedError(f"the manifest is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise NotSignedError("the manifest is not a JSON object")
    media_type = doc.get("mediaType")
    if isinstance(media_type, str) and media_type:
        return media_type
    return _OCI_INDEX if isinstance(doc.get("manifests"), list) else _OCI_MANIFEST


def _artifact_type(manifest: Mapping[str, Any]) -> str | None:
    """Top-level ``artifactType`` (OCI 1.1), else ``config.mediaType`` (1.1-rc form)."""
    found = manifest.get("artifactType")
    if isinstance(found, str):
        return found
    config = manifest.get("config")
    if isinstance(config, dict) and isinstance(config.get("mediaType"), str):
        return str(config["mediaType"])
    return None


def evidence_of(verdict: SignatureVerdict, signature_digest: str, tried: int) -> Mapping[str, Any]:
    """The audit record's facts about the signature that passed (JSON-able)."""
    stamp = verdict.timestamp
    return MappingProxyType(
        {
            "cert_fingerprints": [verdict.signer_fingerprint] if verdict.signer_fingerprint else [],
            "trust_policy": verdict.statement,
            "trust_store": verdict.anchor_store,
            "anchor_fingerprint": verdict.anchor_fingerprint,
            "signing_scheme": verdict.signing_scheme,
            "signing_time": verdict.signing_time.isoformat() if verdict.signing_time else None,
            "timestamp": stamp.gen_time.isoformat() if stamp is not None else None,
            "signature_manifest": signature_digest,
            "signatures_tried": tried,
            "logged_failures": [str(r) for r in verdict.logged_failures],
            "verification_skipped": verdict.skipped,
        }
    )


class NotationJudge:
    """A :class:`~proxy.sources.signed_digests.DigestJudge` for Notation signatures."""

    type_name = "notation"

    def __init__(
        self,
        *,
        source: str,
        document: TrustPolicyDocument,
        trust_store: TrustStore,
        crls: CrlSet | None = None,
        limits: NotationLimits | None = None,
        crl_fetcher: CrlFetcher | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.source = source
        self.document = document
        self.trust_store = trust_store
        self.crls = crls or CrlSet()
        self.limits = limits or NotationLimits()
        #: CRLs from the chain's distribution points (operator-allowed hosts), if any
        self.crl_fetcher = crl_fetcher
        self._http = http  # the fetcher's client, closed by aclose

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def _crls_for(
        self, envelope: bytes, media_type: str, statement: TrustPolicyStatement, now: datetime
    ) -> CrlSet:
        """The operator's CRLs, plus those fetched for this envelope's chain (only when a
        fetcher is configured and the statement does not skip revocation)."""
        if self.crl_fetcher is None or statement.action(Check.REVOCATION) is Action.SKIP:
            return self.crls
        try:
            chain = parse_envelope(envelope, media_type).chain
        except (TrustproxyError, ValueError):
            return self.crls  # the core reports the integrity failure
        fetched = await self.crl_fetcher.crls_for(chain, now)
        return CrlSet(self.crls.crls + fetched) if fetched else self.crls

    def statement_for(self, repository: str, rule: NotationRule) -> TrustPolicyStatement:
        """The statement that judges ``repository``. Raises NoApplicableTrustPolicyError."""
        return rule.inline if rule.inline is not None else self.document.statement_for(repository)

    async def judge(
        self,
        registry: RegistryReads,
        repository: str,
        digest: str,
        rule: NotationRule,
        now: datetime,
    ) -> DigestSigned:
        statement = self.statement_for(repository, rule)
        if statement.skips:
            verdict = verify_signature(
                b"",
                "",
                statement=statement,
                trust_store=self.trust_store,
                served=TargetArtifact("", digest, 0),
                now=now,
            )
            return DigestSigned(
                digest,
                None,
                (f"nobody: trust policy {statement.name!r} skips signature verification",),
                evidence_of(verdict, "", 0),
            )
        manifest = await registry.manifest(digest)
        if manifest is None:
            raise NotSignedError(f"manifest {digest} does not exist in {repository}")
        served = _descriptor(manifest, digest)
        candidates = await self._signature_descriptors(registry, digest)
        if not candidates:
            raise NotSignedError(
                f"no Notation signature is associated with {digest} in {repository}"
            )
        reasons: list[str] = []
        for i, descriptor in enumerate(candidates, 1):
            sig_digest = str(descriptor["digest"])
            try:
                envelope, media_type = await self._envelope(registry, digest, descriptor)
                verdict = verify_signature(
                    envelope,
                    media_type,
                    statement=statement,
                    trust_store=self.trust_store,
                    served=served,
                    now=now,
                    crls=await self._crls_for(envelope, media_type, statement, now),
                    required_annotations=rule.required_annotations,
                )
            except SignatureVerificationError as e:
                NOTATION_SIGNATURES.labels(self.source, statement.name, "", "", e.check).inc()
                reasons.append(f"signature {sig_digest}: {e.reason}")
                continue
            except FetchError:
                raise  # the registry is unreachable: an outage, not a verdict
            except (TrustproxyError, ValueError) as e:
                # Unreadable, oversized, malformed, or not the bytes named: this signature
                # fails (forged or broken data is a refusal, never an allow or an outage).
                NOTATION_SIGNATURES.labels(self.source, statement.name, "", "", "bad").inc()
                reason = e.reason if isinstance(e, NotSignedError) else str(e)
                reasons.append(f"signature {sig_digest}: {reason}")
                continue
            NOTATION_SIGNATURES.labels(
                self.source,
                statement.name,
                verdict.anchor_store,
                verdict.anchor_fingerprint,
                "passed",
            ).inc()
            for failure in verdict.logged_failures:
                log.warning(
                    "%s: %s@%s signature %s: %s",
                    self.source,
                    repository,
                    digest,
                    sig_digest,
                    failure,
                )
            return DigestSigned(
                digest,
                served.size,
                (verdict.signer_subject,),
                evidence_of(verdict, sig_digest, i),
            )
        if len(reasons) == 1:
            raise NotSignedError(f"the Notation signature of {digest} failed: {reasons[0]}")
        raise NotSignedError(
            f"none of the {len(reasons)} Notation signatures of {digest} passed: "
            + "; ".join(reasons)
        )

    async def inspect(
        self,
        registry: RegistryReads,
        repository: str,
        digest: str,
        rule: NotationRule,
        now: datetime,
    ) -> list[SignatureReport]:
        """Every signature of ``digest`` judged on its own (``trust inspect``: unlike
        :meth:`judge`, it does not stop at the first that passes). Raises as :meth:`judge`
        for the digest itself (no statement, no manifest, registry unreachable)."""
        statement = self.statement_for(repository, rule)
        if statement.skips:
            return []
        manifest = await registry.manifest(digest)
        if manifest is None:
            raise NotSignedError(f"manifest {digest} does not exist in {repository}")
        served = _descriptor(manifest, digest)
        reports: list[SignatureReport] = []
        for descriptor in await self._signature_descriptors(registry, digest):
            sig_digest = str(descriptor["digest"])
            envelope, media_type = b"", ""
            try:
                envelope, media_type = await self._envelope(registry, digest, descriptor)
                verdict = verify_signature(
                    envelope,
                    media_type,
                    statement=statement,
                    trust_store=self.trust_store,
                    served=served,
                    now=now,
                    crls=await self._crls_for(envelope, media_type, statement, now),
                    required_annotations=rule.required_annotations,
                )
            except SignatureVerificationError as e:
                reports.append(
                    SignatureReport(
                        sig_digest,
                        media_type,
                        False,
                        e.reason,
                        tuple(str(r) for r in e.results),
                        _subject_of(envelope, media_type),
                    )
                )
                continue
            except FetchError:
                raise
            except (TrustproxyError, ValueError) as e:
                reason = e.reason if isinstance(e, NotSignedError) else str(e)
                reports.append(SignatureReport(sig_digest, media_type, False, reason))
                continue
            reports.append(
                SignatureReport(
                    sig_digest,
                    media_type,
                    True,
                    "",
                    tuple(str(r) for r in verdict.results),
                    verdict.signer_subject,
                    verdict.signer_fingerprint,
                    verdict.anchor_store,
                    verdict.timestamp.gen_time.isoformat() if verdict.timestamp else None,
                )
            )
        return reports

    async def _signature_descriptors(
        self, registry: RegistryReads, digest: str
    ) -> list[Mapping[str, Any]]:
        """Notation signature manifests listed as referrers of ``digest`` (untrusted
        descriptors: each is checked again once read), at most ``max_signatures``."""
        found: list[Mapping[str, Any]] = []
        seen: set[str] = set()
        listed = await registry.referrers(digest)
        for d in listed:
            if d.get("artifactType") != SIGNATURE_ARTIFACT_TYPE:
                continue
            sig = d.get("digest")
            if not isinstance(sig, str) or sig in seen:
                continue
            seen.add(sig)
            found.append(d)
        if len(found) > self.limits.max_signatures:
            log.warning(
                "%s: %d Notation signatures listed for %s; trying the first %d",
                self.source,
                len(found),
                digest,
                self.limits.max_signatures,
            )
            found = found[: self.limits.max_signatures]
        return found

    async def _envelope(
        self, registry: RegistryReads, digest: str, descriptor: Mapping[str, Any]
    ) -> tuple[bytes, str]:
        """The envelope of one signature manifest, checked for shape first. Raises
        NotSignedError (wrong shape), BadDataError (from the reader), ValueError."""
        sig_digest = str(descriptor["digest"])
        validate_digest(sig_digest)
        body = await registry.manifest(sig_digest)
        if body is None:
            raise NotSignedError("the signature manifest is listed but does not exist")
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise NotSignedError("the signature manifest is not JSON") from None
        if not isinstance(doc, dict):
            raise NotSignedError("the signature manifest is not a JSON object")
        if _artifact_type(doc) != SIGNATURE_ARTIFACT_TYPE:
            raise NotSignedError(
                f"the manifest is not a Notation signature (artifact type {_artifact_type(doc)!r})"
            )
        subject = doc.get("subject")
        if not isinstance(subject, dict) or subject.get("digest") != digest:
            raise NotSignedError("the signature manifest's subject is another artifact")
        layers = doc.get("layers")
        if not isinstance(layers, list) or len(layers) != 1 or not isinstance(layers[0], dict):
            raise NotSignedError("a Notation signature manifest has exactly one layer")
        layer = layers[0]
        media_type, blob_digest, size = (
            layer.get("mediaType"),
            layer.get("digest"),
            layer.get("size"),
        )
        if media_type not in _ENVELOPE_TYPES:
            raise SignatureVerificationError(
                "integrity", f"unsupported signature envelope media type {media_type!r}"
            )
        if not isinstance(blob_digest, str):
            raise NotSignedError("the signature envelope layer has no digest")
        validate_digest(blob_digest)
        limit = self.limits.max_envelope_bytes
        if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= limit:
            raise NotSignedError(
                f"the signature envelope's size {size!r} is not between 1 and {limit} bytes"
            )
        envelope = await registry.blob(blob_digest, limit)
        if envelope is None:
            raise NotSignedError(f"the signature envelope {blob_digest} does not exist")
        return envelope, str(media_type)


@dataclass(frozen=True)
class SignatureReport:
    """One signature as ``trust inspect`` shows it."""

    signature_manifest: str
    envelope_media_type: str
    passed: bool
    reason: str = ""
    checks: tuple[str, ...] = ()
    signer_subject: str = ""
    cert_fingerprint: str = ""
    trust_store: str = ""
    timestamp: str | None = None


def _subject_of(envelope: bytes, media_type: str) -> str:
    """The leaf's subject of an envelope whose signature verifies (for reports only)."""
    if not envelope:
        return ""
    try:
        return parse_envelope(envelope, media_type).chain[0].subject.rfc4514_string()
    except (TrustproxyError, ValueError, IndexError):
        return ""


def _descriptor(manifest: bytes, digest: str) -> TargetArtifact:
    served = descriptor_of(manifest, served_media_type(manifest))
    if served.digest != digest:  # the reader hash-checks; a reader that does not is a bug
        raise NotSignedError(f"the manifest read for {digest} hashes to {served.digest}")
    return served
