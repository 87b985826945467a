"""The policy model (pure, frozen). The YAML shape lives in ``loader.py``; this is what it
means. Public contract for the enforcement layer and ``policy explain``.

Semantics (documented in the README, enforced by the loader):
- A rule applies to repositories whose ``<registry>/<repo>`` matches its pattern; patterns
  are anchored globs where ``*`` matches within one path segment and ``**`` across
  segments; the most specific matching pattern wins (see ``matcher.py``).
- ``mode``: ``enforce`` serves only signed tags at their signed digest; ``audit`` serves
  what enforce would serve where it can, otherwise passes through, and records what enforce
  would have denied; ``off`` passes through. ``require_signatures: false`` means ``off``.
- ``signers`` empty: Docker's rule (``targets/releases``, then ``targets``). Otherwise every
  *required* signer must sign the tag at one digest with at least its threshold of distinct
  valid keys; an optional signer that signs the tag at another digest makes it refused
  (signers that disagree are never resolved by picking one).
- ``tag_patterns``: globs a tag must match to be served at all (empty: any tag).
- ``expiry_grace``: when the trust server cannot be reached, cached verified data is served
  up to this long past its expiry (zero: never past expiry).
- ``digests``: pulls by digest — ``allow`` (Docker's behaviour) or ``signed`` (only signed
  targets and manifests listed in a signed index / manifest list).
- No rule matches: the repository is refused (fail closed), with a reason saying so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Literal

from proxy.sources.notary.tuf import RootOfTrust

Mode = Literal["enforce", "audit", "off"]
DigestMode = Literal["allow", "signed"]


@dataclass(frozen=True)
class SignerRequirement:
    role: str  # full role name: "targets/security-team" (YAML "security-team"), or "targets"
    required: bool = True
    threshold: int = 1  # distinct valid keys of this role that must sign


@dataclass(frozen=True)
class RepositoryRule:
    pattern: str  # as written in the policy, e.g. "registry.example.com/myorg/*"
    mode: Mode
    source: str | None = None  # a trust.sources name from the main config
    root_of_trust: RootOfTrust | None = None  # required when mode != "off"
    signers: tuple[SignerRequirement, ...] = ()
    tag_patterns: tuple[str, ...] = ()
    expiry_grace: timedelta = timedelta(0)
    digests: DigestMode = "allow"
    allow_expired_root_cert: bool = False  # legacy repositories; logged on every use
    path: str = ""  # where it was defined: "trust.repositories['registry.example.com/myorg/*']"

    @property
    def enforced(self) -> bool:
        return self.mode != "off"


@dataclass(frozen=True)
class Policy:
    rules: tuple[RepositoryRule, ...]
    source_file: Path | None = None
    version: str = "2.0"
    warnings: tuple[str, ...] = field(default=())
