"""Trust snapshots: what trustproxy verified, signed by the operator (pure core).

A snapshot is a DSSE envelope (https://github.com/secure-systems-lab/dsse, v1.0)::

    {"payloadType": "application/vnd.in-toto+json",
     "payload": "<base64 of the statement>",
     "signatures": [{"keyid": "<hex sha256 of the signer's SPKI DER>", "sig": "<base64>"}]}

The signature is over DSSE's PAE (``"DSSEv1" SP len(type) SP type SP len(body) SP body``),
ECDSA P-256 with sha256 (DER) or ed25519. The payload is an in-toto Statement v1 whose
predicate (:data:`PREDICATE_TYPE`) carries, per repository and tag, what the proxy verified::

    {"_type": "https://in-toto.io/Statement/v1",
     "subject": [{"name": "<registry>/<repo>:<tag>", "digest": {"sha256": "<hex>"}}, ...],
     "predicateType": "urn:trustproxy:trust-snapshot:v1",
     "predicate": {
       "created": "2026-12-01T10:00:00Z",
       "registries": ["registry.example.com"],
       "repositories": {
         "registry.example.com/team/app": {
           "source": "notary", "source_type": "notary",
           "verified_at": "2026-12-01T10:00:00Z", "evidence": {...},
           "tags": {"v1": {"digest": "sha256:<hex>", "length": 1234,
                           "signers": ["targets/releases"], "evidence": {...},
                           "verified_at": "2026-12-01T10:00:00Z"}},
           "digests": ["sha256:<hex>"]}}}}

``subject`` lists exactly the tags of ``predicate.repositories`` (tools that read only the
subjects see the same facts); anything else refuses the whole snapshot. Whatever is
malformed, unsigned, signed by no pinned key or names a registry it may not speak for is a
:class:`SnapshotError`: nothing of it is used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Final

from proxy.errors import InvalidDigestError, TrustDataError
from proxy.reference import validate_digest
from proxy.sources.static.snapshot_keys import SigningKey, SnapshotSignatureError, VerifyingKey

__all__ = [
    "MAX_SNAPSHOT_BYTES",
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "Snapshot",
    "SnapshotError",
    "SnapshotRegistryError",
    "SnapshotRepository",
    "SnapshotTag",
    "pae",
    "parse_snapshot",
    "repository_registry",
    "sign_snapshot",
    "statement_bytes",
    "verify_snapshot",
]

MAX_SNAPSHOT_BYTES: Final = 64 * 1024 * 1024
PAYLOAD_TYPE: Final = "application/vnd.in-toto+json"
STATEMENT_TYPE: Final = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE: Final = "urn:trustproxy:trust-snapshot:v1"
MAX_SIGNATURES: Final = 16
#: A snapshot dated later than this past the verifier's clock is refused: a clock that far
#: off is a mistake worth hearing about, and "created" must mean something.
MAX_CLOCK_SKEW: Final = timedelta(minutes=5)

_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")  # the distribution spec's tag
_REPO = re.compile(
    r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)+\Z"
)
_KEYID = re.compile(r"^[0-9a-f]{64}\Z")
_PREDICATE_KEYS = {"created", "registries", "repositories"}
_REPO_KEYS = {"source", "source_type", "verified_at", "evidence", "tags", "digests", "stale"}
_TAG_KEYS = {"digest", "length", "signers", "evidence", "verified_at"}


class SnapshotError(TrustDataError):
    """The snapshot is refused (malformed, tampered, not signed by a pinned key)."""


class SnapshotRegistryError(SnapshotError):
    """The snapshot speaks for a registry the source was not configured for."""


@dataclass(frozen=True)
class SnapshotTag:
    """One tag as the snapshot vouches for it (the shared answer shape,
    :class:`proxy.sources.base.SignedAnswer`)."""

    tag: str
    digest: str
    length: int | None
    #: who signed it at the original source, as that source named them
    signers: tuple[str, ...]
    verified_at: str
    #: for the audit record, under one key (``snapshot``: the statement's digest, the
    #: original source, when it verified, its evidence), so that the original source's
    #: evidence keys are never read as a live answer's
    evidence: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class SnapshotRepository:
    repository: str
    source: str
    source_type: str
    verified_at: str
    evidence: Mapping[str, Any]
    tags: Mapping[str, SnapshotTag]
    digests: frozenset[str]
    stale: bool = False


@dataclass(frozen=True)
class Snapshot:
    created: datetime
    registries: tuple[str, ...]
    repositories: Mapping[str, SnapshotRepository]
    #: ``sha256:<hex>`` of the statement (the payload): the identity of this trust state
    statement_digest: str
    #: the pinned keys whose signatures verified (empty when parsed without keys)
    signed_by: tuple[str, ...] = ()

    @property
    def tag_count(self) -> int:
        return sum(len(r.tags) for r in self.repositories.values())


# --------------------------------------------------------------------------- writing


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what is signed."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def repository_registry(repository: str) -> str:
    """``registry.example.com:5000/team/app`` -> ``registry.example.com:5000``."""
    return repository.split("/", 1)[0]


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def statement_bytes(repositories: Sequence[SnapshotRepository], created: datetime) -> bytes:
    """The in-toto statement for ``repositories`` (canonical JSON: sorted keys, no spaces)."""
    repos: dict[str, Any] = {}
    subjects = []
    for r in sorted(repositories, key=lambda r: r.repository):
        tags = {}
        for name, t in sorted(r.tags.items()):
            tags[name] = {
                "digest": t.digest,
                "length": t.length,
                "signers": list(t.signers),
                "evidence": dict(t.evidence),
                "verified_at": t.verified_at,
            }
            algo, _, hexdigest = t.digest.partition(":")
            subjects.append({"name": f"{r.repository}:{name}", "digest": {algo: hexdigest}})
        repos[r.repository] = {
            "source": r.source,
            "source_type": r.source_type,
            "verified_at": r.verified_at,
            "evidence": dict(r.evidence),
            "stale": r.stale,
            "tags": tags,
            "digests": sorted(r.digests),
        }
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "created": _rfc3339(created),
            "registries": sorted({repository_registry(r) for r in repos}),
            "repositories": repos,
        },
    }
    return _canonical(statement)


def sign_snapshot(statement: bytes, key: SigningKey) -> bytes:
    """The DSSE envelope of ``statement`` signed by ``key`` (JSON, indented for people)."""
    envelope = {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(statement).decode("ascii"),
        "signatures": [
            {
                "keyid": key.public.key_id,
                "sig": base64.b64encode(key.sign(pae(PAYLOAD_TYPE, statement))).decode("ascii"),
            }
        ],
    }
    return json.dumps(envelope, indent=2).encode() + b"\n"


# --------------------------------------------------------------------------- reading


def verify_snapshot(
    data: bytes,
    keys: Sequence[VerifyingKey],
    *,
    now: datetime,
    registries: Collection[str] | None,
    name: str = "snapshot",
) -> Snapshot:
    """The snapshot in ``data`` when a signature of one of ``keys`` verifies over it and it
    speaks only for ``registries`` (None: any). ``now``: the verifier's clock.

    Raises:
        SnapshotError: malformed, unsigned, no pinned key's signature verifies, dated in the
            future (:class:`SnapshotRegistryError`: a repository of another registry).
    """
    if not keys:
        raise SnapshotError(f"{name}: no keys to verify it with (pin at least one)")
    payload_type, payload, signatures = _envelope(data, name)
    message = pae(payload_type, payload)
    signed_by: list[str] = []
    seen: list[str] = []
    for keyid, sig in signatures:
        seen.append(keyid or "(no keyid)")
        for key in keys:
            if keyid and keyid != key.key_id:
                continue  # DSSE: keyid is a hint; without one every pinned key is tried
            try:
                key.verify(sig, message)
            except SnapshotSignatureError:
                continue
            if key.key_id not in signed_by:
                signed_by.append(key.key_id)
    if not signed_by:
        pinned = {k.key_id for k in keys}
        named = [s for s in seen if s in pinned]
        if named:
            raise SnapshotError(
                f"{name}: the signature by pinned key {named[0][:16]} does not verify: "
                "tampered (changed after it was signed)"
            )
        raise SnapshotError(
            f"{name}: not signed by a pinned key (signed by {', '.join(s[:16] for s in seen)}; "
            f"pinned: {', '.join(sorted(k[:16] for k in pinned))})"
        )
    snap = _statement(payload, name)
    if snap.created > now + MAX_CLOCK_SKEW:
        raise SnapshotError(f"{name}: created {_rfc3339(snap.created)}, in the future")
    if registries is not None:
        allowed = set(registries)
        other = sorted({repository_registry(r) for r in snap.repositories} - allowed) or sorted(
            set(snap.registries) - allowed
        )
        if other:
            raise SnapshotRegistryError(
                f"{name}: a snapshot of {', '.join(other)}, not of "
                f"{', '.join(sorted(allowed)) or 'no registry'} (this source's registries)"
            )
    return Snapshot(snap.created, snap.registries, snap.repositories, snap.statement_digest,
                    tuple(signed_by))  # fmt: skip


def parse_snapshot(data: bytes, *, name: str = "snapshot") -> Snapshot:
    """The statement of an envelope, signatures NOT checked (for ``inspect`` without keys).
    Raises SnapshotError."""
    _, payload, _ = _envelope(data, name)
    return _statement(payload, name)


def _strict_json(data: bytes, what: str) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise SnapshotError(f"{what}: duplicate key {k!r}")
            out[k] = v
        return out

    def no_constant(c: str) -> Any:
        raise SnapshotError(f"{what}: {c} is not JSON")

    try:
        return json.loads(
            data.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=no_constant
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise SnapshotError(f"{what}: not JSON: {e}") from e


def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise SnapshotError(f"{where}: not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise SnapshotError(f"{where}: not base64: {e}") from e


def _envelope(data: bytes, name: str) -> tuple[str, bytes, list[tuple[str, bytes]]]:
    if len(data) > MAX_SNAPSHOT_BYTES:
        raise SnapshotError(f"{name}: larger than {MAX_SNAPSHOT_BYTES} bytes")
    doc = _strict_json(data, name)
    if not isinstance(doc, dict) or not {"payloadType", "payload"} <= set(doc):
        raise SnapshotError(f"{name}: not a DSSE envelope (payloadType, payload, signatures)")
    if set(doc) - {"payloadType", "payload", "signatures"}:
        extra = sorted(set(doc) - {"payloadType", "payload", "signatures"})
        raise SnapshotError(f"{name}: unknown envelope keys {extra}")
    if doc["payloadType"] != PAYLOAD_TYPE:
        raise SnapshotError(f"{name}: payloadType {doc['payloadType']!r}, expected {PAYLOAD_TYPE}")
    payload = _b64(doc["payload"], f"{name}: payload")
    raw_sigs = doc.get("signatures")
    if not raw_sigs:
        raise SnapshotError(f"{name}: unsigned (no signatures)")
    if not isinstance(raw_sigs, list) or len(raw_sigs) > MAX_SIGNATURES:
        raise SnapshotError(f"{name}: signatures: a list of at most {MAX_SIGNATURES}")
    sigs: list[tuple[str, bytes]] = []
    for i, s in enumerate(raw_sigs):
        where = f"{name}: signatures[{i}]"
        if not isinstance(s, dict) or "sig" not in s or set(s) - {"keyid", "sig"}:
            raise SnapshotError(f"{where}: a mapping of keyid and sig")
        keyid = s.get("keyid") or ""
        if not isinstance(keyid, str) or (keyid and not _KEYID.match(keyid)):
            raise SnapshotError(f"{where}.keyid: not a key ID (64 hex digits): {keyid!r}")
        sigs.append((keyid, _b64(s["sig"], f"{where}.sig")))
    return doc["payloadType"], payload, sigs


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time(value: Any, where: str) -> datetime:
    if not isinstance(value, str):
        raise SnapshotError(f"{where}: not a time: {value!r}")
    try:
        t = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError as e:
        raise SnapshotError(f"{where}: not a UTC time (YYYY-MM-DDThh:mm:ssZ): {value!r}") from e
    return t.replace(tzinfo=UTC)


def _digest(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise SnapshotError(f"{where}: not a digest: {value!r}")
    try:
        validate_digest(value)
    except InvalidDigestError as e:
        raise SnapshotError(f"{where}: not a digest: {value!r}") from e
    if not value.startswith("sha256:"):
        raise SnapshotError(f"{where}: only sha256 digests: {value!r}")
    return value


def _mapping(value: Any, where: str, keys: set[str], required: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SnapshotError(f"{where}: a mapping")
    if set(value) - keys:
        raise SnapshotError(f"{where}: unknown keys {sorted(set(value) - keys)}")
    if required - set(value):
        raise SnapshotError(f"{where}: missing {sorted(required - set(value))}")
    return value


def _statement(payload: bytes, name: str) -> Snapshot:
    statement_digest = "sha256:" + hashlib.sha256(payload).hexdigest()
    doc = _mapping(_strict_json(payload, f"{name}: payload"), f"{name}: statement",
                   {"_type", "subject", "predicateType", "predicate"},
                   {"_type", "subject", "predicateType", "predicate"})  # fmt: skip
    if doc["_type"] != STATEMENT_TYPE:
        raise SnapshotError(f"{name}: statement _type {doc['_type']!r}, expected {STATEMENT_TYPE}")
    if doc["predicateType"] != PREDICATE_TYPE:
        raise SnapshotError(
            f"{name}: predicateType {doc['predicateType']!r}, expected {PREDICATE_TYPE}"
        )
    where = f"{name}: predicate"
    pred = _mapping(doc["predicate"], where, _PREDICATE_KEYS, _PREDICATE_KEYS)
    created = _time(pred["created"], f"{where}.created")
    regs = pred["registries"]
    if not isinstance(regs, list) or not all(isinstance(r, str) and r for r in regs):
        raise SnapshotError(f"{where}.registries: a list of registry names")
    repos_raw = pred["repositories"]
    if not isinstance(repos_raw, dict):
        raise SnapshotError(f"{where}.repositories: a mapping")
    repos: dict[str, SnapshotRepository] = {}
    expected_subjects: set[tuple[str, str]] = set()
    for repo, body in repos_raw.items():
        rw = f"{where}.repositories[{repo!r}]"
        if not _REPO.match(repo):
            raise SnapshotError(f"{rw}: not a repository name (<registry>/<path>)")
        if repository_registry(repo) not in regs:
            raise SnapshotError(f"{rw}: its registry is not in predicate.registries")
        b = _mapping(body, rw, _REPO_KEYS, {"source", "verified_at", "tags"})
        source = b["source"]
        source_type = b.get("source_type", "")
        if not isinstance(source, str) or not isinstance(source_type, str):
            raise SnapshotError(f"{rw}.source: text")
        repo_evidence = b.get("evidence") or {}
        if not isinstance(repo_evidence, dict):
            raise SnapshotError(f"{rw}.evidence: a mapping")
        stale = b.get("stale", False)
        if not isinstance(stale, bool):
            raise SnapshotError(f"{rw}.stale: true or false")
        verified_at = _rfc3339(_time(b["verified_at"], f"{rw}.verified_at"))
        tags_raw = b["tags"]
        if not isinstance(tags_raw, dict):
            raise SnapshotError(f"{rw}.tags: a mapping")
        digests_raw = b.get("digests") or []
        if not isinstance(digests_raw, list):
            raise SnapshotError(f"{rw}.digests: a list")
        digests = frozenset(_digest(d, f"{rw}.digests[{i}]") for i, d in enumerate(digests_raw))
        tags: dict[str, SnapshotTag] = {}
        for tag, tb in tags_raw.items():
            tw = f"{rw}.tags[{tag!r}]"
            if not _TAG.match(tag):
                raise SnapshotError(f"{tw}: not a tag")
            t = _mapping(tb, tw, _TAG_KEYS, {"digest", "signers", "verified_at"})
            digest = _digest(t["digest"], f"{tw}.digest")
            length = t.get("length")
            if length is not None and (
                isinstance(length, bool) or not isinstance(length, int) or length < 0
            ):
                raise SnapshotError(f"{tw}.length: not a length: {length!r}")
            signers = t["signers"]
            if not isinstance(signers, list) or not all(isinstance(s, str) for s in signers):
                raise SnapshotError(f"{tw}.signers: a list of names")
            tag_evidence = t.get("evidence") or {}
            if not isinstance(tag_evidence, dict):
                raise SnapshotError(f"{tw}.evidence: a mapping")
            tag_verified = _rfc3339(_time(t["verified_at"], f"{tw}.verified_at"))
            tags[tag] = SnapshotTag(
                tag, digest, length, tuple(signers), tag_verified,
                MappingProxyType({"snapshot": {
                    "digest": statement_digest, "source": source, "source_type": source_type,
                    "verified_at": tag_verified, "evidence": {**repo_evidence, **tag_evidence},
                }}),
            )  # fmt: skip
            expected_subjects.add((f"{repo}:{tag}", digest))
        repos[repo] = SnapshotRepository(
            repo, source, source_type, verified_at, MappingProxyType(dict(repo_evidence)),
            MappingProxyType(tags), digests, stale,
        )  # fmt: skip
    subjects = doc["subject"]
    if not isinstance(subjects, list):
        raise SnapshotError(f"{name}: subject: a list")
    seen: set[tuple[str, str]] = set()
    for i, s in enumerate(subjects):
        sw = f"{name}: subject[{i}]"
        s = _mapping(s, sw, {"name", "digest"}, {"name", "digest"})
        d = s["digest"]
        if not isinstance(s["name"], str) or not isinstance(d, dict) or set(d) != {"sha256"}:
            raise SnapshotError(f"{sw}: a name and a sha256 digest")
        seen.add((s["name"], _digest(f"sha256:{d['sha256']}", f"{sw}.digest")))
    if seen != expected_subjects or len(subjects) != len(seen):
        raise SnapshotError(f"{name}: subject does not list exactly the tags of the predicate")
    return Snapshot(
        created=created,
        registries=tuple(regs),
        repositories=MappingProxyType(repos),
        statement_digest=statement_digest,
    )
