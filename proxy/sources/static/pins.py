"""The pins file (YAML or JSON), parsed and checked (pure: bytes in, pins or an error out)::

    repositories:
      registry.example.com/team/app:
        tags:
          v1: sha256:<hex>                        # or {digest: sha256:<hex>, length: 1234}
        digests: [sha256:<hex>]                   # allowed by digest, apart from any tag

Whoever can write this file decides what is trusted, as whoever holds a signing key does:
keep it with the proxy's configuration. Anything malformed refuses the whole file
(``PinsFormatError``): a file that is half understood pins nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import yaml

from proxy.errors import InvalidDigestError, TrustDataError
from proxy.reference import validate_digest

__all__ = ["MAX_PINS_BYTES", "Pin", "Pins", "PinsFormatError", "RepositoryPins", "parse_pins"]

MAX_PINS_BYTES = 16 * 1024 * 1024
_REPO_KEYS = {"tags", "digests"}


class PinsFormatError(TrustDataError):
    """The pins file is not what it must be (never partly used)."""


@dataclass(frozen=True)
class Pin:
    """One pinned tag: the shared answer shape (proxy.sources.base.SignedAnswer)."""

    tag: str
    digest: str
    length: int | None
    pinned_in: str  # the file, for people

    @property
    def signers(self) -> tuple[str, ...]:
        return (f"pinned in {self.pinned_in}",)

    @property
    def evidence(self) -> Mapping[str, Any]:
        return {"pinned_in": self.pinned_in}


@dataclass(frozen=True)
class RepositoryPins:
    tags: Mapping[str, Pin] = field(default_factory=lambda: MappingProxyType({}))
    digests: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Pins:
    repositories: Mapping[str, RepositoryPins]
    #: ``sha256:<hex>`` of the file's bytes: the identity of this trust state
    file_digest: str


def parse_pins(data: bytes, *, name: str) -> Pins:
    """Raises PinsFormatError naming the key path (``repositories[...].tags.v1``)."""
    if len(data) > MAX_PINS_BYTES:
        raise PinsFormatError(f"{name}: larger than {MAX_PINS_BYTES} bytes")
    try:
        doc = yaml.safe_load(data.decode("utf-8"))  # JSON is YAML
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise PinsFormatError(f"{name}: not YAML or JSON: {e}") from e
    if not isinstance(doc, dict) or set(doc) - {"repositories"}:
        raise PinsFormatError(f"{name}: a mapping with one key, repositories")
    repos_raw = doc.get("repositories") or {}
    if not isinstance(repos_raw, dict):
        raise PinsFormatError(f"{name}: repositories must be a mapping")
    repos: dict[str, RepositoryPins] = {}
    for repo, body in repos_raw.items():
        where = f"{name}: repositories[{repo!r}]"
        if (
            not isinstance(repo, str)
            or not isinstance(body, dict)
            or set(body) - {"tags", "digests"}
        ):
            raise PinsFormatError(f"{where}: a mapping with tags and/or digests")
        tags_raw = body.get("tags") or {}
        digests_raw = body.get("digests") or []
        if not isinstance(tags_raw, dict) or not isinstance(digests_raw, list):
            raise PinsFormatError(f"{where}: tags is a mapping, digests a list")
        tags = {str(tag): _pin(str(tag), value, f"{where}.tags.{tag}", name)
                for tag, value in tags_raw.items()}  # fmt: skip
        digests = frozenset(_digest(d, f"{where}.digests[{i}]") for i, d in enumerate(digests_raw))
        repos[repo] = RepositoryPins(MappingProxyType(tags), digests)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return Pins(MappingProxyType(repos), digest)


def _digest(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise PinsFormatError(f"{where}: not a digest: {value!r}")
    try:
        validate_digest(value)
    except InvalidDigestError as e:
        raise PinsFormatError(f"{where}: not a digest: {value!r}") from e
    return value


def _pin(tag: str, value: Any, where: str, name: str) -> Pin:
    if isinstance(value, str):
        return Pin(tag, _digest(value, where), None, name)
    if isinstance(value, dict) and set(value) <= {"digest", "length"} and "digest" in value:
        length = value.get("length")
        if length is not None and (isinstance(length, bool) or not isinstance(length, int)
                                   or length < 0):  # fmt: skip
            raise PinsFormatError(f"{where}.length: not a length: {length!r}")
        return Pin(tag, _digest(value["digest"], where + ".digest"), length, name)
    raise PinsFormatError(f"{where}: a digest, or a mapping of digest and length")
