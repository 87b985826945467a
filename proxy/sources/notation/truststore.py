"""Notation trust stores: ``x509/{ca,signingAuthority,tsa}/<name>/*`` certificate folders.

The pure part, :func:`parse_store_files`, takes a store's files as bytes; the thin shell,
:func:`load_trust_store_dir`, reads the user's existing Notation layout (bounded reads, no
symlinks, no sub-directories) and keeps each store's error rather than failing the whole
directory: as in notation-go (``truststore.X509TrustStore.GetCertificates``), a broken or
missing store only matters to a statement that names it, and then it is an authenticity
failure that names the store.

Rules (notation-go ``verifier/truststore``):

- a file holds one DER certificate or one or more PEM certificates; anything else is an
  error, as is an empty file or an empty store;
- ``ca`` and ``signingAuthority`` stores hold CA certificates or self-signed ones (a
  self-signed leaf is how single-certificate signers are trusted); a non-self-signed leaf
  is an error (``trust-store-with-leaf-certs``);
- ``tsa`` stores hold self-signed root CAs only (``tsa/test-nonCA``,
  ``tsa/test-nonSelfIssued`` are errors);
- sub-directories and symlinks are errors (notation-go refuses both since 1.0; the
  ``_SYMLINK`` vectors are the case).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from proxy.sources.notation.certs import is_ca, is_self_signed
from proxy.sources.notation.errors import TrustStoreError
from proxy.sources.notation.trustpolicy import StoreRef, StoreType

__all__ = ["TrustStore", "load_trust_store_dir", "parse_certificates", "parse_store_files"]

MAX_CERT_FILE_BYTES = 256 * 1024
MAX_FILES_PER_STORE = 64
MAX_CERTS_PER_STORE = 256
MAX_STORES = 1024
_PEM_MARK = b"-----BEGIN CERTIFICATE-----"


def parse_certificates(data: bytes, where: str) -> list[x509.Certificate]:
    """One DER certificate, or one or more PEM certificates. Raises ValueError."""
    if not data.strip():
        raise ValueError(f"{where}: empty file")
    if _PEM_MARK in data:
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError as e:
            raise ValueError(f"{where}: not a PEM certificate file: {e}") from None
        return list(certs)
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError as e:
        raise ValueError(f"{where}: not a DER or PEM certificate: {e}") from None


def parse_store_files(
    store_type: StoreType, name: str, files: Mapping[str, bytes]
) -> tuple[x509.Certificate, ...]:
    """Validate one store's files. Raises :class:`TrustStoreError`."""
    where = f"x509/{store_type}/{name}"
    if not files:
        raise TrustStoreError(where, "trust store is empty")
    certs: list[x509.Certificate] = []
    for filename in sorted(files):
        try:
            parsed = parse_certificates(files[filename], filename)
        except ValueError as e:
            raise TrustStoreError(where, str(e)) from None
        for cert in parsed:
            self_signed = is_self_signed(cert)
            if store_type is StoreType.TSA:
                if not (self_signed and is_ca(cert)):
                    raise TrustStoreError(
                        where,
                        f"{filename}: certificate {cert.subject.rfc4514_string()!r} is not a "
                        "self-signed root CA; tsa stores hold TSA root certificates",
                    )
            elif not (self_signed or is_ca(cert)):
                raise TrustStoreError(
                    where,
                    f"{filename}: certificate {cert.subject.rfc4514_string()!r} is not a CA "
                    "certificate or self-signed signing certificate",
                )
            certs.append(cert)
    if len(certs) > MAX_CERTS_PER_STORE:
        raise TrustStoreError(where, f"more than {MAX_CERTS_PER_STORE} certificates")
    return tuple(certs)


@dataclass(frozen=True)
class TrustStore:
    """Loaded stores by reference, and the reason each broken one was refused."""

    stores: Mapping[StoreRef, tuple[x509.Certificate, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    broken: Mapping[StoreRef, str] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def of(
        cls,
        stores: Mapping[StoreRef, Iterable[x509.Certificate]],
        broken: Mapping[StoreRef, str] | None = None,
    ) -> TrustStore:
        return cls(
            MappingProxyType({k: tuple(v) for k, v in stores.items()}),
            MappingProxyType(dict(broken or {})),
        )

    def certificates(self, ref: StoreRef) -> tuple[x509.Certificate, ...]:
        """Raises :class:`TrustStoreError` when the store is absent or broken."""
        if ref in self.broken:
            raise TrustStoreError(f"x509/{ref.type}/{ref.name}", self.broken[ref])
        found = self.stores.get(ref)
        if found is None:
            raise TrustStoreError(f"x509/{ref.type}/{ref.name}", "trust store does not exist")
        return found

    def fingerprints(self, refs: Iterable[StoreRef]) -> dict[bytes, x509.Certificate]:
        """SHA-256 of DER → certificate, over the named stores (each must be loadable)."""
        out: dict[bytes, x509.Certificate] = {}
        for ref in refs:
            for cert in self.certificates(ref):
                der = cert.public_bytes(serialization.Encoding.DER)
                out[hashlib.sha256(der).digest()] = cert
        return out


def _read_bounded(path: Path, limit: int) -> bytes:
    # O_NOFOLLOW: a symlink swapped in after the directory scan is refused too.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path.name}: larger than {limit} bytes")
    return data


def load_trust_store_dir(root: Path, *, max_file_bytes: int = MAX_CERT_FILE_BYTES) -> TrustStore:
    """Read ``root/x509/<type>/<name>/`` (``root`` is Notation's ``truststore`` folder).

    A missing ``x509/<type>`` folder means no stores of that type. Raises
    :class:`TrustStoreError` only when ``root`` itself is unusable; a bad store is kept in
    :attr:`TrustStore.broken`.
    """
    base = root / "x509"
    if not root.is_dir():
        raise TrustStoreError(str(root), "trust store directory does not exist")
    stores: dict[StoreRef, tuple[x509.Certificate, ...]] = {}
    broken: dict[StoreRef, str] = {}
    for store_type in StoreType:
        type_dir = base / store_type.value
        if not type_dir.is_dir():
            continue
        for store_dir in sorted(type_dir.iterdir()):
            if len(stores) + len(broken) >= MAX_STORES:
                raise TrustStoreError(str(type_dir), f"more than {MAX_STORES} trust stores")
            ref = StoreRef(store_type, store_dir.name)
            try:
                mode = store_dir.lstat().st_mode
                if stat.S_ISLNK(mode):
                    raise ValueError("the trust store is a symlink (not supported)")
                if not stat.S_ISDIR(mode):
                    continue  # stray files beside stores are not stores
                files: dict[str, bytes] = {}
                entries = sorted(store_dir.iterdir())
                if len(entries) > MAX_FILES_PER_STORE:
                    raise ValueError(f"more than {MAX_FILES_PER_STORE} files")
                for entry in entries:
                    emode = entry.lstat().st_mode
                    if stat.S_ISLNK(emode):
                        raise ValueError(f"{entry.name} is a symlink (not supported)")
                    if not stat.S_ISREG(emode):
                        raise ValueError(f"{entry.name} is not a regular file")
                    files[entry.name] = _read_bounded(entry, max_file_bytes)
                stores[ref] = parse_store_files(store_type, ref.name, files)
            except TrustStoreError as e:
                broken[ref] = e.message
            except (OSError, ValueError) as e:
                broken[ref] = str(e)
    return TrustStore.of(stores, broken)
