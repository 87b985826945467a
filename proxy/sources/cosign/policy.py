"""Whose cosign signatures count: authorities, a threshold, the tlog requirement, and the
repository the signer must have named. Pure: verified facts in, a :class:`Verdict` out.

Shape (sigstore-python ``verify.policy``, peers' field names, ``../cosign-format`` §9):

- an **authority** is a key (:class:`KeyAuthority`) or a keyless identity
  (:class:`KeylessAuthority`: subject and issuer, each exact or a regular expression);
- ``threshold`` distinct authorities must each have at least one acceptable signature
  (Kyverno ``count``, Connaisseur ``threshold``); 1 means "any one passes", as in
  policy-controller's ``authorities``;
- ``tlog: required`` (default, as every peer's ``tlog``/``ctlog`` default) counts only
  signatures with a verified Rekor entry; ``optional`` counts the others too;
- the signed **reference** (simple-signing ``docker-reference``, in-toto subject name) must
  name the repository being served, or match a ``remap`` (containers/image
  ``signedIdentity: remapIdentity``): ``(prefix, signed_prefix)`` accepts a signature for
  ``signed_prefix/x`` on ``prefix/x``. cosign itself does not check it; containers/image
  does (``matchRepoDigestOrExact``). We do, so a signature for ``myorg/debug-tools`` does
  not admit the same digest under ``myorg/app``. Formats without a reference (cosign 3
  bundles carry only digests) are bound to the repository by where they were found.

Regular expressions are matched unanchored (``re.search``), as Go's ``regexp.MatchString``
in cosign ``--certificate-identity-regexp`` and policy-controller ``subjectRegExp``; anchor
them (``^…$``) for exact semantics.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from proxy.sources.cosign.facts import CertSigner, KeySigner, Rejected, VerifiedSignature
from proxy.sources.cosign.keys import VerifyingKey

__all__ = [
    "Authority",
    "CosignPolicy",
    "KeyAuthority",
    "KeylessAuthority",
    "Match",
    "Verdict",
    "evaluate",
]

TlogMode = Literal["required", "optional"]
TLOG_MODES: Final = ("required", "optional")


@dataclass(frozen=True)
class Match:
    """An exact string or a regular expression (searched, see the module docstring)."""

    exact: str | None = None
    regexp: re.Pattern[str] | None = None

    def __post_init__(self) -> None:
        if (self.exact is None) == (self.regexp is None):
            raise ValueError("give exactly one of exact and regexp")

    def matches(self, value: str) -> bool:
        if self.exact is not None:
            return value == self.exact
        return self.regexp is not None and self.regexp.search(value) is not None

    def __str__(self) -> str:
        return (
            self.exact
            if self.exact is not None
            else f"/{self.regexp.pattern if self.regexp else ''}/"
        )


@dataclass(frozen=True)
class KeyAuthority:
    """Signatures made with this key."""

    key: VerifyingKey
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or f"key {self.key.key_id[:12]}…"

    def accepts(self, signature: VerifiedSignature) -> bool:
        return isinstance(signature.signer, KeySigner) and (
            signature.signer.key_id == self.key.key_id
        )


@dataclass(frozen=True)
class KeylessAuthority:
    """Signatures made with a Fulcio certificate for this subject (any SAN) and issuer."""

    subject: Match
    issuer: Match
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or f"identity {self.subject} (issuer {self.issuer})"

    def accepts(self, signature: VerifiedSignature) -> bool:
        if not isinstance(signature.signer, CertSigner):
            return False
        identity = signature.signer.identity
        return self.issuer.matches(identity.issuer) and any(
            self.subject.matches(san) for san in identity.sans
        )


Authority = KeyAuthority | KeylessAuthority


@dataclass(frozen=True)
class CosignPolicy:
    """A rule's cosign verification part (see the module docstring)."""

    authorities: tuple[Authority, ...]
    threshold: int = 1
    tlog: TlogMode = "required"
    #: (served prefix, signed prefix) pairs, normalised ``registry/path``
    remap: tuple[tuple[str, str], ...] = ()
    #: the rule's name in messages (its scope pattern)
    rule: str = ""

    def __post_init__(self) -> None:
        if not self.authorities:
            raise ValueError("a cosign policy needs at least one authority")
        if not 1 <= self.threshold <= len(self.authorities):
            raise ValueError("threshold must be between 1 and the number of authorities")
        if self.tlog not in TLOG_MODES:
            raise ValueError(f"tlog must be one of {TLOG_MODES}")

    @property
    def keys(self) -> tuple[VerifyingKey, ...]:
        """The keys verifiers should try."""
        return tuple(a.key for a in self.authorities if isinstance(a, KeyAuthority))

    def reference_ok(self, reference: str | None, repository: str) -> bool:
        """Whether a signature naming ``reference`` may vouch for ``repository``."""
        if reference is None or reference == repository:
            return True
        for prefix, signed_prefix in self.remap:
            if _under(repository, prefix) and (
                reference == signed_prefix + repository[len(prefix) :]
            ):
                return True
        return False


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix.rstrip("/") + "/")


@dataclass(frozen=True)
class Verdict:
    """The policy's answer for one digest."""

    accepted: bool
    digest: str
    #: labels of the authorities that have an acceptable signature, in rule order
    satisfied: tuple[str, ...]
    #: the acceptable signatures (for audit: signer, key ID or identity, log index)
    signatures: tuple[VerifiedSignature, ...]
    #: why, in words a user reads (first = the headline)
    reasons: tuple[str, ...] = field(default=())

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def evaluate(
    policy: CosignPolicy,
    *,
    repository: str,
    digest: str,
    signatures: Sequence[VerifiedSignature],
    rejected: Sequence[Rejected] = (),
) -> Verdict:
    """Judge verified signatures of ``digest`` served as ``repository`` (normalised
    ``registry/path``). Never raises for untrusted data: the verdict says why not."""
    notes: list[str] = []
    counted: list[VerifiedSignature] = []
    satisfied: list[str] = []
    for sig in signatures:
        who = sig.signer.describe()
        if sig.digest != digest:
            notes.append(f"signature by {who} is for {sig.digest}")
            continue
        if not policy.reference_ok(sig.reference, repository):
            notes.append(f"signature by {who} is for {sig.reference}")
            continue
        if policy.tlog == "required" and sig.log_entry is None:
            notes.append(f"signature by {who} has no verified transparency-log entry")
            continue
        matched = [a.label for a in policy.authorities if a.accepts(sig)]
        if not matched:
            notes.append(f"signed by {who}, which is no authority of the rule")
            continue
        counted.append(sig)
        for label in matched:
            if label not in satisfied:
                satisfied.append(label)
    # Rule order for a stable message and audit record.
    ordered = tuple(a.label for a in policy.authorities if a.label in satisfied)
    notes.extend(f"{r.origin}: {r.reason}" for r in rejected)
    if len(ordered) >= policy.threshold:
        return Verdict(True, digest, ordered, tuple(counted), ())
    rule = f" of rule {policy.rule}" if policy.rule else ""
    if ordered:
        headline = (
            f"signed by {', '.join(ordered)} but the rule needs {policy.threshold} authorities"
        )
    else:
        headline = f"no cosign signature for {digest} by any authority{rule}"
    return Verdict(False, digest, ordered, tuple(counted), (headline, *notes[:8]))
