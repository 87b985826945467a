"""The test signer checked against upstream, then table-driven hostile envelopes."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import timedelta
from functools import cache

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from proxy.sources.notation.envelope import (
    COSE_MEDIA_TYPE,
    JWS_MEDIA_TYPE,
    TargetArtifact,
    parse_envelope,
)
from proxy.sources.notation.errors import EnvelopeError, SignatureVerificationError
from proxy.sources.notation.trustpolicy import (
    Check,
    StoreRef,
    StoreType,
    TrustPolicyStatement,
    parse_trust_policy,
)
from proxy.sources.notation.truststore import TrustStore, parse_certificates
from proxy.sources.notation.verify import SignatureVerdict, descriptor_of, verify_signature
from testbed.notation_signer import T0, Signer, make_cert
from tests.unit.sources.notation.helpers import LOCALKEYS, needs_vectors, read_layout

NOW = T0 + timedelta(days=30)
MANIFEST = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
SERVED = descriptor_of(MANIFEST, "application/vnd.oci.image.manifest.v1+json")


@cache
def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@cache
def pki() -> tuple[Signer, TrustStore]:
    root_key, leaf_key = rsa_key(3072), rsa_key(2048)
    root = make_cert("root", root_key, ca=True)
    leaf = make_cert("leaf", leaf_key, issuer=(root, root_key))
    store = TrustStore.of({StoreRef(StoreType.CA, "test"): [root]})
    return Signer(leaf_key, [leaf, root]), store


def policy(level: str = "strict") -> TrustPolicyStatement:
    doc = (
        '{"version":"1.0","trustPolicies":[{"name":"t","registryScopes":["*"],'
        f'"signatureVerification":{{"level":"{level}"}},"trustStores":["ca:test"],'
        '"trustedIdentities":["x509.subject: C=US, ST=WA, O=trustproxy-test, CN=leaf"]}]}'
    )
    return parse_trust_policy(doc.encode()).statement_for("r.example/app")


def payload(served: TargetArtifact = SERVED) -> bytes:
    return Signer.payload(served.media_type, served.digest, served.size)


def verify(data: bytes, media_type: str, **kw: object) -> SignatureVerdict:
    _, store = pki()
    args: dict[str, object] = {
        "statement": policy(),
        "trust_store": store,
        "served": SERVED,
        "now": NOW,
    }
    args.update(kw)
    return verify_signature(data, media_type, **args)  # type: ignore[arg-type]


# --- the signer against upstream ------------------------------------------------------


@needs_vectors
def test_signer_reproduces_upstream_signing_input() -> None:
    """The vector's signature verifies over what this signer would sign, and the signer's
    own envelope over the same payload with the upstream key verifies on the same path."""
    layout = read_layout("e2e-valid-signature")
    (sig,) = layout.signatures
    upstream = parse_envelope(sig.envelope, sig.media_type)
    key = serialization.load_pem_private_key((LOCALKEYS / "e2e.key").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    (cert,) = parse_certificates((LOCALKEYS / "e2e.crt").read_bytes(), "e2e.crt")
    signer = Signer(key, [cert])
    served = descriptor_of(layout.subject, layout.subject_media_type)
    store = TrustStore.of({StoreRef(StoreType.CA, "e2e"): [cert]})
    st = parse_trust_policy(
        b'{"version":"1.0","trustPolicies":[{"name":"e2e","registryScopes":["*"],'
        b'"signatureVerification":{"level":"strict"},"trustStores":["ca:e2e"],'
        b'"trustedIdentities":["*"]}]}'
    ).statement_for("localhost:5000/test-repo")
    for data, media_type in (
        (sig.envelope, sig.media_type),
        (signer.jws(payload(served)), JWS_MEDIA_TYPE),
        (signer.cose(payload(served)), COSE_MEDIA_TYPE),
    ):
        verdict = verify_signature(
            data, media_type, statement=st, trust_store=store, served=served, now=NOW
        )
        assert verdict.signer_subject == upstream.chain[0].subject.rfc4514_string()
        assert verdict.target == upstream.target


@pytest.mark.parametrize("media_type", [JWS_MEDIA_TYPE, COSE_MEDIA_TYPE])
@pytest.mark.parametrize("alg", ["PS256", "ES256", "ES384"])
def test_signer_envelopes_verify(media_type: str, alg: str) -> None:
    signer, _ = pki()
    if alg.startswith("ES"):
        curve = ec.SECP256R1() if alg == "ES256" else ec.SECP384R1()
        key = ec.generate_private_key(curve)
        root_key = rsa_key(3072)
        leaf = make_cert("leaf", key, issuer=(signer.chain[1], root_key))
        signer = Signer(key, [leaf, signer.chain[1]], alg=alg)
    data = signer.jws(payload()) if media_type == JWS_MEDIA_TYPE else signer.cose(payload())
    verdict = verify(data, media_type)
    assert verdict.signer_subject.endswith("CN=leaf") or "CN=leaf" in verdict.signer_subject


def test_signing_authority_scheme() -> None:
    signer, _ = pki()
    sa = Signer(
        signer.key,
        signer.chain,
        scheme="notary.x509.signingAuthority",
        signing_time=None,
        authentic_signing_time=T0,
    )
    store = TrustStore.of({StoreRef(StoreType.SIGNING_AUTHORITY, "test"): [signer.chain[1]]})
    st = parse_trust_policy(
        b'{"version":"1.0","trustPolicies":[{"name":"t","registryScopes":["*"],'
        b'"signatureVerification":{"level":"strict"},"trustStores":["signingAuthority:test"],'
        b'"trustedIdentities":["*"]}]}'
    ).statement_for("r.example/app")
    for data, mt in ((sa.jws(payload()), JWS_MEDIA_TYPE), (sa.cose(payload()), COSE_MEDIA_TYPE)):
        verify(data, mt, statement=st, trust_store=store)
    # a ca store does not anchor a signingAuthority signature
    with pytest.raises(SignatureVerificationError, match="signingAuthority"):
        verify(sa.jws(payload()), JWS_MEDIA_TYPE)


# --- hostile inputs -------------------------------------------------------------------


def _jws_edit(edit: Callable[[dict[str, object]], object]) -> Callable[[Signer], bytes]:
    def build(signer: Signer) -> bytes:
        env = json.loads(signer.jws(payload()))
        edit(env)
        return json.dumps(env).encode()

    return build


def _replace_signer(**kw: object) -> Callable[[Signer], Signer]:
    def build(signer: Signer) -> Signer:
        return Signer(**{**signer.__dict__, **kw})

    return build


def _loop_chain(signer: Signer) -> bytes:
    return Signer(signer.key, [signer.chain[0], signer.chain[1], signer.chain[1]]).jws(payload())


def _deep_chain(signer: Signer) -> bytes:
    return Signer(signer.key, [signer.chain[0]] + [signer.chain[1]] * 11).jws(payload())


def _non_minimal_cbor(signer: Signer) -> bytes:
    data = signer.cose(payload())
    # 0xd2 = tag 18 in one byte; 0xd8 0x12 is the same tag, non-minimally encoded
    return b"\xd8\x12" + data[1:]


def _untagged_cose(signer: Signer) -> bytes:
    return cbor2.dumps(cbor2.loads(signer.cose(payload())).value)


def _wrong_tag(signer: Signer) -> bytes:
    return signer.cose(payload(), tag=98)


def _bad_x5c(signer: Signer) -> bytes:
    return signer.jws(payload(), header_extra={"x5c": ["not base64!"]})


def _case_variant_x5c(signer: Signer) -> bytes:
    return signer.jws(payload(), header_extra={"X5C": []})


def _huge(signer: Signer) -> bytes:
    return signer.jws(payload()) + b" " * (600 * 1024)


def _padded_payload(env: dict[str, object]) -> None:
    env["payload"] = str(env["payload"]) + "="


def _std_alphabet(env: dict[str, object]) -> None:
    env["signature"] = str(env["signature"]).replace("-", "+").replace("_", "/") + "+"


def _extra_member(env: dict[str, object]) -> None:
    env["signatures"] = []


def _duplicate_key(signer: Signer) -> bytes:
    data = signer.jws(payload())
    return data[:-1] + b', "payload": "e30"}'


def _wrong_alg_for_key(signer: Signer) -> bytes:
    return Signer(signer.key, signer.chain, alg="PS384").jws(payload())


def _other_target(signer: Signer) -> bytes:
    return signer.jws(Signer.payload(SERVED.media_type, SERVED.digest, SERVED.size + 1))


def _other_media_type(signer: Signer) -> bytes:
    return signer.jws(
        Signer.payload(
            "application/vnd.docker.distribution.manifest.v2+json", SERVED.digest, SERVED.size
        )
    )


def _payload_not_descriptor(signer: Signer) -> bytes:
    return signer.jws(b'{"targetArtifact":"sha256:abc"}')


def _cert_not_yet_valid(signer: Signer) -> bytes:
    leaf = make_cert(
        "leaf",
        signer.key,
        issuer=(signer.chain[1], rsa_key(3072)),
        not_before=NOW + timedelta(days=1),
    )
    return Signer(signer.key, [leaf, signer.chain[1]]).jws(payload())


def _ca_leaf(signer: Signer) -> bytes:
    leaf = make_cert("leaf", signer.key, issuer=(signer.chain[1], rsa_key(3072)), ca=True)
    return Signer(signer.key, [leaf, signer.chain[1]]).jws(payload())


def _no_code_signing_eku(signer: Signer) -> bytes:
    from cryptography.x509.oid import ExtendedKeyUsageOID

    leaf = make_cert(
        "leaf",
        signer.key,
        issuer=(signer.chain[1], rsa_key(3072)),
        eku=ExtendedKeyUsageOID.SERVER_AUTH,
    )
    return Signer(signer.key, [leaf, signer.chain[1]]).jws(payload())


def _self_signed_other(signer: Signer) -> bytes:
    key = rsa_key(2048)
    cert = make_cert("leaf", key)
    return Signer(key, [cert]).jws(payload())


def _small_rsa(signer: Signer) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the weak key under test
    leaf = make_cert("leaf", key, issuer=(signer.chain[1], rsa_key(3072)))
    return Signer(key, [leaf, signer.chain[1]]).jws(payload())


BAD: dict[str, tuple[Callable[[Signer], bytes], str, str]] = {
    # name: (builder, media type, expected check or "parse")
    "padded base64url payload": (_jws_edit(_padded_payload), JWS_MEDIA_TYPE, "integrity"),
    "standard base64 alphabet": (_jws_edit(_std_alphabet), JWS_MEDIA_TYPE, "integrity"),
    "unknown JWS member": (_jws_edit(_extra_member), JWS_MEDIA_TYPE, "integrity"),
    "duplicate JSON key": (_duplicate_key, JWS_MEDIA_TYPE, "integrity"),
    "unknown critical header": (
        lambda s: _replace_signer(crit_extra=["x-custom"], extra_protected={"x-custom": 1})(s).jws(
            payload()
        ),
        JWS_MEDIA_TYPE,
        "integrity",
    ),
    "critical header absent": (
        lambda s: _replace_signer(crit_extra=["x-missing"])(s).jws(payload()),
        JWS_MEDIA_TYPE,
        "integrity",
    ),
    "expiry not critical": (
        lambda s: _replace_signer(
            expiry=NOW + timedelta(days=1), crit_override=["io.cncf.notary.signingScheme"]
        )(s).jws(payload()),
        JWS_MEDIA_TYPE,
        "integrity",
    ),
    "signing scheme missing from crit": (
        lambda s: _replace_signer(
            crit_override=["io.cncf.notary.expiry"], expiry=NOW + timedelta(days=1)
        )(s).jws(payload()),
        JWS_MEDIA_TYPE,
        "integrity",
    ),
    "x509 scheme without signingTime": (
        lambda s: _replace_signer(signing_time=None)(s).jws(payload()),
        JWS_MEDIA_TYPE,
        "integrity",
    ),
    "unknown signing scheme": (
        lambda s: _replace_signer(scheme="notary.x509.other")(s).jws(payload()),
        JWS_MEDIA_TYPE,
        "integrity",
    ),
    "plugin marked (COSE)": (
        lambda s: _replace_signer(
            crit_extra=["io.cncf.notary.verificationPlugin"],
            extra_protected={"io.cncf.notary.verificationPlugin": "com.example.plugin"},
        )(s).cose(payload()),
        COSE_MEDIA_TYPE,
        "plugin",
    ),
    "alg does not fit key": (_wrong_alg_for_key, JWS_MEDIA_TYPE, "integrity"),
    "bad x5c base64": (_bad_x5c, JWS_MEDIA_TYPE, "integrity"),
    "case-variant x5c": (_case_variant_x5c, JWS_MEDIA_TYPE, "integrity"),
    "huge envelope": (_huge, JWS_MEDIA_TYPE, "integrity"),
    "non-minimal CBOR": (_non_minimal_cbor, COSE_MEDIA_TYPE, "integrity"),
    "untagged COSE_Sign1": (_untagged_cose, COSE_MEDIA_TYPE, "integrity"),
    "wrong CBOR tag": (_wrong_tag, COSE_MEDIA_TYPE, "integrity"),
    "payload is not a descriptor": (_payload_not_descriptor, JWS_MEDIA_TYPE, "integrity"),
    "looping chain": (_loop_chain, JWS_MEDIA_TYPE, "authenticity"),
    "deep chain": (_deep_chain, JWS_MEDIA_TYPE, "integrity"),
    "CA leaf": (_ca_leaf, JWS_MEDIA_TYPE, "authenticity"),
    "no codeSigning EKU": (_no_code_signing_eku, JWS_MEDIA_TYPE, "authenticity"),
    "untrusted self-signed": (_self_signed_other, JWS_MEDIA_TYPE, "authenticity"),
    "RSA-1024": (_small_rsa, JWS_MEDIA_TYPE, "integrity"),
    "certificate not yet valid": (_cert_not_yet_valid, JWS_MEDIA_TYPE, "authenticTimestamp"),
    "expired signature": (
        lambda s: _replace_signer(expiry=NOW - timedelta(seconds=1))(s).jws(payload()),
        JWS_MEDIA_TYPE,
        "expiry",
    ),
    "signature over another size": (_other_target, JWS_MEDIA_TYPE, "target"),
    "signature over another media type": (_other_media_type, JWS_MEDIA_TYPE, "target"),
    "unsupported envelope type": (
        lambda s: s.jws(payload()),
        "application/octet-stream",
        "integrity",
    ),
}


@pytest.mark.parametrize(("build", "media_type", "check"), BAD.values(), ids=list(BAD))
def test_hostile_envelopes_are_refused(
    build: Callable[[Signer], bytes], media_type: str, check: str
) -> None:
    signer, _ = pki()
    with pytest.raises(SignatureVerificationError) as info:
        verify(build(signer), media_type)
    assert info.value.check == check, str(info.value)


def test_logged_failures_are_reported_not_enforced() -> None:
    signer, _ = pki()
    expired = _replace_signer(expiry=NOW - timedelta(seconds=1))(signer).jws(payload())
    verdict = verify(expired, JWS_MEDIA_TYPE, statement=policy("permissive"))
    assert [r.check for r in verdict.logged_failures] == [Check.EXPIRY]
    # the target is compared at every level but skip
    with pytest.raises(SignatureVerificationError, match="content descriptor mismatch"):
        verify(_other_target(signer), JWS_MEDIA_TYPE, statement=policy("audit"))


def test_x5c_decoding_is_strict() -> None:
    signer, _ = pki()
    env = json.loads(signer.jws(payload()))
    der = base64.b64decode(env["header"]["x5c"][0])
    env["header"]["x5c"][0] = "\n" + base64.b64encode(der).decode()  # Go refuses whitespace
    with pytest.raises(EnvelopeError):
        parse_envelope(json.dumps(env).encode(), JWS_MEDIA_TYPE)


# --- more envelope shapes, parsed without a trust decision ---------------------------


def _cose_edit(index: int, value: object) -> Callable[[Signer], bytes]:
    def build(signer: Signer) -> bytes:
        body = list(cbor2.loads(signer.cose(payload())).value)
        body[index] = value
        return cbor2.dumps(cbor2.CBORTag(18, body))

    return build


def _cose_protected(**changes: object) -> Callable[[Signer], bytes]:
    def build(signer: Signer) -> bytes:
        body = list(cbor2.loads(signer.cose(payload())).value)
        prot = dict(cbor2.loads(body[0]))
        for key, value in changes.items():
            label: object = int(key[1:]) if key.startswith("L") else key
            if value is None:
                prot.pop(label, None)
            else:
                prot[label] = value
        body[0] = cbor2.dumps(prot, datetime_as_timestamp=True)
        return cbor2.dumps(cbor2.CBORTag(18, body))

    return build


def _jws_protected(protected: object) -> Callable[[Signer], bytes]:
    def build(signer: Signer) -> bytes:
        env = json.loads(signer.jws(payload()))
        env["protected"] = (
            base64.urlsafe_b64encode(json.dumps(protected).encode()).rstrip(b"=").decode()
        )
        return json.dumps(env).encode()

    return build


def _jws_with(**kw: object) -> Callable[[Signer], bytes]:
    return lambda s: _replace_signer(**kw)(s).jws(payload())


def _jws_payload(raw: bytes) -> Callable[[Signer], bytes]:
    return lambda s: s.jws(raw)


MALFORMED: dict[str, tuple[Callable[[Signer], bytes], str, str]] = {
    "COSE three elements": (
        lambda s: cbor2.dumps(cbor2.CBORTag(18, list(cbor2.loads(s.cose(payload())).value)[:3])),
        COSE_MEDIA_TYPE,
        "4-element",
    ),
    "COSE detached payload": (_cose_edit(2, None), COSE_MEDIA_TYPE, "detached"),
    "COSE protected empty": (_cose_edit(0, b""), COSE_MEDIA_TYPE, "non-empty bstr"),
    "COSE unprotected not a map": (_cose_edit(1, [1]), COSE_MEDIA_TYPE, "must be a map"),
    "COSE x5chain missing": (_cose_edit(1, {}), COSE_MEDIA_TYPE, "x5chain"),
    "COSE protected not a map": (_cose_edit(0, cbor2.dumps([1])), COSE_MEDIA_TYPE, "must be a map"),
    "COSE EdDSA": (_cose_protected(L1=-8), COSE_MEDIA_TYPE, "unsupported alg"),
    "COSE content type": (_cose_protected(L3="application/json"), COSE_MEDIA_TYPE, "content type"),
    "COSE signingTime as text": (
        _cose_protected(**{"io.cncf.notary.signingTime": "2026-01-01T00:00:00Z"}),
        COSE_MEDIA_TYPE,
        "signature",  # the edit breaks the signature, which is checked before the times
    ),
    "COSE garbage": (lambda s: b"\xff\xff", COSE_MEDIA_TYPE, "not valid CBOR"),
    "JWS protected is a list": (_jws_protected([1]), JWS_MEDIA_TYPE, "not a JSON object"),
    "JWS alg none": (_jws_protected({"alg": "none"}), JWS_MEDIA_TYPE, "unsupported alg"),
    "JWS RS256": (_jws_protected({"alg": "RS256"}), JWS_MEDIA_TYPE, "unsupported alg"),
    "JWS wrong cty": (
        _jws_protected({"alg": "PS256", "cty": "application/json"}),
        JWS_MEDIA_TYPE,
        "content type",
    ),
    "JWS empty crit": (
        _jws_protected(
            {"alg": "PS256", "cty": "application/vnd.cncf.notary.payload.v1+json", "crit": []}
        ),
        JWS_MEDIA_TYPE,
        "crit must be a non-empty list",
    ),
    "JWS crit twice": (
        _jws_with(crit_override=["io.cncf.notary.signingScheme", "io.cncf.notary.signingScheme"]),
        JWS_MEDIA_TYPE,
        "twice",
    ),
    "JWS both times": (
        _jws_with(scheme="notary.x509.signingAuthority", authentic_signing_time=T0),
        JWS_MEDIA_TYPE,
        "needs authenticSigningTime and no signingTime",
    ),
    "JWS x509 with authentic time": (
        _jws_with(authentic_signing_time=T0),
        JWS_MEDIA_TYPE,
        "needs signingTime and no authenticSigningTime",
    ),
    "JWS expiry not RFC 3339": (
        _jws_with(
            extra_protected={"io.cncf.notary.expiry": "tomorrow"},
            crit_extra=["io.cncf.notary.expiry"],
        ),
        JWS_MEDIA_TYPE,
        "RFC 3339",
    ),
    "JWS header not an object": (
        _jws_edit(lambda env: env.__setitem__("header", [])),
        JWS_MEDIA_TYPE,
        "must be an object",
    ),
    "JWS x5c not a list": (
        lambda s: s.jws(payload(), header_extra={"x5c": "MII"}),
        JWS_MEDIA_TYPE,
        "list of certificates",
    ),
    "JWS no certificates": (
        lambda s: s.jws(payload(), header_extra={"x5c": []}),
        JWS_MEDIA_TYPE,
        "no certificates",
    ),
    "JWS x5c not DER": (
        lambda s: s.jws(payload(), header_extra={"x5c": [base64.b64encode(b"junk").decode()]}),
        JWS_MEDIA_TYPE,
        "not a DER certificate",
    ),
    "JWS too many certificates": (
        lambda s: s.jws(payload(), header_extra={"x5c": ["AAAA"] * 11}),
        JWS_MEDIA_TYPE,
        "more than 10",
    ),
    "JWS token not base64": (
        lambda s: s.jws(payload(), header_extra={"io.cncf.notary.timestampSignature": "%%"}),
        JWS_MEDIA_TYPE,
        "base64",
    ),
    "JWS missing signature": (
        _jws_edit(lambda env: env.pop("signature")),
        JWS_MEDIA_TYPE,
        "missing",
    ),
    "JWS bad base64url length": (
        _jws_edit(lambda env: env.__setitem__("signature", "abcde")),
        JWS_MEDIA_TYPE,
        "base64url",
    ),
    "JWS trailing bits": (
        _jws_edit(lambda env: env.__setitem__("signature", "ab")),
        JWS_MEDIA_TYPE,
        "trailing bits",
    ),
    "payload not JSON": (_jws_payload(b"not json"), JWS_MEDIA_TYPE, "not valid JSON"),
    "payload digest malformed": (
        _jws_payload(b'{"targetArtifact":{"mediaType":"a/b","digest":"md5:00","size":1}}'),
        JWS_MEDIA_TYPE,
        "digest",
    ),
    "payload size negative": (
        _jws_payload(
            b'{"targetArtifact":{"mediaType":"a/b","digest":"sha256:' + b"0" * 64 + b'","size":-1}}'
        ),
        JWS_MEDIA_TYPE,
        "size",
    ),
    "payload media type missing": (
        _jws_payload(b'{"targetArtifact":{"digest":"sha256:' + b"0" * 64 + b'","size":1}}'),
        JWS_MEDIA_TYPE,
        "mediaType",
    ),
    "payload annotations not strings": (
        _jws_payload(
            b'{"targetArtifact":{"mediaType":"a/b","digest":"sha256:'
            + b"0" * 64
            + b'","size":1,"annotations":{"a":1}}}'
        ),
        JWS_MEDIA_TYPE,
        "annotations",
    ),
}


@pytest.mark.parametrize(
    ("build", "media_type", "message"), MALFORMED.values(), ids=list(MALFORMED)
)
def test_malformed_envelopes(
    build: Callable[[Signer], bytes], media_type: str, message: str
) -> None:
    signer, _ = pki()
    with pytest.raises(EnvelopeError, match=message):
        parse_envelope(build(signer), media_type)


def test_cose_single_certificate_x5chain_and_fractional_times() -> None:
    key = rsa_key(2048)
    cert = make_cert("single", key)
    signer = Signer(key, [cert])
    body = list(cbor2.loads(signer.cose(payload())).value)
    body[1] = {33: cert.public_bytes(serialization.Encoding.DER)}
    info = parse_envelope(cbor2.dumps(cbor2.CBORTag(18, body)), COSE_MEDIA_TYPE)
    assert len(info.chain) == 1
    env = json.loads(signer.jws(payload()))
    assert parse_envelope(json.dumps(env).encode(), JWS_MEDIA_TYPE).signing_time == T0
    timed = Signer(key, [cert], signing_time=T0 + timedelta(microseconds=123456))
    assert parse_envelope(timed.jws(payload()), JWS_MEDIA_TYPE).signing_time == T0 + timedelta(
        microseconds=123456
    )
