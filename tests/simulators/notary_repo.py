"""An in-memory Notary v1 repository (python-tuf ``RepositorySimulator`` shape).

It signs like notary: ``{"signed": <canonical JSON>, "signatures": [{keyid, method, sig}]}``,
capitalised ``_type``, base64 hashes, RFC 3339 nanosecond expiry, an x509 root certificate
with CN = GUN, and serves the file names notary-server serves::

    repo = NotaryRepository("docker.io/library/app", now=NOW)
    repo.add_target("v1", b"manifest bytes")
    repo.publish()
    repo.fetch("timestamp.json"); repo.fetch("2.root.json"); repo.fetch(f"targets.{hex}.json")

Attack helpers: :meth:`checkpoint`/:meth:`serve` (rollback, mix-and-match), ``overrides``
(swizzle any served file), ``signing_keys`` (sign a role with other keys), ``expires``
(freeze), :meth:`rotate_root` (with or without the old root's signature).
"""

from __future__ import annotations

import base64
import hashlib
import json
import posixpath
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from proxy.sources.notary.tuf.canonical import encode_canonical
from proxy.sources.notary.tuf.keys import compute_key_id

__all__ = [
    "DEFAULT_NOW",
    "NotaryRepository",
    "SimKey",
    "generate_key",
    "make_ca",
    "x509_key",
]

KeyKind = Literal["ecdsa", "ed25519", "rsa"]
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
DEFAULT_NOW = datetime(2026, 1, 1, tzinfo=UTC)
TOP_LEVEL = ("root", "targets", "snapshot", "timestamp")
LIFETIMES = {
    "root": timedelta(days=3650),
    "targets": timedelta(days=3 * 365),
    "snapshot": timedelta(days=3 * 365),
    "timestamp": timedelta(days=14),
}
_RSA_CACHE: list[rsa.RSAPrivateKey] = []


@dataclass
class SimKey:
    """A private key with the public key JSON notary would publish for it."""

    private: PrivateKey
    key_type: str
    public_b64: str
    method: str
    certificate: x509.Certificate | None = None

    @property
    def key_id(self) -> str:
        return compute_key_id(self.key_type, self.public_b64)

    @property
    def canonical_id(self) -> str:
        if self.certificate is None:
            return self.key_id
        spki = self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        bare = self.key_type.removesuffix("-x509")
        return compute_key_id(bare, base64.b64encode(spki).decode())

    def to_json(self) -> dict[str, object]:
        return {"keytype": self.key_type, "keyval": {"private": None, "public": self.public_b64}}

    def sign(self, message: bytes, method: str | None = None) -> bytes:
        method = method or self.method
        key = self.private
        if isinstance(key, ec.EllipticCurvePrivateKey):
            r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
            size = (key.curve.key_size + 7) // 8
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")
        if isinstance(key, rsa.RSAPrivateKey):
            if method == "rsapss":
                pad: padding.AsymmetricPadding = padding.PSS(
                    mgf=padding.MGF1(hashes.SHA256()), salt_length=32
                )
            else:
                pad = padding.PKCS1v15()
            return key.sign(message, pad, hashes.SHA256())
        return key.sign(message)

    def signature(self, message: bytes) -> dict[str, str]:
        sig = base64.b64encode(self.sign(message)).decode()
        return {"keyid": self.key_id, "method": self.method, "sig": sig}


def _spki(pub: object) -> bytes:
    assert isinstance(pub, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _new_private(kind: KeyKind, *, fresh_rsa: bool = False) -> PrivateKey:
    if kind == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    # RSA generation is slow; tests share a few keys unless asked otherwise.
    if fresh_rsa or len(_RSA_CACHE) < 3:
        k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _RSA_CACHE.append(k)
        return k
    return _RSA_CACHE[len(_RSA_CACHE) % 3]


def from_private(private: PrivateKey) -> SimKey:
    """Wrap an existing private key as a bare (non-x509) notary key."""
    if isinstance(private, ec.EllipticCurvePrivateKey):
        return SimKey(
            private, "ecdsa", base64.b64encode(_spki(private.public_key())).decode(), "ecdsa"
        )
    if isinstance(private, rsa.RSAPrivateKey):
        return SimKey(
            private, "rsa", base64.b64encode(_spki(private.public_key())).decode(), "rsapss"
        )
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return SimKey(private, "ed25519", base64.b64encode(raw).decode(), "eddsa")


def generate_key(kind: KeyKind = "ecdsa") -> SimKey:
    """A fresh bare key: ``ecdsa`` (P-256), ``ed25519`` or ``rsa`` (2048, signs rsapss)."""
    return from_private(_new_private(kind))


def make_ca(
    cn: str = "Test Root CA", *, now: datetime = DEFAULT_NOW
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA (for :class:`proxy.sources.notary.tuf.RootCA` tests)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def x509_key(
    cn: str,
    *,
    kind: KeyKind = "ecdsa",
    now: datetime = DEFAULT_NOW,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None = None,
    private: PrivateKey | None = None,
    hash_algorithm: hashes.SHA256 | hashes.SHA384 | None = None,
) -> SimKey:
    """A notary root-style key: a 10-year certificate with CN = ``cn`` (EKU codeSigning).

    Self-signed unless ``issuer`` (key, cert) is given; then the PEM is a bundle
    leaf + issuer, as notary writes it.
    """
    if kind == "ed25519":
        raise ValueError("notary has no ed25519 x509 keys")
    priv = private or _new_private(kind)
    assert not isinstance(priv, ed25519.Ed25519PrivateKey)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_name = issuer[1].subject if issuer else subject
    signer: PrivateKey = issuer[0] if issuer else priv
    assert not isinstance(signer, ed25519.Ed25519PrivateKey)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(priv.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(hours=1))
        .not_valid_after(not_after or now + timedelta(days=3650))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(signer, hash_algorithm or hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    if issuer:
        pem += issuer[1].public_bytes(serialization.Encoding.PEM)
    key_type = "ecdsa-x509" if kind == "ecdsa" else "rsa-x509"
    method = "ecdsa" if kind == "ecdsa" else "rsapss"
    return SimKey(priv, key_type, base64.b64encode(pem).decode(), method, cert)


@dataclass
class RoleKeys:
    keys: list[SimKey]
    threshold: int = 1


@dataclass
class Delegation:
    name: str
    keys: list[SimKey]
    threshold: int = 1
    paths: list[str] = field(default_factory=lambda: [""])


def expires_text(dt: datetime) -> str:
    """RFC 3339 with nanoseconds, as Go writes ``time.Time`` (UTC)."""
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{dt.microsecond:06d}123Z"


def envelope(signed: dict[str, object], keys: Iterable[SimKey]) -> bytes:
    """Serialise and sign like notary: canonical ``signed`` inside a Go-ordered envelope."""
    message = encode_canonical(signed)
    sigs = [k.signature(message) for k in keys]
    return (
        b'{"signed":'
        + message
        + b',"signatures":'
        + json.dumps(sigs, separators=(",", ":")).encode()
        + b"}"
    )


def meta_for(raw: bytes, *, sha512: bool = True) -> dict[str, object]:
    hashes_ = {"sha256": base64.b64encode(hashlib.sha256(raw).digest()).decode()}
    if sha512:
        hashes_["sha512"] = base64.b64encode(hashlib.sha512(raw).digest()).decode()
    return {"hashes": hashes_, "length": len(raw)}


class NotaryRepository:
    """An in-memory notary-server view of one GUN, signing on :meth:`publish`."""

    def __init__(
        self,
        gun: str = "docker.io/library/app",
        *,
        now: datetime = DEFAULT_NOW,
        root_kind: KeyKind = "ecdsa",
        key_kind: KeyKind = "ecdsa",
        root_keys: int = 1,
        root_threshold: int = 1,
        root_cn: str | None = None,
        root_issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None = None,
    ) -> None:
        self.gun = gun
        self.now = now
        self.roles: dict[str, RoleKeys] = {
            "root": RoleKeys(
                [
                    x509_key(root_cn or gun, kind=root_kind, now=now, issuer=root_issuer)
                    for _ in range(root_keys)
                ],
                root_threshold,
            ),
            "targets": RoleKeys([generate_key(key_kind)]),
            "snapshot": RoleKeys([generate_key(key_kind)]),
            "timestamp": RoleKeys([generate_key(key_kind)]),
        }
        #: extra keys listed in root ``keys`` (old root certs stay after a rotation)
        self.extra_root_keys: list[SimKey] = []
        self.delegations: dict[str, Delegation] = {}
        self.target_entries: dict[str, dict[str, dict[str, object]]] = {"targets": {}}
        self.versions: dict[str, int] = dict.fromkeys(TOP_LEVEL, 0)
        self.expires: dict[str, datetime] = {r: now + LIFETIMES[r] for r in TOP_LEVEL}
        #: role -> keys to sign with instead of the role's own keys (attacks)
        self.signing_keys: dict[str, list[SimKey]] = {}
        #: role -> callback mutating ``signed`` before signing (attacks)
        self.mutators: dict[str, Callable[[dict[str, object]], None]] = {}
        #: file name -> bytes served instead of the real file (swizzle, endless data)
        self.overrides: dict[str, bytes] = {}
        self.files: dict[str, bytes] = {}
        self.current: dict[str, bytes] = {}  # role -> latest bytes
        self._dirty: set[str] = set(TOP_LEVEL)
        self._next_root_extra_signers: list[SimKey] = []
        self.publish()

    # --- editing ---------------------------------------------------------------------------

    def add_target(
        self, tag: str, manifest: bytes, role: str = "targets", *, sha512: bool = False
    ) -> dict[str, object]:
        """Sign ``tag`` -> sha256 + length of ``manifest`` in ``role`` (on next publish)."""
        entry = meta_for(manifest, sha512=sha512)
        self.target_entries.setdefault(role, {})[tag] = entry
        self._dirty.add(role)
        return entry

    def remove_target(self, tag: str, role: str = "targets") -> None:
        del self.target_entries[role][tag]
        self._dirty.add(role)

    def add_delegation(
        self,
        name: str,
        keys: Sequence[SimKey] | None = None,
        threshold: int = 1,
        paths: Sequence[str] = ("",),
    ) -> list[SimKey]:
        """Declare ``name`` in its parent (``targets/x`` -> ``targets``); returns its keys."""
        ks = list(keys) if keys is not None else [generate_key("ecdsa")]
        self.delegations[name] = Delegation(name, ks, threshold, list(paths))
        self.target_entries.setdefault(name, {})
        self.versions.setdefault(name, 0)
        self.expires.setdefault(name, self.now + LIFETIMES["targets"])
        self._dirty.update({name, posixpath.dirname(name)})
        return ks

    def remove_delegation_key(self, name: str, key: SimKey) -> None:
        """Revoke a delegation key in the parent (the role stays signed by it)."""
        self.delegations[name].keys = [k for k in self.delegations[name].keys if k is not key]
        self._dirty.add(posixpath.dirname(name))

    def rotate_root(
        self,
        keys: Sequence[SimKey] | None = None,
        threshold: int | None = None,
        *,
        sign_with_previous: bool = True,
    ) -> list[SimKey]:
        """Replace the root keys; the new root is signed by old and new keys (notary)."""
        old = self.roles["root"].keys
        new = list(keys) if keys is not None else [x509_key(self.gun, now=self.now)]
        self.extra_root_keys.extend(k for k in old if k not in self.extra_root_keys)
        self.roles["root"] = RoleKeys(new, threshold or self.roles["root"].threshold)
        self._next_root_extra_signers = list(old) if sign_with_previous else []
        self._dirty.add("root")
        return new

    def rotate_key(self, role: str, keys: Sequence[SimKey] | None = None) -> list[SimKey]:
        """Replace a top-level role's keys (changes root)."""
        ks = list(keys) if keys is not None else [generate_key("ecdsa")]
        self.roles[role] = RoleKeys(ks, self.roles[role].threshold)
        self._dirty.update({"root", role})
        return ks

    def touch(self, *roles: str) -> None:
        """Mark roles changed so the next publish re-signs them with a new version."""
        self._dirty.update(roles)

    # --- signing ---------------------------------------------------------------------------

    def _signed_root(self) -> dict[str, object]:
        keys: dict[str, object] = {}
        for k in self.extra_root_keys:
            keys[k.key_id] = k.to_json()
        for r in TOP_LEVEL:
            for k in self.roles[r].keys:
                keys[k.key_id] = k.to_json()
        return {
            "_type": "Root",
            "consistent_snapshot": False,
            "expires": expires_text(self.expires["root"]),
            "keys": keys,
            "roles": {
                r: {"keyids": [k.key_id for k in rk.keys], "threshold": rk.threshold}
                for r, rk in self.roles.items()
            },
            "version": self.versions["root"],
        }

    def _signed_targets(self, role: str) -> dict[str, object]:
        children = [d for n, d in self.delegations.items() if posixpath.dirname(n) == role]
        keys = {k.key_id: k.to_json() for d in children for k in d.keys}
        return {
            "_type": "Targets",
            "delegations": {
                "keys": keys,
                "roles": [
                    {
                        "keyids": [k.key_id for k in d.keys],
                        "name": d.name,
                        "paths": d.paths,
                        "threshold": d.threshold,
                    }
                    for d in children
                ],
            },
            "expires": expires_text(self.expires[role]),
            "targets": self.target_entries.get(role, {}),
            "version": self.versions[role],
        }

    def _keys_for(self, role: str) -> list[SimKey]:
        if role in self.signing_keys:
            return self.signing_keys[role]
        if role in self.delegations:
            return self.delegations[role].keys
        return self.roles[role].keys

    def sign(self, role: str, signed: dict[str, object]) -> bytes:
        """Sign a ``signed`` dict for ``role`` (applying mutators and key overrides)."""
        if role in self.mutators:
            self.mutators[role](signed)
        keys = self._keys_for(role)
        if role == "root":
            keys = keys + [k for k in self._next_root_extra_signers if k not in keys]
        return envelope(signed, keys)

    def publish(self) -> None:
        """Re-sign changed roles (new versions), then snapshot and timestamp."""
        dirty = set(self._dirty)
        self._dirty.clear()
        if "root" in dirty:
            self.versions["root"] += 1
            raw = self.sign("root", self._signed_root())
            self._next_root_extra_signers = []
            self.current["root"] = raw
            self.files[f"{self.versions['root']}.root.json"] = raw
            self.files["root.json"] = raw
        for role in ["targets", *self.delegations]:
            if role in dirty or role not in self.current:
                self.versions[role] += 1
                raw = self.sign(role, self._signed_targets(role))
                self._store(role, raw)
        self.versions["snapshot"] += 1
        meta = {"root": meta_for(self.current["root"])}
        for role in ["targets", *self.delegations]:
            meta[role] = meta_for(self.current[role])
        snap = {
            "_type": "Snapshot",
            "expires": expires_text(self.expires["snapshot"]),
            "meta": meta,
            "version": self.versions["snapshot"],
        }
        self._store("snapshot", self.sign("snapshot", snap))
        self.publish_timestamp()

    def publish_timestamp(self) -> None:
        """Re-sign only the timestamp (what notary-server does on its own)."""
        self.versions["timestamp"] += 1
        ts = {
            "_type": "Timestamp",
            "expires": expires_text(self.expires["timestamp"]),
            "meta": {"snapshot": meta_for(self.current["snapshot"])},
            "version": self.versions["timestamp"],
        }
        raw = self.sign("timestamp", ts)
        self.current["timestamp"] = raw
        self.files["timestamp.json"] = raw

    def _store(self, role: str, raw: bytes) -> None:
        self.current[role] = raw
        self.files[f"{role}.json"] = raw
        self.files[f"{role}.{hashlib.sha256(raw).hexdigest()}.json"] = raw

    # --- serving ---------------------------------------------------------------------------

    def fetch(self, filename: str) -> bytes | None:
        """Bytes notary-server would answer for ``/v2/<gun>/_trust/tuf/<filename>``; None
        for 404."""
        if filename in self.overrides:
            return self.overrides[filename]
        return self.files.get(filename)

    def root_bytes(self, version: int | None = None) -> bytes:
        """A root version (default: 1, what a client bootstraps from)."""
        return self.files[f"{version or 1}.root.json"]

    def checkpoint(self) -> dict[str, bytes]:
        """The current names' bytes (timestamp.json, root.json, ...), to serve again later."""
        return {n: b for n, b in self.files.items() if n.count(".") == 1 or n[0].isdigit()}

    def serve(self, files: dict[str, bytes]) -> None:
        """Serve old bytes under the current names again (rollback / mix-and-match)."""
        self.overrides.update(files)
