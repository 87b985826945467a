"""Parse Notary v1 metadata bytes into frozen role models.

Parsing checks shape only (types, required fields, limits); signatures, thresholds, hashes,
versions and expiry are checked by :mod:`proxy.sources.notary.tuf.trusted_set`. Unknown fields are
ignored, as Go's ``encoding/json`` does; duplicate object keys and non-integer numbers are
refused, so that no two parsers can read the same bytes differently.
"""

from __future__ import annotations

import binascii
import gc
import json
import posixpath
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Final, Generic, NamedTuple, TypeVar

from proxy.sources.notary.tuf.canonical import MAX_SAFE_INT, encode_parsed
from proxy.sources.notary.tuf.errors import MetadataFormatError, OversizeMetadataError
from proxy.sources.notary.tuf.keys import PublicKey, parse_key

__all__ = [
    "HASH_SIZES",
    "TOP_LEVEL_ROLES",
    "DelegatedRole",
    "Delegations",
    "Limits",
    "MetaFile",
    "Metadata",
    "Role",
    "Root",
    "Signature",
    "Snapshot",
    "TargetFile",
    "Targets",
    "Timestamp",
    "is_delegation_name",
    "parse_expires",
    "parse_root",
    "parse_snapshot",
    "parse_targets",
    "parse_timestamp",
]

TOP_LEVEL_ROLES: Final = ("root", "targets", "snapshot", "timestamp")
#: Hash algorithms notary knows, with their digest sizes; others are ignored.
HASH_SIZES: Final = {"sha256": 32, "sha512": 64}
_TYPES: Final = {
    "root": "Root",
    "targets": "Targets",
    "snapshot": "Snapshot",
    "timestamp": "Timestamp",
}
_KEY_ID = re.compile(r"[0-9a-f]{64}")
# notary data.IsDelegation: "targets/" prefix, [-a-z0-9_/], < 256 chars, path.Clean-stable
_DELEGATION = re.compile(r"targets/[-a-z0-9_/]+")
_EXPIRES = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})"
)


@dataclass(frozen=True)
class Limits:
    """Upper bounds on untrusted sizes and counts (defaults are generous for real repos)."""

    max_root_bytes: int = 512 * 1024
    max_timestamp_bytes: int = 64 * 1024
    max_snapshot_bytes: int = 4 * 1024 * 1024
    #: for ``targets`` and every delegated role
    max_targets_bytes: int = 32 * 1024 * 1024
    max_signatures: int = 64
    max_keys: int = 256
    max_certificates_per_key: int = 10
    #: delegations declared by one targets role
    max_delegations: int = 256
    #: delegated roles loaded into one trusted set, and root versions walked in one refresh
    max_delegated_roles: int = 1024
    max_root_rotations: int = 1024
    max_paths: int = 1024
    max_targets: int = 200_000
    max_meta: int = 10_000

    def max_bytes_for(self, role: str) -> int:
        """The byte limit for a role's metadata file."""
        if role == "root":
            return self.max_root_bytes
        if role == "timestamp":
            return self.max_timestamp_bytes
        if role == "snapshot":
            return self.max_snapshot_bytes
        return self.max_targets_bytes


DEFAULT_LIMITS: Final = Limits()


@dataclass(frozen=True)
class Signature:
    key_id: str
    method: str
    sig: bytes


@dataclass(frozen=True)
class Role:
    """Keys and threshold of a top-level role (from root)."""

    key_ids: tuple[str, ...]
    threshold: int


@dataclass(frozen=True)
class MetaFile:
    """Length and hashes (raw digests) of a metadata file, as announced by its parent."""

    length: int
    hashes: Mapping[str, bytes]

    @property
    def sha256_hex(self) -> str:
        """Hex sha256, as used in consistent file names (``<role>.<hex>.json``)."""
        return self.hashes["sha256"].hex()


class TargetFile(NamedTuple):
    """A signed target: for Docker, a tag -> manifest bytes' length and hashes.

    A named tuple rather than a frozen dataclass (immutable all the same): a 10,000-tag role
    builds 10,000 of them, and a frozen dataclass's ``__init__`` costs twice as much.
    """

    length: int
    hashes: Mapping[str, bytes]
    custom: object = None

    @property
    def digest(self) -> str | None:
        """``sha256:<hex>`` when a sha256 hash is present (Docker pulls by it), else None."""
        h = self.hashes.get("sha256")
        return f"sha256:{h.hex()}" if h is not None else None


@dataclass(frozen=True)
class DelegatedRole:
    name: str
    key_ids: tuple[str, ...]
    threshold: int
    #: string prefixes of target names ("" = all)
    paths: tuple[str, ...]

    def allows(self, target: str) -> bool:
        """Whether this delegation may sign ``target`` (notary: prefix match)."""
        return any(target.startswith(p) for p in self.paths)


@dataclass(frozen=True)
class Delegations:
    keys: Mapping[str, PublicKey]
    roles: tuple[DelegatedRole, ...]

    def get(self, name: str) -> DelegatedRole | None:
        for r in self.roles:
            if r.name == name:
                return r
        return None


@dataclass(frozen=True)
class Root:
    version: int
    expires: datetime
    keys: Mapping[str, PublicKey]
    roles: Mapping[str, Role]
    consistent_snapshot: bool


@dataclass(frozen=True)
class Targets:
    version: int
    expires: datetime
    targets: Mapping[str, TargetFile]
    delegations: Delegations


@dataclass(frozen=True)
class Snapshot:
    version: int
    expires: datetime
    #: role name (no ``.json``) -> length and hashes
    meta: Mapping[str, MetaFile]


@dataclass(frozen=True)
class Timestamp:
    version: int
    expires: datetime
    snapshot: MetaFile


T = TypeVar("T", Root, Targets, Snapshot, Timestamp)


@dataclass(frozen=True)
class Metadata(Generic[T]):
    """A parsed envelope: the role body, its signatures, and the bytes they sign."""

    role: str
    raw: bytes = field(repr=False)
    signed: T
    signatures: tuple[Signature, ...]
    #: canonical JSON of ``signed``: what every signature covers
    message: bytes = field(repr=False)

    @property
    def version(self) -> int:
        return self.signed.version

    @property
    def expires(self) -> datetime:
        return self.signed.expires


def is_delegation_name(name: str) -> bool:
    """notary ``data.IsDelegation``: a clean ``targets/...`` path of [-a-z0-9_/], < 256 chars."""
    return (
        len(name) < 256
        and _DELEGATION.fullmatch(name) is not None
        and posixpath.normpath(name) == name
    )


def parse_expires(text: object, *, role: str = "", field: str = "expires") -> datetime:
    """Parse an RFC 3339 time with up to nanoseconds (truncated to microseconds).

    Raises:
        MetadataFormatError: not a string in that format, or not a valid date/time.
    """
    if not isinstance(text, str):
        raise MetadataFormatError("not a string", role=role, field=field)
    m = _EXPIRES.fullmatch(text)
    if m is None:
        raise MetadataFormatError(f"not an RFC 3339 time: {text[:64]!r}", role=role, field=field)
    y, mo, d, h, mi, s, frac, tz = m.groups()
    micros = int((frac or "0").ljust(9, "0")[:6])
    try:
        if tz == "Z":
            tzinfo: timezone = UTC
        else:
            sign = 1 if tz[0] == "+" else -1
            offset = timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
            tzinfo = timezone(sign * offset)
        dt = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), micros, tzinfo=tzinfo)
        return dt.astimezone(UTC)
    except (ValueError, OverflowError) as e:
        raise MetadataFormatError(f"invalid time: {e}", role=role, field=field) from e


# --- envelope -------------------------------------------------------------------------


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate object key")
    return out


def _parse_int(text: str) -> int:
    value = int(text)
    if abs(value) > MAX_SAFE_INT:  # notary reads numbers as float64
        raise ValueError(f"integer out of range: {text[:32]}")
    return value


def _reject_float(text: str) -> object:
    raise ValueError(f"non-integer number {text[:32]}")


def _text(raw: bytes, role: str, max_bytes: int) -> str:
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise TypeError("metadata must be bytes")
    if len(raw) > max_bytes:
        raise OversizeMetadataError(f"{len(raw)} bytes exceeds the limit of {max_bytes}", role=role)
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as e:
        raise MetadataFormatError(f"not valid JSON: {e}", role=role) from e


def _load_text(text: str, role: str) -> dict[str, object]:
    """The checked reader: every object of the document goes through the duplicate-key hook."""
    try:
        doc = json.loads(
            text,
            object_pairs_hook=_reject_duplicates,
            parse_float=_reject_float,
            parse_int=_parse_int,
            parse_constant=_reject_float,
        )
    except (ValueError, RecursionError) as e:
        raise MetadataFormatError(f"not valid JSON: {e}", role=role) from e
    if not isinstance(doc, dict):
        raise MetadataFormatError("top level is not an object", role=role)
    return doc


# Scanners for one JSON value at an index (the C scanner json.loads itself uses). Both refuse
# floats, NaN/Infinity and integers beyond 2**53; only the checked one refuses duplicate keys.
_Scan = Callable[[str, int], tuple[object, int]]
_SCAN_CHECKED: Final[_Scan] = json.JSONDecoder(
    object_pairs_hook=_reject_duplicates,
    parse_float=_reject_float,
    parse_int=_parse_int,
    parse_constant=_reject_float,
).scan_once  # type: ignore[attr-defined]  # set by JSONDecoder.__init__, untyped
_SCAN_PLAIN: Final[_Scan] = json.JSONDecoder(
    parse_float=_reject_float, parse_int=_parse_int, parse_constant=_reject_float
).scan_once  # type: ignore[attr-defined]
_WHITESPACE: Final = re.compile(r"[ \t\n\r]*")  # JSON's (json.decoder.WHITESPACE)


def _skip(text: str, i: int) -> int:
    m = _WHITESPACE.match(text, i)
    return i if m is None else m.end()


def _envelope_canonical(text: str, role: str) -> tuple[dict[str, object], bytes] | None:
    """Read an envelope whose ``signed`` value is already canonical JSON (what notary writes);
    return the document and the canonical bytes of ``signed``, or None for anything else,
    which the checked reader then decides (and names the error when it refuses).

    The per-object duplicate-key hook is a fifth of the parse of a large role. It is skipped
    inside ``signed`` only, and only once ``signed`` is shown to be its own canonical
    encoding: that encoding lists each key of an object once and escapes injectively, so a
    text equal to it holds no two keys of one object that decode to the same string. The
    envelope's own keys are checked here, every other value by the checked scanner.
    """
    doc: dict[str, object] = {}
    span: tuple[int, int] | None = None
    try:
        i = _skip(text, 0)
        if text[i : i + 1] != "{":
            return None
        i = _skip(text, i + 1)
        while True:
            if text[i : i + 1] != '"':
                return None
            key, i = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
            i = _skip(text, i)
            if text[i : i + 1] != ":":
                return None
            i = _skip(text, i + 1)
            if key == "signed":
                value, end = _SCAN_PLAIN(text, i)
                span = (i, end)
            else:
                value, end = _SCAN_CHECKED(text, i)
            if key in doc:
                return None
            doc[key] = value
            i = _skip(text, end)
            if text[i : i + 1] == ",":
                i = _skip(text, i + 1)
                continue
            if text[i : i + 1] == "}":
                break
            return None
        if span is None or _skip(text, i + 1) != len(text):
            return None
        signed = doc["signed"]
        if not isinstance(signed, dict):
            return None
        source = text[span[0] : span[1]].encode("utf-8")
        message = encode_parsed(signed, source, role=role)
    except (ValueError, StopIteration, RecursionError, MetadataFormatError):
        return None
    return (doc, message) if message == source else None


def _envelope(
    raw: bytes, role: str, kind: str, max_bytes: int, limits: Limits
) -> tuple[dict[str, object], tuple[Signature, ...], bytes]:
    text = _text(raw, role, max_bytes)
    canonical = _envelope_canonical(text, role)
    doc, message = canonical if canonical is not None else (_load_text(text, role), None)
    signed = doc.get("signed")
    if not isinstance(signed, dict):
        raise MetadataFormatError("missing or not an object", role=role, field="signed")
    typ = signed.get("_type")
    if typ != _TYPES[kind]:
        raise MetadataFormatError(
            f"expected {_TYPES[kind]!r}, got {str(typ)[:32]!r}", role=role, field="_type"
        )
    sigs = _list(doc.get("signatures"), role, "signatures", limits.max_signatures)
    signatures = []
    for i, s in enumerate(sigs):
        where = f"signatures[{i}]"
        if not isinstance(s, dict):
            raise MetadataFormatError("not an object", role=role, field=where)
        key_id = _str(s.get("keyid"), role, f"{where}.keyid")
        method = _str(s.get("method"), role, f"{where}.method")
        sig = _b64(s.get("sig"), role, f"{where}.sig")
        signatures.append(Signature(key_id=key_id, method=method, sig=sig))
    if message is None:
        message = encode_parsed(signed, bytes(raw), role=role)
    return signed, tuple(signatures), message


# --- field helpers ---------------------------------------------------------------------


def _str(v: object, role: str, where: str) -> str:
    if not isinstance(v, str):
        raise MetadataFormatError("not a string", role=role, field=where)
    return v


def _int(v: object, role: str, where: str, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise MetadataFormatError("not an integer", role=role, field=where)
    if not minimum <= v <= MAX_SAFE_INT:
        raise MetadataFormatError(f"out of range: {v}", role=role, field=where)
    return v


def _dict(v: object, role: str, where: str, limit: int) -> dict[str, object]:
    if not isinstance(v, dict):
        raise MetadataFormatError("not an object", role=role, field=where)
    if len(v) > limit:
        raise MetadataFormatError(f"more than {limit} entries", role=role, field=where)
    return v


def _list(v: object, role: str, where: str, limit: int) -> list[object]:
    if not isinstance(v, list):
        raise MetadataFormatError("not a list", role=role, field=where)
    if len(v) > limit:
        raise MetadataFormatError(f"more than {limit} entries", role=role, field=where)
    return v


def _b64(v: object, role: str, where: str) -> bytes:
    text = _str(v, role, where)
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError) as e:
        raise MetadataFormatError("invalid base64", role=role, field=where) from e


def _version(signed: dict[str, object], role: str) -> int:
    return _int(signed.get("version"), role, "version", 1)


def _hashes(v: object, role: str, where: str, *, require_sha256: bool) -> Mapping[str, bytes]:
    # notary data.CheckValidHashStructures: known algorithms must have the right size, at
    # least one known algorithm; snapshot/timestamp meta additionally require sha256.
    d = _dict(v, role, where, 16)
    out: dict[str, bytes] = {}
    for alg, val in d.items():
        if alg not in HASH_SIZES:
            continue
        digest = _b64(val, role, f"{where}.{alg}")
        if len(digest) != HASH_SIZES[alg]:
            raise MetadataFormatError(f"{alg} digest has the wrong size", role=role, field=where)
        out[alg] = digest
    if not out:
        raise MetadataFormatError("no supported hash (sha256/sha512)", role=role, field=where)
    if require_sha256 and "sha256" not in out:
        raise MetadataFormatError("sha256 hash required", role=role, field=where)
    return MappingProxyType(out)


def _meta_file(v: object, role: str, where: str) -> MetaFile:
    d = _dict(v, role, where, 16)
    length = _int(d.get("length"), role, f"{where}.length", 0)
    hashes = _hashes(d.get("hashes"), role, f"{where}.hashes", require_sha256=True)
    return MetaFile(length=length, hashes=hashes)


def _keys(v: object, role: str, where: str, limits: Limits) -> Mapping[str, PublicKey]:
    d = _dict(v, role, where, limits.max_keys)
    out: dict[str, PublicKey] = {}
    for key_id, kv in d.items():
        if not _KEY_ID.fullmatch(key_id):
            raise MetadataFormatError(f"bad key ID {key_id[:80]!r}", role=role, field=where)
        # The ID under which a key is listed is kept as is; a signature naming a key whose
        # content hashes to another ID is rejected when verifying (KeyIdMismatchError).
        out[key_id] = parse_key(
            kv,
            role=role,
            field=f"{where}.{key_id[:8]}",
            max_certificates=limits.max_certificates_per_key,
        )
    return MappingProxyType(out)


def _key_ids(v: object, role: str, where: str, limits: Limits) -> tuple[str, ...]:
    ids = _list(v, role, where, limits.max_keys)
    out = []
    for i, k in enumerate(ids):
        s = _str(k, role, f"{where}[{i}]")
        if not _KEY_ID.fullmatch(s):
            raise MetadataFormatError(f"bad key ID {s[:80]!r}", role=role, field=f"{where}[{i}]")
        out.append(s)
    return tuple(dict.fromkeys(out))


# --- roles -----------------------------------------------------------------------------


def parse_root(
    raw: bytes, *, role: str = "root", max_bytes: int | None = None, limits: Limits = DEFAULT_LIMITS
) -> Metadata[Root]:
    """Parse root metadata.

    Raises:
        OversizeMetadataError: ``raw`` is longer than ``max_bytes`` (default: the limit).
        MetadataFormatError, UnsupportedKeyError: the bytes are not a well-formed root.
    """
    cap = limits.max_root_bytes if max_bytes is None else max_bytes
    signed, sigs, msg = _envelope(raw, role, "root", cap, limits)
    keys = _keys(signed.get("keys"), role, "keys", limits)
    roles_in = _dict(signed.get("roles"), role, "roles", 16)
    roles: dict[str, Role] = {}
    for name in TOP_LEVEL_ROLES:
        r = _dict(roles_in.get(name), role, f"roles.{name}", 16)
        ids = _key_ids(r.get("keyids"), role, f"roles.{name}.keyids", limits)
        threshold = _int(r.get("threshold"), role, f"roles.{name}.threshold", 1)
        for k in ids:
            if k not in keys:
                raise MetadataFormatError(
                    f"key {k[:8]} is not in keys", role=role, field=f"roles.{name}.keyids"
                )
        roles[name] = Role(key_ids=ids, threshold=threshold)
    cs = signed.get("consistent_snapshot", False)
    if not isinstance(cs, bool):
        raise MetadataFormatError("not a boolean", role=role, field="consistent_snapshot")
    body = Root(
        version=_version(signed, role),
        expires=parse_expires(signed.get("expires"), role=role),
        keys=keys,
        roles=MappingProxyType(roles),
        consistent_snapshot=cs,
    )
    return Metadata(role=role, raw=bytes(raw), signed=body, signatures=sigs, message=msg)


def parse_timestamp(
    raw: bytes,
    *,
    role: str = "timestamp",
    max_bytes: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Metadata[Timestamp]:
    """Parse timestamp metadata.

    Raises:
        OversizeMetadataError, MetadataFormatError: see :func:`parse_root`.
    """
    cap = limits.max_timestamp_bytes if max_bytes is None else max_bytes
    signed, sigs, msg = _envelope(raw, role, "timestamp", cap, limits)
    meta = _dict(signed.get("meta"), role, "meta", 16)
    body = Timestamp(
        version=_version(signed, role),
        expires=parse_expires(signed.get("expires"), role=role),
        snapshot=_meta_file(meta.get("snapshot"), role, "meta.snapshot"),
    )
    return Metadata(role=role, raw=bytes(raw), signed=body, signatures=sigs, message=msg)


def parse_snapshot(
    raw: bytes,
    *,
    role: str = "snapshot",
    max_bytes: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Metadata[Snapshot]:
    """Parse snapshot metadata (``meta`` must list ``root`` and ``targets`` with sha256).

    Raises:
        OversizeMetadataError, MetadataFormatError: see :func:`parse_root`.
    """
    cap = limits.max_snapshot_bytes if max_bytes is None else max_bytes
    signed, sigs, msg = _envelope(raw, role, "snapshot", cap, limits)
    meta_in = _dict(signed.get("meta"), role, "meta", limits.max_meta)
    meta: dict[str, MetaFile] = {}
    for name, mf in meta_in.items():
        if name not in ("root", "targets") and not is_delegation_name(name):
            # notary ignores nothing here either: a snapshot only lists root/targets/delegations
            raise MetadataFormatError(f"unexpected role {name[:80]!r}", role=role, field="meta")
        meta[name] = _meta_file(mf, role, f"meta.{name}")
    for required in ("root", "targets"):
        if required not in meta:
            raise MetadataFormatError("missing", role=role, field=f"meta.{required}")
    body = Snapshot(
        version=_version(signed, role),
        expires=parse_expires(signed.get("expires"), role=role),
        meta=MappingProxyType(meta),
    )
    return Metadata(role=role, raw=bytes(raw), signed=body, signatures=sigs, message=msg)


def parse_targets(
    raw: bytes,
    *,
    role: str = "targets",
    max_bytes: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Metadata[Targets]:
    """Parse top-level or delegated targets metadata (``role`` names which one).

    Delegations it declares must be direct children of ``role`` (notary: ``path.Dir``).

    Raises:
        OversizeMetadataError, MetadataFormatError, UnsupportedKeyError: see :func:`parse_root`.
    """
    if role != "targets" and not is_delegation_name(role):
        raise MetadataFormatError(f"invalid role name {role[:80]!r}", role=role)
    cap = limits.max_targets_bytes if max_bytes is None else max_bytes
    with _collector_paused():
        signed, sigs, msg = _envelope(raw, role, "targets", cap, limits)
        targets_in = _dict(signed.get("targets"), role, "targets", limits.max_targets)
        targets = _target_files(targets_in, role)
    delegations = _delegations(signed.get("delegations"), role, limits)
    body = Targets(
        version=_version(signed, role),
        expires=parse_expires(signed.get("expires"), role=role),
        targets=MappingProxyType(targets),
        delegations=delegations,
    )
    return Metadata(role=role, raw=bytes(raw), signed=body, signatures=sigs, message=msg)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a role is parsed.

    A 10,000-tag role allocates some 60,000 containers (the parsed document, then the
    entries), none in a reference cycle. Each 700 allocations start a collection, and the
    older generations' ones walk every long-lived object of the process (a warm proxy holds
    many roles): on a 2-core machine that was a third of the median parse. Reference
    counting still frees everything; the collector resumes at the end (it was enabled, it
    is enabled again; if someone else turned it off, it stays off).
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _target_files(
    entries: dict[str, object],
    role: str,
    checked: Callable[[object, str, str], TargetFile] | None = None,
) -> dict[str, TargetFile]:
    """The target entries of a role, by name.

    A large role is mostly target entries, so the common, valid shape is checked inline, with
    no Python call per entry: exactly the rules of :func:`_target_file`, building the same
    value. Whatever it does not accept goes to ``checked`` (default :func:`_target_file`),
    which decides and names the field when it refuses.
    """
    slow = _target_file if checked is None else checked
    new = tuple.__new__  # TargetFile(...) and _make are Python calls, ~1 µs a target
    a2b = binascii.a2b_base64
    sizes = HASH_SIZES
    out: dict[str, TargetFile] = {}
    for name, tf in entries.items():
        if type(tf) is dict and len(tf) <= 16:
            length = tf.get("length")
            hashes = tf.get("hashes")
            if (
                type(length) is int
                and 0 <= length <= MAX_SAFE_INT
                and type(hashes) is dict
                and len(hashes) <= 16
            ):
                digests: dict[str, bytes] = {}
                for alg, val in hashes.items():
                    size = sizes.get(alg)
                    if size is None:
                        continue
                    if type(val) is not str:
                        break
                    try:
                        digest = a2b(val, strict_mode=True)
                    except (binascii.Error, ValueError):
                        break
                    if len(digest) != size:
                        break
                    digests[alg] = digest
                else:
                    if digests:
                        out[name] = new(
                            TargetFile, (length, MappingProxyType(digests), tf.get("custom"))
                        )
                        continue
        out[name] = slow(tf, role, name)
    return out


def _target_file(tf: object, role: str, name: str) -> TargetFile:
    where = f"targets[{name[:80]!r}]"
    d = _dict(tf, role, where, 16)
    return TargetFile(
        length=_int(d.get("length"), role, f"{where}.length", 0),
        hashes=_hashes(d.get("hashes"), role, f"{where}.hashes", require_sha256=False),
        custom=d.get("custom"),
    )


def _delegations(v: object, role: str, limits: Limits) -> Delegations:
    if v is None:  # notary always writes it; tolerate absence as "no delegations"
        return Delegations(keys=MappingProxyType({}), roles=())
    d = _dict(v, role, "delegations", 16)
    keys = _keys(d.get("keys", {}), role, "delegations.keys", limits)
    roles_in = _list(d.get("roles", []), role, "delegations.roles", limits.max_delegations)
    roles: list[DelegatedRole] = []
    seen: set[str] = set()
    for i, r in enumerate(roles_in):
        where = f"delegations.roles[{i}]"
        rd = _dict(r, role, where, 16)
        name = _str(rd.get("name"), role, f"{where}.name")
        if not is_delegation_name(name) or posixpath.dirname(name) != role:
            raise MetadataFormatError(
                f"{name[:80]!r} is not a delegation of {role}", role=role, field=f"{where}.name"
            )
        if name in seen:
            raise MetadataFormatError(f"duplicate role {name!r}", role=role, field=f"{where}.name")
        seen.add(name)
        ids = _key_ids(rd.get("keyids"), role, f"{where}.keyids", limits)
        threshold = _int(rd.get("threshold"), role, f"{where}.threshold", 1)
        paths_in = _list(rd.get("paths", []), role, f"{where}.paths", limits.max_paths)
        paths = tuple(_str(p, role, f"{where}.paths[{j}]") for j, p in enumerate(paths_in))
        if "path_hash_prefixes" in rd:
            # notary 0.7 no longer supports them; refusing beats silently widening the role
            raise MetadataFormatError(
                "path_hash_prefixes is not supported", role=role, field=f"{where}"
            )
        roles.append(DelegatedRole(name=name, key_ids=ids, threshold=threshold, paths=paths))
    return Delegations(keys=keys, roles=tuple(roles))
