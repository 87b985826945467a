from __future__ import annotations

import base64
import json

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from proxy.sources.notary.tuf.errors import MetadataFormatError, SignatureError, UnsupportedKeyError
from proxy.sources.notary.tuf.keys import compute_key_id, parse_key
from proxy.sources.notary.tuf.metadata import parse_root, parse_targets
from tests.simulators.notary_repo import generate_key, x509_key
from tests.unit.trust.helpers import COMPAT, CONN_DATA, CONN_KEYS, CONNAISSEUR, needs_vectors

MSG = b'{"_type":"Targets"}'


def _key_of(pem_pub: bytes, key_type: str = "ecdsa") -> str:
    pub = serialization.load_pem_public_key(pem_pub)
    der = pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return compute_key_id(key_type, base64.b64encode(der).decode())


@needs_vectors
@pytest.mark.parametrize("name", ["snapshot", "targets", "timestamp", "del1", "del2"])
def test_connaisseur_key_ids(name: str) -> None:
    expected = (CONN_KEYS / f"{name}_id.txt").read_text().strip()
    assert _key_of((CONN_KEYS / f"{name}.pub").read_bytes()) == expected


@needs_vectors
def test_connaisseur_root_cert_id_and_canonical_id() -> None:
    root = parse_root((CONN_DATA / "never-expire-image" / "root.json").read_bytes())
    cert_id = (CONN_KEYS / "root_id.txt").read_text().strip()
    key = root.signed.keys[cert_id]
    assert key.key_type == "ecdsa-x509"
    assert key.key_id == cert_id
    # the validator config pins the root *public key*: its ID is the cert's canonical ID
    cfg = yaml.safe_load((CONNAISSEUR / "08_never_expire_notary.yaml").read_text())
    pinned = cfg["trustRoots"][0]["key"].encode()
    assert key.canonical_id == _key_of(pinned)
    assert key.canonical_id == _key_of((CONN_KEYS / "root.pub").read_bytes())
    assert key.canonical_id != key.key_id


@needs_vectors
@pytest.mark.parametrize(
    ("version", "gun", "root_key_file"),
    [
        (
            "notary0.1",
            "docker.com/notary0.1/samplerepo",
            "d0c623c8e70c70d42a8a8125c44a8598588b3f6e31d5c21a83cbc338dfde8a68",
        ),
        (
            "notary0.3",
            "docker.com/notary0.3/tst",
            "f4eaf871a74aa3b3a0ff95cef2455a1e4d461639f5625418e76756fc5c948690",
        ),
    ],
    ids=["notary0.1", "notary0.3"],
)
def test_compat_canonical_root_key_id_names_private_key(
    version: str, gun: str, root_key_file: str
) -> None:
    # notary stores the root private key under its canonical ID
    meta = COMPAT / version / "tuf" / gun / "metadata"
    root = parse_root((meta / "root.json").read_bytes())
    (root_key_id,) = root.signed.roles["root"].key_ids
    key = root.signed.keys[root_key_id]
    assert key.canonical_id == root_key_file
    assert any((COMPAT / version / "private" / "root_keys").glob(f"{root_key_file}*"))
    for k_id, k in root.signed.keys.items():
        assert k.key_id == k_id


@needs_vectors
def test_compat_trusted_certificate_is_named_by_cert_id() -> None:
    base = COMPAT / "notary0.1"
    (crt,) = (base / "trusted_certificates" / "docker.com/notary0.1/samplerepo").glob("*.crt")
    key = parse_key(
        {
            "keytype": "ecdsa-x509",
            "keyval": {"private": None, "public": base64.b64encode(crt.read_bytes()).decode()},
        }
    )
    assert key.key_id == crt.stem


@needs_vectors
def test_compat_rsa_x509_delegation_key_canonical_id() -> None:
    meta = COMPAT / "notary0.3" / "tuf" / "docker.com/notary0.3/tst" / "metadata"
    targets = parse_targets((meta / "targets.json").read_bytes())
    (key,) = targets.signed.delegations.keys.values()
    assert key.key_type == "rsa-x509"
    assert key.canonical_id == "fa842f66cac2dc898677a8660789dcff0e3b0b93b73f8952491f6493199936d3"


@pytest.mark.parametrize("kind", ["ecdsa", "ed25519", "rsa"])
def test_sign_verify_each_method(kind: str) -> None:
    sk = generate_key(kind)  # type: ignore[arg-type]
    key = parse_key(sk.to_json())
    assert key.key_id == sk.key_id
    key.verify(sk.method, sk.sign(MSG), MSG)
    key.verify(sk.method.upper(), sk.sign(MSG), MSG)  # notary lower-cases methods
    with pytest.raises(SignatureError):
        key.verify(sk.method, sk.sign(MSG), MSG + b" ")


def test_rsapkcs1v15() -> None:
    sk = generate_key("rsa")
    key = parse_key(sk.to_json())
    key.verify("rsapkcs1v15", sk.sign(MSG, "rsapkcs1v15"), MSG)
    with pytest.raises(SignatureError):
        key.verify("rsapss", sk.sign(MSG, "rsapkcs1v15"), MSG)


def test_x509_keys_verify_with_leaf() -> None:
    sk = x509_key("docker.io/library/app")
    key = parse_key(sk.to_json())
    assert key.certificate is not None
    assert key.canonical_id == sk.canonical_id != key.key_id
    key.verify("ecdsa", sk.sign(MSG), MSG)


@pytest.mark.parametrize(
    ("method", "kind"),
    [("eddsa", "ecdsa"), ("ecdsa", "rsa"), ("rsapss", "ed25519"), ("pycrypto-pkcs#1 pss", "rsa")],
    ids=["eddsa-on-ec", "ecdsa-on-rsa", "rsapss-on-ed25519", "unknown-method"],
)
def test_method_key_mismatch(method: str, kind: str) -> None:
    sk = generate_key(kind)  # type: ignore[arg-type]
    with pytest.raises(SignatureError):
        parse_key(sk.to_json()).verify(method, sk.sign(MSG), MSG)


def test_ecdsa_signature_must_be_raw_r_s() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    sk = generate_key("ecdsa")
    assert isinstance(sk.private, ec.EllipticCurvePrivateKey)
    der = sk.private.sign(MSG, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(SignatureError):
        parse_key(sk.to_json()).verify("ecdsa", der, MSG)


def _k(keytype: object, public: object, private: object = None) -> object:
    return {"keytype": keytype, "keyval": {"private": private, "public": public}}


ED_PUB = base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize(
    ("obj", "error"),
    [
        ("nope", MetadataFormatError),
        (_k("dsa", ED_PUB), UnsupportedKeyError),
        (_k("ed448", ED_PUB), UnsupportedKeyError),
        (_k(7, ED_PUB), MetadataFormatError),
        (_k("ecdsa", "!!!"), MetadataFormatError),
        (_k("ecdsa", base64.b64encode(b"not der").decode()), MetadataFormatError),
        (_k("ecdsa-x509", base64.b64encode(b"not pem").decode()), MetadataFormatError),
        (_k("ed25519", base64.b64encode(b"short").decode()), MetadataFormatError),
        (_k("ed25519", ED_PUB, private="secret"), MetadataFormatError),
        ({"keytype": "ecdsa"}, MetadataFormatError),
    ],
    ids=[
        "not-object",
        "dsa",
        "ed448",
        "keytype-int",
        "bad-b64",
        "bad-der",
        "bad-pem",
        "ed25519-short",
        "private-present",
        "no-keyval",
    ],
)
def test_bad_keys(obj: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_key(obj, role="root", field="keys")


def test_type_family_mismatch() -> None:
    ec_key = generate_key("ecdsa")
    with pytest.raises(UnsupportedKeyError):
        parse_key(_k("rsa", ec_key.public_b64))
    rsa_key = generate_key("rsa")
    with pytest.raises(UnsupportedKeyError):
        parse_key(_k("ecdsa", rsa_key.public_b64))


def test_small_rsa_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()  # noqa: S505
    der = small.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(UnsupportedKeyError):
        parse_key(_k("rsa", base64.b64encode(der).decode()))


def test_key_id_is_over_canonical_json() -> None:
    public = "AAAA"
    doc = json.dumps(
        {"keytype": "ed25519", "keyval": {"private": None, "public": public}},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    import hashlib

    assert compute_key_id("ed25519", public) == hashlib.sha256(doc).hexdigest()


def _corrupt_certificate(where: str) -> dict[str, object]:
    """A root-style key whose PEM frames a certificate with a broken inner field
    (cryptography parses fields lazily: found with corrupted records from the store)."""
    sk = x509_key("docker.io/library/app")
    assert sk.certificate is not None
    der = bytearray(sk.certificate.public_bytes(serialization.Encoding.DER))
    if where in ("issuer", "subject"):  # self-signed: the issuer's CN comes first
        cn = b"docker.io/library/app"
        at = der.find(cn) if where == "issuer" else der.rfind(cn)
        der[at] = 0xFF  # not UTF-8 in a UTF8String
    else:
        spki = sk.certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        at = der.find(spki) + len(spki) - 20
        der[at : at + 8] = b"\x00" * 8  # a point that is not on the curve
    pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(bytes(der))
    pem += b"-----END CERTIFICATE-----\n"
    obj = sk.to_json()
    keyval = dict(obj["keyval"])  # type: ignore[call-overload]
    keyval["public"] = base64.b64encode(pem).decode()
    return {**obj, "keyval": keyval}


@pytest.mark.parametrize("where", ["issuer", "subject", "public-key"])
def test_malformed_certificate_fields_are_format_errors(where: str) -> None:
    with pytest.raises(MetadataFormatError, match="certificate"):
        parse_key(_corrupt_certificate(where))
