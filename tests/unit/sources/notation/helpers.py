"""Vector locations and small readers for the Notation tests (vectors are read in place)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from proxy.sources.notation.trustpolicy import StoreRef, StoreType
from proxy.sources.notation.truststore import TrustStore, parse_certificates

# <repo>/../shared/vectors/notation (CI puts shared/ beside the checkout)
NOTATION = Path(__file__).resolve().parents[4] / ".." / "shared" / "vectors" / "notation"
E2E = NOTATION / "notation" / "test" / "e2e" / "testdata"
LAYOUTS = E2E / "registry" / "oci_layout"
POLICIES = E2E / "config" / "trustpolicies"
LOCALKEYS = E2E / "config" / "localkeys"
GO = NOTATION / "notation-go"
MOCK = GO / "internal" / "mock" / "testdata"
GO_TESTDATA = GO / "internal" / "testdata"
TRUSTSTORE = GO / "verifier" / "testdata" / "truststore"
TIMESTAMP = GO / "verifier" / "testdata" / "timestamp"
CONN = (
    NOTATION / "connaisseur" / "test" / "testdata" / "notation" / "sse-secure-systems" / "testimage"
)

needs_vectors = pytest.mark.skipif(
    not NOTATION.is_dir(), reason=f"Notation vectors not found at {NOTATION} (../shared/vectors)"
)

#: After the e2e expiries (2023-2025) and before the valid certificates' ends (2033+).
NOW = datetime(2026, 6, 1, tzinfo=UTC)
SIGNATURE_TYPE = "application/vnd.cncf.notary.signature"


def store_of(**stores: list[Path]) -> TrustStore:
    """``store_of(ca__e2e=[path])``: type and name separated by a double underscore."""
    loaded = {}
    for key, paths in stores.items():
        kind, name = key.split("__", 1)
        certs = [c for p in paths for c in parse_certificates(p.read_bytes(), p.name)]
        loaded[StoreRef(StoreType(kind), name.replace("_", "-"))] = certs
    return TrustStore.of(loaded)


@dataclass(frozen=True)
class LayoutSignature:
    manifest_digest: str
    envelope: bytes
    media_type: str


@dataclass(frozen=True)
class Layout:
    subject: bytes
    subject_media_type: str
    signatures: tuple[LayoutSignature, ...]
    tag_index: dict[str, object] | None


def blob(layout: Path, digest: str) -> bytes:
    algo, hexpart = digest.split(":")
    return (layout / "blobs" / algo / hexpart).read_bytes()


def read_layout(name: str) -> Layout:
    """The tagged subject and every signature manifest the layout's index.json lists (the
    complete set; the ``sha256-…`` tag index may list fewer)."""
    root = LAYOUTS / name
    index = json.loads((root / "index.json").read_bytes())
    subject_desc = next(
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "v1"
    )
    subject = blob(root, subject_desc["digest"])
    sigs = []
    tag_index = None
    for m in index["manifests"]:
        ref = m.get("annotations", {}).get("org.opencontainers.image.ref.name", "")
        if ref.startswith("sha256-"):
            tag_index = json.loads(blob(root, m["digest"]))
            continue
        manifest = json.loads(blob(root, m["digest"]))
        artifact_type = manifest.get("artifactType") or manifest.get("config", {}).get("mediaType")
        if artifact_type != SIGNATURE_TYPE:
            continue
        if manifest.get("subject", {}).get("digest") != subject_desc["digest"]:
            continue
        (layer,) = manifest["layers"]
        sigs.append(LayoutSignature(m["digest"], blob(root, layer["digest"]), layer["mediaType"]))
    return Layout(subject, subject_desc["mediaType"], tuple(sigs), tag_index)
