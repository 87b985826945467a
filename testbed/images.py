"""Build container images in Python and push them to a registry over the HTTP API.

No Docker engine is needed: a layer is a gzipped tar made here, a config is JSON, and the
four manifest kinds clients meet are written by hand (OCI manifest, Docker schema2
manifest, OCI index, Docker manifest list).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

ACCEPT_ALL = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Blob:
    data: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return sha256(self.data)

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data)}


@dataclass
class Image:
    """A manifest (or index) plus everything it references, ready to push."""

    manifest: bytes
    media_type: str
    blobs: list[Blob] = field(default_factory=list)
    children: list[Image] = field(default_factory=list)  # for an index / manifest list

    @property
    def digest(self) -> str:
        return sha256(self.manifest)


def make_layer(files: dict[str, bytes], media_type: str = OCI_LAYER) -> Blob:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(content))
    return Blob(gzip.compress(buf.getvalue(), mtime=0), media_type)


def make_config(
    diff_ids: list[str], *, arch: str = "amd64", label: str = "", media_type: str = OCI_CONFIG
) -> Blob:
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {"Labels": {"testbed": label}, "Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    return Blob(json.dumps(config, sort_keys=True).encode(), media_type)


def single_image(label: str, *, docker: bool = False, arch: str = "amd64") -> Image:
    """A one-layer image; ``docker=True`` makes a Docker schema2 manifest, else OCI."""
    content = f"hello from {label} ({arch})\n".encode()
    layer = make_layer({"hello.txt": content}, DOCKER_LAYER if docker else OCI_LAYER)
    diff_id = sha256(gzip.decompress(layer.data))
    config = make_config([diff_id], arch=arch, label=label,
                         media_type=DOCKER_CONFIG if docker else OCI_CONFIG)  # fmt: skip
    media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config.descriptor(),
        "layers": [layer.descriptor()],
    }
    return Image(json.dumps(manifest, indent=3).encode(), media_type, [config, layer])


def multi_arch_image(label: str, *, docker: bool = False) -> Image:
    """An OCI index (or Docker manifest list) over amd64 and arm64 images."""
    children = [single_image(f"{label}-{arch}", docker=docker, arch=arch)
                for arch in ("amd64", "arm64")]  # fmt: skip
    media_type = DOCKER_LIST if docker else OCI_INDEX
    index = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [
            {"mediaType": c.media_type, "digest": c.digest, "size": len(c.manifest),
             "platform": {"architecture": arch, "os": "linux"}}
            for c, arch in zip(children, ("amd64", "arm64"), strict=True)
        ],
    }  # fmt: skip
    return Image(json.dumps(index, indent=3).encode(), media_type, [], children)


def _with_digest(location: str, digest: str) -> str:
    # The upload Location carries its own query (_state=...): append, do not replace.
    return location + ("&" if "?" in location else "?") + "digest=" + digest.replace(":", "%3A")


def push_blob(client: httpx.Client, repo: str, blob: Blob) -> None:
    if client.head(f"/v2/{repo}/blobs/{blob.digest}").status_code == 200:
        return
    start = client.post(f"/v2/{repo}/blobs/uploads/")
    start.raise_for_status()
    location = start.headers["location"]
    done = client.put(_with_digest(location, blob.digest), content=blob.data,
                      headers={"Content-Type": "application/octet-stream"})  # fmt: skip
    done.raise_for_status()


def push_blob_stream(client: httpx.Client, repo: str, chunks: Iterator[bytes], digest: str) -> None:
    """Push a large blob in chunks (PATCH per chunk) without holding it in memory."""
    start = client.post(f"/v2/{repo}/blobs/uploads/")
    start.raise_for_status()
    location = start.headers["location"]
    offset = 0
    for chunk in chunks:
        r = client.patch(location, content=chunk, headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
        })  # fmt: skip
        r.raise_for_status()
        offset += len(chunk)
        location = r.headers["location"]
    done = client.put(_with_digest(location, digest))
    done.raise_for_status()


def push_image(client: httpx.Client, repo: str, image: Image, tag: str | None) -> str:
    """Push ``image`` (children first) and tag it; returns the manifest digest."""
    for child in image.children:
        push_image(client, repo, child, None)
    for blob in image.blobs:
        push_blob(client, repo, blob)
    ref = tag or image.digest
    r = client.put(f"/v2/{repo}/manifests/{ref}", content=image.manifest,
                   headers={"Content-Type": image.media_type})  # fmt: skip
    r.raise_for_status()
    return image.digest


def random_chunks(total: int, chunk: int = 4 * 1024 * 1024, seed: bytes = b"") -> Iterator[bytes]:
    """Deterministic pseudo-random bytes (sha256 counter mode), ``total`` long."""
    produced = 0
    counter = 0
    block = b""
    while produced < total:
        size = min(chunk, total - produced)
        out = bytearray()
        while len(out) < size:
            if not block:
                block = hashlib.sha256(seed + counter.to_bytes(8, "big")).digest() * 2048
                counter += 1
            take = min(len(block), size - len(out))
            out += block[:take]
            block = block[take:]
        produced += size
        yield bytes(out)


def random_blob_digest(total: int, seed: bytes = b"") -> str:
    h = hashlib.sha256()
    for c in random_chunks(total, seed=seed):
        h.update(c)
    return "sha256:" + h.hexdigest()


def urandom_blob(size: int) -> Blob:
    return Blob(os.urandom(size), "application/octet-stream")
