"""Sigstore ``trusted_root.json``: the offline trust material of a Sigstore instance.

A trusted root lists Fulcio CAs (certificate chains), Rekor logs and CT logs (public keys)
and timestamp authorities, each with a ``validFor`` window (sigstore protobuf-specs
``TrustedRoot``). We parse it ourselves for the classic ``.sig`` layout and key-based
bundles, and hand the same bytes to sigstore-python for certificate-based bundles, so both
paths trust exactly one file. Keys and CAs are only used for times inside their windows,
as sigstore-go and sigstore-python do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Final

from cryptography import x509

from proxy.sources.cosign.errors import CosignFormatError
from proxy.sources.cosign.keys import VerifyingKey, load_der_key
from proxy.sources.cosign.strict_json import b64_field, loads_strict

__all__ = [
    "CertificateAuthority",
    "TransparencyLog",
    "TrustedRoot",
    "parse_trusted_root",
    "public_good_trusted_root_bytes",
]

MEDIA_TYPES: Final = frozenset(
    {
        "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
        "application/vnd.dev.sigstore.trustedroot.v0.2+json",
    }
)
#: The public-good root is about 8 KiB; private ones are the same order of magnitude.
MAX_TRUSTED_ROOT_BYTES: Final = 1024 * 1024
MAX_ENTRIES: Final = 64
MAX_CHAIN: Final = 8


@dataclass(frozen=True)
class Window:
    """``validFor``: ``start`` inclusive, ``end`` inclusive or open."""

    start: datetime
    end: datetime | None

    def contains(self, when: datetime) -> bool:
        return self.start <= when and (self.end is None or when <= self.end)


@dataclass(frozen=True)
class TransparencyLog:
    """A Rekor or CT log: its key, its log ID (hex sha256 of the key's SPKI DER) and window."""

    base_url: str
    log_id: str
    key: VerifyingKey
    valid: Window


@dataclass(frozen=True)
class CertificateAuthority:
    """A Fulcio CA or a TSA: its chain, leaf-most first, root last."""

    uri: str
    chain: tuple[x509.Certificate, ...]
    valid: Window


@dataclass(frozen=True)
class TrustedRoot:
    """The parsed root plus its exact bytes (given to sigstore-python for bundles)."""

    raw: bytes
    tlogs: tuple[TransparencyLog, ...]
    ctlogs: tuple[TransparencyLog, ...]
    fulcio: tuple[CertificateAuthority, ...]
    tsas: tuple[CertificateAuthority, ...]

    def tlog(self, log_id: str) -> TransparencyLog | None:
        """The Rekor log with this hex log ID, if the root lists it."""
        for log in self.tlogs:
            if log.log_id == log_id:
                return log
        return None

    def ctlog(self, log_id: bytes) -> TransparencyLog | None:
        """The CT log whose log ID is these 32 raw bytes."""
        for log in self.ctlogs:
            if log.log_id == log_id.hex():
                return log
        return None


def public_good_trusted_root_bytes() -> bytes:
    """The public-good (sigstore.dev) trusted root shipped in the PyPI ``sigstore`` wheel.

    It is the root sigstore-python itself uses offline; it changes only when the package is
    upgraded (through the lock file), never at run time.
    """
    store = resources.files("sigstore") / "_store" / "https%3A%2F%2Ftuf-repo-cdn.sigstore.dev"
    return (store / "trusted_root.json").read_bytes()


def _time(value: Any, field: str) -> datetime:
    if not isinstance(value, str):
        raise CosignFormatError("must be an RFC 3339 time", field=field)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as e:
        raise CosignFormatError(f"not an RFC 3339 time: {value[:40]!r}", field=field) from e
    if parsed.tzinfo is None:
        raise CosignFormatError("time without a zone", field=field)
    return parsed.astimezone(UTC)


def _window(node: Any, field: str) -> Window:
    if not isinstance(node, Mapping) or "start" not in node:
        raise CosignFormatError("validFor.start is required", field=field)
    end = node.get("end")
    return Window(
        _time(node["start"], f"{field}.start"),
        None if end is None else _time(end, f"{field}.end"),
    )


def _list(node: Any, key: str) -> list[Any]:
    value = node.get(key, [])
    if not isinstance(value, list):
        raise CosignFormatError("must be a list", field=key)
    if len(value) > MAX_ENTRIES:
        raise CosignFormatError(f"more than {MAX_ENTRIES} entries", field=key)
    return value


def _logs(node: Mapping[str, Any], key: str) -> tuple[TransparencyLog, ...]:
    logs = []
    for i, entry in enumerate(_list(node, key)):
        where = f"{key}[{i}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("publicKey"), Mapping):
            raise CosignFormatError("publicKey is required", field=where)
        pub = entry["publicKey"]
        der = b64_field(pub.get("rawBytes"), f"{where}.publicKey.rawBytes")
        key_obj = load_der_key(der, what=f"{where}.publicKey")
        # Rekor v1 and CT logs: the log ID is sha256 of the SPKI DER. Rekor v2 logs (signed
        # notes) declare another key ID, so the declared one wins when present.
        log_id = hashlib.sha256(key_obj.spki_der).hexdigest()
        declared = entry.get("logId")
        if isinstance(declared, Mapping) and "keyId" in declared:
            log_id = b64_field(declared["keyId"], f"{where}.logId.keyId").hex()
        logs.append(
            TransparencyLog(
                base_url=str(entry.get("baseUrl", "")),
                log_id=log_id,
                key=key_obj,
                valid=_window(pub.get("validFor"), f"{where}.publicKey.validFor"),
            )
        )
    return tuple(logs)


def _cas(node: Mapping[str, Any], key: str) -> tuple[CertificateAuthority, ...]:
    cas = []
    for i, entry in enumerate(_list(node, key)):
        where = f"{key}[{i}]"
        chain_node = entry.get("certChain") if isinstance(entry, Mapping) else None
        certs_node = chain_node.get("certificates") if isinstance(chain_node, Mapping) else None
        if not isinstance(certs_node, list) or not certs_node:
            raise CosignFormatError("certChain.certificates is required", field=where)
        if len(certs_node) > MAX_CHAIN:
            raise CosignFormatError(f"more than {MAX_CHAIN} certificates", field=where)
        chain = []
        for j, cert in enumerate(certs_node):
            cwhere = f"{where}.certChain.certificates[{j}].rawBytes"
            raw = b64_field(cert.get("rawBytes") if isinstance(cert, Mapping) else None, cwhere)
            try:
                chain.append(x509.load_der_x509_certificate(raw))
            except ValueError as e:
                raise CosignFormatError(f"not a DER certificate ({e})", field=cwhere) from e
        cas.append(
            CertificateAuthority(
                uri=str(entry.get("uri", "")),
                chain=tuple(chain),
                valid=_window(entry.get("validFor"), f"{where}.validFor"),
            )
        )
    return tuple(cas)


def parse_trusted_root(data: bytes) -> TrustedRoot:
    """Parse a ``trusted_root.json`` (media type version 0.1 or v0.2).

    Raises:
        CosignFormatError: not JSON, an unknown media type, or a malformed entry (the field
            names which one).
    """
    node = loads_strict(data, what="trusted_root", limit=MAX_TRUSTED_ROOT_BYTES)
    if not isinstance(node, Mapping):
        raise CosignFormatError("must be a JSON object", field="trusted_root")
    media_type = node.get("mediaType")
    if media_type not in MEDIA_TYPES:
        raise CosignFormatError(f"unknown media type {str(media_type)[:100]!r}", field="mediaType")
    return TrustedRoot(
        raw=data,
        tlogs=_logs(node, "tlogs"),
        ctlogs=_logs(node, "ctlogs"),
        fulcio=_cas(node, "certificateAuthorities"),
        tsas=_cas(node, "timestampAuthorities"),
    )
