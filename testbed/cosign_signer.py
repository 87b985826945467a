"""Cosign-shaped signatures pushed into a real registry, for integration tests and the demo.

No cosign binary is installable here (see the cosign notes), so:

- **classic** key-based signatures (cosign ≤ 2, ``cosign sign --key``) are made by this
  module: one simple-signing payload per image, byte layout as cosign writes it, one layer
  per signer in the ``sha256-<hex>.sig`` manifest with the
  ``dev.cosignproject.cosign/signature`` annotation (ECDSA P-256, SHA-256, DER, base64).
  Its structure is checked against the connaisseur vectors
  (``tests/unit/sources/cosign/test_signer_layout.py``);
- **bundles** (cosign 3) are made by sigstore-js (:mod:`testbed.sigstore_js_signer`) and
  attached here as cosign attaches them: a referrer manifest (``artifactType`` the bundle
  media type, empty config, one bundle layer, ``subject`` the image) plus, since Debian's
  registry has no referrers API, the referrers tag-schema index ``sha256-<hex>``.
"""

from __future__ import annotations

import base64
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from testbed import images

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
BUNDLE_V03 = "application/vnd.dev.sigstore.bundle.v0.3+json"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
COSIGN_SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
IN_TOTO = "application/vnd.in-toto+json"


def new_key() -> ec.EllipticCurvePrivateKey:
    """A cosign default key: ECDSA P-256."""
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def simple_signing_payload(digest: str, reference: str) -> bytes:
    """What cosign signs for an image: its digest and the repository it names."""
    return json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": reference},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature",
            },
            "optional": None,
        },
        separators=(",", ":"),
    ).encode()


def signature_tag(digest: str) -> str:
    algorithm, _, hex_part = digest.partition(":")
    return f"{algorithm}-{hex_part}.sig"


def referrers_tag(digest: str) -> str:
    algorithm, _, hex_part = digest.partition(":")
    return f"{algorithm}-{hex_part}"


def sig_manifest(
    digest: str, reference: str, keys: Sequence[ec.EllipticCurvePrivateKey]
) -> tuple[bytes, list[images.Blob]]:
    """The ``.sig`` manifest signing ``digest`` as ``reference`` with each key (one layer
    per signer, as ``cosign sign`` appends them), and the blobs it references."""
    payload = simple_signing_payload(digest, reference)
    layers = []
    for key in keys:
        signature = key.sign(payload, ec.ECDSA(hashes.SHA256()))
        layers.append((payload, {SIGNATURE_ANNOTATION: base64.b64encode(signature).decode()}))
    return layered_manifest(layers)


def layered_manifest(
    layers: Sequence[tuple[bytes, Mapping[str, str]]],
) -> tuple[bytes, list[images.Blob]]:
    """A ``.sig`` manifest of simple-signing layers (payload, annotations) made elsewhere
    (e.g. keyless layers with certificate, chain and Rekor bundle annotations), and the
    blobs it references (cosign's config, the payloads)."""
    payloads = {images.sha256(p): images.Blob(p, SIMPLE_SIGNING) for p, _ in layers}
    descriptors = []
    for payload, notes in layers:
        layer = dict(payloads[images.sha256(payload)].descriptor())
        layer["annotations"] = dict(notes)
        descriptors.append(layer)
    # cosign's config: an image config whose rootfs lists the layers (never verified).
    config = images.Blob(
        json.dumps(
            {
                "architecture": "",
                "created": "0001-01-01T00:00:00Z",
                "history": [{"created": "0001-01-01T00:00:00Z"}],
                "os": "",
                "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in descriptors]},
                "config": {},
            },
            separators=(",", ":"),
        ).encode(),
        images.OCI_CONFIG,
    )
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": images.OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": descriptors,
        },
        separators=(",", ":"),
    ).encode()
    return manifest, [config, *payloads.values()]


def push_signature(
    client: httpx.Client, repo: str, digest: str, manifest: bytes, blobs: Sequence[images.Blob]
) -> str:
    """Push a ``.sig`` manifest and its blobs under ``digest``'s signature tag."""
    for blob in blobs:
        images.push_blob(client, repo, blob)
    r = client.put(
        f"/v2/{repo}/manifests/{signature_tag(digest)}",
        content=manifest,
        headers={"Content-Type": images.OCI_MANIFEST},
    )
    r.raise_for_status()
    return images.sha256(manifest)


def sign_classic(
    client: httpx.Client,
    repo: str,
    digest: str,
    reference: str,
    keys: Sequence[ec.EllipticCurvePrivateKey],
) -> str:
    """Push the ``.sig`` signature of ``digest`` into ``repo``; its manifest digest."""
    manifest, blobs = sig_manifest(digest, reference, keys)
    return push_signature(client, repo, digest, manifest, blobs)


def delete_manifest(client: httpx.Client, repo: str, digest: str) -> None:
    """Delete a manifest by digest (the registry must allow deletes): its tags go too."""
    r = client.delete(f"/v2/{repo}/manifests/{digest}")
    r.raise_for_status()


def dsse_bundle(key: ec.EllipticCurvePrivateKey, digest: str) -> bytes:
    """A cosign-3-shaped signature bundle of image ``digest`` (in-toto statement, predicate
    ``https://sigstore.dev/cosign/sign/v1``), made by sigstore-js with ``key``."""
    from testbed import sigstore_js_signer

    algorithm, _, hex_part = digest.partition(":")
    statement = json.dumps(
        {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"digest": {algorithm: hex_part}}],
            "predicateType": COSIGN_SIGN_PREDICATE,
            "predicate": {},
        }
    ).encode()
    with tempfile.TemporaryDirectory() as tmp:
        key_file, payload_file = Path(tmp) / "key.pem", Path(tmp) / "statement.json"
        key_file.write_bytes(private_pem(key))
        payload_file.write_bytes(statement)
        return sigstore_js_signer.sign_dsse_bundle(key_file, payload_file, IN_TOTO)


def attach_bundle(
    client: httpx.Client,
    repo: str,
    subject: images.Image | tuple[str, str, int],
    bundle: bytes,
    *,
    predicate_type: str = COSIGN_SIGN_PREDICATE,
) -> str:
    """Attach ``bundle`` to ``subject`` (an image, or (media type, digest, size)) as cosign
    3 does, and list it in the referrers tag-schema index; the referrer's digest."""
    if isinstance(subject, images.Image):
        media_type, digest, size = subject.media_type, subject.digest, len(subject.manifest)
    else:
        media_type, digest, size = subject
    empty = images.Blob(b"{}", EMPTY_CONFIG)
    layer = images.Blob(bundle, BUNDLE_V03)
    for blob in (empty, layer):
        images.push_blob(client, repo, blob)
    annotations = {
        "dev.sigstore.bundle.content": "dsse-envelope",
        "dev.sigstore.bundle.predicateType": predicate_type,
    }
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": images.OCI_MANIFEST,
            "artifactType": BUNDLE_V03,
            "config": empty.descriptor(),
            "layers": [layer.descriptor()],
            "subject": {"mediaType": media_type, "digest": digest, "size": size},
            "annotations": annotations,
        },
        separators=(",", ":"),
    ).encode()
    referrer = images.sha256(manifest)
    r = client.put(
        f"/v2/{repo}/manifests/{referrer}",
        content=manifest,
        headers={"Content-Type": images.OCI_MANIFEST},
    )
    r.raise_for_status()
    # The tag schema (OCI distribution-spec 1.1), kept as go-containerregistry keeps it.
    index_tag = referrers_tag(digest)
    got = client.get(f"/v2/{repo}/manifests/{index_tag}", headers={"Accept": images.OCI_INDEX})
    entries = got.json().get("manifests", []) if got.status_code == 200 else []
    entries.append(
        {
            "mediaType": images.OCI_MANIFEST,
            "digest": referrer,
            "size": len(manifest),
            "artifactType": BUNDLE_V03,
            "annotations": annotations,
        }
    )
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": images.OCI_INDEX, "manifests": entries},
        separators=(",", ":"),
    ).encode()
    r = client.put(
        f"/v2/{repo}/manifests/{index_tag}",
        content=index,
        headers={"Content-Type": images.OCI_INDEX},
    )
    r.raise_for_status()
    return referrer
