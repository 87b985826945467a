"""A fake :class:`~proxy.sources.base.RegistryReads` over OCI layouts and helper-made
signatures, for the Notation judge and source tests (no HTTP: the reader itself is tested
in tests/unit/test_registry_reader.py and against the real registry)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.errors import OversizeError, UpstreamContentError, UpstreamUnavailableError
from proxy.sources.base import TaggedManifest
from testbed.notation_signer import SignatureArtifact, referrers_index


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class FakeRegistry:
    """Manifests and blobs by digest, tags, and referrers answered either by an API
    (``referrers_api``: every stored manifest whose ``subject`` is the digest) or by the
    ``sha256-<hex>`` tag index only (Debian's registry 2.8.2)."""

    manifests: dict[str, bytes] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    referrers_api: bool = False
    down: bool = False
    reads: list[str] = field(default_factory=list)

    def _check(self) -> None:
        if self.down:
            raise UpstreamUnavailableError("registry", "connection refused")

    # --- filling it ----------------------------------------------------------------------

    def put_manifest(self, body: bytes, tag: str | None = None) -> str:
        digest = digest_of(body)
        self.manifests[digest] = body
        if tag is not None:
            self.tags[tag] = digest
        return digest

    def put_signature(self, artifact: SignatureArtifact, *, index: bool = True) -> None:
        """Store a signature; ``index``: also add it to its subject's tag index (what a
        client does by read-modify-write on a registry without the API)."""
        self.put_manifest(artifact.manifest)
        self.blobs.update(artifact.blobs)
        if index:
            subject = json.loads(artifact.manifest)["subject"]["digest"]
            tag = subject.replace(":", "-", 1)
            listed: list[Mapping[str, Any]] = []
            if tag in self.tags:
                listed = json.loads(self.manifests[self.tags[tag]])["manifests"]
            self.put_manifest(referrers_index([*listed, artifact.descriptor()]), tag)

    @classmethod
    def from_layout(cls, root: Path, *, referrers_api: bool = False) -> FakeRegistry:
        reg = cls(referrers_api=referrers_api)
        index = json.loads((root / "index.json").read_bytes())
        for path in (root / "blobs" / "sha256").iterdir():
            data = path.read_bytes()
            reg.blobs["sha256:" + path.name] = data
        for m in index["manifests"]:
            body = reg.blobs[m["digest"]]
            reg.manifests[m["digest"]] = body
            tag = m.get("annotations", {}).get("org.opencontainers.image.ref.name")
            if tag:
                reg.tags[tag] = m["digest"]
        return reg

    # --- RegistryReads -------------------------------------------------------------------

    async def manifest(self, digest: str) -> bytes | None:
        self._check()
        self.reads.append(f"manifest {digest}")
        body = self.manifests.get(digest)
        if body is not None and digest_of(body) != digest:
            raise UpstreamContentError(f"manifest {digest}: bytes are not the digest")
        return body

    async def manifest_by_tag(self, tag: str) -> TaggedManifest | None:
        self._check()
        digest = self.tags.get(tag)
        if digest is None:
            return None
        body = self.manifests[digest]
        return TaggedManifest(digest_of(body), body)

    async def head_tag(self, tag: str) -> str | None:
        self._check()
        self.reads.append(f"head {tag}")
        return self.tags.get(tag)

    async def referrers(self, digest: str) -> list[Mapping[str, Any]]:
        self._check()
        self.reads.append(f"referrers {digest}")
        if self.referrers_api:
            out: list[Mapping[str, Any]] = []
            for d, body in self.manifests.items():
                try:
                    doc = json.loads(body)
                except ValueError:
                    continue
                if not isinstance(doc, dict) or doc.get("subject", {}).get("digest") != digest:
                    continue
                artifact_type = doc.get("artifactType") or doc.get("config", {}).get("mediaType")
                out.append(
                    {
                        "mediaType": doc.get("mediaType"),
                        "digest": d,
                        "size": len(body),
                        "artifactType": artifact_type,
                    }
                )
            return out
        tagged = await self.manifest_by_tag(digest.replace(":", "-", 1))
        if tagged is None:
            return []
        items = json.loads(tagged.body).get("manifests", [])
        return [m for m in items if isinstance(m, dict) and isinstance(m.get("digest"), str)]

    async def blob(self, digest: str, max_bytes: int) -> bytes | None:
        self._check()
        self.reads.append(f"blob {digest}")
        data = self.blobs.get(digest)
        if data is None:
            return None
        if len(data) > max_bytes:
            raise OversizeError("blob", max_bytes)
        if digest_of(data) != digest:
            raise UpstreamContentError(f"blob {digest}: bytes are not the digest")
        return data
