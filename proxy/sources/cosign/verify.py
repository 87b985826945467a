"""One pure walk from everything fetched for a digest to the policy's verdict.

The source (the shell) fetches, bounded: the ``.sig`` manifest and its layer blobs, and
each bundle referrer's bundle blob; this module verifies them all with one trusted root and
judges them with one policy. Bad signature data never raises out of here: it becomes a
reason in the verdict (one bad signer must not hide another's valid signature, and must
never count).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from proxy.errors import BadDataError
from proxy.sources.cosign.bundle import COSIGN_SIGN_PREDICATE, BundleVerifier
from proxy.sources.cosign.classic import ClassicLimits, verify_classic
from proxy.sources.cosign.facts import Rejected, VerifiedSignature
from proxy.sources.cosign.policy import CosignPolicy, Verdict, evaluate
from proxy.sources.cosign.trusted_root import TrustedRoot

__all__ = ["CosignVerifier", "FetchedSignatures"]


@dataclass(frozen=True)
class FetchedSignatures:
    """What the shell fetched for one image digest."""

    #: the ``sha256-<hex>.sig`` manifest, None when the tag does not exist
    sig_manifest: bytes | None = None
    #: its layer blobs, by digest
    blobs: Mapping[str, bytes] = field(default_factory=dict)
    #: bundle blobs, as (referrer manifest digest, bytes)
    bundles: Sequence[tuple[str, bytes]] = ()


class CosignVerifier:
    """Verifies fetched signatures of a digest under a policy (pure, reusable per root)."""

    def __init__(
        self,
        root: TrustedRoot | None,
        *,
        require_sct: bool = True,
        limits: ClassicLimits | None = None,
    ) -> None:
        self._root = root
        self._require_sct = require_sct
        self._limits = limits or ClassicLimits()
        self._bundles = BundleVerifier(root)

    def signatures(
        self,
        policy: CosignPolicy,
        *,
        digest: str,
        fetched: FetchedSignatures,
        now: datetime,
        predicate_types: frozenset[str] = frozenset({COSIGN_SIGN_PREDICATE}),
    ) -> tuple[list[VerifiedSignature], list[Rejected]]:
        """Every signature that verifies for ``digest``, and why the others did not."""
        verified: list[VerifiedSignature] = []
        rejected: list[Rejected] = []
        if fetched.sig_manifest is not None:
            try:
                result = verify_classic(
                    fetched.sig_manifest,
                    fetched.blobs,
                    digest=digest,
                    keys=policy.keys,
                    root=self._root,
                    now=now,
                    require_sct=self._require_sct,
                    limits=self._limits,
                )
            except BadDataError as e:
                rejected.append(Rejected("signature manifest", _reason(e)))
            else:
                verified.extend(result.verified)
                rejected.extend(result.rejected)
        for origin, data in fetched.bundles:
            where = f"bundle {origin}"
            try:
                verified.append(
                    self._bundles.verify_image(
                        data,
                        digest=digest,
                        keys=policy.keys,
                        predicate_types=predicate_types,
                        origin=where,
                    )
                )
            except BadDataError as e:
                rejected.append(Rejected(where, _reason(e)))
        return verified, rejected

    def judge(
        self,
        policy: CosignPolicy,
        *,
        repository: str,
        digest: str,
        fetched: FetchedSignatures,
        now: datetime,
    ) -> Verdict:
        """The verdict for ``digest`` served as ``repository`` (normalised)."""
        verified, rejected = self.signatures(policy, digest=digest, fetched=fetched, now=now)
        return evaluate(
            policy, repository=repository, digest=digest, signatures=verified, rejected=rejected
        )


def _reason(e: BadDataError) -> str:
    detail = getattr(e, "detail", None)
    return detail if isinstance(detail, str) else str(e)
