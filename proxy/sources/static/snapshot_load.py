"""Reading a snapshot and its pinned keys from files (the thin I/O shell around
:mod:`.snapshot` and :mod:`.snapshot_keys`): bounded reads, then the pure checks."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime
from pathlib import Path

from proxy.sources.static.snapshot import (
    MAX_SNAPSHOT_BYTES,
    Snapshot,
    SnapshotError,
    verify_snapshot,
)
from proxy.sources.static.snapshot_keys import (
    MAX_KEY_PEM_BYTES,
    SnapshotKeyError,
    VerifyingKey,
    load_public_key,
)

__all__ = ["read_bounded", "read_keys", "read_snapshot"]


def read_bounded(path: Path, limit: int) -> bytes | None:
    """The file's bytes, or None when it is longer than ``limit``. Raises OSError."""
    with path.open("rb") as f:
        data = f.read(limit + 1)
    return None if len(data) > limit else data


def read_keys(paths: Iterable[Path]) -> tuple[VerifyingKey, ...]:
    """Raises OSError (unreadable) or SnapshotKeyError (not a P-256 / ed25519 PEM key)."""
    keys = []
    for path in paths:
        data = read_bounded(path, MAX_KEY_PEM_BYTES)
        if data is None:
            raise SnapshotKeyError(f"{path}: larger than {MAX_KEY_PEM_BYTES} bytes: not a PEM key")
        keys.append(load_public_key(data, name=str(path)))
    return tuple(keys)


def read_snapshot(
    path: Path,
    keys: tuple[VerifyingKey, ...],
    *,
    now: datetime,
    registries: Collection[str] | None,
) -> Snapshot:
    """Raises OSError (unreadable) or SnapshotError (refused)."""
    data = read_bounded(path, MAX_SNAPSHOT_BYTES)
    if data is None:
        raise SnapshotError(f"{path.name}: larger than {MAX_SNAPSHOT_BYTES} bytes")
    return verify_snapshot(data, keys, now=now, registries=registries, name=path.name)
