"""The trust hook: the one place that decides what a client may see.

Every manifest request by tag (GET and HEAD alike: containerd resolves tags with HEAD),
every manifest request by digest, and every tag list goes through a ``TrustGate``. Until
enforcement is configured the proxy runs with ``PassThroughGate``; the enforcing gate
(``proxy/enforcement``) answers ``ServeDigest`` (serve exactly the signed digest) or raises
NotSignedError (404) / TrustSourceUnavailableError (503). Blobs are not gated: they are
content-addressed and only reachable through a manifest that was.

The handler hands the gate a :class:`RequestContext`: who asked (for the audit record) and a
registry reader as that client (:class:`~proxy.sources.base.RegistryReads`), for the gate's
own checks (the children of a signed index under ``digests: signed``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from proxy.routing import Route
from proxy.sources.base import RegistryReads

#: ``fetch(digest)`` -> the manifest bytes whose hash is ``digest`` (verified by the
#: handler, bounded by ``limits.manifest_max_bytes``), or None when the upstream does not
#: have it. Raises UpstreamContentError (bytes do not match) or UpstreamUnavailableError.
FetchVerifiedManifest = Callable[[str], Awaitable[bytes | None]]


@dataclass(frozen=True)
class RequestContext:
    """Who is asking, for the audit record, and what the gate may fetch on their behalf."""

    client: str | None = None  # client address
    user_agent: str | None = None
    user: str | None = None  # the proxy user (client auth), if any
    method: str | None = None  # GET / HEAD
    #: the registry as this client (proxy/upstream/reader.py), for the gate's own reads
    registry: RegistryReads | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ServeDigest:
    """Serve the manifest whose bytes hash to ``digest`` (and are ``length`` long, if known)."""

    digest: str
    length: int | None = None
    signers: tuple[str, ...] = ()  # who signed (as the source names them), for logs


@dataclass(frozen=True)
class PassThrough:
    """Serve what the upstream has under the tag, unchecked (no enforcement applies)."""

    reason: str


TagDecision = ServeDigest | PassThrough
#: Listings of a repository that the gate admits before the upstream is asked.
ListingKind = Literal["tags", "referrers"]


class TrustGate(Protocol):
    async def decide_tag(self, route: Route, tag: str, ctx: RequestContext) -> TagDecision:
        """Which manifest to serve for ``tag``.

        Raises NotSignedError (404) or TrustSourceUnavailableError (503); never returns
        PassThrough for an enforced repository.
        """
        ...

    async def decide_digest(self, route: Route, digest: str, ctx: RequestContext) -> None:
        """Whether a pull by ``digest`` may be served; returns None when it may.

        Raises NotSignedError (404) or TrustSourceUnavailableError (503), or what
        ``ctx.registry`` raises (never allows on an error).
        """
        ...

    async def filter_tags(self, route: Route, tags: list[str], ctx: RequestContext) -> list[str]:
        """The subset of ``tags`` a client may see. Same errors as decide_tag."""
        ...

    async def admit_listing(
        self, route: Route, kind: ListingKind, reference: str, ctx: RequestContext
    ) -> bool:
        """Whether the upstream may be asked for a listing of ``route``'s repository at all
        (``reference``: the subject digest of referrers, "" for tags), asked before it is.
        False (recorded as a refusal): no policy covers the repository, and the caller
        answers an empty listing without asking the upstream (fail closed: nothing the
        upstream says about it, not even its errors, reaches the client).

        Raises TrustSourceUnavailableError (503) when the gate cannot decide anything.
        """
        ...

    def report_mismatch(
        self, route: Route, tag: str, expected: str, actual: str, ctx: RequestContext
    ) -> None:
        """The upstream sent bytes for a signed digest that hash to something else.

        The handler answers 502, logs the alert and counts the upstream error; the gate
        records the decision (it knows the rule). Must not raise.
        """
        ...


@runtime_checkable
class FallbackReport(Protocol):
    """A gate that can say which repositories its policy rules' fallbacks answer for
    (``/readyz``'s ``fallback``)."""

    def fallback_repositories(self) -> dict[str, dict[str, str]]:
        """Repository -> fallback, primary, cause, reason, since."""
        ...


class PassThroughGate:
    """No enforcement: what the proxy does before a policy exists."""

    async def decide_tag(self, route: Route, tag: str, ctx: RequestContext) -> TagDecision:
        return PassThrough("no enforcement configured")

    async def decide_digest(self, route: Route, digest: str, ctx: RequestContext) -> None:
        return None

    async def filter_tags(self, route: Route, tags: list[str], ctx: RequestContext) -> list[str]:
        return tags

    async def admit_listing(
        self, route: Route, kind: ListingKind, reference: str, ctx: RequestContext
    ) -> bool:
        return True

    def report_mismatch(
        self, route: Route, tag: str, expected: str, actual: str, ctx: RequestContext
    ) -> None:
        return None
