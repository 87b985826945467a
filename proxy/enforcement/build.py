"""Build the gate ``serve`` runs with, from settings and a loaded policy.

::

    enforcement = build_enforcement(settings, policy, recorder=recorder)
    app_state.gate = enforcement.gate          # PassThroughGate when policy is None
    ...
    await enforcement.aclose()                 # closes the trust sources' connections

With ``cache.redis_url`` the sources keep their trust state in Redis (one connection pool
per process, shared by every source, each under its own key namespace), else in memory.

A configured policy that cannot be loaded at startup is a
:class:`~proxy.enforcement.fail_closed.FailClosedGate` (:func:`policy_unavailable`); a trust
source that cannot be built (its ``ca_file`` is missing, say) an
:class:`~proxy.enforcement.fail_closed.UnavailableSource`: the repositories that use it get
503s, the others are served. Where sources keep their state is
:mod:`proxy.sources.store_factory`'s choice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from proxy.decisions import DecisionRecorder
from proxy.enforcement.enforcing_gate import EnforcingGate, MatchRule, TagAllowed, utc_now
from proxy.enforcement.fail_closed import FailClosedGate, UnavailableSource
from proxy.policy.model import Policy
from proxy.settings import Settings, TrustSourceSettings
from proxy.sources.base import TrustSource
from proxy.sources.redis_store import RedisConnection
from proxy.sources.registry import SourceType, Watcher, source_type
from proxy.sources.store import TrustStateStore
from proxy.sources.store_factory import StoreFactory, redis_connection, state_stores, wants_redis
from proxy.trust_gate import PassThroughGate, TrustGate

__all__ = ["Enforcement", "GateOwner", "build_enforcement", "policy_unavailable"]

log = logging.getLogger("trustproxy.enforcement")


class GateOwner(Protocol):
    """What a generation needs of an :class:`Enforcement`: the gate, and closing what it owns
    (``proxy.reload`` holds this, so tests can stand a fake in)."""

    @property
    def gate(self) -> TrustGate: ...

    async def aclose(self) -> None: ...


@dataclass
class Enforcement:
    """The gate ``serve`` installs, and the sources it owns (closed by :meth:`aclose`)."""

    gate: TrustGate
    sources: Mapping[str, TrustSource] = field(default_factory=dict)
    #: store connections built here (not passed in through ``store_factory``)
    connections: list[RedisConnection] = field(default_factory=list)
    #: the sources' background tasks (change feeds), started on the serving loop
    watchers: list[Watcher] = field(default_factory=list)

    def start(self) -> None:
        """Start the sources' background tasks (on the running loop; idempotent)."""
        for watcher in self.watchers:
            watcher.start()

    async def aclose(self) -> None:
        for watcher in self.watchers:
            try:
                await watcher.aclose()
            except Exception:  # close the sources anyway
                log.exception("closing a trust source's change feed failed")
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
    in-memory store each; stores are keyed by repository, so sources never share one).
    ``match_rule`` / ``tag_allowed`` default to ``proxy.policy.matcher``.
    Never raises for a source that cannot be built: it answers 503 instead (logged).
    """
    if policy is None:
        return Enforcement(PassThroughGate())
    connections: list[RedisConnection] = []
    make_store = store_factory
    if make_store is None:
        if wants_redis(settings):
            connections.append(redis_connection(settings.cache))
        make_store = state_stores(settings, connections[0] if connections else None)
    sources: dict[str, TrustSource] = {}
    watchers: list[Watcher] = []
    for src in settings.trust.sources:
        try:
            kind = source_type(src.type)
            store = make_store(src.name)
            sources[src.name] = kind.build(
                src, settings.limits, store, clock=clock, cache=settings.cache
            )
        except (OSError, ValueError) as e:  # ssl: CA file missing or not PEM
            where = f" (ca_file {src.ca_file})" if src.ca_file is not None else ""
            log.error(
                "trust source %s cannot be used%s: %s; its repositories get 503", src.name, where, e
            )
            # Clients learn that it is broken, not the proxy's file paths.
            reason = "is misconfigured (see the proxy's log)"
            sources[src.name] = UnavailableSource(src.name, reason)
            continue
        watcher = _build_watcher(kind, src, settings, store, sources[src.name])
        if watcher is not None:
            watchers.append(watcher)
    gate = EnforcingGate(
        policy, sources, recorder, match_rule=match_rule, tag_allowed=tag_allowed, clock=clock
    )
    return Enforcement(gate, sources, connections, watchers)


def _build_watcher(
    kind: SourceType,
    src: TrustSourceSettings,
    settings: Settings,
    store: TrustStateStore,
    source: TrustSource,
) -> Watcher | None:
    """The source's change watcher, if its type has one; a watcher that cannot be built
    only costs fast revocation (the refresh interval applies), so it is logged, not fatal."""
    if kind.build_watcher is None:
        return None
    try:
        return kind.build_watcher(src, settings.limits, store, source)
    except (OSError, ValueError) as e:
        log.error(
            "trust source %s: change feed not used (%s); revocations take the refresh interval",
            src.name,
            e,
        )
        return None


def policy_unavailable(reason: str, *, recorder: DecisionRecorder | None = None) -> Enforcement:
    """The enforcement of a proxy whose configured policy could not be loaded."""
    return Enforcement(FailClosedGate(reason, recorder))
