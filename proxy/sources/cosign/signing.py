"""Making classic cosign signatures (``sha256-<hex>.sig``): the writing side of
:mod:`.classic`, for ``trustproxy trust migrate --to cosign``.

Pure: a private key and a digest in, the bytes cosign would push out (payload blob, config
blob, manifest). The layout is cosign's (``pkg/oci/static``, ``pkg/oci/mutate``): an OCI
image manifest whose layers are simple-signing payloads, each with its base64 signature in
the ``dev.cosignproject.cosign/signature`` annotation; several signers append layers to one
manifest. Signatures are ECDSA P-256/P-384 with SHA-256/384 (what ``cosign sign --key``
makes) or ed25519, over the exact payload bytes.

No transparency-log entry is made: the keys of an organisation moving off Docker Content
Trust sign offline, so the ``cosign`` rule that accepts these signatures says
``tlog: optional`` (documented in docs/moving-off-notary.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from proxy.sources.cosign.classic import ANN_SIGNATURE, SIGNATURE_TYPE, SIMPLE_SIGNING
from proxy.sources.cosign.errors import CosignFormatError
from proxy.sources.cosign.keys import VerifyingKey
from proxy.sources.cosign.strict_json import loads_strict

__all__ = [
    "SignatureArtifacts",
    "SigningKey",
    "load_signing_key",
    "sign_digest",
    "simple_signing_payload",
]

OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
#: a signing key file is small; anything larger is not one
MAX_KEY_BYTES: Final = 64 * 1024


@dataclass(frozen=True)
class SigningKey:
    """A private key that makes cosign signatures, and its public half."""

    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

    @property
    def public(self) -> VerifyingKey:
        hash_name = "sha256"
        if isinstance(self.key, ec.EllipticCurvePrivateKey) and self.key.curve.name == "secp384r1":
            hash_name = "sha384"
        return VerifyingKey(self.key.public_key(), hash_name)

    def sign(self, data: bytes) -> bytes:
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            return self.key.sign(data)
        algorithm = hashes.SHA384() if self.public.hash_name == "sha384" else hashes.SHA256()
        return self.key.sign(data, ec.ECDSA(algorithm))


def load_signing_key(pem: bytes, password: bytes | None = None) -> SigningKey:
    """A PEM private key (PKCS#8 or SEC1): ECDSA P-256/P-384 or ed25519.

    Raises CosignFormatError for anything else (cosign's own encrypted key format, which
    needs cosign's scrypt/secretbox, is not read: export the key as PKCS#8 PEM).
    """
    if len(pem) > MAX_KEY_BYTES:
        raise CosignFormatError(f"more than {MAX_KEY_BYTES} bytes", field="signing key")
    if b"ENCRYPTED COSIGN PRIVATE KEY" in pem:
        raise CosignFormatError(
            "cosign's encrypted key format is not supported; export it as a PKCS#8 PEM "
            "(for example with openssl from a key made by openssl, or cosign's "
            "import/export commands)",
            field="signing key",
        )
    try:
        key = serialization.load_pem_private_key(pem, password=password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise CosignFormatError(f"not a PEM private key ({e})", field="signing key") from e
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return SigningKey(key)
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in (
        "secp256r1",
        "secp384r1",
    ):
        return SigningKey(key)
    raise CosignFormatError(
        f"unsupported key type {type(key).__name__}: use ECDSA P-256/P-384 or ed25519",
        field="signing key",
    )


def simple_signing_payload(digest: str, reference: str) -> bytes:
    """The payload ``cosign sign`` signs for ``digest`` pushed as ``reference`` (the
    repository, without tag or digest), byte for byte as cosign lays it out."""
    return json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": reference},
                "image": {"docker-manifest-digest": digest},
                "type": SIGNATURE_TYPE,
            },
            "optional": None,
        },
        separators=(",", ":"),
    ).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class SignatureArtifacts:
    """What to push for one signature: blobs by digest, then the manifest under the tag."""

    manifest: bytes
    blobs: Mapping[str, bytes]


def sign_digest(
    key: SigningKey, digest: str, reference: str, existing: bytes | None = None
) -> SignatureArtifacts:
    """A ``.sig`` manifest with a signature of ``digest`` by ``key`` appended to the layers
    of ``existing`` (the manifest already under the tag, if any: other signers' layers are
    kept). The caller checks first whether ``key`` already signed (idempotence).

    Raises CosignFormatError when ``existing`` is not a manifest this can append to."""
    payload = simple_signing_payload(digest, reference)
    signature = base64.b64encode(key.sign(payload)).decode()
    layers: list[Any] = []
    if existing is not None:
        doc = loads_strict(existing, what="existing .sig manifest", limit=4 * 1024 * 1024)
        old = doc.get("layers") if isinstance(doc, Mapping) else None
        if not isinstance(old, list):
            raise CosignFormatError("not an image manifest", field="existing .sig manifest")
        layers = list(old)
    layers.append(
        {
            "mediaType": SIMPLE_SIGNING,
            "size": len(payload),
            "digest": _digest(payload),
            "annotations": {ANN_SIGNATURE: signature},
        }
    )
    # cosign's config: an image config whose rootfs lists the layers (never signed).
    config = json.dumps(
        {
            "architecture": "",
            "config": {},
            "created": "0001-01-01T00:00:00Z",
            "history": [{"created": "0001-01-01T00:00:00Z"} for _ in layers],
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
        },
        separators=(",", ":"),
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "size": len(config), "digest": _digest(config)},
            "layers": layers,
        },
        separators=(",", ":"),
    ).encode()
    return SignatureArtifacts(manifest, {_digest(payload): payload, _digest(config): config})
