"""Where the cosign vectors are (read in place, never copied) and a skip marker."""

from __future__ import annotations

from pathlib import Path

import pytest

# <repo>/../shared/vectors/cosign (CI puts the shared folder beside the checkout)
COSIGN_VECTORS = Path(__file__).resolve().parents[4] / ".." / "shared" / "vectors" / "cosign"
CONNAISSEUR = COSIGN_VECTORS / "connaisseur" / "test" / "testdata" / "cosign"
TESTIMAGE = CONNAISSEUR / "securesystemsengineering" / "testimage"
COSIGN_DATA = COSIGN_VECTORS / "cosign" / "pkg" / "cosign" / "testdata"
SIGSTORE_PY = COSIGN_VECTORS / "sigstore-python"
SIGSTORE_ASSETS = SIGSTORE_PY / "test" / "assets"
PRODUCTION_ROOT = SIGSTORE_PY / "sigstore" / "_store" / "production" / "trusted_root.json"
STAGING_ROOT = SIGSTORE_PY / "sigstore" / "_store" / "staging" / "trusted_root.json"

needs_vectors = pytest.mark.skipif(
    not COSIGN_VECTORS.is_dir(),
    reason="cosign test vectors not found (expected ../shared/vectors/cosign beside the checkout)",
)

ALICE_DIGEST = "sha256:071bf7a986f1ca9cb2a1f0bc8392822a7777f90d58f2d2c6f271913e08de7c81"
ABC_DIGEST = "sha256:bfec161fecb0a887df7cb85e4da327c65986ccda7060cf3cd92171c6c90d7533"
KEYLESS_DIGEST = "sha256:31dc72a13a0c34b40eb95419d2b2fd67320c856baf3b72da518023ee8d370aee"
TESTIMAGE_REPO = "docker.io/securesystemsengineering/testimage"
KEYLESS_REPO = "docker.io/phbelitz/rekor-test"


def sig_manifest(digest: str) -> bytes:
    algorithm, _, hex_part = digest.partition(":")
    return (TESTIMAGE / "manifests" / f"{algorithm}-{hex_part}.sig.json").read_bytes()


def image_blobs() -> dict[str, bytes]:
    return {p.name.removesuffix(".json"): p.read_bytes() for p in (TESTIMAGE / "blobs").iterdir()}
