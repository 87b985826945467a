"""Sigstore bundles (v0.1, v0.2, v0.3), as cosign 3 attaches image signatures as referrers.

cosign 3 (``sign`` with the new bundle format, its default) signs a DSSE envelope whose
payload is an in-toto Statement with ``predicateType: https://sigstore.dev/cosign/sign/v1``,
an empty predicate and one subject per image digest; the bundle is one layer of an OCI
referrer manifest of the image (cosign ``signDigestBundle``, ``WriteAttestationNewBundleFormat``).

Verification:

1. Strict, bounded JSON first (duplicate keys refused), and a known bundle media type; an
   unknown version is refused, never guessed.
2. Certificate bundles (keyless): PyPI ``sigstore`` (sigstore-python) ``verify_dsse``
   against the *given* trusted root, offline. It checks the certificate chain at the verified
   time (Rekor ``integratedTime`` and/or RFC 3161 timestamps), the SCT, the Fulcio key
   usages, the Rekor inclusion proof with its signed checkpoint and the SET, that the time
   lies within the certificate's validity, the DSSE signature, and that the log entry
   records this envelope (CVE-2022-36056). It needs no clock: every time it checks is a
   signed one. Identity is *not* judged there (a record-only policy is passed): our policy
   judges it, with the same rules as for classic signatures.
3. Key bundles (``verificationMaterial.publicKey``), which sigstore-python cannot load:
   verified here with the rule's keys: the DSSE signature over PAE(payloadType, payload)
   (DSSE spec), and each log entry: its SET and/or its Merkle inclusion proof with the
   signed checkpoint (RFC 9162, signed notes; Rekor v1 and v2), plus body consistency
   (``dsse`` 0.0.1, ``hashedrekord`` 0.0.2 over the PAE), see :mod:`.rekor`.
4. Then the statement: ``payloadType`` is ``application/vnd.in-toto+json``, the Statement
   type is in-toto v0.1 or v1, ``predicateType`` is one the caller accepts (the cosign
   signature type for image signatures), and a subject's sha256 is the digest being served
   (sigstore-python does not know which image was meant).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from cryptography import x509
from sigstore.errors import Error as SigstoreError
from sigstore.models import Bundle as SigstoreBundle
from sigstore.models import TrustedRoot as SigstoreTrustedRoot
from sigstore.verify import Verifier as SigstoreVerifier
from sigstore_models.trustroot import v1 as trustroot_v1

from proxy.errors import BadDataError
from proxy.sources.cosign.classic import normalise_reference
from proxy.sources.cosign.errors import (
    CosignFormatError,
    CosignLimitError,
    CosignMismatchError,
    CosignSignatureError,
)
from proxy.sources.cosign.facts import CertSigner, KeySigner, Signer, VerifiedSignature
from proxy.sources.cosign.fulcio import cert_identity
from proxy.sources.cosign.keys import VerifyingKey
from proxy.sources.cosign.rekor import LogEntry, check_body, verify_entry
from proxy.sources.cosign.strict_json import b64_field, int_field, loads_strict
from proxy.sources.cosign.trusted_root import TrustedRoot

__all__ = [
    "BUNDLE_MEDIA_TYPES",
    "COSIGN_SIGN_PREDICATE",
    "BundleVerifier",
    "VerifiedBundle",
]

BUNDLE_MEDIA_TYPES: Final = frozenset(
    {
        "application/vnd.dev.sigstore.bundle+json;version=0.1",
        "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
        "application/vnd.dev.sigstore.bundle.v0.3+json",
    }
)
COSIGN_SIGN_PREDICATE: Final = "https://sigstore.dev/cosign/sign/v1"
IN_TOTO_PAYLOAD: Final = "application/vnd.in-toto+json"
STATEMENT_TYPES: Final = frozenset(
    {"https://in-toto.io/Statement/v0.1", "https://in-toto.io/Statement/v1"}
)
#: Real bundles are 5-10 KiB (a certificate, one entry with ~30 proof hashes).
MAX_BUNDLE_BYTES: Final = 256 * 1024
MAX_PAYLOAD_BYTES: Final = 128 * 1024
MAX_SUBJECTS: Final = 256
MAX_SIGNATURES: Final = 8
MAX_TLOG_ENTRIES: Final = 8


@dataclass(frozen=True)
class VerifiedBundle:
    """What a bundle proves before any image check: who signed which payload."""

    signer: Signer
    payload_type: str
    payload: bytes
    log_entry: LogEntry | None


class _RecordOnly:
    """A sigstore-python policy that accepts any identity: identity is judged by our policy
    (:mod:`.policy`), one place for classic and bundle signatures."""

    def verify(self, cert: x509.Certificate) -> None:
        return None


def _pae(payload_type: str, payload: bytes) -> bytes:
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _entries(material: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    entries = material.get("tlogEntries", [])
    if not isinstance(entries, list):
        raise CosignFormatError("tlogEntries must be a list", field="verificationMaterial")
    if len(entries) > MAX_TLOG_ENTRIES:
        raise CosignLimitError(f"more than {MAX_TLOG_ENTRIES} log entries", field="tlogEntries")
    if not all(isinstance(e, Mapping) for e in entries):
        raise CosignFormatError("log entries must be objects", field="tlogEntries")
    return entries


def _entry_fact(entry: Mapping[str, Any], field: str) -> LogEntry:
    log_id = b64_field((entry.get("logId") or {}).get("keyId"), f"{field}.logId.keyId").hex()
    time_value = entry.get("integratedTime")
    integrated = int_field(time_value, f"{field}.integratedTime") if time_value is not None else 0
    # Only an inclusion promise signs integratedTime; otherwise it is no verified time.
    if not isinstance(entry.get("inclusionPromise"), Mapping):
        integrated = 0
    return LogEntry(
        log_id=log_id,
        log_index=int_field(entry.get("logIndex", 0), f"{field}.logIndex"),
        integrated_time=datetime.fromtimestamp(integrated, tz=UTC) if integrated else None,
    )


class BundleVerifier:
    """Verifies bundles against one trusted root (pure: bytes in, facts or errors out).

    Build once per root: the sigstore-python verifier it wraps parses the root once.
    """

    def __init__(self, root: TrustedRoot | None) -> None:
        self._root = root
        self._sigstore: SigstoreVerifier | None = None

    def _verifier(self) -> SigstoreVerifier:
        if self._root is None:
            raise CosignSignatureError("certificate bundle, but no trusted root is configured")
        if self._sigstore is None:
            try:
                inner = trustroot_v1.TrustedRoot.from_json(self._root.raw)
                self._sigstore = SigstoreVerifier(trusted_root=SigstoreTrustedRoot(inner))
            except (SigstoreError, ValueError) as e:
                raise CosignFormatError(f"trusted root rejected by sigstore: {e}") from e
        return self._sigstore

    def parse(self, data: bytes) -> Mapping[str, Any]:
        """Strict JSON of a bundle with a known media type.

        Raises:
            CosignLimitError / CosignFormatError.
        """
        node = loads_strict(data, what="bundle", limit=MAX_BUNDLE_BYTES)
        if not isinstance(node, Mapping):
            raise CosignFormatError("must be a JSON object", field="bundle")
        media_type = node.get("mediaType")
        if media_type not in BUNDLE_MEDIA_TYPES:
            raise CosignFormatError(
                f"unknown bundle media type {str(media_type)[:100]!r}", field="mediaType"
            )
        if not isinstance(node.get("verificationMaterial"), Mapping):
            raise CosignFormatError("verificationMaterial is required", field="bundle")
        return node

    def verify(
        self,
        data: bytes,
        *,
        keys: Sequence[VerifyingKey] = (),
        artifact: bytes | None = None,
    ) -> VerifiedBundle:
        """Verify a bundle's signature, certificate and log entries (no image checks).

        ``keys``: the rule's keys, for ``publicKey`` bundles. ``artifact``: the signed bytes
        of a message-signature bundle (blob signing; image signatures are DSSE).

        Raises:
            CosignFormatError: malformed, unknown version, oversized.
            CosignSignatureError: a signature, chain, SCT or log entry does not verify.
        """
        node = self.parse(data)
        material = node["verificationMaterial"]
        if "publicKey" in material:
            return self._verify_key_bundle(node, material, keys)
        return self._verify_cert_bundle(data, material, artifact)

    def _verify_cert_bundle(
        self, data: bytes, material: Mapping[str, Any], artifact: bytes | None
    ) -> VerifiedBundle:
        verifier = self._verifier()
        try:
            bundle = SigstoreBundle.from_json(data)
            if artifact is None:
                payload_type, payload = verifier.verify_dsse(bundle, _RecordOnly())
            else:
                verifier.verify_artifact(artifact, bundle, _RecordOnly())
                payload_type, payload = "", artifact
        except (SigstoreError, ValueError) as e:
            # sigstore-python's word for a log entry about other materials (CVE-2022-36056).
            if "inconsistent with other materials" in str(e):
                raise CosignMismatchError(f"bundle does not verify: {e}") from e
            raise CosignSignatureError(f"bundle does not verify: {e}") from e
        entries = _entries(material)
        fact = _entry_fact(entries[0], "tlogEntries[0]") if entries else None
        identity = cert_identity(bundle.signing_certificate)
        return VerifiedBundle(CertSigner(identity), payload_type, payload, fact)

    def _verify_key_bundle(
        self,
        node: Mapping[str, Any],
        material: Mapping[str, Any],
        keys: Sequence[VerifyingKey],
    ) -> VerifiedBundle:
        envelope = node.get("dsseEnvelope")
        if not isinstance(envelope, Mapping):
            # A message signature over an image would sign some artifact's digest; cosign
            # signs images with DSSE, so anything else is not an image signature.
            raise CosignFormatError("key-based bundle without a DSSE envelope", field="bundle")
        payload_type = envelope.get("payloadType")
        if not isinstance(payload_type, str):
            raise CosignFormatError("payloadType is required", field="dsseEnvelope")
        payload = b64_field(envelope.get("payload"), "dsseEnvelope.payload")
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise CosignLimitError("payload too large", field="dsseEnvelope.payload")
        sigs = envelope.get("signatures")
        if not isinstance(sigs, list) or not sigs:
            raise CosignFormatError("signatures are required", field="dsseEnvelope")
        if len(sigs) > MAX_SIGNATURES:
            raise CosignLimitError(f"more than {MAX_SIGNATURES} signatures", field="dsseEnvelope")
        message = _pae(payload_type, payload)
        for i, sig in enumerate(sigs):
            if not isinstance(sig, Mapping):
                raise CosignFormatError("must be an object", field=f"dsseEnvelope.signatures[{i}]")
            signature = b64_field(sig.get("sig"), f"dsseEnvelope.signatures[{i}].sig")
            for key in keys:
                try:
                    key.verify(signature, message)
                except CosignSignatureError:
                    continue
                fact = self._key_log_entry(material, payload, message, signature, key)
                return VerifiedBundle(KeySigner(key.key_id), payload_type, payload, fact)
        raise CosignSignatureError("DSSE signature does not verify with any key of the rule")

    def _key_log_entry(
        self,
        material: Mapping[str, Any],
        payload: bytes,
        signed: bytes,
        signature: bytes,
        key: VerifyingKey,
    ) -> LogEntry | None:
        entries = _entries(material)
        if not entries or self._root is None:
            return None
        verified: LogEntry | None = None
        for i, entry in enumerate(entries):
            # Every entry present must verify and record this signature (fail closed).
            fact = verify_entry(entry, self._root, f"tlogEntries[{i}]")
            body = b64_field(entry.get("canonicalizedBody"), f"tlogEntries[{i}].canonicalizedBody")
            check_body(body, payload=payload, signature=signature, key=key, signed=signed)
            verified = verified or fact
        return verified

    def verify_image(
        self,
        data: bytes,
        *,
        digest: str,
        keys: Sequence[VerifyingKey] = (),
        predicate_types: frozenset[str] = frozenset({COSIGN_SIGN_PREDICATE}),
        origin: str = "bundle",
    ) -> VerifiedSignature:
        """Verify a bundle as a signature (or attestation) of the image ``digest``.

        Raises:
            CosignFormatError / CosignSignatureError: as :meth:`verify`.
            CosignMismatchError: another payload type or predicate, or no subject is
                ``digest``.
        """
        result = self.verify(data, keys=keys)
        if result.payload_type != IN_TOTO_PAYLOAD:
            raise CosignMismatchError(f"payload type {result.payload_type[:80]!r} is not in-toto")
        statement = loads_strict(result.payload, what="in-toto statement", limit=MAX_PAYLOAD_BYTES)
        if not isinstance(statement, Mapping) or statement.get("_type") not in STATEMENT_TYPES:
            raise CosignFormatError("not an in-toto Statement", field="payload._type")
        predicate_type = statement.get("predicateType")
        if predicate_type not in predicate_types:
            raise CosignMismatchError(
                f"predicate type {str(predicate_type)[:100]!r} is not accepted here"
            )
        subjects = statement.get("subject")
        if not isinstance(subjects, list) or len(subjects) > MAX_SUBJECTS:
            raise CosignFormatError("subject must be a (bounded) list", field="payload.subject")
        algorithm, _, hex_part = digest.partition(":")
        for subject in subjects:
            digests = subject.get("digest") if isinstance(subject, Mapping) else None
            if isinstance(digests, Mapping) and digests.get(algorithm) == hex_part:
                name = subject.get("name")
                reference = None
                if isinstance(name, str) and name:
                    try:
                        reference = normalise_reference(name)
                    except BadDataError:
                        reference = None
                return VerifiedSignature(
                    digest, result.signer, reference, result.log_entry, "bundle", origin
                )
        raise CosignMismatchError(f"bundle does not sign {digest}")
