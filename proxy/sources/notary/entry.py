"""The registry entry of Notary v1 (``type: notary``): its settings section, the
verification part of its policy rules (:mod:`.policy`) and its builder."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from proxy.settings import (
    CacheSettings,
    ChangefeedSettings,
    ConfigSection,
    LimitSettings,
    TrustSourceSettings,
    parse_bool,
    parse_credentials,
    parse_duration,
    parse_url,
)
from proxy.sources.base import TrustSource
from proxy.sources.notary.policy import RULE_KEYS, parse_rule
from proxy.sources.registry import SourceType, Watcher
from proxy.sources.store import TrustStateStore

__all__ = ["SOURCE_TYPE", "build", "parse_settings"]


def parse_settings(s: ConfigSection, name: str, warnings: list[str]) -> TrustSourceSettings:
    """``trust.sources.<name>`` of ``type: notary``: a notary-server's ``url``, its
    ``ca_file`` and ``auth``, how often to refresh. Raises ConfigError (key path)."""
    url = s.required("url", parse_url)
    ca_file = s.path_value("ca_file")
    if ca_file is not None and s.check_files and not ca_file.is_file():
        # Not fatal at load: the source is unusable until the file exists, so every
        # request that needs it fails closed (503) instead of the proxy not starting.
        warnings.append(f"{s.sub('ca_file')}: file not found: {ca_file}")
    auth = s.section("auth")
    creds = parse_credentials(auth)
    auth.finish()
    refresh = s.value("refresh_interval", parse_duration, None)
    retry = s.value("retry_interval", parse_duration, TrustSourceSettings.retry_interval)
    feed = s.section("changefeed")
    changefeed = ChangefeedSettings(
        enabled=feed.value("enabled", parse_bool, ChangefeedSettings.enabled),
        interval=feed.value("interval", parse_duration, ChangefeedSettings.interval),
    )
    feed.finish()
    s.finish()
    return TrustSourceSettings(
        name, "notary", url, ca_file, creds, refresh, retry, changefeed=changefeed
    )


def build(
    settings: TrustSourceSettings,
    limits: LimitSettings,
    store: TrustStateStore,
    *,
    clock: Callable[[], datetime],
    cache: CacheSettings,
) -> TrustSource:
    """A :class:`~proxy.sources.notary.source.NotarySource` for ``settings``. Raises OSError
    / ValueError when its ``ca_file`` cannot be read."""
    from proxy.sources.notary.source import NotarySource  # the HTTP stack, only when built

    return NotarySource.from_settings(settings, limits, store, clock=clock, cache=cache)


def build_watcher(
    settings: TrustSourceSettings,
    limits: LimitSettings,
    store: TrustStateStore,
    source: TrustSource,
) -> Watcher | None:
    """The watcher of notary-server's change feed for ``source`` (None when disabled)."""
    from proxy.sources.notary.changefeed import build_watcher as build

    return build(settings, limits, store, source)


def add_cli(trust_sub: Any) -> None:
    """``trustproxy trust inspect`` (loaded only when the CLI builds its parser)."""
    from proxy.sources.notary.inspect_cli import add_cli as add

    add(trust_sub)


SOURCE_TYPE = SourceType(
    name="notary",
    title="Notary v1 (Docker Content Trust)",
    parse_settings=parse_settings,
    rule_keys=RULE_KEYS,
    parse_rule=parse_rule,
    build=build,
    evidence_fields={"roles": [], "key_ids": [], "metadata_versions": {}},
    add_cli=add_cli,
    build_watcher=build_watcher,
    hands_over=True,
)
