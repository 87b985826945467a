"""The policy model (pure, frozen). The YAML shape lives in ``loader.py``; this is what it
means. Public contract for the enforcement layer and ``policy explain``.

Semantics (documented in the README, enforced by the loader):
- A rule applies to repositories whose ``<registry>/<repo>`` matches its pattern; patterns
  are anchored globs where ``*`` matches within one path segment and ``**`` across
  segments; the most specific matching pattern wins (see ``matcher.py``).
- ``mode``: ``enforce`` serves only signed tags at their signed digest; ``audit`` serves
  what enforce would serve where it can, otherwise passes through, and records what enforce
  would have denied; ``off`` passes through. ``require_signatures: false`` means ``off``.
- ``verification``: whose signatures count, read by the source type of the rule's
  ``source`` (``proxy/sources/<type>/``, through the source registry).
- ``tag_patterns``: globs a tag must match to be served at all (empty: any tag).
- ``expiry_grace``: when the trust server cannot be reached, cached verified data is served
  up to this long past its expiry (zero: never past expiry).
- ``fallback``: another trust source (a signed trust snapshot) answering for the rule's
  repositories only when its own source has no trust data for a repository or cannot be
  reached past its expiry grace; never when it says "not signed" or its data is bad.
- ``digests``: pulls by digest — ``allow`` (Docker's behaviour) or ``signed`` (only signed
  targets and manifests listed in a signed index / manifest list).
- No rule matches: the repository is refused (fail closed), with a reason saying so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from proxy.sources.base import SourceRule

Mode = Literal["enforce", "audit", "off"]
DigestMode = Literal["allow", "signed"]


class Verification(Protocol):
    """The verification part of a rule: whose signatures count. Parsed by the rule's source
    type (proxy/sources/registry.py), opaque here; hashable (gates key caches on rules)."""

    def signing_rule(self, expiry_grace: timedelta) -> SourceRule:
        """What the rule's trust source applies."""
        ...

    def explain(self) -> list[str]:
        """``policy explain`` lines."""
        ...

    def summary(self) -> list[str]:
        """``policy check`` one-line parts."""
        ...


@dataclass(frozen=True)
class RepositoryRule:
    pattern: str  # as written in the policy, e.g. "registry.example.com/myorg/*"
    mode: Mode
    source: str | None = None  # a trust.sources name from the main config
    # whose signatures count, as the source's type reads it; required when mode != "off"
    verification: Verification | None = None
    tag_patterns: tuple[str, ...] = ()
    expiry_grace: timedelta = timedelta(0)
    digests: DigestMode = "allow"
    #: a trust.sources name answering when ``source`` has no trust data or is unreachable
    fallback: str | None = None
    #: its verification part, read by the fallback's type (None: not known, fails closed)
    fallback_verification: Verification | None = None
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
