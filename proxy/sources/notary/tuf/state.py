"""Persisted trust state of one repository, for rollback/freeze protection across refreshes.

What comes back from a store is untrusted: :meth:`TrustedSet.from_state` re-verifies every
byte. Caveat: under :class:`~.roots.TrustOnFirstUse` the stored root *is* the
trust anchor, so whoever can write the store can choose it (as with notary's local cache).
A store that lies about ``versions`` can only cause refusals (rollback errors), never
acceptance. Nothing in a state says whether it is current: a store writer can put back an
older, genuine one, so a state read back is never a reason to skip the trust server's signed
timestamp (``proxy.sources.store``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from proxy.sources.notary.tuf.canonical import MAX_SAFE_INT
from proxy.sources.notary.tuf.errors import MetadataFormatError, OversizeMetadataError

__all__ = ["STATE_FORMAT", "TrustedState"]

STATE_FORMAT: Final = 1
_ROLE = "state"


@dataclass(frozen=True)
class TrustedState:
    """The latest trusted root, last trusted versions, and verified bytes per role."""

    gun: str
    root: bytes = field(repr=False)
    #: role -> highest version trusted so far (``root``, ``timestamp``, ``targets/releases``...)
    versions: Mapping[str, int]
    #: role -> raw bytes verified last time (``timestamp``, ``snapshot``, ``targets``, ...)
    metadata: Mapping[str, bytes] = field(repr=False)

    def to_bytes(self) -> bytes:
        """Serialise as JSON (binary fields base64)."""
        doc = {
            "format": STATE_FORMAT,
            "gun": self.gun,
            "root": base64.b64encode(self.root).decode("ascii"),
            "versions": dict(sorted(self.versions.items())),
            "metadata": {
                k: base64.b64encode(v).decode("ascii") for k, v in sorted(self.metadata.items())
            },
        }
        return json.dumps(doc, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, raw: bytes, *, max_bytes: int = 64 * 1024 * 1024) -> TrustedState:
        """Parse what :meth:`to_bytes` wrote. Only the shape is checked here.

        Raises:
            OversizeMetadataError: ``raw`` is longer than ``max_bytes``.
            MetadataFormatError: not a state document of a known format.
        """
        if len(raw) > max_bytes:
            raise OversizeMetadataError(f"{len(raw)} bytes exceeds {max_bytes}", role=_ROLE)
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise MetadataFormatError(f"not valid JSON: {e}", role=_ROLE) from e
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
            raise MetadataFormatError("unknown state format", role=_ROLE, field="format")
        gun = doc.get("gun")
        if not isinstance(gun, str):
            raise MetadataFormatError("not a string", role=_ROLE, field="gun")
        versions_in = doc.get("versions")
        metadata_in = doc.get("metadata")
        if not isinstance(versions_in, dict) or not isinstance(metadata_in, dict):
            raise MetadataFormatError("not an object", role=_ROLE, field="versions/metadata")
        versions: dict[str, int] = {}
        for k, v in versions_in.items():
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_SAFE_INT:
                raise MetadataFormatError("not a version", role=_ROLE, field=f"versions.{k}")
            versions[k] = v
        metadata = {k: _b64(v, f"metadata.{k}") for k, v in metadata_in.items()}
        return cls(
            gun=gun,
            root=_b64(doc.get("root"), "root"),
            versions=MappingProxyType(versions),
            metadata=MappingProxyType(metadata),
        )


def _b64(v: object, where: str) -> bytes:
    if not isinstance(v, str):
        raise MetadataFormatError("not a string", role=_ROLE, field=where)
    try:
        return base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError) as e:
        raise MetadataFormatError("invalid base64", role=_ROLE, field=where) from e
