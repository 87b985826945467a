"""The cosign judge: finds a digest's signatures in the registry, reads them bounded, and
hands the bytes to the pure core (:class:`~.verify.CosignVerifier`). The shared
:class:`~proxy.sources.signed_digests.SignedDigestSource` does tags, caching and
``lastSigned`` around it.

Discovery, for image ``sha256:<hex>`` served as ``repository``:

1. **classic**: the manifest of tag ``sha256-<hex>.sig`` and each of its layer blobs (at
   most ``maxSignatureLayers``, each at most the payload limit);
2. **bundles**: the image's referrers (``registry.referrers``: the referrers API, else the
   ``sha256-<hex>`` tag-schema index) whose ``artifactType`` is a Sigstore bundle type, each
   referrer manifest by digest (its ``subject`` must be the image) and its bundle layer.

Both are read in the configured ``signature_repository`` when there is one (cosign's
``COSIGN_REPOSITORY`` moves both), else in the image's repository. Bundles are read only
when the classic signatures do not already satisfy the rule, or when the rule requires
attestations: a classic-signed tag costs three upstream reads cold (the tag's HEAD, the
``.sig`` manifest, one payload blob per signer).

What is read is untrusted: a signature manifest or blob that is malformed, oversized or not
the bytes its digest names is one more reason in the refusal, never an allow, and it does
not hide another signer's valid signature. Only an unreachable upstream
(``UpstreamUnavailableError``) propagates (the source answers 503 unless a verified
verdict is cached within grace).
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final, Protocol, runtime_checkable

from proxy.errors import BadDataError, NotSignedError, TrustSourceUnavailableError
from proxy.sources.base import RegistryReads
from proxy.sources.cosign.bundle import BUNDLE_MEDIA_TYPES, COSIGN_SIGN_PREDICATE
from proxy.sources.cosign.classic import ClassicLimits, parse_sig_manifest, signature_tag
from proxy.sources.cosign.facts import CertSigner, KeySigner, Rejected, VerifiedSignature
from proxy.sources.cosign.policy import CosignPolicy, Verdict, evaluate
from proxy.sources.cosign.referrers import (
    MAX_REFERRERS,
    BundleRef,
    bundle_layer,
    bundle_referrers,
)
from proxy.sources.cosign.rule import CosignRule
from proxy.sources.cosign.verify import CosignVerifier, FetchedSignatures
from proxy.sources.signed_digests import DigestSigned

__all__ = ["CosignJudge", "CosignNotSignedError", "RepositoryReads", "describe_signature"]

TYPE_NAME: Final = "cosign"
#: referrer annotation cosign 3 writes with the bundle's predicate type
PREDICATE_ANNOTATION: Final = "dev.sigstore.bundle.predicateType"
_MAX_REASONS: Final = 8


class CosignNotSignedError(NotSignedError):
    """No acceptable cosign signature (or required attestation) for a digest; ``reasons``
    lists why, headline first."""

    def __init__(self, digest: str, reasons: Sequence[str]) -> None:
        self.digest = digest
        self.reasons = tuple(reasons)
        super().__init__("; ".join(self.reasons))


@runtime_checkable
class RepositoryReads(Protocol):
    """A registry reader that can read another repository of the same upstream, as the
    same client (``proxy/upstream/reader.py``: ``RegistryReader.for_repository``)."""

    def for_repository(self, repository: str) -> RegistryReads | None:
        """A reader for ``repository`` (``registry/path``), None when it is not on this
        reader's upstream."""
        ...


def describe_signature(sig: VerifiedSignature) -> str:
    """Who signed, as people name them (for signers lists and reasons)."""
    return sig.signer.describe()


class CosignJudge:
    """Judges a digest's cosign signatures under a :class:`~.rule.CosignRule`."""

    type_name = TYPE_NAME

    def __init__(
        self,
        verifier: CosignVerifier,
        *,
        source: str,
        signature_repository: str | None = None,
        limits: ClassicLimits | None = None,
        max_referrers: int = MAX_REFERRERS,
    ) -> None:
        self._verifier = verifier
        self._source = source
        self._signature_repository = signature_repository
        self._limits = limits or ClassicLimits()
        self._max_referrers = max_referrers

    # --- the DigestJudge contract --------------------------------------------------------

    async def judge(
        self,
        registry: RegistryReads,
        repository: str,
        digest: str,
        rule: CosignRule,
        now: datetime,
    ) -> DigestSigned:
        """The acceptable signatures of ``digest`` served as ``repository`` under ``rule``.

        Raises:
            CosignNotSignedError: nothing acceptable (the reasons say why).
            TrustSourceUnavailableError: the signature repository cannot be read through
                this upstream.
            UpstreamUnavailableError: the registry could not be read.
        """
        verdict, attestation_verdicts = await self.evaluate(registry, repository, digest, rule, now)
        if not verdict.accepted:
            raise CosignNotSignedError(digest, verdict.reasons)
        for predicate_type, found in attestation_verdicts:
            if not found.accepted:
                rule_name = f" of rule {rule.name}" if rule.name else ""
                raise CosignNotSignedError(
                    digest,
                    (
                        f"no verified {predicate_type} attestation for {digest} by any "
                        f"authority{rule_name}",
                        *found.reasons[1:],
                    ),
                )
        return answer(verdict, attestation_verdicts)

    # --- the walk, for inspect too -------------------------------------------------------

    async def evaluate(
        self,
        registry: RegistryReads,
        repository: str,
        digest: str,
        rule: CosignRule,
        now: datetime,
        *,
        everything: bool = False,
    ) -> tuple[Verdict, list[tuple[str, Verdict]]]:
        """The signature verdict and one verdict per required attestation type.
        ``everything``: read bundles even when classic signatures suffice (inspect)."""
        reads = self._signature_reads(registry, repository)
        policy = rule.policy
        sig_manifest, blobs, rejected = await self._classic(reads, digest)
        classic = FetchedSignatures(sig_manifest=sig_manifest, blobs=blobs)
        verified, more = await self._verify(policy, digest, classic, now)
        verdict = evaluate(
            policy,
            repository=repository,
            digest=digest,
            signatures=verified,
            rejected=[*rejected, *more],
        )
        if verdict.accepted and not rule.attestations and not everything:
            return verdict, []
        bundles, bundle_rejected = await self._bundles(reads, digest)
        fetched = FetchedSignatures(bundles=bundles)
        b_verified, b_rejected = await self._verify(policy, digest, fetched, now)
        verdict = evaluate(
            policy,
            repository=repository,
            digest=digest,
            signatures=[*verified, *b_verified],
            rejected=[*rejected, *more, *bundle_rejected, *_relevant(b_rejected)],
        )
        attestations: list[tuple[str, Verdict]] = []
        for predicate_type in rule.attestations:
            a_verified, a_rejected = await self._verify(
                policy, digest, fetched, now, frozenset({predicate_type})
            )
            attestations.append(
                (
                    predicate_type,
                    evaluate(
                        policy,
                        repository=repository,
                        digest=digest,
                        signatures=a_verified,
                        rejected=_relevant(a_rejected),
                    ),
                )
            )
        return verdict, attestations

    async def _verify(
        self,
        policy: CosignPolicy,
        digest: str,
        fetched: FetchedSignatures,
        now: datetime,
        predicate_types: frozenset[str] = frozenset({COSIGN_SIGN_PREDICATE}),
    ) -> tuple[list[VerifiedSignature], list[Rejected]]:
        """The core's verification, on a worker thread: a certificate chain, SCT and log
        entry cost milliseconds of CPU per signature, which must not stall the event loop
        (other requests, a listing's other tags)."""
        if fetched.sig_manifest is None and not fetched.bundles:
            return [], []
        return await asyncio.to_thread(
            functools.partial(
                self._verifier.signatures,
                policy,
                digest=digest,
                fetched=fetched,
                now=now,
                predicate_types=predicate_types,
            )
        )

    def _signature_reads(self, registry: RegistryReads, repository: str) -> RegistryReads:
        where = self._signature_repository
        if where is None or where == repository:
            return registry
        if not isinstance(registry, RepositoryReads):
            raise TrustSourceUnavailableError(
                self._source, f"cannot read the signature repository {where} here"
            )
        other = registry.for_repository(where)
        if other is None:
            raise TrustSourceUnavailableError(
                self._source,
                f"signature repository {where} is not on the upstream of {repository}",
            )
        return other

    async def _classic(
        self, reads: RegistryReads, digest: str
    ) -> tuple[bytes | None, dict[str, bytes], list[Rejected]]:
        """The ``.sig`` manifest and its payload blobs (bounded), and read failures."""
        try:
            tagged = await reads.manifest_by_tag(signature_tag(digest))
        except BadDataError as e:  # oversized: a hostile signature manifest
            return None, {}, [Rejected("signature manifest", _reason(e))]
        if tagged is None:
            return None, {}, []
        try:
            layers = parse_sig_manifest(tagged.body, self._limits)
        except BadDataError:
            # verify_classic parses it again and words the refusal.
            return tagged.body, {}, []
        wanted = {layer.digest for layer in layers}
        rejected: list[Rejected] = []
        blobs: dict[str, bytes] = {}

        async def read(blob_digest: str) -> None:
            try:
                data = await reads.blob(blob_digest, self._limits.max_payload_bytes)
            except BadDataError as e:
                rejected.append(Rejected(f"payload {blob_digest[:19]}…", _reason(e)))
                return
            if data is not None:
                blobs[blob_digest] = data

        await asyncio.gather(*(read(d) for d in sorted(wanted)))
        return tagged.body, blobs, rejected

    async def _bundles(
        self, reads: RegistryReads, digest: str
    ) -> tuple[list[tuple[str, bytes]], list[Rejected]]:
        """Each bundle referrer's bundle blob (bounded), and read failures."""
        descriptors = await reads.referrers(digest)
        wanted = [d for d in descriptors if d.get("artifactType") in BUNDLE_MEDIA_TYPES]
        if not wanted:
            return [], []
        try:
            # The core's parser validates the descriptors and bounds their number.
            refs = bundle_referrers(
                json.dumps({"schemaVersion": 2, "manifests": wanted}).encode(),
                max_referrers=self._max_referrers,
            )
        except BadDataError as e:
            return [], [Rejected("referrers", _reason(e))]
        rejected: list[Rejected] = []
        found: dict[str, bytes] = {}

        async def read(ref: BundleRef) -> None:
            where = f"bundle {ref.digest}"
            try:
                manifest = await reads.manifest(ref.digest)
                if manifest is None:
                    rejected.append(Rejected(where, "referrer manifest not available"))
                    return
                layer = bundle_layer(manifest, digest=digest)
                data = await reads.blob(layer.digest, layer.size)
            except BadDataError as e:
                rejected.append(Rejected(where, _reason(e)))
                return
            if data is None:
                rejected.append(Rejected(where, "bundle blob not available"))
                return
            found[ref.digest] = data

        await asyncio.gather(*(read(ref) for ref in refs))
        # Referrer order as listed (stable reasons and evidence).
        return [(r.digest, found[r.digest]) for r in refs if r.digest in found], rejected


def answer(verdict: Verdict, attestations: Sequence[tuple[str, Verdict]] = ()) -> DigestSigned:
    """The :class:`DigestSigned` for an accepted verdict: signers as people name them and the
    audit evidence (key IDs, identities, log indexes)."""
    signers: list[str] = []
    key_ids: list[str] = []
    identities: list[str] = []
    log_indexes: list[int] = []
    layouts: list[str] = []
    for sig in verdict.signatures:
        who = describe_signature(sig)
        if who not in signers:
            signers.append(who)
        if isinstance(sig.signer, KeySigner) and sig.signer.key_id not in key_ids:
            key_ids.append(sig.signer.key_id)
        if isinstance(sig.signer, CertSigner):
            identity = sig.signer.identity
            text = f"{', '.join(identity.sans)} (issuer {identity.issuer or 'none'})"
            if text not in identities:
                identities.append(text)
        if sig.log_entry is not None and sig.log_entry.log_index not in log_indexes:
            log_indexes.append(sig.log_entry.log_index)
        if sig.layout not in layouts:
            layouts.append(sig.layout)
    evidence: dict[str, Any] = {
        "key_ids": key_ids,
        "identities": identities,
        "log_indexes": log_indexes,
        "authorities": list(verdict.satisfied),
        "layouts": layouts,
    }
    if attestations:
        evidence["attestations"] = [t for t, _ in attestations]
    return DigestSigned(verdict.digest, None, tuple(signers), evidence)


def _relevant(rejected: Sequence[Rejected]) -> list[Rejected]:
    """Refusals worth telling: a bundle of another predicate type (an attestation beside a
    signature) is no failure, just not what was looked for."""
    return [r for r in rejected if "is not accepted here" not in r.reason]


def _reason(e: BadDataError) -> str:
    detail = getattr(e, "detail", None)
    return detail if isinstance(detail, str) else str(e)
