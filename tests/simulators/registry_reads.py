"""An in-memory registry as a trust source or the gate reads it (proxy.sources.base
.RegistryReads): manifests by digest and by tag, referrers, blobs; reads are counted."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from proxy.sources.base import TaggedManifest


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class DictRegistry:
    def __init__(
        self, manifests: Mapping[str, bytes] | None = None, tags: Mapping[str, bytes] | None = None
    ) -> None:
        self.manifests: dict[str, bytes] = dict(manifests or {})
        self.tags: dict[str, bytes] = dict(tags or {})
        self.referrers_of: dict[str, list[Mapping[str, Any]]] = {}
        self.blobs: dict[str, bytes] = {}
        self.reads: list[str] = []

    async def manifest(self, digest: str) -> bytes | None:
        self.reads.append(f"manifest {digest}")
        return self.manifests.get(digest)

    async def manifest_by_tag(self, tag: str) -> TaggedManifest | None:
        self.reads.append(f"tag {tag}")
        body = self.tags.get(tag)
        return TaggedManifest(sha256(body), body) if body is not None else None

    async def head_tag(self, tag: str) -> str | None:
        self.reads.append(f"head {tag}")
        body = self.tags.get(tag)
        return sha256(body) if body is not None else None

    async def referrers(self, digest: str) -> list[Mapping[str, Any]]:
        self.reads.append(f"referrers {digest}")
        return list(self.referrers_of.get(digest, []))

    async def blob(self, digest: str, max_bytes: int) -> bytes | None:
        self.reads.append(f"blob {digest}")
        body = self.blobs.get(digest)
        return body[: max_bytes + 1] if body is not None else None
