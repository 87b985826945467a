"""Build the gate ``serve`` runs with, from settings and a loaded policy.

::

    enforcement = build_enforcement(settings, policy, recorder=recorder)
    app_state.gate = enforcement.gate          # PassThroughGate when policy is None
    ...
    await enforcement.aclose()                 # closes the trust sources' connections

With ``cache.redis_url`` the sources keep their trust state in Redis (one connection pool
per process, shared by every source, each under its own key namespace), else in memory.

A configured policy that cannot be loaded at startup is :class:`FailClosedGate`: every
manifest, digest and tag-list decision is a 503 naming the reason, until a reload fixes it.
A trust source that cannot be built (its ``ca_file`` is missing, say) becomes an
:class:`UnavailableSource`: the repositories that use it get 503s, the others are served.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from proxy.decisions import Decision, DecisionRecorder, NullRecorder
from proxy.enforcement.gate import (
    Clock,
    EnforcingGate,
    MatchRule,
    TagAllowed,
    rfc3339,
    utc_now,
)
from proxy.errors import FetchError, TrustSourceUnavailableError
from proxy.gate import ListingKind, PassThroughGate, RequestContext, TagDecision, TrustGate
from proxy.policy.model import Policy
from proxy.routing import Route
from proxy.settings import CacheSettings, Settings
from proxy.sources.base import SignedState, SignedTarget, SigningRule, TrustInfo, TrustSource
from proxy.sources.notary import NotarySource, NotarySourceOptions
from proxy.sources.redis_store import RedisConnection, source_namespace
from proxy.sources.store import MemoryTrustStateStore, TrustStateStore

__all__ = [
    "Enforcement",
    "FailClosedGate",
    "PolicyUnavailableError",
    "UnavailableSource",
    "build_enforcement",
    "policy_unavailable",
]

log = logging.getLogger("trustproxy.enforcement")

StoreFactory = Callable[[str], TrustStateStore]


def redis_connection(cache: CacheSettings) -> RedisConnection:
    """The process's connection to ``cache.redis_url`` (the caller closes it)."""
    if cache.redis_url is None:
        raise RuntimeError("no cache.redis_url")
    return RedisConnection(cache.redis_url, timeout=cache.redis_timeout)


def redis_store_factory(settings: Settings, connection: RedisConnection) -> StoreFactory:
    """Stores on one shared connection, one key namespace per trust source."""
    by_name = {s.name: s for s in settings.trust.sources}
    cache = settings.cache

    def store(name: str) -> TrustStateStore:
        src = by_name[name]
        return connection.store(
            source_namespace(name, src.url),
            key_prefix=cache.key_prefix,
            max_bytes=NotarySourceOptions.state_max_bytes,
            lock_timeout=cache.lock_timeout,
        )

    return store


class PolicyUnavailableError(TrustSourceUnavailableError):
    """The policy could not be loaded: nothing can be decided, so nothing is served (503)."""

    def __init__(self, reason: str) -> None:
        self.source = "policy"
        self.reason = reason
        FetchError.__init__(self, reason)


_DECISION_KINDS: dict[str, Literal["tags", "digest", "referrers"]] = {
    "tags": "tags",
    "digest": "digest",
    "referrers": "referrers",
}


class FailClosedGate:
    """Refuses every decision with 503 (``reason`` says why). Blobs stay reachable: they
    are content-addressed and only found through a manifest."""

    def __init__(self, reason: str, recorder: DecisionRecorder | None = None) -> None:
        self.reason = reason
        self.recorder = recorder or NullRecorder()
        self._clock: Clock = utc_now

    def _refuse(
        self, kind: str, route: Route, reference: str, ctx: RequestContext
    ) -> PolicyUnavailableError:
        decision = Decision(
            time=rfc3339(self._clock()),
            kind=_DECISION_KINDS.get(kind, "manifest"),
            outcome="unavailable",
            repository=route.gun,
            reference=reference,
            reason=self.reason,
            client=ctx.client,
            user_agent=ctx.user_agent,
            user=ctx.user,
            method=ctx.method,
        )
        try:
            self.recorder.record(decision)
        except Exception:
            log.exception("decision recorder failed")
        return PolicyUnavailableError(self.reason)

    async def decide_tag(self, route: Route, tag: str, ctx: RequestContext) -> TagDecision:
        raise self._refuse("manifest", route, tag, ctx)

    async def decide_digest(self, route: Route, digest: str, ctx: RequestContext) -> None:
        raise self._refuse("digest", route, digest, ctx)

    async def filter_tags(self, route: Route, tags: list[str], ctx: RequestContext) -> list[str]:
        raise self._refuse("tags", route, "", ctx)

    async def admit_listing(
        self, route: Route, kind: ListingKind, reference: str, ctx: RequestContext
    ) -> bool:
        raise self._refuse(kind, route, reference, ctx)  # before the upstream is asked

    def report_mismatch(
        self, route: Route, tag: str, expected: str, actual: str, ctx: RequestContext
    ) -> None:
        return None  # never reached: nothing is served


class UnavailableSource:
    """A configured trust source that could not be built: every answer is a 503."""

    def __init__(self, name: str, reason: str) -> None:
        self._name = name
        self.reason = reason

    @property
    def name(self) -> str:
        return self._name

    def _error(self) -> TrustSourceUnavailableError:
        return TrustSourceUnavailableError(self._name, self.reason)

    async def resolve(self, gun: str, tag: str, rule: SigningRule) -> SignedTarget:
        raise self._error()

    async def signed_tags(self, gun: str, rule: SigningRule) -> dict[str, SignedTarget]:
        raise self._error()

    async def trust_info(self, gun: str, rule: SigningRule) -> TrustInfo:
        raise self._error()

    async def signed_state(self, gun: str, rule: SigningRule) -> SignedState:
        raise self._error()

    async def aclose(self) -> None:
        return None


@dataclass
class Enforcement:
    """The gate ``serve`` installs, and the sources it owns (closed by :meth:`aclose`)."""

    gate: TrustGate
    sources: Mapping[str, TrustSource] = field(default_factory=dict)
    #: store connections built here (not passed in through ``store_factory``)
    connections: list[RedisConnection] = field(default_factory=list)

    async def aclose(self) -> None:
        for name, source in self.sources.items():
            try:
                await source.aclose()
            except Exception:  # close the others anyway
                log.exception("closing trust source %s failed", name)
        for conn in self.connections:
            try:
                await conn.aclose()
            except Exception:
                log.exception("closing the trust state store failed")


def build_enforcement(
    settings: Settings,
    policy: Policy | None,
    *,
    recorder: DecisionRecorder,
    clock: Callable[[], datetime] = utc_now,
    match_rule: MatchRule | None = None,
    tag_allowed: TagAllowed | None = None,
    store_factory: StoreFactory | None = None,
) -> Enforcement:
    """The gate for ``settings`` + ``policy``: PassThroughGate without a policy, else an
    EnforcingGate over one source per ``trust.sources`` entry.

    ``store_factory(source_name)`` gives each source its state store (default: with
    ``cache.redis_url`` a store on one Redis connection owned by the result, else one
    in-memory store each; stores are keyed by GUN, so sources never share one).
    ``match_rule`` / ``tag_allowed`` default to ``proxy.policy.matcher``.
    Never raises for a source that cannot be built: it answers 503 instead (logged).
    """
    if policy is None:
        return Enforcement(PassThroughGate())
    connections: list[RedisConnection] = []
    make_store = store_factory
    if make_store is None:
        if settings.cache.redis_url is not None and settings.trust.sources:
            connections.append(redis_connection(settings.cache))
            make_store = redis_store_factory(settings, connections[0])
        else:
            make_store = lambda _name: MemoryTrustStateStore()  # noqa: E731
    sources: dict[str, TrustSource] = {}
    for src in settings.trust.sources:
        try:
            sources[src.name] = NotarySource.from_settings(
                src, settings.limits, make_store(src.name), clock=clock, cache=settings.cache
            )
        except (OSError, ValueError) as e:  # ssl: CA file missing or not PEM
            log.error(
                "trust source %s cannot be used (ca_file %s): %s; its repositories get 503",
                src.name,
                src.ca_file,
                e,
            )
            # Clients learn that it is broken, not the proxy's file paths.
            reason = "is misconfigured (see the proxy's log)"
            sources[src.name] = UnavailableSource(src.name, reason)
    gate = EnforcingGate(
        policy, sources, recorder, match_rule=match_rule, tag_allowed=tag_allowed, clock=clock
    )
    return Enforcement(gate, sources, connections)


def policy_unavailable(reason: str, *, recorder: DecisionRecorder | None = None) -> Enforcement:
    """The enforcement of a proxy whose configured policy could not be loaded."""
    return Enforcement(FailClosedGate(reason, recorder))
