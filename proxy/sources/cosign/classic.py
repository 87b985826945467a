"""The classic layout: a ``sha256-<hex>.sig`` manifest of simple-signing layers (cosign ≤ 2).

Steps, per layer (cosign ``pkg/cosign/verify.go``, ``VerifyImageSignatures``):

1. The layer's media type is ``application/vnd.dev.cosign.simplesigning.v1+json``; its blob
   (fetched by the caller, by digest) hashes to the layer's digest and size.
2. The signature annotation verifies over the **exact blob bytes**, never a re-encoding:
   - with a ``dev.sigstore.cosign/certificate`` annotation (keyless): with the
     certificate's key, then the certificate chains to a Fulcio CA of the trusted root at
     the Rekor ``integratedTime``, its embedded SCT verifies, and the identity is recorded;
   - without one: with each key the rule names until one verifies (cosign ``--key``).
3. A ``dev.sigstore.cosign/bundle`` annotation (Rekor SET) is verified against the trusted
   root's Rekor keys and its body must record this payload, signature and signer. A present
   but invalid entry rejects the layer (cosign does too); an absent one leaves
   ``log_entry`` None for the policy's ``tlog`` setting to judge.
4. The payload is strict JSON (no duplicate keys), ``critical.type`` is exactly
   ``cosign container image signature`` and ``critical.image.docker-manifest-digest``
   equals the digest being served; ``docker-reference`` is recorded for the policy.

A bad layer does not spoil the others (several signers append layers to one manifest); a
manifest that is not well-formed, or crosses a bound, is rejected as a whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from proxy.errors import BadDataError, ClientRequestError
from proxy.reference import parse_image_ref
from proxy.sources.cosign.errors import (
    CosignFormatError,
    CosignLimitError,
    CosignMismatchError,
    CosignSignatureError,
)
from proxy.sources.cosign.facts import CertSigner, KeySigner, Rejected, VerifiedSignature
from proxy.sources.cosign.fulcio import (
    cert_identity,
    load_pem_certs,
    verify_chain,
    verify_embedded_scts,
)
from proxy.sources.cosign.keys import VerifyingKey
from proxy.sources.cosign.rekor import LogEntry, check_body, parse_classic_bundle, verify_set
from proxy.sources.cosign.strict_json import b64_field, loads_strict
from proxy.sources.cosign.trusted_root import TrustedRoot

__all__ = [
    "ClassicLimits",
    "ClassicResult",
    "SigLayer",
    "parse_sig_manifest",
    "signature_tag",
    "verify_classic",
]

SIMPLE_SIGNING: Final = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_TYPE: Final = "cosign container image signature"
ANN_SIGNATURE: Final = "dev.cosignproject.cosign/signature"
ANN_CERT: Final = "dev.sigstore.cosign/certificate"
ANN_CHAIN: Final = "dev.sigstore.cosign/chain"
ANN_BUNDLE: Final = "dev.sigstore.cosign/bundle"
MANIFEST_TYPES: Final = frozenset(
    {
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    }
)


@dataclass(frozen=True)
class ClassicLimits:
    """Bounds on a ``.sig`` manifest and its layers (untrusted registry input)."""

    #: bytes of the ``.sig`` manifest
    max_manifest_bytes: int = 1024 * 1024
    #: signature layers read (each signer appends one)
    max_layers: int = 64
    #: bytes of one simple-signing payload (annotations included)
    max_payload_bytes: int = 64 * 1024
    #: bytes of one annotation value (a certificate chain is about 2 KiB)
    max_annotation_bytes: int = 64 * 1024
    #: bytes of all annotations of one layer together
    max_layer_annotation_bytes: int = 256 * 1024


@dataclass(frozen=True)
class SigLayer:
    """A simple-signing layer of a ``.sig`` manifest."""

    index: int
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str]


@dataclass(frozen=True)
class ClassicResult:
    """Per-layer outcomes of one ``.sig`` manifest."""

    verified: tuple[VerifiedSignature, ...]
    rejected: tuple[Rejected, ...]


def signature_tag(digest: str) -> str:
    """cosign's tag for the signatures of ``digest``: ``sha256-<hex>.sig``."""
    algorithm, _, hex_part = digest.partition(":")
    return f"{algorithm}-{hex_part}.sig"


def parse_sig_manifest(data: bytes, limits: ClassicLimits = ClassicLimits()) -> list[SigLayer]:
    """The layers of a ``.sig`` manifest, bounded. Only the layers are read; the config
    blob is never needed (cosign does not sign it).

    Raises:
        CosignLimitError: too large, too many layers, oversized annotations.
        CosignFormatError: not a JSON image manifest, malformed layers.
    """
    node = loads_strict(data, what=".sig manifest", limit=limits.max_manifest_bytes)
    if not isinstance(node, Mapping):
        raise CosignFormatError("must be a JSON object", field="manifest")
    if node.get("schemaVersion") != 2:
        raise CosignFormatError("schemaVersion must be 2", field="manifest.schemaVersion")
    media_type = node.get("mediaType")
    if media_type is not None and media_type not in MANIFEST_TYPES:
        raise CosignFormatError(
            f"not an image manifest: {str(media_type)[:100]!r}", field="manifest.mediaType"
        )
    layers = node.get("layers")
    if not isinstance(layers, list):
        raise CosignFormatError("layers must be a list", field="manifest.layers")
    if len(layers) > limits.max_layers:
        raise CosignLimitError(
            f"{len(layers)} signature layers, limit {limits.max_layers}", field="manifest.layers"
        )
    out = []
    for i, layer in enumerate(layers):
        where = f"manifest.layers[{i}]"
        if not isinstance(layer, Mapping):
            raise CosignFormatError("must be an object", field=where)
        digest, size = layer.get("digest"), layer.get("size")
        if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71:
            raise CosignFormatError("digest must be sha256:<64 hex>", field=f"{where}.digest")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise CosignFormatError("size must be a non-negative integer", field=f"{where}.size")
        annotations = layer.get("annotations") or {}
        if not isinstance(annotations, Mapping):
            raise CosignFormatError("annotations must be an object", field=where)
        total = 0
        for key, value in annotations.items():
            if not isinstance(value, str):
                raise CosignFormatError("annotation values must be strings", field=where)
            total += len(key) + len(value)
            if len(value) > limits.max_annotation_bytes:
                raise CosignLimitError(
                    f"annotation {key[:60]!r} is {len(value)} bytes, "
                    f"limit {limits.max_annotation_bytes}",
                    field=where,
                )
        if total > limits.max_layer_annotation_bytes:
            raise CosignLimitError(
                f"annotations total {total} bytes, limit {limits.max_layer_annotation_bytes}",
                field=where,
            )
        out.append(SigLayer(i, str(layer.get("mediaType", "")), digest, size, dict(annotations)))
    return out


def normalise_reference(value: str) -> str:
    """``docker-reference`` as ``registry/repository`` with Docker's normalisation
    (``index.docker.io/x`` → ``docker.io/library/x``), tag and digest removed.

    Raises:
        CosignFormatError: not an image reference.
    """
    name = value.split("@", 1)[0]
    try:
        repository, _tag = parse_image_ref(name)
    except ClientRequestError as e:
        raise CosignFormatError(f"not an image reference: {value[:200]!r}") from e
    return repository


def _payload_reference(payload: bytes, digest: str, limits: ClassicLimits) -> str:
    """Check a simple-signing payload against ``digest``; return its reference."""
    node = loads_strict(payload, what="simple-signing payload", limit=limits.max_payload_bytes)
    critical = node.get("critical") if isinstance(node, Mapping) else None
    if not isinstance(critical, Mapping):
        raise CosignFormatError("critical is required", field="payload")
    if critical.get("type") != SIGNATURE_TYPE:
        raise CosignFormatError(
            f"critical.type is not {SIGNATURE_TYPE!r}", field="payload.critical.type"
        )
    image = critical.get("image")
    signed = image.get("docker-manifest-digest") if isinstance(image, Mapping) else None
    if not isinstance(signed, str):
        raise CosignFormatError(
            "critical.image.docker-manifest-digest is required", field="payload.critical.image"
        )
    if signed != digest:
        raise CosignMismatchError(f"signature is for {signed[:80]}, not {digest}")
    identity = critical.get("identity")
    reference = identity.get("docker-reference") if isinstance(identity, Mapping) else None
    if not isinstance(reference, str):
        raise CosignFormatError(
            "critical.identity.docker-reference is required", field="payload.critical.identity"
        )
    return normalise_reference(reference)


def _cert_key(cert: x509.Certificate) -> VerifyingKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise CosignSignatureError("certificate key type is not supported")
    # Fulcio issues P-256 (and P-384) keys; cosign signs with SHA-256 whatever the curve.
    return VerifyingKey(key, "sha256")


def _log_entry(
    layer: SigLayer,
    root: TrustedRoot | None,
    *,
    payload: bytes,
    signature: bytes,
    cert: x509.Certificate | None,
    key: VerifyingKey | None,
) -> LogEntry | None:
    annotation = layer.annotations.get(ANN_BUNDLE)
    if annotation is None or root is None:
        return None
    entry = parse_classic_bundle(annotation)
    verified = verify_set(entry, root)
    check_body(entry.body, payload=payload, signature=signature, cert=cert, key=key)
    return verified


def _verify_layer(
    layer: SigLayer,
    payload: bytes,
    *,
    digest: str,
    keys: Sequence[VerifyingKey],
    root: TrustedRoot | None,
    now: datetime,
    require_sct: bool,
    limits: ClassicLimits,
) -> VerifiedSignature:
    origin = f"layer {layer.index}"
    if layer.media_type != SIMPLE_SIGNING:
        raise CosignFormatError(f"not a simple-signing layer: {layer.media_type[:100]!r}")
    if len(payload) != layer.size or f"sha256:{hashlib.sha256(payload).hexdigest()}" != (
        layer.digest
    ):
        raise CosignMismatchError("payload bytes do not match the layer digest and size")
    sig_text = layer.annotations.get(ANN_SIGNATURE)
    if not sig_text:
        raise CosignFormatError("no signature annotation", field=ANN_SIGNATURE)
    signature = b64_field(sig_text, ANN_SIGNATURE)
    cert_pem = layer.annotations.get(ANN_CERT)
    if cert_pem:
        if root is None:
            raise CosignSignatureError("keyless signature, but no trusted root is configured")
        certs = load_pem_certs(cert_pem.encode("utf-8"), field=ANN_CERT)
        if len(certs) != 1:
            raise CosignFormatError("expected exactly one certificate", field=ANN_CERT)
        leaf = certs[0]
        _cert_key(leaf).verify(signature, payload)
        # Payload checks after the signature (as cosign): "signature is for another image"
        # is only said of real signatures.
        reference = _payload_reference(payload, digest, limits)
        log_entry = _log_entry(
            layer, root, payload=payload, signature=signature, cert=leaf, key=None
        )
        # The time the certificate must be valid at: the log's, else now (so an expired
        # Fulcio certificate without a valid log entry fails, as in cosign).
        at = log_entry.integrated_time if log_entry and log_entry.integrated_time else now
        chain_hint = layer.annotations.get(ANN_CHAIN, "")
        hints = load_pem_certs(chain_hint.encode("utf-8"), field=ANN_CHAIN) if chain_hint else []
        chain = verify_chain(leaf, hints, root, at)
        if require_sct:
            verify_embedded_scts(leaf, chain[0] if chain else leaf, root)
        return VerifiedSignature(
            digest, CertSigner(cert_identity(leaf)), reference, log_entry, "classic", origin
        )
    for key in keys:
        try:
            key.verify(signature, payload)
        except CosignSignatureError:
            continue
        reference = _payload_reference(payload, digest, limits)
        log_entry = _log_entry(
            layer, root, payload=payload, signature=signature, cert=None, key=key
        )
        return VerifiedSignature(
            digest, KeySigner(key.key_id), reference, log_entry, "classic", origin
        )
    raise CosignSignatureError("signature does not verify with any key of the rule")


def verify_classic(
    manifest: bytes,
    blobs: Mapping[str, bytes],
    *,
    digest: str,
    keys: Sequence[VerifyingKey],
    root: TrustedRoot | None,
    now: datetime,
    require_sct: bool = True,
    limits: ClassicLimits = ClassicLimits(),
) -> ClassicResult:
    """Verify every layer of the ``.sig`` manifest ``manifest`` of image ``digest``.

    ``blobs`` maps layer digests to their bytes (the shell fetched them, bounded by
    ``limits.max_payload_bytes``); ``keys`` are the keys the rule's authorities name;
    ``root`` is needed for keyless layers and to check Rekor entries; ``now`` is used only
    when a certificate has no verified log time.

    Raises:
        CosignLimitError / CosignFormatError: the manifest itself is malformed or too big.
    Layers that fail are listed in ``rejected`` with the reason; they never raise.
    """
    layers = parse_sig_manifest(manifest, limits)
    verified: list[VerifiedSignature] = []
    rejected: list[Rejected] = []
    for layer in layers:
        payload = blobs.get(layer.digest)
        if payload is None:
            rejected.append(Rejected(f"layer {layer.index}", "payload blob not available"))
            continue
        try:
            verified.append(
                _verify_layer(
                    layer,
                    payload,
                    digest=digest,
                    keys=keys,
                    root=root,
                    now=now,
                    require_sct=require_sct,
                    limits=limits,
                )
            )
        except BadDataError as e:
            rejected.append(Rejected(f"layer {layer.index}", _reason(e)))
    return ClassicResult(tuple(verified), tuple(rejected))


def _reason(e: BadDataError) -> str:
    detail = getattr(e, "detail", None)
    return detail if isinstance(detail, str) else str(e)
