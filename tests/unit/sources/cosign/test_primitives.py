"""Small pure pieces: keys, DER strings, strict JSON fields, Rekor entry shapes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa

from proxy.sources.cosign import CosignFormatError, CosignLimitError, CosignSignatureError
from proxy.sources.cosign.fulcio import _utf8_der, load_pem_certs
from proxy.sources.cosign.keys import load_der_key, load_pem_key
from proxy.sources.cosign.rekor import check_body, parse_classic_bundle
from proxy.sources.cosign.strict_json import b64_field, int_field, loads_strict


def spki_pem(key: Any) -> bytes:
    pem: bytes = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem


@pytest.mark.parametrize(
    ("pem", "hash_name", "message"),
    [
        (spki_pem(rsa.generate_private_key(65537, 1024)), "sha256", "RSA key of 1024 bits"),  # noqa: S505
        (spki_pem(dsa.generate_private_key(2048)), "sha256", "unsupported key type"),
        (spki_pem(ec.generate_private_key(ec.SECP256K1())), "sha256", "unsupported curve"),
        (spki_pem(ec.generate_private_key(ec.SECP256R1())), "md5", "unsupported hash"),
        (b"-----BEGIN PUBLIC KEY-----\n" + b"A" * 20_000, "sha256", "more than"),
        (b"garbage", "sha256", "not a PEM public key"),
    ],
    ids=["rsa-1024", "dsa", "secp256k1", "md5", "oversized", "garbage"],
)
def test_unusable_keys(pem: bytes, hash_name: str, message: str) -> None:
    with pytest.raises(CosignFormatError, match=message):
        load_pem_key(pem, hash_name=hash_name)


def test_der_key_errors() -> None:
    with pytest.raises(CosignFormatError, match="not a DER public key"):
        load_der_key(b"\x30\x00")
    with pytest.raises(CosignFormatError, match="more than"):
        load_der_key(b"\x00" * 20_000)


def test_sha384_keys_verify_only_sha384_signatures() -> None:
    from cryptography.hazmat.primitives import hashes

    private = ec.generate_private_key(ec.SECP384R1())
    key = load_pem_key(spki_pem(private), hash_name="sha384")
    key.verify(private.sign(b"m", ec.ECDSA(hashes.SHA384())), b"m")
    with pytest.raises(CosignSignatureError):
        key.verify(private.sign(b"m", ec.ECDSA(hashes.SHA256())), b"m")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"\x0c\x03abc", "abc"),
        (b"\x0c\x81\x80" + b"a" * 128, "a" * 128),
        (b"\x0c\x82\x01\x00" + b"b" * 256, "b" * 256),
    ],
    ids=["short", "long-1", "long-2"],
)
def test_utf8_der(raw: bytes, expected: str) -> None:
    assert _utf8_der(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x13\x03abc", b"\x0c\x04abc", b"\x0c\x80", b"\x0c\x83\x00\x00\x03abc",
     b"\x0c\x81\x05abc"],
    ids=["empty", "printable-string", "short-length", "indefinite", "3-byte-length",
         "long-length-mismatch"],
)  # fmt: skip
def test_utf8_der_refuses(raw: bytes) -> None:
    with pytest.raises(CosignFormatError):
        _utf8_der(raw)


def test_pem_cert_bounds() -> None:
    with pytest.raises(CosignLimitError):
        load_pem_certs(b"x" * 70_000, field="chain")
    with pytest.raises(CosignLimitError, match="more than 8"):
        load_pem_certs(b"-----BEGIN CERTIFICATE-----\n" * 9, field="chain")
    with pytest.raises(CosignFormatError, match="not PEM certificates"):
        load_pem_certs(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                       field="chain")  # fmt: skip


@pytest.mark.parametrize(
    ("value", "ok"),
    [(5, True), ("12", True), ("-1", False), (-1, False), (True, False), (2**63, False),
     ("1e3", False), (1.5, False), ("99999999999999999999", False)],
)  # fmt: skip
def test_int_field(value: Any, ok: bool) -> None:
    if ok:
        assert int_field(value, "f") == int(value)
    else:
        with pytest.raises(CosignFormatError):
            int_field(value, "f")


@pytest.mark.parametrize("value", [None, 3, "a b", "YQ"], ids=["none", "int", "space", "pad"])
def test_b64_field_refuses(value: Any) -> None:
    with pytest.raises(CosignFormatError):
        b64_field(value, "f")


def test_loads_strict_limits() -> None:
    assert loads_strict(b'{"a":[1,{"b":null}]}', what="x", limit=100) == {"a": [1, {"b": None}]}
    with pytest.raises(CosignLimitError, match="nested deeper than 3"):
        loads_strict(b"[[[[1]]]]", what="x", limit=100, max_depth=3)
    # Brackets inside strings (escaped quotes included) are text, not nesting.
    text = json.dumps({"pem": "[[[[{{{{" * 10, "q": '\\"[[[[[[' * 10}).encode()
    assert loads_strict(text, what="x", limit=1000, max_depth=2)["pem"].startswith("[[[[")
    with pytest.raises(CosignFormatError, match="Infinity is not JSON"):
        loads_strict(b"[Infinity]", what="x", limit=100)


CLASSIC_BUNDLES = [
    ("not-json", "{", "not valid JSON"),
    ("no-payload", "{}", "Payload is required"),
    ("short-log-id", json.dumps({"SignedEntryTimestamp": "", "Payload": {
        "body": "", "integratedTime": 1, "logIndex": 1, "logID": "ab"}}), "logID"),
    ("hex-log-id", json.dumps({"SignedEntryTimestamp": "", "Payload": {
        "body": "", "integratedTime": 1, "logIndex": 1, "logID": "zz" * 32}}), "not hex"),
    ("negative-time", json.dumps({"SignedEntryTimestamp": "", "Payload": {
        "body": "", "integratedTime": -1, "logIndex": 1, "logID": "ab" * 32}}),
     "non-negative integer"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"), [c[1:] for c in CLASSIC_BUNDLES], ids=[c[0] for c in CLASSIC_BUNDLES]
)
def test_bad_classic_bundle_annotation(text: str, message: str) -> None:
    with pytest.raises(CosignFormatError, match=message):
        parse_classic_bundle(text)


SHA256_OF_0 = "5feceb66ffc86f38d952786c6d696c79c2dbc239dd4e91b46729d73a27fb57e9"
BODIES = [
    ("no-spec", {"kind": "hashedrekord"}, CosignFormatError, "spec is required"),
    ("unknown-kind", {"kind": "intoto", "apiVersion": "0.0.2", "spec": {}}, CosignFormatError,
     "unsupported Rekor entry kind intoto/0.0.2"),
    ("hashedrekord-malformed", {"kind": "hashedrekord", "apiVersion": "0.0.1",
     "spec": {"data": {"hash": []}, "signature": {}}}, CosignFormatError, "malformed"),
    ("hashedrekord-sha1", {"kind": "hashedrekord", "apiVersion": "0.0.1",
     "spec": {"data": {"hash": {"algorithm": "sha1", "value": "x"}}, "signature": {}}},
     Exception, "another artifact"),
    ("dsse-no-signatures", {"kind": "dsse", "apiVersion": "0.0.1", "spec": {"payloadHash": {
     "algorithm": "sha256", "value": SHA256_OF_0}, "signatures": {}}}, CosignFormatError,
     "signatures must be a list"),
    ("v2-malformed", {"kind": "hashedrekord", "apiVersion": "0.0.2", "spec": {}},
     CosignFormatError, "malformed hashedrekord 0.0.2"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "error", "message"), [c[1:] for c in BODIES], ids=[c[0] for c in BODIES]
)
def test_bad_rekor_body(body: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        check_body(json.dumps(body).encode(), payload=b"0", signature=b"s")
