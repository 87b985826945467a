"""A private Sigstore instance in memory, for cosign unit and attack tests.

It plays Fulcio (a root and an intermediate CA issuing ten-minute code-signing
certificates with Fulcio's identity extensions and an embedded SCT), the CT log and Rekor
(signed entry timestamps over ``hashedrekord`` bodies), and writes the matching
``trusted_root.json``. With it a test makes classic ``.sig`` manifests the way cosign lays
them out (simple-signing layers and annotations, structure cross-checked against the
connaisseur vectors) and then breaks exactly one thing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
T0 = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
OID_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
OID_ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
OID_SCT_LIST = x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")


def spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def pem_public(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _utf8_der(text: str) -> bytes:
    raw = text.encode()
    assert len(raw) < 128
    return bytes([0x0C, len(raw)]) + raw


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trustproxy test"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def simple_signing_payload(digest: str, reference: str, optional: Any = None) -> bytes:
    """The payload cosign signs, byte layout as in the connaisseur vectors."""
    return json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": reference},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature",
            },
            "optional": optional,
        },
        separators=(",", ":"),
    ).encode()


@dataclass
class Layer:
    payload: bytes
    annotations: dict[str, str]
    media_type: str = SIMPLE_SIGNING
    #: the digest the manifest claims, when it is not the payload's (a swapped blob)
    claimed_digest: str | None = None

    @property
    def digest(self) -> str:
        return self.claimed_digest or "sha256:" + hashlib.sha256(self.payload).hexdigest()


def sig_manifest(layers: list[Layer]) -> bytes:
    """A ``.sig`` manifest as cosign writes it (OCI image manifest)."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "size": 233,
                "digest": "sha256:" + "0" * 64,
            },
            "layers": [
                {
                    "mediaType": layer.media_type,
                    "size": len(layer.payload),
                    "digest": layer.digest,
                    "annotations": layer.annotations,
                }
                for layer in layers
            ],
        }
    ).encode()


def blobs_of(layers: list[Layer]) -> dict[str, bytes]:
    return {layer.digest: layer.payload for layer in layers}


def sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


@dataclass
class SigstoreInstance:
    """Fulcio + CT log + Rekor keys of one private instance."""

    root_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP384R1())
    )
    inter_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP384R1())
    )
    rekor_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    ct_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    log_index: int = 1000

    def __post_init__(self) -> None:
        start = T0 - timedelta(days=365)
        end = T0 + timedelta(days=365)
        self.root = self._ca(_name("test-root"), self.root_key, self.root_key, start, end, None)
        self.intermediate = self._ca(
            _name("test-intermediate"), self.inter_key, self.root_key, start, end, 0,
            issuer=self.root.subject,
        )  # fmt: skip

    @staticmethod
    def _ca(
        name: x509.Name,
        key: ec.EllipticCurvePrivateKey,
        signer: ec.EllipticCurvePrivateKey,
        start: datetime,
        end: datetime,
        path_length: int | None,
        issuer: x509.Name | None = None,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer or name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), False
            )
        )
        return builder.sign(signer, hashes.SHA384())

    @property
    def rekor_log_id(self) -> str:
        return hashlib.sha256(spki(self.rekor_key.public_key())).hexdigest()

    def trusted_root(
        self,
        *,
        ca_window: tuple[datetime, datetime | None] | None = None,
        chain: list[x509.Certificate] | None = None,
    ) -> bytes:
        """``trusted_root.json`` for this instance."""
        start = (T0 - timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")
        ca_valid: dict[str, str] = {"start": start}
        if ca_window is not None:
            ca_valid = {"start": ca_window[0].strftime("%Y-%m-%dT%H:%M:%SZ")}
            if ca_window[1] is not None:
                ca_valid["end"] = ca_window[1].strftime("%Y-%m-%dT%H:%M:%SZ")
        certs = chain if chain is not None else [self.intermediate, self.root]

        def log(key: ec.EllipticCurvePrivateKey, url: str) -> dict[str, Any]:
            der = spki(key.public_key())
            return {
                "baseUrl": url,
                "hashAlgorithm": "SHA2_256",
                "publicKey": {
                    "rawBytes": b64(der),
                    "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                    "validFor": {"start": start},
                },
                "logId": {"keyId": b64(hashlib.sha256(der).digest())},
            }

        return json.dumps(
            {
                "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
                "tlogs": [log(self.rekor_key, "https://rekor.test")],
                "certificateAuthorities": [
                    {
                        "subject": {"organization": "trustproxy test", "commonName": "test-root"},
                        "uri": "https://fulcio.test",
                        "certChain": {
                            "certificates": [
                                {"rawBytes": b64(c.public_bytes(serialization.Encoding.DER))}
                                for c in certs
                            ]
                        },
                        "validFor": ca_valid,
                    }
                ],
                "ctlogs": [log(self.ct_key, "https://ctfe.test")],
                "timestampAuthorities": [],
            }
        ).encode()

    def issue(
        self,
        *,
        san: str = "dev@example.com",
        issuer: str = "https://issuer.example",
        not_before: datetime = T0,
        lifetime: timedelta = timedelta(minutes=10),
        sct: bool = True,
        code_signing: bool = True,
        legacy_issuer: bool = False,
        key: ec.EllipticCurvePrivateKey | None = None,
        signer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A Fulcio-style leaf; returns it with its private key."""
        key = key or ec.generate_private_key(ec.SECP256R1())
        parent, parent_key = signer or (self.intermediate, self.inter_key)
        general: x509.GeneralName = (
            x509.UniformResourceIdentifier(san) if "://" in san else x509.RFC822Name(san)
        )
        eku = [
            ExtendedKeyUsageOID.CODE_SIGNING
            if code_signing
            else ExtendedKeyUsageOID.EMAIL_PROTECTION
        ]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(parent.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_before + lifetime)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False), True
            )
            .add_extension(x509.ExtendedKeyUsage(eku), False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(parent_key.public_key()), False
            )
            .add_extension(x509.SubjectAlternativeName([general]), True)
        )
        if legacy_issuer:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(OID_ISSUER_V1, issuer.encode()), False
            )
        else:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(OID_ISSUER_V2, _utf8_der(issuer)), False
            )
        if not sct:
            return builder.sign(parent_key, hashes.SHA384()), key
        # The SCT signs the TBS without the SCT extension: build that first (same fields,
        # SCT extension last), then append the SCT list.
        pre = builder.sign(parent_key, hashes.SHA384())
        tbs = pre.tbs_certificate_bytes
        ts_ms = int((not_before + timedelta(seconds=1)).timestamp() * 1000)
        issuer_hash = hashlib.sha256(spki(parent_key.public_key())).digest()
        message = (
            b"\x00\x00" + struct.pack(">Q", ts_ms) + b"\x00\x01" + issuer_hash
            + len(tbs).to_bytes(3, "big") + tbs + b"\x00\x00"
        )  # fmt: skip
        sig = sign(self.ct_key, message)
        log_id = hashlib.sha256(spki(self.ct_key.public_key())).digest()
        sct_bytes = (
            b"\x00" + log_id + struct.pack(">Q", ts_ms) + b"\x00\x00"
            + b"\x04\x03" + len(sig).to_bytes(2, "big") + sig
        )  # fmt: skip
        sct_list = len(sct_bytes).to_bytes(2, "big") + sct_bytes
        inner = len(sct_list).to_bytes(2, "big") + sct_list
        octet = b"\x04" + _der_len(len(inner)) + inner
        final = builder.add_extension(x509.UnrecognizedExtension(OID_SCT_LIST, octet), False)
        return final.sign(parent_key, hashes.SHA384()), key

    def rekor_annotation(
        self,
        *,
        payload: bytes,
        signature: bytes,
        signer_pem: bytes,
        integrated_time: datetime,
        body_hash: str | None = None,
        set_key: ec.EllipticCurvePrivateKey | None = None,
    ) -> str:
        """cosign's ``dev.sigstore.cosign/bundle`` annotation: a hashedrekord body and its SET."""
        body = json.dumps(
            {
                "apiVersion": "0.0.1",
                "kind": "hashedrekord",
                "spec": {
                    "data": {
                        "hash": {
                            "algorithm": "sha256",
                            "value": body_hash or hashlib.sha256(payload).hexdigest(),
                        }
                    },
                    "signature": {
                        "content": b64(signature),
                        "publicKey": {"content": b64(signer_pem)},
                    },
                },
            },
            separators=(",", ":"),
        ).encode()
        self.log_index += 1
        entry = {
            "body": b64(body),
            "integratedTime": int(integrated_time.timestamp()),
            "logID": self.rekor_log_id,
            "logIndex": self.log_index,
        }
        message = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
        set_sig = sign(set_key or self.rekor_key, message)
        return json.dumps({"SignedEntryTimestamp": b64(set_sig), "Payload": entry})

    def checkpoint(self, size: int, root_hash: bytes, origin: str = "rekor.test") -> str:
        """A signed note for this tree, signed by the Rekor key (hint: log ID prefix)."""
        note = f"{origin}\n{size}\n{b64(root_hash)}\n"
        sig = sign(self.rekor_key, note.encode())
        hint = bytes.fromhex(self.rekor_log_id)[:4]
        return f"{note}\n\u2014 {origin} {b64(hint + sig)}\n"

    def rekor_v2_entry(self, signed: bytes, signature: bytes, key_der: bytes) -> dict[str, Any]:
        """A Rekor v2 ``hashedrekord`` 0.0.2 entry: leaf 1 of a 3-leaf tree, with its
        inclusion proof and checkpoint, no SET (Rekor v2 gives none)."""
        body = json.dumps(
            {
                "apiVersion": "0.0.2",
                "kind": "hashedrekord",
                "spec": {
                    "hashedRekordV002": {
                        "data": {
                            "algorithm": "SHA2_256",
                            "digest": b64(hashlib.sha256(signed).digest()),
                        },
                        "signature": {
                            "content": b64(signature),
                            "verifier": {
                                "publicKey": {"rawBytes": b64(key_der)},
                                "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                            },
                        },
                    }
                },
            },
            separators=(",", ":"),
        ).encode()

        def leaf(data: bytes) -> bytes:
            return hashlib.sha256(b"\x00" + data).digest()

        def node(left: bytes, right: bytes) -> bytes:
            return hashlib.sha256(b"\x01" + left + right).digest()

        left, right = leaf(b"other entry 0"), leaf(b"other entry 2")
        root_hash = node(node(left, leaf(body)), right)
        return {
            "logIndex": "1",
            "logId": {"keyId": b64(bytes.fromhex(self.rekor_log_id))},
            "kindVersion": {"kind": "hashedrekord", "version": "0.0.2"},
            "inclusionProof": {
                "logIndex": "1",
                "rootHash": b64(root_hash),
                "treeSize": "3",
                "hashes": [b64(left), b64(right)],
                "checkpoint": {"envelope": self.checkpoint(3, root_hash)},
            },
            "canonicalizedBody": b64(body),
        }

    def keyless_layer(
        self,
        digest: str,
        reference: str,
        *,
        cert: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
        logged: bool = True,
        integrated_time: datetime | None = None,
        chain: list[x509.Certificate] | None = None,
        **rekor: Any,
    ) -> Layer:
        """A keyless signature layer, as cosign writes it."""
        leaf, key = cert or self.issue()
        payload = simple_signing_payload(digest, reference)
        signature = sign(key, payload)
        leaf_pem = leaf.public_bytes(serialization.Encoding.PEM)
        chain_certs = chain if chain is not None else [self.intermediate, self.root]
        annotations = {
            "dev.cosignproject.cosign/signature": b64(signature),
            "dev.sigstore.cosign/certificate": leaf_pem.decode(),
            "dev.sigstore.cosign/chain": b"".join(
                c.public_bytes(serialization.Encoding.PEM) for c in chain_certs
            ).decode(),
        }
        if logged:
            annotations["dev.sigstore.cosign/bundle"] = self.rekor_annotation(
                payload=payload,
                signature=signature,
                signer_pem=leaf_pem,
                integrated_time=integrated_time or leaf.not_valid_before_utc + timedelta(seconds=5),
                **rekor,
            )
        return Layer(payload, annotations)

    def key_layer(
        self,
        digest: str,
        reference: str,
        key: ec.EllipticCurvePrivateKey,
        *,
        logged: bool = False,
        payload: bytes | None = None,
        **rekor: Any,
    ) -> Layer:
        """A key-based signature layer (``cosign sign --key``)."""
        payload = payload or simple_signing_payload(digest, reference)
        signature = sign(key, payload)
        annotations = {"dev.cosignproject.cosign/signature": b64(signature)}
        if logged:
            annotations["dev.sigstore.cosign/bundle"] = self.rekor_annotation(
                payload=payload,
                signature=signature,
                signer_pem=pem_public(key.public_key()),
                integrated_time=rekor.pop("integrated_time", T0),
                **rekor,
            )
        return Layer(payload, annotations)


def _der_len(n: int) -> bytes:
    if n < 128:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def in_toto_statement(
    digest: str, predicate_type: str = "https://sigstore.dev/cosign/sign/v1"
) -> bytes:
    """The statement cosign 3 signs for an image (``cosign sign``, new bundle format)."""
    algorithm, _, hex_part = digest.partition(":")
    return json.dumps(
        {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"digest": {algorithm: hex_part}}],
            "predicateType": predicate_type,
            "predicate": {},
        }
    ).encode()


def pae(payload_type: str, payload: bytes) -> bytes:
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def key_bundle(
    instance: SigstoreInstance | None,
    key: ec.EllipticCurvePrivateKey,
    payload: bytes,
    *,
    payload_type: str = "application/vnd.in-toto+json",
    media_type: str = "application/vnd.dev.sigstore.bundle.v0.3+json",
    logged: bool = False,
    logged_payload: bytes | None = None,
    rekor_v2: bool = False,
) -> bytes:
    """A key-based v0.3 bundle (``publicKey`` hint, DSSE), with a Rekor ``dsse`` entry and
    its SET when ``logged`` (``logged_payload``: log another payload instead)."""
    signature = sign(key, pae(payload_type, payload))
    material: dict[str, Any] = {"publicKey": {"hint": "test"}}
    if rekor_v2 and instance is not None:
        material["tlogEntries"] = [
            instance.rekor_v2_entry(
                pae(payload_type, logged_payload or payload), signature, spki(key.public_key())
            )
        ]
    if logged and instance is not None:
        body = json.dumps(
            {
                "apiVersion": "0.0.1",
                "kind": "dsse",
                "spec": {
                    "payloadHash": {
                        "algorithm": "sha256",
                        "value": hashlib.sha256(logged_payload or payload).hexdigest(),
                    },
                    "signatures": [
                        {
                            "signature": b64(signature),
                            "verifier": b64(pem_public(key.public_key())),
                        }
                    ],
                },
            },
            separators=(",", ":"),
        ).encode()
        instance.log_index += 1
        entry = {
            "body": b64(body),
            "integratedTime": int(T0.timestamp()),
            "logID": instance.rekor_log_id,
            "logIndex": instance.log_index,
        }
        set_sig = sign(
            instance.rekor_key, json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
        )
        material["tlogEntries"] = [
            {
                "logIndex": str(instance.log_index),
                "logId": {"keyId": b64(bytes.fromhex(instance.rekor_log_id))},
                "kindVersion": {"kind": "dsse", "version": "0.0.1"},
                "integratedTime": str(int(T0.timestamp())),
                "inclusionPromise": {"signedEntryTimestamp": b64(set_sig)},
                "canonicalizedBody": b64(body),
            }
        ]
    return json.dumps(
        {
            "mediaType": media_type,
            "verificationMaterial": material,
            "dsseEnvelope": {
                "payload": b64(payload),
                "payloadType": payload_type,
                "signatures": [{"sig": b64(signature), "keyid": ""}],
            },
        }
    ).encode()
