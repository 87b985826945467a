"""The registry entry of ``type: static``: ``file`` (the pins file) in its settings section,
no verification keys in policy rules (the file is the authority)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from proxy.errors import ConfigError
from proxy.policy.loader import RuleContext, RuleSection
from proxy.policy.model import Mode
from proxy.settings import CacheSettings, ConfigSection, LimitSettings, TrustSourceSettings
from proxy.sources.base import TrustSource
from proxy.sources.registry import SourceType
from proxy.sources.static.source import PINNED, StaticRule, StaticSource
from proxy.sources.store import TrustStateStore

__all__ = ["SOURCE_TYPE", "StaticVerification"]


class StaticVerification:
    """A rule over a static source: served only at the digests the file pins."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StaticVerification)

    def __hash__(self) -> int:
        return hash(StaticVerification)

    def signing_rule(self, expiry_grace: timedelta) -> StaticRule:
        return PINNED

    def explain(self) -> list[str]:
        return ["pins: only the tags and digests the source's pins file lists"]

    def summary(self) -> list[str]:
        return ["pins"]


def parse_settings(s: ConfigSection, name: str, warnings: list[str]) -> TrustSourceSettings:
    """``trust.sources.<name>`` of ``type: static``: ``file``. Raises ConfigError."""
    path = s.path_value("file")
    if path is None:
        raise ConfigError(s.sub("file"), "is required")
    if s.check_files and not path.is_file():
        # As a missing CA file: not fatal at load, its repositories get 503 until it exists.
        warnings.append(f"{s.sub('file')}: file not found: {path}")
    s.finish()
    # The url is where its trust state comes from (it names the source's store namespace).
    return TrustSourceSettings(name, "static", path.as_uri())


def parse_rule(node: RuleSection, mode: Mode, ctx: RuleContext) -> StaticVerification:
    return StaticVerification()


def build(
    settings: TrustSourceSettings,
    limits: LimitSettings,
    store: TrustStateStore,
    *,
    clock: Callable[[], datetime],
    cache: CacheSettings,
) -> TrustSource:
    from pathlib import Path
    from urllib.parse import unquote, urlsplit

    return StaticSource(settings.name, Path(unquote(urlsplit(settings.url).path)))


SOURCE_TYPE = SourceType(
    name="static",
    title="pins file (repository:tag -> digest)",
    parse_settings=parse_settings,
    rule_keys=(),
    parse_rule=parse_rule,
    build=build,
    # Its evidence (pins_digest) is on the lines it answers only: declaring it would add an
    # empty field to every line of every deployment.
)
