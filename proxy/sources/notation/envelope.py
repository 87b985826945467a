"""Notation signature envelopes: JWS (``application/jose+json``) and COSE (``application/cose``).

:func:`parse_envelope` takes the envelope bytes and the layer media type and returns a
:class:`SignerInfo` whose signature has been verified with the leaf certificate's key
(Notation's *integrity* check), or raises :class:`EnvelopeError`. Nothing from a header is
used before the signature over it verifies, except what is needed to verify it (``alg``,
the certificate chain), and those are checked against each other.

Choices where the format leaves room (notation-core-go ``signature/jws``, ``signature/cose``
**[read]**):

- JWS fields ``payload``, ``protected``, ``signature`` are unpadded base64url, decoded
  strictly (Go's ``RawURLEncoding``): ``=``, ``+``, ``/``, a length ≡ 1 mod 4 or non-zero
  trailing bits are refused (``ca_invalid_sig_env.json`` has a trailing ``=``). ``x5c`` and
  ``io.cncf.notary.timestampSignature`` are standard padded base64, also decoded strictly.
- Duplicate JSON keys are refused (Go keeps the last one; being explicit removes the
  ambiguity between parsers). Unknown top-level JWS members are refused. Unknown
  unprotected header members are ignored (they are unsigned and carry nothing we use),
  except case variants of ``x5c``/``timestampSignature``, which Go's case-insensitive
  decoding would read and we therefore refuse as ambiguous; ``io.cncf.notary.SigningAgent``
  (capital S, as the mock vectors spell it) is informational and read case-insensitively.
- COSE: a tagged COSE_Sign1 (tag 18) whose encoding is exactly what re-encoding the decoded
  value gives (definite lengths, minimal integers: non-minimal encodings are refused, so
  two byte strings cannot carry the same signature); the protected header likewise. The
  signed bytes are ``["Signature1", protected, b"", payload]`` over the *original*
  protected bytes. ``x5chain`` (33) may be one bstr or a list.
- ``crit`` must list ``io.cncf.notary.signingScheme`` and every other Notary-reserved
  header present (``expiry``, ``authenticSigningTime``, ``verificationPlugin``,
  ``verificationPluginMinVersion``); every name it lists must be present. A critical name
  this verifier does not understand is refused. ``verificationPlugin`` is parsed and left
  to the caller, which refuses the signature with a clear reason (no plugins here, as
  notation-go does when the named plugin is not installed) *after* integrity is known.
- ``notary.x509`` needs ``signingTime`` (the signer's untrusted claim) and no
  ``authenticSigningTime``; ``notary.x509.signingAuthority`` the reverse.
- The key must match ``alg`` per Notation's table (RSA-2048 → PS256, 3072 → PS384,
  4096 → PS512, P-256/384/521 → ES256/384/512).
- The payload content type must be ``application/vnd.cncf.notary.payload.v1+json`` and the
  payload a JSON object with a ``targetArtifact`` descriptor (unknown fields ignored).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import cbor2
from cryptography import x509

from proxy.sources.notation.certs import ALGORITHMS, check_key_matches_alg, verify_raw
from proxy.sources.notation.errors import EnvelopeError

__all__ = [
    "COSE_MEDIA_TYPE",
    "JWS_MEDIA_TYPE",
    "MAX_ENVELOPE_BYTES",
    "PAYLOAD_MEDIA_TYPE",
    "SignerInfo",
    "TargetArtifact",
    "b64url_decode_strict",
    "parse_envelope",
]

JWS_MEDIA_TYPE = "application/jose+json"
COSE_MEDIA_TYPE = "application/cose"
PAYLOAD_MEDIA_TYPE = "application/vnd.cncf.notary.payload.v1+json"
MAX_ENVELOPE_BYTES = 512 * 1024
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_X5C = 10
MAX_CERT_BYTES = 64 * 1024

SCHEME_X509 = "notary.x509"
SCHEME_SIGNING_AUTHORITY = "notary.x509.signingAuthority"
_H = "io.cncf.notary."
H_SCHEME = _H + "signingScheme"
H_SIGNING_TIME = _H + "signingTime"
H_AUTHENTIC_TIME = _H + "authenticSigningTime"
H_EXPIRY = _H + "expiry"
H_PLUGIN = _H + "verificationPlugin"
H_PLUGIN_MIN = _H + "verificationPluginMinVersion"
H_AGENT = _H + "signingAgent"
H_TIMESTAMP = _H + "timestampSignature"
_MUST_BE_CRITICAL = (H_SCHEME, H_AUTHENTIC_TIME, H_EXPIRY, H_PLUGIN, H_PLUGIN_MIN)
_UNDERSTOOD_CRITICAL = {H_SCHEME, H_AUTHENTIC_TIME, H_EXPIRY, H_PLUGIN, H_PLUGIN_MIN}
_COSE_ALGS = {-37: "PS256", -38: "PS384", -39: "PS512", -7: "ES256", -35: "ES384", -36: "ES512"}
_COSE_STD_LABELS = {1, 2, 3}  # alg, crit, content type: understood by every COSE verifier
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_B64STD = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})"
)
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}|sha384:[a-f0-9]{96}|sha512:[a-f0-9]{128}")


@dataclass(frozen=True)
class TargetArtifact:
    """The signed descriptor; ``annotations`` are the signer's signed user metadata."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SignerInfo:
    """What an envelope says, after its signature verified with ``chain[0]``."""

    media_type: str
    alg: str
    signing_scheme: str
    signing_time: datetime | None  # signer's claim (notary.x509): never trusted time
    authentic_signing_time: datetime | None  # signingAuthority: trusted time
    expiry: datetime | None
    chain: tuple[x509.Certificate, ...]
    signature: bytes  # the raw signature (the RFC 3161 message imprint covers it)
    timestamp_token: bytes | None
    target: TargetArtifact
    signing_agent: str = ""
    verification_plugin: str = ""
    verification_plugin_min_version: str = ""
    unknown_critical: tuple[str, ...] = ()


def b64url_decode_strict(text: Any, where: str) -> bytes:
    """Unpadded base64url as Go's ``RawURLEncoding.Strict`` reads it."""
    if not isinstance(text, str) or not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise EnvelopeError("not unpadded base64url", field=where)
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode() != text:
        raise EnvelopeError("non-canonical base64url (trailing bits set)", field=where)
    return data


def _b64std_decode_strict(text: Any, where: str) -> bytes:
    if not isinstance(text, str) or not _B64STD.fullmatch(text):
        raise EnvelopeError("not padded standard base64", field=where)
    try:
        data = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise EnvelopeError("not padded standard base64", field=where) from None
    if base64.b64encode(data).decode() != text:
        raise EnvelopeError("non-canonical base64 (trailing bits set)", field=where)
    return data


def _no_dup(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _json_object(data: bytes, where: str) -> dict[str, Any]:
    try:
        value = json.loads(data, object_pairs_hook=_no_dup)
    except (ValueError, UnicodeDecodeError) as e:
        raise EnvelopeError(f"not valid JSON: {e}", field=where) from None
    if not isinstance(value, dict):
        raise EnvelopeError("not a JSON object", field=where)
    return value


def _rfc3339(value: Any, where: str) -> datetime:
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise EnvelopeError("not an RFC 3339 time with offset", field=where)
    text = value.replace("z", "Z").replace("t", "T")
    # fromisoformat takes at most 6 fractional digits; Go allows 9.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:
        raise EnvelopeError("not a valid time", field=where) from None


def _certificates(ders: list[bytes], where: str) -> tuple[x509.Certificate, ...]:
    if not ders:
        raise EnvelopeError("no certificates", field=where)
    if len(ders) > MAX_X5C:
        raise EnvelopeError(f"more than {MAX_X5C} certificates", field=where)
    certs = []
    for i, der in enumerate(ders):
        if len(der) > MAX_CERT_BYTES:
            raise EnvelopeError("certificate too large", field=f"{where}[{i}]")
        try:
            certs.append(x509.load_der_x509_certificate(der))
        except ValueError as e:
            raise EnvelopeError(f"not a DER certificate: {e}", field=f"{where}[{i}]") from None
    return tuple(certs)


def parse_target(payload: bytes) -> TargetArtifact:
    """The payload's ``targetArtifact``. Raises :class:`EnvelopeError`."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise EnvelopeError("payload too large", field="payload")
    obj = _json_object(payload, "payload")
    target = obj.get("targetArtifact")
    if not isinstance(target, dict):
        raise EnvelopeError("no targetArtifact descriptor", field="payload.targetArtifact")
    media_type, digest, size = target.get("mediaType"), target.get("digest"), target.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise EnvelopeError("mediaType missing", field="payload.targetArtifact.mediaType")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise EnvelopeError("digest missing or malformed", field="payload.targetArtifact.digest")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise EnvelopeError("size missing or not a count", field="payload.targetArtifact.size")
    annotations = target.get("annotations", {})
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        raise EnvelopeError(
            "annotations must map strings", field="payload.targetArtifact.annotations"
        )
    return TargetArtifact(media_type, digest, size, dict(annotations))


def _check_headers(
    headers: Mapping[Any, Any], crit: Any, where: str, *, std_labels: set[Any]
) -> tuple[str, ...]:
    """Critical-header rules shared by JWS and COSE; returns unknown critical names."""
    if not isinstance(crit, list | tuple) or not crit:
        raise EnvelopeError("crit must be a non-empty list", field=f"{where}.crit")
    if len(crit) != len(set(map(repr, crit))):
        raise EnvelopeError("crit lists a name twice", field=f"{where}.crit")
    for name in crit:
        if not isinstance(name, str | int) or isinstance(name, bool):
            raise EnvelopeError("crit entries must be names", field=f"{where}.crit")
        if name not in headers:
            raise EnvelopeError(f"critical header {name!r} is absent", field=f"{where}.crit")
    if H_SCHEME not in crit:
        raise EnvelopeError(f"{H_SCHEME} must be listed in crit", field=f"{where}.crit")
    for name in _MUST_BE_CRITICAL:
        if name in headers and name not in crit:
            raise EnvelopeError(f"{name} must be listed in crit", field=f"{where}.crit")
    return tuple(str(n) for n in crit if n not in _UNDERSTOOD_CRITICAL and n not in std_labels)


def _scheme_times(
    scheme: Any, signing_time: datetime | None, authentic: datetime | None, where: str
) -> None:
    if scheme == SCHEME_X509:
        if signing_time is None or authentic is not None:
            raise EnvelopeError(
                "notary.x509 needs signingTime and no authenticSigningTime", field=where
            )
    elif scheme == SCHEME_SIGNING_AUTHORITY:
        if authentic is None or signing_time is not None:
            raise EnvelopeError(
                "notary.x509.signingAuthority needs authenticSigningTime and no signingTime",
                field=where,
            )
    else:
        raise EnvelopeError(f"unsupported signing scheme {scheme!r}", field=f"{where}.{H_SCHEME}")


def _opt_str(headers: Mapping[Any, Any], key: str, where: str) -> str:
    value = headers.get(key, "")
    if not isinstance(value, str):
        raise EnvelopeError("must be a string", field=f"{where}.{key}")
    return value


def _parse_jws(data: bytes) -> SignerInfo:
    env = _json_object(data, "envelope")
    unknown = set(env) - {"payload", "protected", "header", "signature"}
    if unknown:
        raise EnvelopeError(f"unknown JWS member {sorted(unknown)[0]!r}", field="envelope")
    for key in ("payload", "protected", "header", "signature"):
        if key not in env:
            raise EnvelopeError("missing", field=key)
    payload = b64url_decode_strict(env["payload"], "payload")
    protected_raw = b64url_decode_strict(env["protected"], "protected")
    signature = b64url_decode_strict(env["signature"], "signature")
    protected = _json_object(protected_raw, "protected")
    header = env["header"]
    if not isinstance(header, dict):
        raise EnvelopeError("must be an object", field="header")

    alg = protected.get("alg")
    if alg not in ALGORITHMS:
        raise EnvelopeError(f"unsupported alg {alg!r}", field="protected.alg")
    if protected.get("cty") != PAYLOAD_MEDIA_TYPE:
        raise EnvelopeError(f"content type must be {PAYLOAD_MEDIA_TYPE}", field="protected.cty")
    unknown_crit = _check_headers(protected, protected.get("crit"), "protected", std_labels=set())
    for key in header:
        lowered = key.lower()
        if lowered in ("x5c", H_TIMESTAMP.lower()) and key not in ("x5c", H_TIMESTAMP):
            raise EnvelopeError(f"ambiguous header member {key!r}", field="header")
    x5c = header.get("x5c")
    if not isinstance(x5c, list):
        raise EnvelopeError("must be a list of certificates", field="header.x5c")
    chain = _certificates(
        [_b64std_decode_strict(c, f"header.x5c[{i}]") for i, c in enumerate(x5c)], "header.x5c"
    )
    token = None
    if H_TIMESTAMP in header:
        token = _b64std_decode_strict(header[H_TIMESTAMP], f"header.{H_TIMESTAMP}")
    agent = next(
        (v for k, v in header.items() if k.lower() == H_AGENT.lower() and isinstance(v, str)), ""
    )

    # Integrity first: the key must fit alg, then the signature over the exact
    # transmitted "protected.payload" ASCII.
    try:
        check_key_matches_alg(chain[0], alg)
        verify_raw(chain[0], alg, f"{env['protected']}.{env['payload']}".encode(), signature)
    except ValueError as e:
        raise EnvelopeError(str(e), field="signature") from None

    signing_time = (
        _rfc3339(protected[H_SIGNING_TIME], f"protected.{H_SIGNING_TIME}")
        if H_SIGNING_TIME in protected
        else None
    )
    authentic = (
        _rfc3339(protected[H_AUTHENTIC_TIME], f"protected.{H_AUTHENTIC_TIME}")
        if H_AUTHENTIC_TIME in protected
        else None
    )
    expiry = (
        _rfc3339(protected[H_EXPIRY], f"protected.{H_EXPIRY}") if H_EXPIRY in protected else None
    )
    scheme = protected.get(H_SCHEME)
    _scheme_times(scheme, signing_time, authentic, "protected")
    return SignerInfo(
        media_type=JWS_MEDIA_TYPE,
        alg=alg,
        signing_scheme=str(scheme),
        signing_time=signing_time,
        authentic_signing_time=authentic,
        expiry=expiry,
        chain=chain,
        signature=signature,
        timestamp_token=token,
        target=parse_target(payload),
        signing_agent=agent,
        verification_plugin=_opt_str(protected, H_PLUGIN, "protected"),
        verification_plugin_min_version=_opt_str(protected, H_PLUGIN_MIN, "protected"),
        unknown_critical=unknown_crit,
    )


def _cbor_exact(data: bytes, where: str) -> Any:
    try:
        value = cbor2.loads(data)
    except Exception as e:  # cbor2 raises many types on hostile input
        raise EnvelopeError(f"not valid CBOR: {e}", field=where) from None
    try:
        canonical = cbor2.dumps(value, datetime_as_timestamp=True)
    except Exception as e:
        raise EnvelopeError(f"CBOR value not re-encodable: {e}", field=where) from None
    if canonical != data:
        raise EnvelopeError("non-minimal or indefinite-length CBOR encoding", field=where)
    return value


def _cose_time(headers: Mapping[Any, Any], key: str) -> datetime | None:
    if key not in headers:
        return None
    value = headers[key]
    # cbor2 turns tag 1 (epoch seconds) into an aware datetime; anything else is refused.
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise EnvelopeError("must be a CBOR tag 1 time", field=f"protected.{key}")
    return value.astimezone(UTC)


def _parse_cose(data: bytes) -> SignerInfo:
    outer = _cbor_exact(data, "envelope")
    if not isinstance(outer, cbor2.CBORTag) or outer.tag != 18:
        raise EnvelopeError("not a tagged COSE_Sign1 (tag 18)", field="envelope")
    body = outer.value
    if not isinstance(body, list | tuple) or len(body) != 4:
        raise EnvelopeError("COSE_Sign1 must be a 4-element array", field="envelope")
    protected_raw, unprotected, payload, signature = body
    if not isinstance(protected_raw, bytes) or not protected_raw:
        raise EnvelopeError("must be a non-empty bstr", field="protected")
    if not isinstance(unprotected, Mapping):
        raise EnvelopeError("must be a map", field="unprotected")
    if not isinstance(payload, bytes) or not isinstance(signature, bytes):
        raise EnvelopeError(
            "payload and signature must be bstr (no detached payload)", field="envelope"
        )
    protected = _cbor_exact(protected_raw, "protected")
    if not isinstance(protected, Mapping):
        raise EnvelopeError("must be a map", field="protected")
    alg = _COSE_ALGS.get(protected.get(1))  # type: ignore[arg-type]
    if alg is None:
        raise EnvelopeError(f"unsupported alg {protected.get(1)!r}", field="protected.1")
    if protected.get(3) != PAYLOAD_MEDIA_TYPE:
        raise EnvelopeError(f"content type must be {PAYLOAD_MEDIA_TYPE}", field="protected.3")
    unknown_crit = _check_headers(
        protected, protected.get(2), "protected", std_labels=_COSE_STD_LABELS
    )
    x5 = unprotected.get(33)
    ders = [x5] if isinstance(x5, bytes) else list(x5) if isinstance(x5, list | tuple) else None
    if ders is None or not all(isinstance(d, bytes) for d in ders):
        raise EnvelopeError("x5chain must be a bstr or a list of bstr", field="unprotected.33")
    chain = _certificates(ders, "unprotected.33")
    token = unprotected.get(H_TIMESTAMP)
    if token is not None and not isinstance(token, bytes):
        raise EnvelopeError("must be a bstr", field=f"unprotected.{H_TIMESTAMP}")
    agent = unprotected.get(H_AGENT, "")

    to_be_signed = cbor2.dumps(["Signature1", protected_raw, b"", payload])
    try:
        check_key_matches_alg(chain[0], alg)
        verify_raw(chain[0], alg, to_be_signed, signature)
    except ValueError as e:
        raise EnvelopeError(str(e), field="signature") from None

    signing_time = _cose_time(protected, H_SIGNING_TIME)
    authentic = _cose_time(protected, H_AUTHENTIC_TIME)
    expiry = _cose_time(protected, H_EXPIRY)
    _scheme_times(protected.get(H_SCHEME), signing_time, authentic, "protected")
    return SignerInfo(
        media_type=COSE_MEDIA_TYPE,
        alg=alg,
        signing_scheme=str(protected[H_SCHEME]),
        signing_time=signing_time,
        authentic_signing_time=authentic,
        expiry=expiry,
        chain=chain,
        signature=signature,
        timestamp_token=token,
        target=parse_target(payload),
        signing_agent=agent if isinstance(agent, str) else "",
        verification_plugin=_opt_str(protected, H_PLUGIN, "protected"),
        verification_plugin_min_version=_opt_str(protected, H_PLUGIN_MIN, "protected"),
        unknown_critical=unknown_crit,
    )


def parse_envelope(
    data: bytes, media_type: str, *, max_bytes: int = MAX_ENVELOPE_BYTES
) -> SignerInfo:
    """Parse an envelope and verify its signature with its own leaf certificate.

    Raises :class:`EnvelopeError` for anything malformed, oversized, an unsupported media
    type, or a signature that does not verify (all Notation *integrity* failures).
    """
    if len(data) > max_bytes:
        raise EnvelopeError(f"envelope larger than {max_bytes} bytes", field="envelope")
    if media_type == JWS_MEDIA_TYPE:
        return _parse_jws(data)
    if media_type == COSE_MEDIA_TYPE:
        return _parse_cose(data)
    raise EnvelopeError(
        f"unsupported signature envelope media type {media_type!r}", field="envelope"
    )
