"""Trust source types: the one table from a source's ``type:`` to its code.

Settings, policy loading (a rule's verification keys) and enforcement building ask it;
nothing outside a source's own package spells its format (ratify's
``RegisterVerifierFactory(type, create)``). Adding a trust source is one package under
``proxy/sources/<type>/`` plus one entry in :data:`SOURCE_TYPES`.

An entry is loaded when first asked for (the settings module parses through it, and a
source's package imports the settings types: loading lazily keeps that from being a cycle).
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from proxy.policy.loader import RuleContext, RuleSection
    from proxy.policy.model import Mode, Verification
    from proxy.settings import (
        CacheSettings,
        ConfigSection,
        LimitSettings,
        TrustSourceSettings,
    )
    from proxy.sources.base import TrustSource
    from proxy.sources.store import TrustStateStore

__all__ = [
    "SOURCE_TYPES",
    "BuildSource",
    "BuildWatcher",
    "SourceType",
    "Watcher",
    "audit_evidence_fields",
    "source_type",
    "source_type_names",
]

#: ``parse_settings(section, name, warnings)`` -> the source's typed settings; raises
#: ConfigError with the key path (unknown keys included: ``section.finish()``).
ParseSettings = Callable[["ConfigSection", str, list[str]], "TrustSourceSettings"]


#: ``parse_rule(rule, mode, ctx)`` -> the verification part of a policy rule (None only for
#: a rule that is off and names nothing to verify); raises ConfigError with the key path.
ParseRule = Callable[["RuleSection", "Mode", "RuleContext"], "Verification | None"]


class BuildSource(Protocol):
    """``build(settings, limits, store, *, clock, cache)`` -> a ready :class:`TrustSource`.
    Raises OSError / ValueError when the source cannot be used (a missing CA file): the
    caller answers 503 for its repositories."""

    def __call__(
        self,
        settings: TrustSourceSettings,
        limits: LimitSettings,
        store: TrustStateStore,
        *,
        clock: Callable[[], datetime],
        cache: CacheSettings,
    ) -> TrustSource: ...


class BuildWatcher(Protocol):
    """``build_watcher(settings, limits, store, source)`` -> what keeps ``source`` told of
    changes (a change feed's watcher, :mod:`proxy.sources.invalidation`), or None. Raises
    OSError / ValueError when it cannot be built (the source then keeps its refresh
    interval)."""

    def __call__(
        self,
        settings: TrustSourceSettings,
        limits: LimitSettings,
        store: TrustStateStore,
        source: TrustSource,
    ) -> Watcher | None: ...


class Watcher(Protocol):
    """A background task of a source, started on the serving loop, closed with it."""

    def start(self) -> None: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class SourceType:
    """What the proxy knows about one kind of trust source."""

    name: str  # the ``type:`` value in ``trust.sources``
    title: str  # for users: what the format is called
    parse_settings: ParseSettings
    #: the policy rule keys of this type's verification part (unknown keys are errors)
    rule_keys: tuple[str, ...]
    parse_rule: ParseRule
    build: BuildSource
    #: the evidence keys its answers carry, each with its empty value: every audit line
    #: has them, whoever answered
    evidence_fields: Mapping[str, Any] = field(default_factory=dict)
    #: adds the type's own commands under ``trustproxy trust`` (argparse subparsers)
    add_cli: Callable[[Any], None] | None = None
    #: what tells a built source of changes to its trust data (a change feed), if any
    build_watcher: BuildWatcher | None = None
    #: its source takes over what a sibling worker of the host verified (it reads
    #: :class:`~proxy.sources.store.VouchingStore`): with Redis, its store then also keeps
    #: a vouched copy of each record in the host's state file (``store_factory``)
    hands_over: bool = False


#: ``type:`` -> the module whose ``SOURCE_TYPE`` describes it (loaded on first use).
SOURCE_TYPES: dict[str, str] = {
    # Notary v1 / Docker Content Trust (TUF metadata from a notary-server).
    "notary": "proxy.sources.notary.entry",
    # A file of pins (repository:tag -> digest): tests, break-glass pins, trust snapshots.
    "static": "proxy.sources.static.entry",
    # Cosign / Sigstore signatures in the registry (.sig tags, bundles as referrers).
    "cosign": "proxy.sources.cosign.entry",
    # Notation (Notary Project v2): X.509 signatures stored as OCI referrers.
    "notation": "proxy.sources.notation.entry",
}

_loaded: dict[str, SourceType] = {}


def source_type_names() -> tuple[str, ...]:
    """Every known ``type:``, in the order they are listed."""
    return tuple(SOURCE_TYPES)


def source_type(name: str) -> SourceType:
    """The registered type ``name``. Raises KeyError for an unknown one (settings reject
    unknown types with their key path before anything asks)."""
    found = _loaded.get(name)
    if found is None:
        module = importlib.import_module(SOURCE_TYPES[name])
        found = module.SOURCE_TYPE
        if not isinstance(found, SourceType) or found.name != name:
            raise RuntimeError(f"{SOURCE_TYPES[name]}.SOURCE_TYPE does not describe {name!r}")
        _loaded[name] = found
    return found


def audit_evidence_fields() -> tuple[tuple[str, Any], ...]:
    """Every registered type's evidence keys with their empty values (the audit writes them
    on every line; computed once per set of types: it is asked for every decision)."""
    names = tuple(SOURCE_TYPES)
    cached = _evidence_fields.get(names)
    if cached is None:
        out: dict[str, Any] = {}
        for name in names:
            for key, empty in source_type(name).evidence_fields.items():
                out.setdefault(key, copy.copy(empty))
        cached = _evidence_fields[names] = tuple(out.items())
    return cached


_evidence_fields: dict[tuple[str, ...], tuple[tuple[str, Any], ...]] = {}
