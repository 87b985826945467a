"""The static source: answers from a pins file, re-read when it changes, or from a signed
trust snapshot, verified when the generation was built.

The pins file is read (bounded) in a thread when its size or modification time changed,
under one lock, so many cold requests read it once. A file that cannot be read is
"unavailable" (503) and, like a trust server that is down, never an allow; a malformed one
is bad trust data (never trusted, nothing of it used).

A snapshot is never re-read while serving: it was verified against the pinned keys when the
config was loaded (startup, SIGHUP), and a new one takes a reload, which refuses a snapshot
that does not verify and keeps serving the old one.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType

from proxy.errors import TrustSourceUnavailableError
from proxy.sources.base import (
    NoTrustDataError,
    RegistryReads,
    SignedAnswer,
    SignedState,
    TrustInfo,
)
from proxy.sources.static.pins import (
    MAX_PINS_BYTES,
    Pins,
    PinsFormatError,
    RepositoryPins,
    parse_pins,
)
from proxy.sources.static.snapshot import Snapshot

__all__ = ["PINNED", "StaticRule", "StaticSource"]


@dataclass(frozen=True)
class StaticRule:
    """A policy rule's part for a static source: the file is the whole authority."""


PINNED = StaticRule()


class StaticSource:
    def __init__(self, name: str, path: Path) -> None:
        self._name = name
        self.path = path
        self.reads = 0  # file reads (for tests: many requests, one read)
        self._lock = asyncio.Lock()
        self._stamp: tuple[int, int] | None = None
        self._pins: Pins | None = None
        self._fixed: tuple[Pins, Mapping[str, Mapping[str, object]]] | None = None

    @classmethod
    def from_snapshot(cls, name: str, path: Path, snapshot: Snapshot) -> StaticSource:
        """A source answering from ``snapshot`` (verified by the caller) for its lifetime."""
        source = cls(name, path)
        about = {
            "digest": snapshot.statement_digest,
            "created": snapshot.created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "signed_by": list(snapshot.signed_by),
        }
        repos: dict[str, RepositoryPins] = {}
        for repo, r in snapshot.repositories.items():
            tags = {
                tag: replace(t, evidence=MappingProxyType(
                    {"snapshot": {**about, **dict(t.evidence.get("snapshot", {}))}}))
                for tag, t in r.tags.items()
            }  # fmt: skip
            repos[repo] = RepositoryPins(MappingProxyType(tags), r.digests)  # type: ignore[arg-type]
        pins = Pins(MappingProxyType(repos), snapshot.statement_digest)
        source._fixed = (pins, MappingProxyType({"snapshot": about}))
        return source

    @property
    def snapshot(self) -> bool:
        """Whether this source answers from a signed snapshot."""
        return self._fixed is not None

    @property
    def name(self) -> str:
        return self._name

    async def _load(self) -> Pins:
        """Raises TrustSourceUnavailableError (unreadable) or PinsFormatError (malformed)."""
        if self._fixed is not None:
            return self._fixed[0]
        async with self._lock:
            try:
                st = await asyncio.to_thread(os.stat, self.path)
            except OSError as e:
                raise TrustSourceUnavailableError(self._name, f"pins file: {e.strerror}") from e
            stamp = (st.st_mtime_ns, st.st_size)
            if self._pins is not None and stamp == self._stamp:
                return self._pins
            try:
                data = await asyncio.to_thread(_read, self.path)
            except OSError as e:
                raise TrustSourceUnavailableError(self._name, f"pins file: {e.strerror}") from e
            self.reads += 1
            self._pins, self._stamp = None, None  # a bad file pins nothing, not the old pins
            pins = parse_pins(data, name=self.path.name)
            self._pins, self._stamp = pins, stamp
            return pins

    async def _repository(self, repository: str) -> tuple[Pins, Mapping[str, SignedAnswer]]:
        pins = await self._load()
        repo = pins.repositories.get(repository)
        if repo is None:
            raise NoTrustDataError(self.path.name, repository)
        return pins, repo.tags

    # ``registry``, ``tags`` and ``digests`` are not needed: the pins name every tag and
    # digest of the repository.

    async def resolve(
        self,
        repository: str,
        tag: str,
        rule: StaticRule,
        *,
        registry: RegistryReads | None = None,
    ) -> SignedAnswer:
        _, tags = await self._repository(repository)
        pin = tags.get(tag)
        if pin is None:
            raise _not_pinned(tag, self.path.name, snapshot=self._fixed is not None)
        return pin

    async def signed_tags(
        self,
        repository: str,
        rule: StaticRule,
        *,
        registry: RegistryReads | None = None,
        tags: Sequence[str] | None = None,
    ) -> Mapping[str, SignedAnswer]:
        _, pinned = await self._repository(repository)
        return pinned

    async def trust_info(self, repository: str, rule: StaticRule) -> TrustInfo:
        return (await self.signed_state(repository, rule)).info

    async def signed_state(
        self,
        repository: str,
        rule: StaticRule,
        *,
        registry: RegistryReads | None = None,
        tags: Sequence[str] | None = None,
        digests: Sequence[str] = (),
    ) -> SignedState:
        pins, pinned = await self._repository(repository)
        evidence = (
            self._fixed[1]
            if self._fixed is not None
            else MappingProxyType({"pins_digest": pins.file_digest})
        )
        info = TrustInfo(state_key=pins.file_digest, evidence=evidence)
        return SignedState(pinned, info, pins.repositories[repository].digests)

    async def aclose(self) -> None:
        return None


def _read(path: Path) -> bytes:
    with path.open("rb") as f:
        data = f.read(MAX_PINS_BYTES + 1)
    if len(data) > MAX_PINS_BYTES:
        raise PinsFormatError(f"{path.name}: larger than {MAX_PINS_BYTES} bytes")
    return data


def _not_pinned(tag: str, file: str, *, snapshot: bool) -> Exception:
    from proxy.errors import NotSignedError

    if snapshot:
        return NotSignedError(f"tag {tag} is not in the trust snapshot {file}")
    return NotSignedError(f"tag {tag} is not pinned in {file}")
