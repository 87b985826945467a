"""A registry in memory behind the ``RegistryReads`` interface, for the cosign judge's tests:
tags, manifests by digest, blobs and referrers of one repository (others reachable through
``for_repository``), with the reader's checks (bounded reads, digests verified) and a log of
every read so tests can count round trips."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.errors import OversizeError, UpstreamContentError, UpstreamUnavailableError
from proxy.sources.base import TaggedManifest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
BUNDLE_V03 = "application/vnd.dev.sigstore.bundle.v0.3+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class FakeRegistry:
    name: str = "registry.test/org/app"
    tags: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[str, bytes] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    referrer_lists: dict[str, list[Mapping[str, Any]]] = field(default_factory=dict)
    others: dict[str, FakeRegistry] = field(default_factory=dict)
    reads: list[str] = field(default_factory=list)
    down: bool = False

    def _read(self, what: str) -> None:
        if self.down:
            raise UpstreamUnavailableError("test", f"down ({what})")
        self.reads.append(what)

    def for_repository(self, repository: str) -> FakeRegistry | None:
        return self.others.get(repository)

    async def manifest(self, digest: str) -> bytes | None:
        self._read(f"manifest {digest}")
        body = self.manifests.get(digest)
        if body is not None and sha256(body) != digest:
            raise UpstreamContentError(f"manifest is not {digest}")
        return body

    async def manifest_by_tag(self, tag: str) -> TaggedManifest | None:
        self._read(f"tag {tag}")
        body = self.tags.get(tag)
        return None if body is None else TaggedManifest(sha256(body), body)

    async def head_tag(self, tag: str) -> str | None:
        self._read(f"head {tag}")
        body = self.tags.get(tag)
        return None if body is None else sha256(body)

    async def referrers(self, digest: str) -> list[Mapping[str, Any]]:
        self._read(f"referrers {digest}")
        return list(self.referrer_lists.get(digest, []))

    async def blob(self, digest: str, max_bytes: int) -> bytes | None:
        self._read(f"blob {digest}")
        data = self.blobs.get(digest)
        if data is None:
            return None
        if len(data) > max_bytes:
            raise OversizeError("blob", max_bytes)
        if sha256(data) != digest:
            raise UpstreamContentError(f"blob is not {digest}")
        return data

    # --- publishing, as cosign does -------------------------------------------------------

    def put_image(self, tag: str, manifest: bytes) -> str:
        digest = sha256(manifest)
        self.tags[tag] = manifest
        self.manifests[digest] = manifest
        return digest

    def put_manifest(self, body: bytes, tag: str | None = None) -> str:
        """A manifest by digest (and under ``tag``): the contract test's way of filling a
        registry, shared with the Notation fake."""
        digest = sha256(body)
        self.manifests[digest] = body
        if tag is not None:
            self.tags[tag] = body
        return digest

    def put_sig(self, digest: str, sig_manifest: bytes, blobs: Mapping[str, bytes]) -> None:
        algorithm, _, hex_part = digest.partition(":")
        self.tags[f"{algorithm}-{hex_part}.sig"] = sig_manifest
        self.blobs.update(blobs)

    def attach_bundle(
        self,
        digest: str,
        bundle: bytes,
        *,
        subject: str | None = None,
        artifact_type: str = BUNDLE_V03,
        predicate_type: str = "https://sigstore.dev/cosign/sign/v1",
    ) -> str:
        """A bundle referrer as cosign 3 writes it; returns the referrer's digest."""
        layer = sha256(bundle)
        self.blobs[layer] = bundle
        empty = b"{}"
        self.blobs[sha256(empty)] = empty
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": artifact_type,
                "config": {
                    "mediaType": "application/vnd.oci.empty.v1+json",
                    "digest": sha256(empty),
                    "size": 2,
                },
                "layers": [{"mediaType": BUNDLE_V03, "digest": layer, "size": len(bundle)}],
                "subject": {"mediaType": OCI_MANIFEST, "digest": subject or digest, "size": 500},
                "annotations": {
                    "dev.sigstore.bundle.content": "dsse-envelope",
                    "dev.sigstore.bundle.predicateType": predicate_type,
                },
            }
        ).encode()
        ref = sha256(manifest)
        self.manifests[ref] = manifest
        self.referrer_lists.setdefault(digest, []).append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": ref,
                "size": len(manifest),
                "artifactType": artifact_type,
                "annotations": {"dev.sigstore.bundle.predicateType": predicate_type},
            }
        )
        return ref
