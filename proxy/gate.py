"""The trust hook: the one place that decides what a client may see under a tag.

Every manifest request by tag (GET and HEAD alike: containerd resolves tags with HEAD) and
every tag list goes through a ``TrustGate``. Until enforcement is configured the proxy runs
with ``PassThroughGate``; the enforcing gate answers ``ServeDigest`` (serve exactly the
signed digest) or raises NotSignedError / TrustSourceUnavailableError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from proxy.routing import Route


@dataclass(frozen=True)
class ServeDigest:
    """Serve the manifest whose bytes hash to ``digest`` (and are ``length`` long, if known)."""

    digest: str
    length: int | None = None
    signers: tuple[str, ...] = ()  # roles/key IDs, for logs


@dataclass(frozen=True)
class PassThrough:
    """Serve what the upstream has under the tag, unchecked (no enforcement applies)."""

    reason: str


TagDecision = ServeDigest | PassThrough


class TrustGate(Protocol):
    async def decide_tag(self, route: Route, tag: str) -> TagDecision:
        """Which manifest to serve for ``tag``.

        Raises NotSignedError (404) or TrustSourceUnavailableError (503); never returns
        PassThrough for an enforced repository.
        """
        ...

    async def filter_tags(self, route: Route, tags: list[str]) -> list[str]:
        """The subset of ``tags`` a client may see. Same errors as decide_tag."""
        ...


class PassThroughGate:
    """No enforcement: what the proxy does before a policy exists."""

    async def decide_tag(self, route: Route, tag: str) -> TagDecision:
        return PassThrough("no enforcement configured")

    async def filter_tags(self, route: Route, tags: list[str]) -> list[str]:
        return tags
