"""Notation's OCI trust policy document (``trustpolicy.json`` / ``trustpolicy.oci.json``).

:func:`parse_trust_policy` turns the user's bytes into a validated
:class:`TrustPolicyDocument` or raises :class:`TrustPolicyError` naming the offending key
(``trustPolicies[1].registryScopes[0]: ...``). Validation happens once, before any
verification: an invalid document fails every request, even at ``audit`` (notation-go
``OCIDocument.Validate`` runs in ``verifier.New``).

The rules follow notation-go ``verifier/trustpolicy`` (``oci.go``, ``trustpolicy.go``) and
``internal/pkix``; where this module is stricter it says so:

- ``version`` must be ``"1.0"``; at least one statement; names unique and non-empty.
- ``registryScopes``: non-empty; ``"*"`` alone or not at all; every other value a fully
  qualified repository (``domain[:port]/path``, distribution's grammar); one scope value in
  one statement only (the same scope twice, even in one statement, is "overlapping").
- ``signatureVerification.level``: ``strict | permissive | audit | skip``; ``override`` maps
  a check to ``enforce | log | skip``: never ``integrity``, ``skip`` only for
  ``revocation``, no override at all under ``skip``; ``verifyTimestamp``: ``always``
  (default) or ``afterCertExpiry``.
- ``skip`` statements carry no ``trustStores``/``trustedIdentities``; all others need both.
- ``trustStores``: ``<type>:<name>``, type ``ca | signingAuthority | tsa``, name
  ``[a-zA-Z0-9_.-]+``. Stricter than notation-go: a store listed twice is refused (the
  upstream e2e case ``overlapped_trust_store`` is marked invalid in our vectors' README;
  notation-go itself accepts and de-duplicates it).
- ``trustedIdentities``: ``"*"`` alone, or ``x509.subject: <RFC 4514 DN>`` values with at
  least ``C``, ``ST`` and ``O``, single-valued RDNs, no repeated attribute, no ``=#``
  (hex-encoded values); no two identities where one is a subset of the other. Stricter
  than notation-go: other prefixes (which notation-go passes to verification plugins) are
  refused, since this proxy runs no plugins and an identity it cannot check must not
  silently match nothing.
- Unknown keys are refused (a typo such as ``trustedIdentity`` must not turn a rule off);
  notation-go's JSON decoding ignores them. Duplicate JSON keys are refused.

Statement selection (:meth:`TrustPolicyDocument.statement_for`): an exact scope match wins
over ``"*"``; no match raises :class:`NoApplicableTrustPolicyError` (notation-go
``GetApplicableTrustPolicy``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from proxy.sources.notation.errors import NoApplicableTrustPolicyError, TrustPolicyError

__all__ = [
    "Action",
    "Check",
    "Level",
    "StoreRef",
    "StoreType",
    "TrustPolicyDocument",
    "TrustPolicyStatement",
    "TrustedIdentity",
    "VerifyTimestamp",
    "parse_distinguished_name",
    "parse_signature_verification",
    "parse_statement_core",
    "parse_trust_policy",
    "validate_registry_scope",
]

MAX_POLICY_BYTES = 1 << 20
MAX_STATEMENTS = 1000
MAX_LIST = 1000


class Check(StrEnum):
    """Notation's validation types, in the order notation-go runs them."""

    INTEGRITY = "integrity"
    AUTHENTICITY = "authenticity"
    EXPIRY = "expiry"
    AUTHENTIC_TIMESTAMP = "authenticTimestamp"
    REVOCATION = "revocation"


class Action(StrEnum):
    ENFORCE = "enforce"
    LOG = "log"
    SKIP = "skip"


class Level(StrEnum):
    STRICT = "strict"
    PERMISSIVE = "permissive"
    AUDIT = "audit"
    SKIP = "skip"


class VerifyTimestamp(StrEnum):
    ALWAYS = "always"
    AFTER_CERT_EXPIRY = "afterCertExpiry"


class StoreType(StrEnum):
    CA = "ca"
    SIGNING_AUTHORITY = "signingAuthority"
    TSA = "tsa"


_E, _L, _S = Action.ENFORCE, Action.LOG, Action.SKIP
# notation-go trustpolicy.go LevelStrict/LevelPermissive/LevelAudit/LevelSkip.
_LEVELS: Mapping[Level, Mapping[Check, Action]] = MappingProxyType(
    {
        Level.STRICT: {c: _E for c in Check},
        Level.PERMISSIVE: {
            Check.INTEGRITY: _E,
            Check.AUTHENTICITY: _E,
            Check.AUTHENTIC_TIMESTAMP: _L,
            Check.EXPIRY: _L,
            Check.REVOCATION: _L,
        },
        Level.AUDIT: {
            Check.INTEGRITY: _E,
            Check.AUTHENTICITY: _L,
            Check.AUTHENTIC_TIMESTAMP: _L,
            Check.EXPIRY: _L,
            Check.REVOCATION: _L,
        },
        Level.SKIP: {c: _S for c in Check},
    }
)

_STORE_NAME = re.compile(r"[a-zA-Z0-9_.-]+")
# distribution/reference grammar (domain with optional port; lowercase path components).
_DOMAIN = re.compile(
    r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(?::[0-9]+)?"
)
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
WILDCARD = "*"
X509_SUBJECT = "x509.subject"


@dataclass(frozen=True)
class StoreRef:
    type: StoreType
    name: str

    def __str__(self) -> str:
        return f"{self.type}:{self.name}"


@dataclass(frozen=True)
class TrustedIdentity:
    """``x509.subject: <DN>``: matches a leaf whose subject holds every listed attribute."""

    raw: str
    attributes: Mapping[str, str]

    def matches(self, subject: Mapping[str, str]) -> bool:
        return all(subject.get(k) == v for k, v in self.attributes.items())


@dataclass(frozen=True)
class TrustPolicyStatement:
    """One validated statement. ``enforcement`` is the level with overrides applied."""

    name: str
    registry_scopes: tuple[str, ...]
    level: Level
    enforcement: Mapping[Check, Action]
    verify_timestamp: VerifyTimestamp
    trust_stores: tuple[StoreRef, ...]
    # () with any_identity=True for "*"; x509 identities otherwise.
    trusted_identities: tuple[TrustedIdentity, ...]
    any_identity: bool

    @property
    def skips(self) -> bool:
        """``skip``: accepted without looking for signatures (upstream prints "Trust policy
        is configured to skip signature verification")."""
        return self.level is Level.SKIP

    def action(self, check: Check) -> Action:
        return self.enforcement[check]

    def stores_of(self, store_type: StoreType) -> tuple[StoreRef, ...]:
        return tuple(s for s in self.trust_stores if s.type is store_type)


@dataclass(frozen=True)
class TrustPolicyDocument:
    version: str
    statements: tuple[TrustPolicyStatement, ...]
    _by_scope: Mapping[str, TrustPolicyStatement] = field(repr=False, compare=False)

    def statement_for(self, repository: str) -> TrustPolicyStatement:
        """The statement whose scope is ``repository`` (``registry[:port]/path``), else the
        ``"*"`` statement. Raises :class:`NoApplicableTrustPolicyError`."""
        found = self._by_scope.get(repository) or self._by_scope.get(WILDCARD)
        if found is None:
            raise NoApplicableTrustPolicyError(repository)
        return found


def _fail(path: str, message: str) -> TrustPolicyError:
    return TrustPolicyError(path, message)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _object(
    value: Any, path: str, allowed: set[str], required: Sequence[str] = ()
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(path, "must be an object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise _fail(f"{path}.{unknown[0]}" if path else unknown[0], "unknown key")
    for key in required:
        if key not in value:
            raise _fail(f"{path}.{key}" if path else key, "is required")
    return value


def _string_list(value: Any, path: str) -> list[str]:
    if not isinstance(value, list):
        raise _fail(path, "must be a list of strings")
    if len(value) > MAX_LIST:
        raise _fail(path, f"has more than {MAX_LIST} entries")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _fail(f"{path}[{i}]", "must be a string")
    return value


def validate_registry_scope(scope: str) -> str | None:
    """The reason ``scope`` is not a fully qualified repository, or None."""
    hint = (
        "make sure it is a fully qualified repository without the scheme, protocol or "
        "tag, for example domain.com/my/repository"
    )
    if WILDCARD in scope:
        return f"registry scope {scope!r} with wild card(s) is not valid, {hint}"
    domain, sep, repository = scope.partition("/")
    if not sep or not _DOMAIN.fullmatch(domain) or not _REPOSITORY.fullmatch(repository):
        return f"registry scope {scope!r} is not valid, {hint}"
    return None


def parse_distinguished_name(text: str) -> dict[str, str]:
    """RFC 4514 DN → {attribute type: value}, with Notation's rules (C, ST and O required,
    single-valued RDNs, no repeated attribute, no ``=#`` hex values). Raises ValueError.

    Attribute types are kept as written (go-ldap ``ParseDN`` does the same, and notation-go
    compares them exactly): ``st=WA`` does not provide ``ST``.
    """
    if "=#" in text:
        raise ValueError("x509.subject identities containing '=#' are not supported")
    attrs: dict[str, str] = {}
    for rdn in _split_unescaped(text, ",;"):
        parts = _split_unescaped(rdn, "+")
        if len(parts) > 1:
            raise ValueError("multi-valued RDN attributes are not supported")
        key, sep, raw_value = parts[0].partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"RDN {rdn.strip()!r} is not type=value")
        value = _unescape(raw_value.strip())
        if key in attrs:
            raise ValueError(f"duplicate RDN attribute {key!r}")
        attrs[key] = value
    for mandatory in ("C", "ST", "O"):
        if not attrs.get(mandatory):
            raise ValueError(
                f"no mandatory RDN attribute {mandatory!r}; a DN must contain 'C', 'ST' and "
                "'O' at a minimum"
            )
    return attrs


def _split_unescaped(text: str, separators: str) -> list[str]:
    out, current, i = [], [], 0
    quoted = False
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif ch in separators and not quoted:
            out.append("".join(current))
            current = []
            i += 1
            continue
        current.append(ch)
        i += 1
    if quoted:
        raise ValueError("unterminated quoted value")
    out.append("".join(current))
    return out


def _unescape(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = value[1:-1]
    out = bytearray()
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\":
            pair = value[i + 1 : i + 3]
            if len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair):
                out.append(int(pair, 16))
                i += 3
                continue
            if i + 1 >= len(value):
                raise ValueError("dangling escape")
            out += value[i + 1].encode()
            i += 2
            continue
        out += ch.encode()
        i += 1
    try:
        return out.decode()
    except UnicodeDecodeError as e:
        raise ValueError("escaped value is not UTF-8") from e


def parse_signature_verification(
    raw: Any, path: str
) -> tuple[Level, Mapping[Check, Action], VerifyTimestamp]:
    """``signatureVerification`` → (level, enforcement with overrides, verifyTimestamp)."""
    obj = _object(raw, path, {"level", "override", "verifyTimestamp"}, ("level",))
    level_raw = obj["level"]
    try:
        level = Level(level_raw)
    except ValueError:
        raise _fail(
            f"{path}.level", f"invalid signature verification level {level_raw!r}"
        ) from None
    enforcement = dict(_LEVELS[level])
    override = obj.get("override", {})
    if not isinstance(override, dict):
        raise _fail(f"{path}.override", "must be an object")
    if override and level is Level.SKIP:
        raise _fail(f"{path}.override", "level 'skip' can't be used to customize verification")
    for key, value in override.items():
        where = f"{path}.override.{key}"
        try:
            check = Check(key)
        except ValueError:
            raise _fail(where, f"verification type {key!r} is not supported") from None
        try:
            action = Action(value)
        except ValueError:
            raise _fail(where, f"verification action {value!r} is not supported") from None
        # notation-go GetVerificationLevel: integrity is never overridable; only
        # revocation may be skipped.
        if check is Check.INTEGRITY:
            raise _fail(where, "'integrity' verification can not be overridden")
        if action is Action.SKIP and check is not Check.REVOCATION:
            raise _fail(where, f"{key!r} verification can not be skipped")
        enforcement[check] = action
    vt_raw = obj.get("verifyTimestamp", VerifyTimestamp.ALWAYS.value)
    try:
        verify_timestamp = VerifyTimestamp(vt_raw)
    except ValueError:
        raise _fail(
            f"{path}.verifyTimestamp", f"must be 'always' or 'afterCertExpiry', not {vt_raw!r}"
        ) from None
    return level, MappingProxyType(enforcement), verify_timestamp


def _parse_stores(raw: list[str], path: str) -> tuple[StoreRef, ...]:
    refs: list[StoreRef] = []
    for i, value in enumerate(raw):
        where = f"{path}[{i}]"
        type_raw, sep, name = value.partition(":")
        if not sep:
            raise _fail(
                where,
                f"malformed trust store value {value!r}; the required format is "
                "<TrustStoreType>:<TrustStoreName>",
            )
        try:
            store_type = StoreType(type_raw)
        except ValueError:
            raise _fail(where, f"unsupported trust store type {type_raw!r} in {value!r}") from None
        if not _STORE_NAME.fullmatch(name):
            raise _fail(
                where,
                f"unsupported trust store name {name!r} in {value!r}; named store names "
                "follow [a-zA-Z0-9_.-]+",
            )
        ref = StoreRef(store_type, name)
        if ref in refs:
            raise _fail(where, f"trust store {value!r} is listed more than once")
        refs.append(ref)
    return tuple(refs)


def _parse_identities(raw: list[str], path: str) -> tuple[tuple[TrustedIdentity, ...], bool]:
    if len(raw) > 1 and WILDCARD in raw:
        raise _fail(path, "a wildcard trusted identity '*' cannot be used with other values")
    if raw == [WILDCARD]:
        return (), True
    identities: list[TrustedIdentity] = []
    for i, value in enumerate(raw):
        where = f"{path}[{i}]"
        if value == "":
            raise _fail(where, "empty trusted identity")
        prefix, sep, dn = value.partition(":")
        if not sep:
            raise _fail(where, f"trusted identity {value!r} is missing the ':' separator")
        if prefix != X509_SUBJECT:
            raise _fail(
                where,
                f"trusted identity type {prefix!r} is not supported (only x509.subject; "
                "other types need a verification plugin)",
            )
        if dn.strip() == "":
            raise _fail(where, f"trusted identity {value!r} has no identity value")
        try:
            attrs = parse_distinguished_name(dn.strip())
        except ValueError as e:
            raise _fail(where, f"distinguished name {dn.strip()!r} is not valid: {e}") from None
        identities.append(TrustedIdentity(value, MappingProxyType(attrs)))
    for a in identities:
        for b in identities:
            if a is not b and all(b.attributes.get(k) == v for k, v in a.attributes.items()):
                raise _fail(
                    path, f"overlapping x509 trusted identities: {a.raw!r} overlaps with {b.raw!r}"
                )
    return tuple(identities), False


def parse_statement_core(
    obj: Mapping[str, Any],
    path: str,
    *,
    name: str,
    scopes: tuple[str, ...],
    verification_path: str | None = None,
) -> TrustPolicyStatement:
    """The scope-independent part of a statement: verification, stores, identities. Used
    for document statements and for a policy rule's inline fields (whose ``level`` etc.
    sit beside ``trustStores``: ``verification_path`` is then the rule's own path)."""
    if "signatureVerification" not in obj:
        raise _fail(f"{path}.signatureVerification", "is required")
    level, enforcement, verify_timestamp = parse_signature_verification(
        obj["signatureVerification"], verification_path or f"{path}.signatureVerification"
    )
    stores_raw = _string_list(obj.get("trustStores", []), f"{path}.trustStores")
    ids_raw = _string_list(obj.get("trustedIdentities", []), f"{path}.trustedIdentities")
    if level is Level.SKIP:
        if stores_raw or ids_raw:
            raise _fail(
                path,
                f"statement {name!r} is set to skip signature verification but configured "
                "with trust stores and/or trusted identities",
            )
        stores: tuple[StoreRef, ...] = ()
        identities: tuple[TrustedIdentity, ...] = ()
        any_identity = False
    else:
        if not stores_raw or not ids_raw:
            missing = "trustStores" if not stores_raw else "trustedIdentities"
            raise _fail(
                f"{path}.{missing}",
                f"statement {name!r} is either missing trust stores or trusted identities, "
                "both must be specified",
            )
        stores = _parse_stores(stores_raw, f"{path}.trustStores")
        identities, any_identity = _parse_identities(ids_raw, f"{path}.trustedIdentities")
    return TrustPolicyStatement(
        name=name,
        registry_scopes=scopes,
        level=level,
        enforcement=enforcement,
        verify_timestamp=verify_timestamp,
        trust_stores=stores,
        trusted_identities=identities,
        any_identity=any_identity,
    )


_STATEMENT_KEYS = {
    "name",
    "registryScopes",
    "signatureVerification",
    "trustStores",
    "trustedIdentities",
}


def parse_trust_policy(data: bytes, *, source: str = "trustpolicy.json") -> TrustPolicyDocument:
    """Parse and validate an OCI trust policy document. Raises :class:`TrustPolicyError`
    whose path starts with ``source``."""
    if len(data) > MAX_POLICY_BYTES:
        raise _fail(source, f"exceeds {MAX_POLICY_BYTES} bytes")
    try:
        raw = json.loads(data, object_pairs_hook=_no_duplicate_keys)
    except (ValueError, UnicodeDecodeError) as e:
        raise _fail(source, f"malformed trust policy: {e}") from None
    doc = _object(raw, source, {"version", "trustPolicies"}, ("version", "trustPolicies"))
    if doc["version"] != "1.0":
        raise _fail(f"{source}.version", f"unsupported version {doc['version']!r} (expected '1.0')")
    items = doc["trustPolicies"]
    if not isinstance(items, list) or not items:
        raise _fail(f"{source}.trustPolicies", "must be a non-empty list of statements")
    if len(items) > MAX_STATEMENTS:
        raise _fail(f"{source}.trustPolicies", f"has more than {MAX_STATEMENTS} statements")
    statements: list[TrustPolicyStatement] = []
    names: set[str] = set()
    by_scope: dict[str, TrustPolicyStatement] = {}
    scope_owner: dict[str, str] = {}
    for i, item in enumerate(items):
        path = f"{source}.trustPolicies[{i}]"
        obj = _object(item, path, _STATEMENT_KEYS, ("name",))
        name = obj["name"]
        if not isinstance(name, str) or not name:
            raise _fail(f"{path}.name", "must be a non-empty string")
        if name in names:
            raise _fail(f"{path}.name", f"multiple statements use the same name {name!r}")
        names.add(name)
        scopes = _string_list(obj.get("registryScopes", []), f"{path}.registryScopes")
        if not scopes:
            raise _fail(f"{path}.registryScopes", f"statement {name!r} has zero registry scopes")
        if len(scopes) > 1 and WILDCARD in scopes:
            raise _fail(
                f"{path}.registryScopes",
                "a wildcard scope '*' cannot be used in conjunction with other scope values",
            )
        statement = parse_statement_core(obj, path, name=name, scopes=tuple(scopes))
        for j, scope in enumerate(scopes):
            where = f"{path}.registryScopes[{j}]"
            if scope != WILDCARD:
                reason = validate_registry_scope(scope)
                if reason:
                    raise _fail(where, reason)
            if scope in by_scope:
                raise _fail(
                    where,
                    f"registry scope {scope!r} is also in statement {scope_owner[scope]!r}; one "
                    "registry scope can only be associated with one statement",
                )
            by_scope[scope] = statement
            scope_owner[scope] = name
        statements.append(statement)
    return TrustPolicyDocument("1.0", tuple(statements), MappingProxyType(by_scope))
