"""The static source: answers from a pins file, re-read when it changes.

The file is read (bounded) in a thread when its size or modification time changed, under
one lock, so many cold requests read it once. A file that cannot be read is "unavailable"
(503) and, like a trust server that is down, never an allow; a malformed one is bad trust
data (never trusted, nothing of it used).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
from proxy.sources.static.pins import MAX_PINS_BYTES, Pins, PinsFormatError, parse_pins

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

    @property
    def name(self) -> str:
        return self._name

    async def _load(self) -> Pins:
        """Raises TrustSourceUnavailableError (unreadable) or PinsFormatError (malformed)."""
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
            raise _not_pinned(tag, self.path.name)
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
        info = TrustInfo(
            state_key=pins.file_digest,
            evidence=MappingProxyType({"pins_digest": pins.file_digest}),
        )
        return SignedState(pinned, info, pins.repositories[repository].digests)

    async def aclose(self) -> None:
        return None


def _read(path: Path) -> bytes:
    with path.open("rb") as f:
        data = f.read(MAX_PINS_BYTES + 1)
    if len(data) > MAX_PINS_BYTES:
        raise PinsFormatError(f"{path.name}: larger than {MAX_PINS_BYTES} bytes")
    return data


def _not_pinned(tag: str, file: str) -> Exception:
    from proxy.errors import NotSignedError

    return NotSignedError(f"tag {tag} is not pinned in {file}")
