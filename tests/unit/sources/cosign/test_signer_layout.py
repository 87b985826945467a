"""The test signer's classic ``.sig`` signatures (testbed/cosign_signer.py, used by the
integration tests and the demo) are laid out as cosign's own in the connaisseur vectors,
byte layout of the payload included, and verify on the core's path."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from proxy.sources.cosign import CosignPolicy, KeyAuthority, evaluate, verify_classic
from proxy.sources.cosign.keys import VerifyingKey
from testbed import cosign_signer
from tests.unit.sources.cosign.vectors import ABC_DIGEST, TESTIMAGE, needs_vectors, sig_manifest

DIGEST = "sha256:" + "ab" * 32
REFERENCE = "registry.test/org/app"


def shape(node: Any) -> Any:
    """Keys and value types, recursively (values left out)."""
    if isinstance(node, dict):
        return {k: shape(v) for k, v in node.items()}
    if isinstance(node, list):
        return [shape(node[0])] if node else []
    return type(node).__name__


@needs_vectors
def test_layout_matches_the_connaisseur_vectors() -> None:
    keys = [cosign_signer.new_key() for _ in range(3)]
    manifest, blobs = cosign_signer.sig_manifest(DIGEST, REFERENCE, keys)
    ours = json.loads(manifest)
    theirs = json.loads(sig_manifest(ABC_DIGEST))  # alice, bob and charlie
    assert shape(ours) == shape(theirs)
    assert [layer["mediaType"] for layer in ours["layers"]] == [
        layer["mediaType"] for layer in theirs["layers"]
    ]
    assert {d["digest"] for d in ours["layers"]} == {blobs[1].digest}  # one payload, 3 signers
    # The payload: byte for byte cosign's, but for the reference and digest it names.
    vector_payload = (TESTIMAGE / "blobs" / (theirs["layers"][0]["digest"] + ".json")).read_bytes()
    critical = json.loads(vector_payload)["critical"]
    expected = vector_payload.replace(
        critical["identity"]["docker-reference"].encode(), REFERENCE.encode()
    ).replace(critical["image"]["docker-manifest-digest"].encode(), DIGEST.encode())
    assert blobs[1].data == expected


def test_signatures_verify_on_the_core_path() -> None:
    keys = [cosign_signer.new_key() for _ in range(2)]
    manifest, blobs = cosign_signer.sig_manifest(DIGEST, REFERENCE, keys)
    verifying = [VerifyingKey(k.public_key()) for k in keys]
    result = verify_classic(
        manifest,
        {b.digest: b.data for b in blobs},
        digest=DIGEST,
        keys=verifying,
        root=None,
        now=datetime.now(UTC),
    )
    assert len(result.verified) == 2
    assert not result.rejected
    policy = CosignPolicy(tuple(KeyAuthority(k) for k in verifying), threshold=2, tlog="optional")
    verdict = evaluate(policy, repository=REFERENCE, digest=DIGEST, signatures=result.verified)
    assert verdict.accepted
