"""Notation signatures in a real registry: the upstream e2e OCI layouts and helper-made
signatures pushed the way notation pushes them to a registry without the referrers API
(Debian's docker-registry 2.8.2): the image, the signature manifests by digest, and the
``sha256-<hex>`` tag index (read-modify-write).

The image goes through skopeo (``oci:<layout>:v1``, digests preserved). skopeo 1.9 cannot
address a layout's untagged manifests and refuses to write the tag index unchanged
("Manifest list must be converted"), so signature manifests and the index are pushed as
exact bytes over the registry API.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from testbed import images
from testbed.notation_signer import SignatureArtifact, referrers_index

__all__ = ["push_layout", "push_signature", "tag_index_tag"]

_INDEX = "application/vnd.oci.image.index.v1+json"


def tag_index_tag(digest: str) -> str:
    return digest.replace(":", "-", 1)


def _blob(layout: Path, digest: str) -> bytes:
    algo, hexpart = digest.split(":", 1)
    return (layout / "blobs" / algo / hexpart).read_bytes()


def _put_manifest(client: httpx.Client, repo: str, ref: str, body: bytes, media_type: str) -> None:
    r = client.put(
        f"/v2/{repo}/manifests/{ref}", content=body, headers={"Content-Type": media_type}
    )
    r.raise_for_status()


def _push_manifest_with_blobs(
    client: httpx.Client, repo: str, body: bytes, blobs: Mapping[str, bytes]
) -> str:
    doc = json.loads(body)
    for d in [doc.get("config"), *doc.get("layers", [])]:
        if isinstance(d, dict) and d.get("digest") in blobs:
            images.push_blob(client, repo, images.Blob(blobs[d["digest"]], d.get("mediaType", "")))
    digest = images.sha256(body)
    _put_manifest(client, repo, digest, body, doc.get("mediaType", images.OCI_MANIFEST))
    return digest


def push_layout(registry_url: str, host: str, layout: Path, repo: str) -> str:
    """Push an e2e layout to ``repo``: ``v1`` by skopeo, every signature manifest of it,
    and the tag index (the layout's own, byte for byte, when it has one: it may list fewer
    signatures than exist, as upstream's; else one listing them all). Returns v1's digest."""
    done = subprocess.run(
        ["skopeo", "--insecure-policy", "copy", "--preserve-digests", "--dest-tls-verify=false",
         f"oci:{layout}:v1", f"docker://{host}/{repo}:v1"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"skopeo copy {layout.name}: {done.stderr[-500:]}")
    index = json.loads((layout / "index.json").read_bytes())
    refs = {
        m.get("annotations", {}).get("org.opencontainers.image.ref.name", ""): m
        for m in index["manifests"]
    }
    subject = refs["v1"]["digest"]
    blobs = {"sha256:" + p.name: p.read_bytes() for p in (layout / "blobs" / "sha256").iterdir()}
    listed: list[dict[str, Any]] = []
    with httpx.Client(base_url=registry_url, timeout=30) as client:
        for m in index["manifests"]:
            body = _blob(layout, m["digest"])
            doc = json.loads(body)
            if doc.get("subject", {}).get("digest") != subject:
                continue
            _push_manifest_with_blobs(client, repo, body, blobs)
            artifact_type = doc.get("artifactType") or doc["config"]["mediaType"]
            listed.append(
                {
                    "mediaType": doc["mediaType"],
                    "digest": m["digest"],
                    "size": len(body),
                    "artifactType": artifact_type,
                }
            )
        own = refs.get(tag_index_tag(subject))
        body = _blob(layout, own["digest"]) if own is not None else referrers_index(listed)
        _put_manifest(client, repo, tag_index_tag(subject), body, _INDEX)
    return str(subject)


def push_signature(registry_url: str, repo: str, artifact: SignatureArtifact) -> None:
    """Push a helper-made signature and add it to its subject's tag index, as notation does
    on a registry without the referrers API (read-modify-write)."""
    subject = json.loads(artifact.manifest)["subject"]["digest"]
    with httpx.Client(base_url=registry_url, timeout=30) as client:
        _push_manifest_with_blobs(client, repo, artifact.manifest, artifact.blobs)
        tag = tag_index_tag(subject)
        r = client.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": _INDEX})
        listed: list[Any] = []
        if r.status_code == 200:
            listed = [
                m for m in r.json().get("manifests", []) if m.get("digest") != artifact.digest
            ]
        elif r.status_code != 404:
            r.raise_for_status()
        _put_manifest(client, repo, tag, referrers_index([*listed, artifact.descriptor()]), _INDEX)
