"""RFC 3161 timestamp countersignatures (``io.cncf.notary.timestampSignature``).

:func:`verify_timestamp` checks a DER TimeStampToken against the envelope's signature
bytes and the ``tsa`` trust stores and returns the trusted time interval
``genTime ± accuracy``, or raises :class:`EnvelopeError` (tspclient-go
``SignedToken.Verify`` / ``TSTInfo.Validate`` **[read]**):

1. a CMS ContentInfo holding SignedData whose eContentType is id-ct-TSTInfo;
2. the TSTInfo parses; its message imprint is the hash (imprint's algorithm) of the
   envelope's *signature* bytes;
3. one SignerInfo; its certificate is in the token (by issuer+serial or SKI);
4. signed attributes: content-type equals the eContentType, messageDigest equals the hash
   of the eContent; the signature over the DER SET of signed attributes verifies;
5. the TSA chain, built from the token's certificates, reaches a certificate of a named
   ``tsa`` store (byte-identical, or issued by one), every certificate valid at genTime,
   the leaf with the timeStamping EKU.

Why asn1crypto: ``cryptography`` has no CMS-verify or TSTInfo API, and its strict DER
parser (like ``rfc3161-client``'s) refuses real GlobalSign tokens whose certificate SET is
not sorted, which Go parses. The signature itself is verified with ``cryptography``.

Accuracy: when the TSTInfo has none, the interval is genTime ± 1 s (a wider interval is the
stricter choice, since the signing chain must be valid over all of it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from asn1crypto import cms, tsp  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from proxy.sources.notation.certs import (
    MAX_CHAIN,
    fingerprint,
    is_self_signed,
    valid_at,
    validate_chain,
)
from proxy.sources.notation.errors import EnvelopeError

__all__ = ["MAX_TOKEN_BYTES", "TrustedTimestamp", "verify_timestamp"]

MAX_TOKEN_BYTES = 64 * 1024
_TST_INFO = "1.2.840.113549.1.9.16.1.4"
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_FIELD = "timestampSignature"


@dataclass(frozen=True)
class TrustedTimestamp:
    gen_time: datetime
    accuracy: timedelta
    tsa_chain: tuple[x509.Certificate, ...]

    @property
    def earliest(self) -> datetime:
        return self.gen_time - self.accuracy

    @property
    def latest(self) -> datetime:
        return self.gen_time + self.accuracy


def _fail(message: str) -> EnvelopeError:
    return EnvelopeError(message, field=_FIELD)


def _hash(name: str, data: bytes) -> bytes:
    cls = _HASHES.get(name)
    if cls is None:
        raise _fail(f"unsupported hash algorithm {name!r}")
    h = hashes.Hash(cls())
    h.update(data)
    return h.finalize()


def _verify_cms_signature(
    cert: x509.Certificate, signer_info: cms.SignerInfo, signed: bytes
) -> None:
    algo = signer_info["signature_algorithm"].signature_algo
    hash_name = signer_info["digest_algorithm"]["algorithm"].native
    cls = _HASHES.get(hash_name)
    if cls is None:
        raise _fail(f"unsupported digest algorithm {hash_name!r}")
    sig = signer_info["signature"].native
    key = cert.public_key()
    try:
        if algo == "rsassa_pkcs1v15" and isinstance(key, rsa.RSAPublicKey):
            key.verify(sig, signed, padding.PKCS1v15(), cls())
        elif algo == "rsassa_pss" and isinstance(key, rsa.RSAPublicKey):
            params = signer_info["signature_algorithm"]["parameters"]
            salt = params["salt_length"].native
            key.verify(sig, signed, padding.PSS(mgf=padding.MGF1(cls()), salt_length=salt), cls())
        elif algo == "ecdsa" and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(sig, signed, ec.ECDSA(cls()))
        else:
            raise _fail(f"unsupported token signature algorithm {algo!r}")
    except (InvalidSignature, UnsupportedAlgorithm):
        raise _fail("the timestamp token's signature is invalid") from None


def _find_signer(
    certs: Sequence[x509.Certificate], signer_info: cms.SignerInfo
) -> x509.Certificate:
    sid = signer_info["sid"]
    for cert in certs:
        if sid.name == "issuer_and_serial_number":
            ias = sid.chosen
            issuer_der = ias["issuer"].dump()
            if (
                cert.serial_number == ias["serial_number"].native
                and cert.issuer.public_bytes() == issuer_der
            ):
                return cert
        else:
            try:
                ski = cert.extensions.get_extension_for_class(
                    x509.SubjectKeyIdentifier
                ).value.digest
            except (x509.ExtensionNotFound, ValueError):
                continue
            if ski == sid.chosen.native:
                return cert
    raise _fail("signing certificate not found in the timestamp token")


def _build_chain(
    leaf: x509.Certificate, pool: Sequence[x509.Certificate], roots: Sequence[x509.Certificate]
) -> tuple[x509.Certificate, ...]:
    root_fps = {fingerprint(r) for r in roots}
    chain = [leaf]
    while True:
        current = chain[-1]
        if fingerprint(current) in root_fps:
            return tuple(chain)
        if len(chain) >= MAX_CHAIN:
            raise _fail("timestamping certificate chain too long")
        if is_self_signed(current):
            raise _fail(
                "timestamping certificate chain ends in a root that is not in the tsa trust "
                "store (certificate signed by unknown authority)"
            )
        issuer = next(
            (
                c
                for c in (*roots, *pool)
                if c.subject == current.issuer
                and fingerprint(c) not in {fingerprint(x) for x in chain}
                and _issued(current, c)
            ),
            None,
        )
        if issuer is None:
            raise _fail("timestamping certificate signed by unknown authority")
        chain.append(issuer)


def _issued(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def verify_timestamp(
    token: bytes, signature: bytes, tsa_roots: Sequence[x509.Certificate]
) -> TrustedTimestamp:
    """Verify ``token`` over ``signature`` against ``tsa_roots``. Raises EnvelopeError."""
    if len(token) > MAX_TOKEN_BYTES:
        raise _fail(f"token larger than {MAX_TOKEN_BYTES} bytes")
    try:
        info = cms.ContentInfo.load(token, strict=True)
        if info["content_type"].native != "signed_data":
            raise _fail(f"unexpected token content type {info['content_type'].dotted}")
        signed_data = info["content"]
        encap = signed_data["encap_content_info"]
        if encap["content_type"].dotted != _TST_INFO:
            raise _fail(f"unexpected content type: {encap['content_type'].dotted}")
        econtent = encap["content"].contents
        tst = tsp.TSTInfo.load(econtent, strict=True)
        gen_time: datetime = tst["gen_time"].native
        imprint = tst["message_imprint"]
        imprint_alg = imprint["hash_algorithm"]["algorithm"].native
        imprint_value = imprint["hashed_message"].native
        acc = tst["accuracy"]
        accuracy = timedelta(seconds=1)
        if acc.native is not None:
            accuracy = timedelta(
                seconds=acc["seconds"].native or 0,
                milliseconds=acc["millis"].native or 0,
                microseconds=acc["micros"].native or 0,
            )
        signer_infos = signed_data["signer_infos"]
        if len(signer_infos) != 1:
            raise _fail("the token must have exactly one signer")
        signer_info = signer_infos[0]
        token_certs = (
            [
                x509.load_der_x509_certificate(c.chosen.dump())
                for c in signed_data["certificates"]
                if c.name == "certificate"
            ]
            if signed_data["certificates"].native is not None
            else []
        )
        attrs = signer_info["signed_attrs"]
        if not attrs.native:
            raise _fail("the token has no signed attributes")
        attr_map = {a["type"].native: a["values"] for a in attrs}
        signed_attrs_der = b"\x31" + attrs.dump()[1:]  # [0] IMPLICIT → SET OF for signing
    except EnvelopeError:
        raise
    except Exception as e:  # asn1crypto raises ValueError/TypeError and friends
        raise _fail(f"failed to parse timestamp countersignature: {e}") from None

    if gen_time.tzinfo is None:
        gen_time = gen_time.replace(tzinfo=UTC)
    if not token_certs:
        raise _fail("signing certificate not found in the timestamp token")
    if _hash(imprint_alg, signature) != imprint_value:
        raise _fail("invalid TSTInfo: mismatched message")
    signer = _find_signer(token_certs, signer_info)
    ct = attr_map.get("content_type")
    md = attr_map.get("message_digest")
    if ct is None or len(ct) != 1 or ct[0].dotted != _TST_INFO:
        raise _fail("the token's content-type attribute does not name TSTInfo")
    if md is None or len(md) != 1:
        raise _fail("the token has no messageDigest attribute")
    if _hash(signer_info["digest_algorithm"]["algorithm"].native, econtent) != md[0].native:
        raise _fail("the token's messageDigest does not match its TSTInfo")
    _verify_cms_signature(signer, signer_info, signed_attrs_der)
    if not tsa_roots:
        raise _fail("no trusted TSA certificate found in trust store")
    chain = _build_chain(signer, token_certs, tsa_roots)
    for cert in chain:
        if not valid_at(cert, gen_time):
            raise _fail(
                f"timestamping certificate {cert.subject.rfc4514_string()} is not valid at "
                f"{gen_time.isoformat()}"
            )
    try:
        validate_chain(chain, purpose="timeStamping")
    except ValueError as e:
        raise _fail(f"failed to validate the timestamping certificate chain: {e}") from None
    return TrustedTimestamp(gen_time.astimezone(UTC), accuracy, chain)
