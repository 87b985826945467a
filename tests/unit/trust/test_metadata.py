"""Parsing: every malformed input is a typed error naming the role and the field."""

from __future__ import annotations

import base64
import copy
import gc
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from unittest import mock

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from proxy.sources.notary.tuf import metadata
from proxy.sources.notary.tuf.errors import (
    MetadataFormatError,
    OversizeMetadataError,
    TrustDataError,
    UnsupportedKeyError,
)
from proxy.sources.notary.tuf.metadata import (
    Limits,
    is_delegation_name,
    parse_expires,
    parse_root,
    parse_snapshot,
    parse_targets,
    parse_timestamp,
)
from tests.simulators.notary_repo import NotaryRepository

REPO = NotaryRepository()
REPO.add_target("v1", b"manifest")
REPO.add_delegation("targets/releases")
REPO.publish()
DOCS = {
    role: json.loads(REPO.current[role]) for role in ("root", "targets", "snapshot", "timestamp")
}
PARSERS: dict[str, Callable[..., object]] = {
    "root": parse_root,
    "targets": parse_targets,
    "snapshot": parse_snapshot,
    "timestamp": parse_timestamp,
}

Mut = Callable[[dict[str, Any]], None]


def _set(path: str, value: object) -> Mut:
    def mut(doc: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        node: Any = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if value is _DELETE:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mut


_DELETE = object()
ROOT_KEY = next(iter(DOCS["root"]["signed"]["roles"]["root"]["keyids"]))

CASES: list[tuple[str, str, Mut, type[TrustDataError], str]] = [
    # (id, role, mutation, error, field)
    ("type-wrong", "root", _set("signed/_type", "root"), MetadataFormatError, "_type"),
    ("type-targets-as-root", "root", _set("signed/_type", "Targets"), MetadataFormatError, "_type"),
    ("signed-missing", "timestamp", _set("signed", _DELETE), MetadataFormatError, "signed"),
    ("signatures-not-list", "timestamp", _set("signatures", {}), MetadataFormatError, "signatures"),
    (
        "sig-not-b64",
        "timestamp",
        _set("signatures/0/sig", "***"),
        MetadataFormatError,
        "signatures[0].sig",
    ),
    (
        "keyid-int",
        "timestamp",
        _set("signatures/0/keyid", 1),
        MetadataFormatError,
        "signatures[0].keyid",
    ),
    (
        "version-missing",
        "snapshot",
        _set("signed/version", _DELETE),
        MetadataFormatError,
        "version",
    ),
    ("version-zero", "snapshot", _set("signed/version", 0), MetadataFormatError, "version"),
    ("version-bool", "snapshot", _set("signed/version", True), MetadataFormatError, "version"),
    ("version-string", "targets", _set("signed/version", "3"), MetadataFormatError, "version"),
    ("expires-bad", "targets", _set("signed/expires", "tomorrow"), MetadataFormatError, "expires"),
    (
        "expires-no-tz",
        "targets",
        _set("signed/expires", "2030-01-01T00:00:00"),
        MetadataFormatError,
        "expires",
    ),
    (
        "expires-bad-date",
        "targets",
        _set("signed/expires", "2030-02-30T00:00:00Z"),
        MetadataFormatError,
        "expires",
    ),
    (
        "ts-no-snapshot",
        "timestamp",
        _set("signed/meta/snapshot", _DELETE),
        MetadataFormatError,
        "meta.snapshot",
    ),
    (
        "ts-length-neg",
        "timestamp",
        _set("signed/meta/snapshot/length", -1),
        MetadataFormatError,
        "meta.snapshot.length",
    ),
    (
        "ts-no-sha256",
        "timestamp",
        _set("signed/meta/snapshot/hashes/sha256", _DELETE),
        MetadataFormatError,
        "meta.snapshot.hashes",
    ),
    (
        "ts-short-hash",
        "timestamp",
        _set("signed/meta/snapshot/hashes/sha256", "AAAA"),
        MetadataFormatError,
        "meta.snapshot.hashes",
    ),
    (
        "snap-no-targets",
        "snapshot",
        _set("signed/meta/targets", _DELETE),
        MetadataFormatError,
        "meta.targets",
    ),
    ("snap-odd-role", "snapshot", _set("signed/meta/timestamp", {}), MetadataFormatError, "meta"),
    (
        "root-no-timestamp-role",
        "root",
        _set("signed/roles/timestamp", _DELETE),
        MetadataFormatError,
        "roles.timestamp",
    ),
    (
        "root-threshold-zero",
        "root",
        _set("signed/roles/root/threshold", 0),
        MetadataFormatError,
        "roles.root.threshold",
    ),
    (
        "root-unknown-keyid",
        "root",
        _set("signed/roles/targets/keyids", ["ab" * 32]),
        MetadataFormatError,
        "roles.targets.keyids",
    ),
    (
        "root-bad-keyid",
        "root",
        _set("signed/roles/targets/keyids", ["xyz"]),
        MetadataFormatError,
        "roles.targets.keyids[0]",
    ),
    (
        "root-key-type",
        "root",
        _set(f"signed/keys/{ROOT_KEY}/keytype", "ecdsa-sha2-nistp256"),
        UnsupportedKeyError,
        f"keys.{ROOT_KEY[:8]}.keytype",
    ),
    (
        "root-cs-string",
        "root",
        _set("signed/consistent_snapshot", "no"),
        MetadataFormatError,
        "consistent_snapshot",
    ),
    ("targets-not-object", "targets", _set("signed/targets", []), MetadataFormatError, "targets"),
    (
        "target-no-length",
        "targets",
        _set("signed/targets/v1/length", _DELETE),
        MetadataFormatError,
        "targets['v1'].length",
    ),
    (
        "target-unknown-hash-only",
        "targets",
        _set("signed/targets/v1/hashes", {"md5": "AAAA"}),
        MetadataFormatError,
        "targets['v1'].hashes",
    ),
    (
        "deleg-not-child",
        "targets",
        _set("signed/delegations/roles/0/name", "targets/a/b"),
        MetadataFormatError,
        "delegations.roles[0].name",
    ),
    (
        "deleg-uppercase",
        "targets",
        _set("signed/delegations/roles/0/name", "targets/Releases"),
        MetadataFormatError,
        "delegations.roles[0].name",
    ),
    (
        "deleg-dotdot",
        "targets",
        _set("signed/delegations/roles/0/name", "targets/.."),
        MetadataFormatError,
        "delegations.roles[0].name",
    ),
    (
        "deleg-threshold",
        "targets",
        _set("signed/delegations/roles/0/threshold", 0),
        MetadataFormatError,
        "delegations.roles[0].threshold",
    ),
    (
        "deleg-paths-int",
        "targets",
        _set("signed/delegations/roles/0/paths", [1]),
        MetadataFormatError,
        "delegations.roles[0].paths[0]",
    ),
    (
        "deleg-hash-prefixes",
        "targets",
        _set("signed/delegations/roles/0/path_hash_prefixes", ["ab"]),
        MetadataFormatError,
        "delegations.roles[0]",
    ),
]


@pytest.mark.parametrize(
    ("role", "mutate", "error", "field"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_bad_documents(role: str, mutate: Mut, error: type[TrustDataError], field: str) -> None:
    doc = copy.deepcopy(DOCS[role])
    mutate(doc)
    raw = json.dumps(doc).encode()
    with pytest.raises(error) as info:
        PARSERS[role](raw)
    assert info.value.role == role
    assert info.value.field == field


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'{"signed": {"_type": "Timestamp"}, "signed": {}}',
        b'{"signed": {"version": 1.0}}',
        b'{"signed": NaN}',
        b"\xff\xfe",
        b"[" * 100_000,
    ],
    ids=["empty", "garbage", "array", "duplicate-key", "float", "nan", "not-utf8", "deep-nesting"],
)
def test_not_json(raw: bytes) -> None:
    with pytest.raises(MetadataFormatError) as info:
        parse_timestamp(raw, max_bytes=1 << 20)
    assert info.value.role == "timestamp"


def _deep_timestamp(levels: int) -> bytes:
    # An escaped string sends canonical encoding down its recursive (slow) path.
    inner = b"[" * levels + b"]" * levels
    return b'{"signed":{"_type":"Timestamp","e":"a\\nb","deep":' + inner + b'},"signatures":[]}'


def _at_stack_depth(frames: int, call: Callable[[], object]) -> object:
    return call() if frames == 0 else _at_stack_depth(frames - 1, call)


@pytest.mark.parametrize("levels", [300, 500, 800, 950, 5000])
@pytest.mark.parametrize("frames", [0, 150, 400])
def test_deep_nesting_is_malformed_at_any_stack_depth(levels: int, frames: int) -> None:
    """Found by the hostile trust server suite: 500 levels inside ``signed`` with one escaped
    string parsed fine, then the canonical encoder hit the recursion limit (a 500)."""
    raw = _deep_timestamp(levels)
    with pytest.raises(MetadataFormatError) as info:
        _at_stack_depth(frames, lambda: parse_timestamp(raw, max_bytes=1 << 20))
    assert info.value.role == "timestamp"


def test_oversize_is_refused_before_parsing() -> None:
    raw = REPO.current["targets"]
    with pytest.raises(OversizeMetadataError):
        parse_targets(raw, max_bytes=len(raw) - 1)
    parse_targets(raw, max_bytes=len(raw))


def test_count_limits() -> None:
    limits = Limits(max_targets=0)
    with pytest.raises(MetadataFormatError) as info:
        parse_targets(REPO.current["targets"], limits=limits)
    assert info.value.field == "targets"
    with pytest.raises(MetadataFormatError) as info:
        parse_timestamp(REPO.current["timestamp"], limits=Limits(max_signatures=0))
    assert info.value.field == "signatures"


def test_delegated_role_name_checked() -> None:
    with pytest.raises(MetadataFormatError):
        parse_targets(REPO.current["targets/releases"], role="targets/../root")


def test_valid_documents_parse() -> None:
    ts = parse_timestamp(REPO.current["timestamp"])
    assert ts.signed.snapshot.length == len(REPO.current["snapshot"])
    targets = parse_targets(REPO.current["targets"])
    assert targets.signed.targets["v1"].length == len(b"manifest")
    assert targets.signed.delegations.roles[0].name == "targets/releases"
    assert targets.signed.delegations.roles[0].allows("anything")
    snap = parse_snapshot(REPO.current["snapshot"])
    assert set(snap.signed.meta) == {"root", "targets", "targets/releases"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2036-11-19T04:56:06.209125639Z", datetime(2036, 11, 19, 4, 56, 6, 209125, tzinfo=UTC)),
        (
            "2116-01-11T16:58:57.119711158-08:00",
            datetime(2116, 1, 12, 0, 58, 57, 119711, tzinfo=UTC),
        ),
        (
            "2999-08-26T14:12:13.21926558+02:00",
            datetime(2999, 8, 26, 12, 12, 13, 219265, tzinfo=UTC),
        ),
        ("2030-01-01T00:00:00Z", datetime(2030, 1, 1, tzinfo=UTC)),
    ],
    ids=["nanos-z", "negative-offset", "8-digit-positive-offset", "no-fraction"],
)
def test_parse_expires(text: str, expected: datetime) -> None:
    assert parse_expires(text) == expected


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("targets/releases", True),
        ("targets/a/b-c_1", True),
        ("targets", False),
        ("targets/", False),
        ("targets//x", False),
        ("targets/x/..", False),
        ("targets/X", False),
        ("root/x", False),
        ("targets/" + "a" * 250, False),
    ],
)
def test_delegation_names(name: str, ok: bool) -> None:
    assert is_delegation_name(name) is ok


# --- the fast path for target entries decides exactly as the checked path -----------------

_B64_32 = base64.b64encode(b"\x01" * 32).decode()
_B64_64 = base64.b64encode(b"\x02" * 64).decode()
_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.sampled_from([_B64_32, _B64_64, "", "!!", _B64_32 + "=", "AAAA"]),
    st.text(max_size=8),
)
_hash_map = st.dictionaries(
    st.sampled_from(["sha256", "sha512", "md5", "SHA256"]), _json_leaf, max_size=4
)
_entry = st.one_of(
    _json_leaf,
    st.lists(_json_leaf, max_size=3),
    st.fixed_dictionaries(
        {},
        optional={
            "length": _json_leaf,
            "hashes": st.one_of(_hash_map, _json_leaf),
            "custom": _json_leaf,
        },
    ),
    st.dictionaries(st.text(max_size=3), _json_leaf, min_size=17, max_size=18),
)


@given(_entry)
@example({"length": 5, "hashes": {"sha256": _B64_32}})
@example({"length": True, "hashes": {"sha256": _B64_32}})
@example({"length": 2**53 + 1, "hashes": {"sha256": _B64_32}})
@example({"length": 1, "hashes": {"md5": _B64_32}})
@example({"length": 1, "hashes": {"sha256": _B64_64}})
@example({"length": 1, "hashes": {"sha512": _B64_64, "sha256": 7}})
# each bound of the checked path, just outside it, with everything else valid
@example({"length": -1, "hashes": {"sha256": _B64_32}})
@example({"length": 0, "hashes": {"sha256": _B64_32}})
@example({"length": 1, "hashes": {"sha256": "AAAA"}})
@example({"length": 1, "hashes": {"sha256": _B64_32[:-2] + "=="}})
@example({"length": 1, "hashes": {"sha256": _B64_32 + "="}})
@example({"length": 1, "hashes": {"sha256": _B64_32, "sha512": _B64_32}})
@example({"length": 1, "hashes": {"sha256": _B64_32, **{f"x{i}": 0 for i in range(16)}}})
@example({"length": 1, "hashes": {"sha256": _B64_32, **{f"x{i}": 0 for i in range(15)}}})
@example({"length": 1, "hashes": {"md5": _B64_32, "sha1": _B64_32}})
@example({"length": 1, "hashes": {}})
@example({"length": 1, "hashes": {"sha256": _B64_32}, **{f"x{i}": 0 for i in range(14)}})
@example({"length": 1, "hashes": {"sha256": _B64_32}, **{f"x{i}": 0 for i in range(15)}})
@example({"hashes": {"sha256": _B64_32}})
@example({"length": 1})
@example({"length": 1, "hashes": [_B64_32]})
@example({"length": "1", "hashes": {"sha256": _B64_32}})
def test_fast_target_entry_matches_the_checked_path(entry: object) -> None:
    try:
        checked = metadata._target_file(entry, "targets", "v1")
    except MetadataFormatError:
        # the inline path must not accept it: it reaches the checked path, which refuses
        with pytest.raises(MetadataFormatError):
            metadata._target_files({"v1": entry}, "targets")
    else:
        # every valid entry is taken inline (no checked path), built as the checked path does
        fast = metadata._target_files({"v1": entry}, "targets", checked=_no_checked_path)["v1"]
        assert fast == checked
        assert dict(fast.hashes) == dict(checked.hashes)
        assert type(fast) is metadata.TargetFile


class _CheckedPathTaken(Exception):
    pass


def _no_checked_path(tf: object, role: str, name: str) -> metadata.TargetFile:
    raise _CheckedPathTaken(name)


def test_the_common_target_entry_takes_the_fast_path() -> None:
    entry = {"length": 5, "hashes": {"sha256": _B64_32, "sha512": _B64_64}, "custom": None}
    fast = metadata._target_files({"v1": entry}, "targets", checked=_no_checked_path)
    assert fast["v1"] == metadata._target_file(entry, "targets", "v1")
    assert type(fast["v1"]) is metadata.TargetFile


# --- the collector is paused while a targets role is parsed, and left as it was -----------


@pytest.mark.parametrize("enabled", [True, False])
@pytest.mark.parametrize("raw", [REPO.current["targets"], b"{}"], ids=["valid", "refused"])
def test_parse_targets_leaves_the_collector_as_it_was(enabled: bool, raw: bytes) -> None:
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    seen: list[bool] = []
    real = metadata._target_files

    def spy(entries: dict[str, object], role: str) -> dict[str, metadata.TargetFile]:
        seen.append(gc.isenabled())
        return real(entries, role)

    try:
        with mock.patch.object(metadata, "_target_files", spy):
            try:
                parse_targets(raw)
            except MetadataFormatError:
                assert raw == b"{}"
        assert gc.isenabled() is enabled
        assert seen == ([] if raw == b"{}" else [False])
    finally:
        (gc.enable if was else gc.disable)()
