"""The trust-source interface: "which digest is this tag signed at, and by whom?".

Every trust source (one package under ``proxy/sources/<type>/``, one registry entry)
implements :class:`TrustSource`. The enforcement layer builds its policy on four outcomes::

    resolve(repository, tag, rule) -> SignedAnswer   the tag is signed: pull by this digest
                            raises NotSignedError    the tag is not signed under the rule
                                   └── NoTrustDataError   the repository has no trust data
                            raises TrustSourceUnavailableError  could not fetch, nothing
                                                     valid cached (the proxy answers 503)
                            raises TrustDataError    the trust data is bad (never trusted)

``rule`` is a :data:`SourceRule`: what the source's type made of a policy rule's
verification part, opaque here, hashable so sources may key caches on it. A
``SignedAnswer`` carries the digest, its length when known, who signed (display strings)
and the source's evidence for the audit record; ``TrustInfo`` an opaque key of the trust
state. ``NotSignedError`` subclasses of a source say *why* in its users' words (the
enforcement layer shows ``str(error)`` to clients).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from proxy.errors import NotSignedError, TrustDataError, TrustSourceUnavailableError

__all__ = [
    "Evidence",
    "Invalidatable",
    "ManifestPrefetch",
    "NoTrustDataError",
    "NotSignedError",
    "RegistryReads",
    "SignedAnswer",
    "SignedState",
    "SourceRule",
    "TaggedManifest",
    "TrustDataError",
    "TrustInfo",
    "TrustSource",
    "TrustSourceUnavailableError",
]


class NoTrustDataError(NotSignedError):
    """The source has no trust data for the repository at all (a trust server's 404, no
    entry in a pins file).

    A distinct outcome, not an error page: the repository was never signed, or its trust
    data was deleted. The message is the one Docker users recognise.
    """

    def __init__(self, server: str, repository: str) -> None:
        self.server = server
        self.repository = repository
        super().__init__(f"{server} does not have trust data for {repository}")


#: What a source's type made of a policy rule's verification part: opaque outside the
#: source's package, hashable (caches key on it).
SourceRule = Any

#: Per-source facts behind an answer, for the audit record (JSON-able values: which keys
#: signed, which versions of the trust data). Never read for a decision.
Evidence = Mapping[str, Any]


class SignedAnswer(Protocol):
    """A tag as signed, as every source answers it."""

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of the manifest bytes the signatures vouch for."""
        ...

    @property
    def length(self) -> int | None:
        """Their length, when the signature says."""
        ...

    @property
    def signers(self) -> tuple[str, ...]:
        """Who signed, as people name them (roles, identities), for reasons and logs."""
        ...

    @property
    def evidence(self) -> Evidence: ...


@dataclass(frozen=True)
class TaggedManifest:
    """A manifest read by tag: its bytes and the digest they hash to (computed on read)."""

    digest: str
    body: bytes


class RegistryReads(Protocol):
    """What a trust source (and the gate) may read from the registry, for one request, as
    the requesting client (proxy/upstream/reader.py). Every read is bounded; reads by
    digest are hash-checked. Raises UpstreamUnavailableError / UpstreamContentError /
    OversizeError; what it returns is untrusted input."""

    async def manifest(self, digest: str) -> bytes | None:
        """The manifest whose bytes hash to ``digest`` (None: the upstream has none)."""
        ...

    async def manifest_by_tag(self, tag: str) -> TaggedManifest | None: ...

    async def head_tag(self, tag: str) -> str | None:
        """The digest the upstream says ``tag`` names (a hint, never evidence)."""
        ...

    async def referrers(self, digest: str) -> list[Mapping[str, Any]]:
        """Descriptors referring to ``digest`` (referrers API, else the tag schema)."""
        ...

    async def blob(self, digest: str, max_bytes: int) -> bytes | None: ...


@runtime_checkable
class ManifestPrefetch(Protocol):
    """A :class:`RegistryReads` that can start reading a manifest before it is asked for:
    a source that verifies the digest of a tag before it has finished its own work (a
    Notary refresh still writes its rollback floors and the stored state) starts the read
    the request will make right after, so the two overlap. Nothing is served from it: the
    request's own read joins the one in flight (or finds its verified bytes cached) and
    checks the bytes against the signed digest and length as always."""

    def prefetch_manifest(self, digest: str, *, tag: str) -> None:
        """Start reading the manifest under ``digest`` (the signed digest of ``tag``)
        unless it is cached or being read; never raises, never waits."""
        ...


@dataclass(frozen=True)
class TrustInfo:
    """What a source's last answer for a repository was based on (for audit records and
    as a cache key: ``key`` changes whenever the trust data does)."""

    #: an opaque, hashable identity of the trust state (equal states, equal keys)
    state_key: Hashable = ()
    #: the facts of that state for the audit record (versions of the trust data)
    evidence: Evidence = field(default_factory=lambda: MappingProxyType({}))
    #: served from cache past a failed refresh (possibly within ``expiry_grace``)
    stale: bool = False

    @property
    def key(self) -> Hashable:
        """A hashable identity of the trust state."""
        return self.state_key


@dataclass(frozen=True)
class SignedState:
    """Every acceptable tag and the trust state they come from, read together.

    One snapshot: a refresh can land at any ``await``, so ``signed_tags()`` followed by
    ``trust_info()`` may describe two different states (the tags of the old one under the
    key of the new one). Whatever is cached by ``info.key`` must come from here.
    """

    #: every tag acceptable under the rule, by tag
    tags: Mapping[str, SignedAnswer]
    info: TrustInfo
    #: digests acceptable apart from any tag (pulls by digest under ``digests: signed``)
    digests: frozenset[str] = frozenset()


class TrustSource(Protocol):
    """A source of signatures for tags. Implementations are safe for concurrent use from
    one event loop; ``aclose`` releases connections."""

    @property
    def name(self) -> str: ...

    async def resolve(
        self,
        repository: str,
        tag: str,
        rule: SourceRule,
        /,
        *,
        registry: RegistryReads | None = None,
    ) -> SignedAnswer:
        """The signed target of ``tag`` in ``repository`` under ``rule``.

        ``registry`` is the registry as the requesting client: a source whose signatures
        live in the registry (Cosign, Notation) reads them through it, with that client's
        credentials. None when no request is being served (a CLI command): such a source
        then raises TrustSourceUnavailableError unless it was built with a reader of its own.

        Raises:
            NotSignedError: not signed under the rule (``NoTrustDataError``: no trust data).
            TrustSourceUnavailableError: could not fetch and nothing valid is cached.
            TrustDataError: the trust data failed verification.
        """
        ...

    async def signed_tags(
        self,
        repository: str,
        rule: SourceRule,
        /,
        *,
        registry: RegistryReads | None = None,
        tags: Sequence[str] | None = None,
    ) -> Mapping[str, SignedAnswer]:
        """Every tag acceptable under ``rule``, by tag (for a filtered tag list).

        ``tags``: the tags the caller asks about (the upstream's listing). A source whose
        trust data names every signed tag (a signed tag list, static pins) may answer all of its own
        and ignore it; a source that judges tags one at a time (signatures on digests)
        answers among these only, and among the tags it remembers when None.

        Raises: as :meth:`resolve`, except that an unsigned tag is simply absent.
        """
        ...

    async def trust_info(self, repository: str, rule: SourceRule, /) -> TrustInfo:
        """What :meth:`resolve` / :meth:`signed_tags` under ``rule`` answer from right now
        (cheap right after either: no network when the state is cached). For audit records
        only: it may already describe a newer state than the call before it.

        Raises: as :meth:`resolve`.
        """
        ...

    async def signed_state(
        self,
        repository: str,
        rule: SourceRule,
        /,
        *,
        registry: RegistryReads | None = None,
        tags: Sequence[str] | None = None,
        digests: Sequence[str] = (),
    ) -> SignedState:
        """:meth:`signed_tags` and :meth:`trust_info` of one and the same trust state (one
        load): what anything keyed by the trust state must be built from.

        ``registry`` and ``tags`` as for :meth:`signed_tags`. ``digests``: digests the
        caller asks about (a pull by digest); a source that judges digests one at a time
        puts those whose signatures verify into ``SignedState.digests``.

        Raises: as :meth:`signed_tags`.
        """
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Invalidatable(Protocol):
    """An optional capability of a :class:`TrustSource`: forget what is cached for a
    repository, because its trust data changed (a trust server's change feed said so,
    ``proxy/sources/invalidation.py``). A source without it keeps its refresh interval.

    Only ever a reason to refetch: the next answer comes from the trust data fetched and
    verified again, and whatever protects against rollbacks (version floors) stays.
    """

    def invalidate(self, repository: str | None, version: int | None = None, /) -> None:
        """Make the next request for ``repository`` (None: every repository) refresh.

        ``version``: the version of the trust data the change made, when the feed says
        (Notary: the timestamp's); a source that holds that version or a later one,
        verified, may keep it. Untrusted like the feed: a wrong one can only leave the
        refresh interval in force."""
        ...
