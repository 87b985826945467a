"""Rekor entries: the signed entry timestamp (SET) and the entry body's consistency.

A SET is Rekor's signed promise to include an entry (cosign's ``bundle`` annotation,
a bundle's ``inclusionPromise``). It is ECDSA over the canonical JSON (RFC 8785 for these
four fields: sorted keys, no whitespace) of ``{"body", "integratedTime", "logID",
"logIndex"}``, verified with the key of the Rekor log whose ID is ``logID`` (cosign
``VerifySET``). A valid SET proves the log accepted *that body*; it proves nothing about
*our* signature until the body is checked against it: the body's artifact hash must be the
sha256 of the signed payload, its signature ours and its key or certificate the one we
verified with (otherwise a valid entry for another artifact would vouch for a forged
signature, CVE-2022-36056).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from proxy.sources.cosign.errors import (
    CosignFormatError,
    CosignMismatchError,
    CosignSignatureError,
)
from proxy.sources.cosign.keys import VerifyingKey, load_pem_key
from proxy.sources.cosign.strict_json import b64_field, int_field, loads_strict
from proxy.sources.cosign.trusted_root import TrustedRoot

__all__ = [
    "LogEntry",
    "SignedEntry",
    "check_body",
    "parse_classic_bundle",
    "verify_set",
]

#: A hashedrekord body with a certificate is about 2 KiB base64; DSSE bodies list every
#: signature and verifier.
MAX_BODY_BYTES: Final = 64 * 1024
MAX_ANNOTATION_BYTES: Final = 128 * 1024


@dataclass(frozen=True)
class SignedEntry:
    """A Rekor entry as a SET signs it."""

    body: bytes
    body_b64: str
    integrated_time: int
    log_index: int
    log_id: str
    set_signature: bytes


@dataclass(frozen=True)
class LogEntry:
    """A verified log entry: what audit records show."""

    log_id: str
    log_index: int
    #: None for logs that do not promise a time (Rekor v2: the time comes from a TSA)
    integrated_time: datetime | None


def parse_classic_bundle(annotation: str) -> SignedEntry:
    """cosign's ``dev.sigstore.cosign/bundle`` annotation.

    Raises:
        CosignFormatError / CosignLimitError: malformed or oversized.
    """
    field = "dev.sigstore.cosign/bundle"
    node = loads_strict(annotation.encode("utf-8"), what=field, limit=MAX_ANNOTATION_BYTES)
    if not isinstance(node, Mapping) or not isinstance(node.get("Payload"), Mapping):
        raise CosignFormatError("Payload is required", field=field)
    payload = node["Payload"]
    body_b64 = payload.get("body")
    body = b64_field(body_b64, f"{field}.Payload.body")
    log_id = payload.get("logID")
    if not isinstance(log_id, str) or len(log_id) != 64:
        raise CosignFormatError("logID must be 64 hex digits", field=f"{field}.Payload.logID")
    try:
        bytes.fromhex(log_id)
    except ValueError as e:
        raise CosignFormatError("logID is not hex", field=f"{field}.Payload.logID") from e
    if len(body) > MAX_BODY_BYTES:
        raise CosignFormatError("body too large", field=f"{field}.Payload.body")
    return SignedEntry(
        body=body,
        body_b64=str(body_b64),
        integrated_time=int_field(payload.get("integratedTime"), f"{field}.Payload.integratedTime"),
        log_index=int_field(payload.get("logIndex"), f"{field}.Payload.logIndex"),
        log_id=log_id.lower(),
        set_signature=b64_field(node.get("SignedEntryTimestamp"), f"{field}.SignedEntryTimestamp"),
    )


def verify_set(entry: SignedEntry, root: TrustedRoot) -> LogEntry:
    """Verify the SET with the Rekor key of ``root`` named by ``entry.log_id``, and that
    ``integratedTime`` lies inside that key's validity window.

    Raises:
        CosignSignatureError: unknown log, bad signature, time outside the key's window.
    """
    log = root.tlog(entry.log_id)
    if log is None:
        raise CosignSignatureError(f"log entry from unknown Rekor log {entry.log_id[:16]}…")
    message = json.dumps(
        {
            "body": entry.body_b64,
            "integratedTime": entry.integrated_time,
            "logID": entry.log_id,
            "logIndex": entry.log_index,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode("utf-8")
    try:
        VerifyingKey(log.key.key, "sha256").verify(entry.set_signature, message)
    except CosignSignatureError as e:
        raise CosignSignatureError("Rekor signed entry timestamp does not verify") from e
    when = datetime.fromtimestamp(entry.integrated_time, tz=UTC)
    if not log.valid.contains(when):
        raise CosignSignatureError("Rekor entry time is outside the log key's validity window")
    return LogEntry(entry.log_id, entry.log_index, when)


def _same_material(content: Any, field: str, *, cert: x509.Certificate | None,
                   key: VerifyingKey | None) -> bool:  # fmt: skip
    pem = b64_field(content, field)
    if cert is not None:
        try:
            logged = x509.load_pem_x509_certificate(pem)
        except ValueError:
            return False
        return logged == cert
    if key is not None:
        try:
            return load_pem_key(pem).spki_der == key.spki_der
        except CosignFormatError:
            return False
    return False


def _same_der(verifier: Mapping[str, Any], *, cert: x509.Certificate | None,
              key: VerifyingKey | None) -> bool:  # fmt: skip
    x509_node, key_node = verifier.get("x509Certificate"), verifier.get("publicKey")
    if cert is not None and isinstance(x509_node, Mapping):
        raw = b64_field(x509_node.get("rawBytes"), "rekor body.verifier")
        return raw == cert.public_bytes(serialization.Encoding.DER)
    if key is not None and isinstance(key_node, Mapping):
        return b64_field(key_node.get("rawBytes"), "rekor body.verifier") == key.spki_der
    return False


def check_body(
    body: bytes,
    *,
    payload: bytes,
    signature: bytes,
    cert: x509.Certificate | None = None,
    key: VerifyingKey | None = None,
    signed: bytes | None = None,
) -> str:
    """Check that a Rekor entry body records *this* signature: ``hashedrekord`` 0.0.1
    (sha256 of ``payload``) or ``dsse`` 0.0.1 (sha256 of the DSSE ``payload``), with
    ``signature`` and the certificate or key that verified it; or ``hashedrekord`` 0.0.2
    (Rekor v2: sha256 of ``signed``, the exact bytes signed, e.g. the DSSE PAE, else of
    ``payload``). Returns the kind.

    Raises:
        CosignFormatError: malformed body or an unsupported kind.
        CosignMismatchError: the entry is about another artifact, signature or signer.
    """
    node = loads_strict(body, what="rekor body", limit=MAX_BODY_BYTES)
    if not isinstance(node, Mapping) or not isinstance(node.get("spec"), Mapping):
        raise CosignFormatError("spec is required", field="rekor body")
    kind, version, spec = node.get("kind"), node.get("apiVersion"), node["spec"]
    digest = hashlib.sha256(payload).hexdigest()
    if (kind, version) == ("hashedrekord", "0.0.1"):
        data = spec.get("data", {})
        hashed = data.get("hash", {}) if isinstance(data, Mapping) else {}
        sig = spec.get("signature", {})
        if not isinstance(hashed, Mapping) or not isinstance(sig, Mapping):
            raise CosignFormatError("malformed hashedrekord", field="rekor body")
        if hashed.get("algorithm") != "sha256" or hashed.get("value") != digest:
            raise CosignMismatchError("Rekor entry is for another artifact")
        if b64_field(sig.get("content"), "rekor body.signature") != signature:
            raise CosignMismatchError("Rekor entry records another signature")
        pub = sig.get("publicKey", {})
        content = pub.get("content") if isinstance(pub, Mapping) else None
        if not _same_material(content, "rekor body.publicKey", cert=cert, key=key):
            raise CosignMismatchError("Rekor entry records another signer")
        return "hashedrekord"
    if (kind, version) == ("dsse", "0.0.1"):
        hashed = spec.get("payloadHash", {})
        if (
            not isinstance(hashed, Mapping)
            or hashed.get("algorithm") != "sha256"
            or (hashed.get("value") != digest)
        ):
            raise CosignMismatchError("Rekor entry is for another payload")
        sigs = spec.get("signatures")
        if not isinstance(sigs, list):
            raise CosignFormatError("signatures must be a list", field="rekor body")
        for entry in sigs[:16]:
            if not isinstance(entry, Mapping):
                continue
            if b64_field(entry.get("signature"), "rekor body.signatures") == signature and (
                _same_material(entry.get("verifier"), "rekor body.verifier", cert=cert, key=key)
            ):
                return "dsse"
        raise CosignMismatchError("Rekor entry does not record this signature and signer")
    if (kind, version) == ("hashedrekord", "0.0.2"):
        # Rekor v2 (rekor-v2-spec §6.1.4): digest of what was signed (the PAE for DSSE),
        # the signature and the verifier's key or certificate as DER.
        inner = spec.get("hashedRekordV002")
        data = inner.get("data") if isinstance(inner, Mapping) else None
        sig = inner.get("signature") if isinstance(inner, Mapping) else None
        if not isinstance(data, Mapping) or not isinstance(sig, Mapping):
            raise CosignFormatError("malformed hashedrekord 0.0.2", field="rekor body")
        logged_digest = b64_field(data.get("digest"), "rekor body.digest")
        expected = hashlib.sha256(signed if signed is not None else payload).digest()
        if data.get("algorithm") != "SHA2_256" or logged_digest != expected:
            raise CosignMismatchError("Rekor entry is for another artifact")
        if b64_field(sig.get("content"), "rekor body.signature") != signature:
            raise CosignMismatchError("Rekor entry records another signature")
        verifier = sig.get("verifier")
        if not isinstance(verifier, Mapping) or not _same_der(verifier, cert=cert, key=key):
            raise CosignMismatchError("Rekor entry records another signer")
        return "hashedrekord"
    raise CosignFormatError(
        f"unsupported Rekor entry kind {str(kind)[:40]}/{str(version)[:20]}", field="rekor body"
    )


#: Rekor v1 trees hold well under 2**40 entries; a proof is one hash per level.
MAX_PROOF_HASHES: Final = 64
MAX_CHECKPOINT_BYTES: Final = 16 * 1024


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def verify_inclusion(
    body: bytes, index: int, size: int, proof: list[bytes], root_hash: bytes
) -> None:
    """RFC 9162 §2.1.3.2: ``body`` is leaf ``index`` of the tree of ``size`` leaves whose
    root hash is ``root_hash``.

    Raises:
        CosignSignatureError: the proof does not lead to ``root_hash``.
    """
    if not 0 <= index < size or len(proof) > MAX_PROOF_HASHES:
        raise CosignSignatureError("inclusion proof: index outside the tree, or too long")
    fn, sn = index, size - 1
    result = hashlib.sha256(b"\x00" + body).digest()
    for sibling in proof:
        if sn == 0:
            raise CosignSignatureError("inclusion proof: too many hashes")
        if fn & 1 or fn == sn:
            result = _node(sibling, result)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            result = _node(result, sibling)
        fn >>= 1
        sn >>= 1
    if sn != 0 or result != root_hash:
        raise CosignSignatureError("inclusion proof does not lead to the root hash")


def verify_checkpoint(
    envelope: str, root: TrustedRoot, log_id: str, *, size: int, root_hash: bytes
) -> None:
    """A signed note (``origin\\nsize\\nbase64(root)\\n…\\n\\n— name base64(hint‖sig)\\n``)
    signed by the Rekor log ``log_id`` of ``root``, for this tree ``size`` and ``root_hash``
    (golang.org/x/mod/sumdb/note; Rekor ``SignedCheckpoint``). The signature's 4-byte hint
    is the start of the log ID, as sigstore-go and sigstore-python match it.

    Raises:
        CosignFormatError: not a signed note.
        CosignSignatureError: unknown log, no signature by it, or another tree.
    """
    if len(envelope) > MAX_CHECKPOINT_BYTES or envelope.count("\n\n") != 1:
        raise CosignFormatError("checkpoint is not a signed note", field="checkpoint")
    note, _, signatures = envelope.partition("\n\n")
    note += "\n"
    log = root.tlog(log_id)
    if log is None:
        raise CosignSignatureError(f"checkpoint of unknown Rekor log {log_id[:16]}…")
    lines = note.split("\n")
    if len(lines) < 4:
        raise CosignFormatError("checkpoint lacks origin, size or root", field="checkpoint")
    if lines[1] != str(size) or lines[2] != base64.b64encode(root_hash).decode():
        raise CosignSignatureError("checkpoint is for another tree than the inclusion proof")
    hint = bytes.fromhex(log_id)[:4]
    for line in signatures.split("\n")[:16]:
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != "\u2014":
            continue
        try:
            raw = base64.b64decode(parts[2], validate=True)
        except (binascii.Error, ValueError):
            continue
        if raw[:4] != hint:
            continue
        try:
            VerifyingKey(log.key.key, "sha256").verify(raw[4:], note.encode("utf-8"))
        except CosignSignatureError as e:
            raise CosignSignatureError("checkpoint signature does not verify") from e
        return
    raise CosignSignatureError("checkpoint is not signed by the Rekor log")


def verify_entry(entry: Mapping[str, Any], root: TrustedRoot, field: str) -> LogEntry:
    """A bundle's ``tlogEntries[i]``: its SET (``inclusionPromise``) and/or its inclusion
    proof with signed checkpoint; each one present must verify, and one must be present.
    The body is not checked here (see :func:`check_body`).

    Raises:
        CosignFormatError: malformed entry.
        CosignSignatureError: nothing verifiable, or something present does not verify.
    """
    log_id_node = entry.get("logId")
    key_id = log_id_node.get("keyId") if isinstance(log_id_node, Mapping) else None
    log_id = b64_field(key_id, f"{field}.logId.keyId").hex()
    body_b64 = entry.get("canonicalizedBody")
    body = b64_field(body_b64, f"{field}.canonicalizedBody")
    if len(body) > MAX_BODY_BYTES:
        raise CosignFormatError("body too large", field=f"{field}.canonicalizedBody")
    log_index = int_field(entry.get("logIndex", 0), f"{field}.logIndex")
    time_value = entry.get("integratedTime")
    integrated = int_field(time_value, f"{field}.integratedTime") if time_value is not None else 0
    promise, proof = entry.get("inclusionPromise"), entry.get("inclusionProof")
    if not isinstance(promise, Mapping) and not isinstance(proof, Mapping):
        raise CosignSignatureError("log entry has neither an inclusion promise nor a proof")
    # Without a promise, integratedTime is signed by nobody: it is not reported as a time.
    fact = LogEntry(log_id, log_index, None)
    if isinstance(promise, Mapping):
        fact = verify_set(
            SignedEntry(
                body=body,
                body_b64=str(body_b64),
                integrated_time=integrated,
                log_index=log_index,
                log_id=log_id,
                set_signature=b64_field(
                    promise.get("signedEntryTimestamp"),
                    f"{field}.inclusionPromise.signedEntryTimestamp",
                ),
            ),
            root,
        )
    if isinstance(proof, Mapping):
        hashes = proof.get("hashes", [])
        if not isinstance(hashes, list) or len(hashes) > MAX_PROOF_HASHES:
            raise CosignFormatError(
                "hashes must be a bounded list", field=f"{field}.inclusionProof"
            )
        root_hash = b64_field(proof.get("rootHash"), f"{field}.inclusionProof.rootHash")
        size = int_field(proof.get("treeSize"), f"{field}.inclusionProof.treeSize")
        verify_inclusion(
            body,
            int_field(proof.get("logIndex"), f"{field}.inclusionProof.logIndex"),
            size,
            [b64_field(h, f"{field}.inclusionProof.hashes") for h in hashes],
            root_hash,
        )
        checkpoint = proof.get("checkpoint")
        envelope = checkpoint.get("envelope") if isinstance(checkpoint, Mapping) else None
        if not isinstance(envelope, str):
            raise CosignSignatureError("inclusion proof without a checkpoint")
        verify_checkpoint(envelope, root, log_id, size=size, root_hash=root_hash)
    return fact
