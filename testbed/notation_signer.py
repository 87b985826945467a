"""A small Notation signer for tests: JWS and COSE envelopes, self-made certificate chains.

No independent Notation signer is installable here, so signatures beyond the upstream
vectors come from this helper (``cryptography`` for keys and certificates, ``cbor2`` for
COSE). It is checked against upstream: the tests verify the vectors' own envelopes and this
helper's envelopes on the same code path, and re-sign an upstream payload with the
upstream test key (``e2e.key``). Every knob that a hostile signer could turn is a
parameter, so table-driven tests can build bad envelopes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PAYLOAD_TYPE = "application/vnd.cncf.notary.payload.v1+json"
_HASH: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}
_COSE_ALG = {"PS256": -37, "PS384": -38, "PS512": -39, "ES256": -7, "ES384": -35, "ES512": -36}
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "WA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trustproxy-test"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def make_cert(
    cn: str,
    key: PrivateKey,
    *,
    issuer: tuple[x509.Certificate, PrivateKey] | None = None,
    ca: bool = False,
    not_before: datetime = T0 - timedelta(days=1),
    not_after: datetime = T0 + timedelta(days=3650),
    eku: x509.ObjectIdentifier | None = ExtendedKeyUsageOID.CODE_SIGNING,
    crl_url: str | None = None,
) -> x509.Certificate:
    subject = name(cn)
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if eku is not None and not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    if crl_url is not None:
        point = x509.DistributionPoint([x509.UniformResourceIdentifier(crl_url)], None, None, None)
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def make_crl(
    issuer: x509.Certificate,
    key: PrivateKey,
    revoked: Sequence[int] = (),
    *,
    last_update: datetime = T0 - timedelta(days=1),
    next_update: datetime = T0 + timedelta(days=3650),
) -> bytes:
    """A DER CRL from ``issuer`` listing the ``revoked`` serial numbers."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(last_update)
        .next_update(next_update)
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(last_update)
            .build()
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


@dataclass
class Signer:
    """Signs a target descriptor. ``chain`` is leaf first; ``key`` is the leaf's key."""

    key: PrivateKey
    chain: Sequence[x509.Certificate]
    alg: str = "PS256"
    scheme: str = "notary.x509"
    signing_time: datetime | None = T0
    authentic_signing_time: datetime | None = None
    expiry: datetime | None = None
    extra_protected: Mapping[str, Any] = field(default_factory=dict)
    crit_extra: Sequence[str] = ()
    crit_override: Sequence[str] | None = None
    timestamp_token: bytes | None = None

    def _sign(self, data: bytes) -> bytes:
        h = _HASH[self.alg[2:]]()
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(
                data,
                padding.PSS(mgf=padding.MGF1(_HASH[self.alg[2:]]()), salt_length=h.digest_size),
                h,
            )
        der = self.key.sign(data, ec.ECDSA(h))
        r, s = decode_dss_signature(der)
        size = (self.key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")

    def _crit(self) -> list[str]:
        if self.crit_override is not None:
            return list(self.crit_override)
        crit = ["io.cncf.notary.signingScheme"]
        if self.authentic_signing_time is not None:
            crit.append("io.cncf.notary.authenticSigningTime")
        if self.expiry is not None:
            crit.append("io.cncf.notary.expiry")
        return crit + list(self.crit_extra)

    @staticmethod
    def payload(
        media_type: str, digest: str, size: int, annotations: Mapping[str, str] | None = None
    ) -> bytes:
        target: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
        if annotations:
            target["annotations"] = dict(annotations)
        return json.dumps({"targetArtifact": target}, separators=(",", ":")).encode()

    def jws(self, payload: bytes, *, header_extra: Mapping[str, Any] | None = None) -> bytes:
        protected: dict[str, Any] = {"alg": self.alg, "crit": self._crit(), "cty": PAYLOAD_TYPE}
        protected["io.cncf.notary.signingScheme"] = self.scheme
        if self.signing_time is not None:
            protected["io.cncf.notary.signingTime"] = self.signing_time.isoformat().replace(
                "+00:00", "Z"
            )
        if self.authentic_signing_time is not None:
            protected["io.cncf.notary.authenticSigningTime"] = (
                self.authentic_signing_time.isoformat().replace("+00:00", "Z")
            )
        if self.expiry is not None:
            protected["io.cncf.notary.expiry"] = self.expiry.isoformat().replace("+00:00", "Z")
        protected.update(self.extra_protected)
        p64 = b64url(json.dumps(protected).encode())
        pl64 = b64url(payload)
        signature = self._sign(f"{p64}.{pl64}".encode())
        header: dict[str, Any] = {
            "x5c": [
                base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()
                for c in self.chain
            ],
            "io.cncf.notary.signingAgent": "trustproxy-test-signer",
        }
        if self.timestamp_token is not None:
            header["io.cncf.notary.timestampSignature"] = base64.b64encode(
                self.timestamp_token
            ).decode()
        header.update(header_extra or {})
        env = {"payload": pl64, "protected": p64, "header": header, "signature": b64url(signature)}
        return json.dumps(env).encode()

    def cose(self, payload: bytes, *, tag: int = 18) -> bytes:
        protected: dict[Any, Any] = {1: _COSE_ALG[self.alg], 2: self._crit(), 3: PAYLOAD_TYPE}
        protected["io.cncf.notary.signingScheme"] = self.scheme
        if self.signing_time is not None:
            protected["io.cncf.notary.signingTime"] = self.signing_time
        if self.authentic_signing_time is not None:
            protected["io.cncf.notary.authenticSigningTime"] = self.authentic_signing_time
        if self.expiry is not None:
            protected["io.cncf.notary.expiry"] = self.expiry
        protected.update(self.extra_protected)
        prot = cbor2.dumps(protected, datetime_as_timestamp=True)
        signature = self._sign(cbor2.dumps(["Signature1", prot, b"", payload]))
        unprotected: dict[Any, Any] = {
            33: [c.public_bytes(serialization.Encoding.DER) for c in self.chain],
            "io.cncf.notary.signingAgent": "trustproxy-test-signer",
        }
        if self.timestamp_token is not None:
            unprotected["io.cncf.notary.timestampSignature"] = self.timestamp_token
        return cbor2.dumps(cbor2.CBORTag(tag, [prot, unprotected, payload, signature]))


SIGNATURE_ARTIFACT_TYPE = "application/vnd.cncf.notary.signature"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY_CONFIG = b"{}"


def _digest(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class SignatureArtifact:
    """A signature manifest and the blobs it needs, as a registry stores them."""

    manifest: bytes
    blobs: Mapping[str, bytes]

    @property
    def digest(self) -> str:
        return _digest(self.manifest)

    def descriptor(self) -> dict[str, Any]:
        """Its entry in a referrers listing (API answer or ``sha256-<hex>`` index)."""
        return {
            "mediaType": OCI_MANIFEST,
            "digest": self.digest,
            "size": len(self.manifest),
            "artifactType": SIGNATURE_ARTIFACT_TYPE,
        }


def signature_artifact(
    subject: Mapping[str, Any],
    envelope: bytes,
    envelope_media_type: str = "application/jose+json",
    *,
    final_form: bool = False,
) -> SignatureArtifact:
    """The signature manifest notation pushes for ``subject`` (a descriptor: mediaType,
    digest, size). ``final_form``: OCI 1.1 (top-level ``artifactType``, empty config);
    otherwise the 1.1-rc form of the upstream vectors (the type in ``config.mediaType``)."""
    config_type = "application/vnd.oci.empty.v1+json" if final_form else SIGNATURE_ARTIFACT_TYPE
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
    if final_form:
        doc["artifactType"] = SIGNATURE_ARTIFACT_TYPE
    doc["config"] = {
        "mediaType": config_type,
        "digest": _digest(EMPTY_CONFIG),
        "size": len(EMPTY_CONFIG),
    }
    doc["layers"] = [
        {"mediaType": envelope_media_type, "digest": _digest(envelope), "size": len(envelope)}
    ]
    doc["subject"] = {
        "mediaType": subject["mediaType"],
        "digest": subject["digest"],
        "size": subject["size"],
    }
    doc["annotations"] = {"org.opencontainers.image.created": T0.isoformat()}
    manifest = json.dumps(doc, separators=(",", ":")).encode()
    return SignatureArtifact(
        manifest, {_digest(EMPTY_CONFIG): EMPTY_CONFIG, _digest(envelope): envelope}
    )


def referrers_index(descriptors: Sequence[Mapping[str, Any]]) -> bytes:
    """The ``sha256-<hex>`` tag-schema index listing ``descriptors``."""
    doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [dict(d) for d in descriptors],
    }
    return json.dumps(doc, separators=(",", ":")).encode()
