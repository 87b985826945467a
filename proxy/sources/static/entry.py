"""The registry entry of ``type: static``: a pins file (``file``) or a signed trust snapshot
(``snapshot`` with pinned ``keys`` and the ``registries`` it may speak for) in its settings
section, no verification keys in policy rules (the file is the authority)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from proxy.errors import ConfigError
from proxy.policy.loader import RuleContext, RuleSection
from proxy.policy.model import Mode
from proxy.settings import CacheSettings, ConfigSection, LimitSettings, TrustSourceSettings
from proxy.sources.base import TrustSource
from proxy.sources.registry import SourceType
from proxy.sources.static.snapshot import Snapshot, SnapshotError
from proxy.sources.static.snapshot_keys import SnapshotKeyError, VerifyingKey
from proxy.sources.static.snapshot_load import read_keys, read_snapshot
from proxy.sources.static.source import PINNED, StaticRule, StaticSource
from proxy.sources.store import TrustStateStore

__all__ = ["SOURCE_TYPE", "StaticSettings", "StaticVerification"]


class StaticVerification:
    """A rule over a static source: served only at the digests the file pins."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StaticVerification)

    def __hash__(self) -> int:
        return hash(StaticVerification)

    def signing_rule(self, expiry_grace: timedelta) -> StaticRule:
        return PINNED

    def explain(self) -> list[str]:
        return ["pins: only the tags and digests the source's pins file or snapshot lists"]

    def summary(self) -> list[str]:
        return ["pins"]


@dataclass(frozen=True)
class StaticSettings(TrustSourceSettings):
    """``type: static`` with a signed snapshot: the file, the pinned keys, the registries
    it may speak for, and (when the config was loaded with file checks) the snapshot as it
    verified then, so that the source serves exactly what was checked at load."""

    snapshot_file: Path | None = None
    key_files: tuple[Path, ...] = ()
    #: the pinned keys as read at load (empty when file checks were off)
    keys: tuple[VerifyingKey, ...] = field(default=(), compare=False)
    registries: tuple[str, ...] = ()
    #: the verified statement's digest: a changed snapshot makes other settings
    snapshot_digest: str = ""
    loaded: Snapshot | None = field(default=None, compare=False)


def _registries(v: Any, path: str) -> tuple[str, ...]:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not items:
        raise ConfigError(path, "a registry name or a list of them, e.g. registry.example.com")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item or "/" in item:
            raise ConfigError(f"{path}[{i}]", f"not a registry name: {item!r}")
        out.append(item)
    return tuple(out)


def parse_settings(s: ConfigSection, name: str, warnings: list[str]) -> TrustSourceSettings:
    """``trust.sources.<name>`` of ``type: static``: ``file`` (pins), or ``snapshot`` with
    ``keys`` and ``registries``. A snapshot is verified now (with file checks on): one that
    is unsigned, tampered, signed by no pinned key or of another registry is a ConfigError,
    so a reload keeps the previous one and a start stops with the reason. Raises ConfigError.
    """
    path = s.path_value("file")
    snapshot = s.path_value("snapshot")
    if (path is None) == (snapshot is None):
        raise ConfigError(s.sub("file"), "give one of file (pins) or snapshot (a signed snapshot)")
    if snapshot is not None:
        return _parse_snapshot_settings(s, name, snapshot)
    if s.check_files and path is not None and not path.is_file():
        # As a missing CA file: not fatal at load, its repositories get 503 until it exists.
        warnings.append(f"{s.sub('file')}: file not found: {path}")
    s.finish()
    # The url is where its trust state comes from (it names the source's store namespace).
    return TrustSourceSettings(name, "static", path.as_uri() if path else "")


def _parse_snapshot_settings(s: ConfigSection, name: str, snapshot: Path) -> StaticSettings:
    key_paths_raw = s.get("keys")
    if key_paths_raw is None:
        raise ConfigError(
            s.sub("keys"), "is required: the public keys (PEM) a snapshot is signed with"
        )
    if isinstance(key_paths_raw, str):
        key_paths_raw = [key_paths_raw]
    if not isinstance(key_paths_raw, list) or not key_paths_raw:
        raise ConfigError(s.sub("keys"), "a list of public key files (PEM)")
    registries = s.required("registries", _registries)
    s.finish()
    key_paths = []
    for i, raw in enumerate(key_paths_raw):
        if not isinstance(raw, str):
            raise ConfigError(f"{s.sub('keys')}[{i}]", "a file name")
        p = Path(raw).expanduser()
        key_paths.append(p if p.is_absolute() else (s.base_dir / p).resolve())
    keys: tuple[VerifyingKey, ...] = ()
    loaded = None
    if s.check_files:
        try:
            keys = read_keys(key_paths)
        except (OSError, SnapshotKeyError) as e:
            raise ConfigError(s.sub("keys"), str(e)) from e
        try:
            loaded = read_snapshot(snapshot, keys, now=datetime.now(UTC), registries=registries)
        except OSError as e:
            raise ConfigError(
                s.sub("snapshot"), f"cannot read {snapshot}: {e.strerror or e}"
            ) from e
        except SnapshotError as e:
            raise ConfigError(s.sub("snapshot"), f"refused: {e}") from e
    return StaticSettings(
        name, "static", snapshot.as_uri(),
        snapshot_file=snapshot, key_files=tuple(key_paths), keys=keys, registries=registries,
        snapshot_digest=loaded.statement_digest if loaded else "", loaded=loaded,
    )  # fmt: skip


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
    """Raises ValueError (a SnapshotError or a key error) or OSError when a snapshot that
    was not verified at load cannot be: its repositories then get 503."""
    from urllib.parse import unquote, urlsplit

    if isinstance(settings, StaticSettings) and settings.snapshot_file is not None:
        snap = settings.loaded
        if snap is None:  # settings read without file checks: verify now
            try:
                keys = settings.keys or read_keys(settings.key_files)
                snap = read_snapshot(
                    settings.snapshot_file, keys, now=clock(), registries=settings.registries
                )
            except (SnapshotError, SnapshotKeyError) as e:
                raise ValueError(str(e)) from e
        return StaticSource.from_snapshot(settings.name, settings.snapshot_file, snap)
    return StaticSource(settings.name, Path(unquote(urlsplit(settings.url).path)))


SOURCE_TYPE = SourceType(
    name="static",
    title="pins file or signed trust snapshot (repository:tag -> digest)",
    parse_settings=parse_settings,
    rule_keys=(),
    parse_rule=parse_rule,
    build=build,
    # Its evidence (pins_digest, snapshot) is on the lines it answers only: declaring it
    # would add an empty field to every line of every deployment. Its commands
    # (``trustproxy trust snapshot``) drive every source: they are the entry point's.
)
