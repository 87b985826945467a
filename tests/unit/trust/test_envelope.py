"""Reading the envelope: the canonical shortcut (``signed`` read without the duplicate-key
hook when its text is its own canonical encoding) decides exactly as the checked reader."""

from __future__ import annotations

import json
from unittest import mock

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from proxy.sources.notary.tuf import metadata
from proxy.sources.notary.tuf.errors import MetadataFormatError
from tests.unit.trust.helpers import COMPAT, needs_vectors

SIG = b'"signatures":[{"keyid":"k","method":"ecdsa","sig":"AAAA"}]'


def _ts(signed_body: bytes, *, sigs: bytes = SIG, first: str = "signed") -> bytes:
    """A timestamp envelope around ``signed_body`` (the members after ``_type``)."""
    signed = b'"signed":{"_type":"Timestamp"' + (b"," + signed_body if signed_body else b"") + b"}"
    parts = [signed, sigs] if first == "signed" else [sigs, signed]
    return b"{" + b",".join(p for p in parts if p) + b"}"


def _envelope(raw: bytes) -> tuple[dict[str, object], bytes]:
    signed, _, message = metadata._envelope(
        raw, "timestamp", "timestamp", 1 << 20, metadata.DEFAULT_LIMITS
    )
    return signed, message


def _checked(raw: bytes) -> tuple[dict[str, object], bytes]:
    """The same envelope read by the checked reader alone (hook on every object, canonical
    bytes re-encoded): what every document went through before the shortcut."""
    with mock.patch.object(metadata, "_envelope_canonical", return_value=None):
        return _envelope(raw)


# (id, raw, takes the shortcut, canonical bytes of signed or None when refused)
CASES: list[tuple[str, bytes, bool, bytes | None]] = [
    (
        "canonical",
        _ts(b'"a":1,"b":[true,null]'),
        True,
        b'{"_type":"Timestamp","a":1,"b":[true,null]}',
    ),
    ("signatures-first", _ts(b'"a":1', first="signatures"), True, b'{"_type":"Timestamp","a":1}'),
    (
        "empty-signatures",
        _ts(b'"a":1', sigs=b'"signatures":[]'),
        True,
        b'{"_type":"Timestamp","a":1}',
    ),
    ("outer-whitespace", b" \n\t" + _ts(b'"a":1') + b"\r\n ", True, b'{"_type":"Timestamp","a":1}'),
    (
        "non-ascii",
        _ts('"a":"caf\u00e9 \u2603"'.encode()),
        True,
        '{"_type":"Timestamp","a":"caf\u00e9 \u2603"}'.encode(),
    ),
    # duplicate keys, at every depth and place: refused
    ("dup-depth-1", _ts(b'"a":1,"a":1'), False, None),
    ("dup-depth-1-unsorted", _ts(b'"b":1,"a":1,"b":1'), False, None),
    ("dup-depth-2", _ts(b'"a":{"b":1,"b":1}'), False, None),
    ("dup-depth-5", _ts(b'"a":{"b":[{"c":{"d":{"e":1,"e":2}}}]}'), False, None),
    ("dup-type", b'{"signed":{"_type":"Timestamp","_type":"Timestamp"}}', False, None),
    ("dup-by-escape", _ts(b'"a":1,"\\u0061":1'), False, None),
    ("dup-by-escape-nested", _ts(b'"x":{"a":1,"\\u0061":1}'), False, None),
    ("dup-signed", _ts(b'"a":1')[:-1] + b',"signed":{"_type":"Timestamp"}}', False, None),
    ("dup-signatures", _ts(b'"a":1')[:-1] + b"," + SIG + b"}", False, None),
    ("dup-in-signature", _ts(b"", sigs=b'"signatures":[{"keyid":"k","keyid":"j"}]'), False, None),
    ("dup-unknown-top", _ts(b"")[:-1] + b',"x":1,"x":2}', False, None),
    # not canonical, still valid: the checked reader decides, bytes re-encoded
    ("unsorted", _ts(b'"b":1,"a":2'), False, b'{"_type":"Timestamp","a":2,"b":1}'),
    (
        "inner-whitespace",
        b'{"signed": {"_type": "Timestamp", "a": [1, 2]}, "signatures": []}',
        False,
        b'{"_type":"Timestamp","a":[1,2]}',
    ),
    ("escaped-slash", _ts(b'"a":"x\\/y"'), False, b'{"_type":"Timestamp","a":"x/y"}'),
    ("escaped-control", _ts(b'"a":"x\\ny"'), False, b'{"_type":"Timestamp","a":"x\ny"}'),
    ("escaped-quote", _ts(b'"a":"x\\"y"'), True, b'{"_type":"Timestamp","a":"x\\"y"}'),
    ("minus-zero", _ts(b'"a":-0'), False, b'{"_type":"Timestamp","a":0}'),
    # malformed: refused whichever reader sees it
    ("float", _ts(b'"a":1.0'), False, None),
    ("exponent", _ts(b'"a":1e3'), False, None),
    ("nan", _ts(b'"a":NaN'), False, None),
    ("big-int", _ts(b'"a":9007199254740993'), False, None),
    ("big-int-in-signatures", _ts(b"", sigs=b'"signatures":[99999999999999999999]'), False, None),
    ("float-in-signatures", _ts(b"", sigs=b'"signatures":[1.5]'), False, None),
    ("signed-not-object", b'{"signed":[1]}', False, None),
    ("no-signed", b'{"signatures":[]}', False, None),
    ("empty-object", b"{}", False, None),
    ("trailing-comma", _ts(b'"a":1')[:-1] + b",}", False, None),
    ("trailing-garbage", _ts(b'"a":1') + b"x", False, None),
    ("two-documents", _ts(b'"a":1') + _ts(b'"a":1'), False, None),
    ("bom", "\ufeff".encode() + _ts(b'"a":1'), False, None),
    ("raw-control-char", _ts(b'"a":"x\x01y"'), False, None),
    ("lone-surrogate", _ts(b'"a":"\\ud800"'), False, None),
    ("unterminated", _ts(b'"a":1')[:-2], False, None),
    ("deep", _ts(b'"a":' + b"[" * 5000 + b"]" * 5000), False, None),
    ("array-top", b"[" + _ts(b"") + b"]", False, None),
]


@pytest.mark.parametrize(
    ("raw", "shortcut", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_envelope(raw: bytes, shortcut: bool, message: bytes | None) -> None:
    assert (
        metadata._envelope_canonical(raw.decode("utf-8", "replace"), "timestamp") is not None
    ) is shortcut
    if message is None:
        with pytest.raises(MetadataFormatError) as info:
            _envelope(raw)
        assert info.value.role == "timestamp"
        with pytest.raises(MetadataFormatError):
            _checked(raw)
    else:
        signed, got = _envelope(raw)
        assert got == message
        assert (signed, got) == _checked(raw)


# Random documents rendered canonically or not, with keys that may repeat: the envelope
# reader must agree with the checked reader on every one (same value and bytes, or refusal).
_key = st.sampled_from(["a", "b", "\\u0061", "_type", "c\u00e9"])
_leaf = st.one_of(
    st.sampled_from(
        [
            b"1",
            b"0",
            b"-0",
            b"true",
            b"null",
            b'"x"',
            b'"x\\"y"',
            b'"\\n"',
            b"1.5",
            b"9007199254740993",
        ]
    ),
    st.integers(-(2**53), 2**53).map(lambda i: str(i).encode()),
)


def _render(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    pair = st.tuples(_key, children).map(lambda kv: b'"' + kv[0].encode() + b'":' + kv[1])
    return st.one_of(
        st.lists(children, max_size=3).map(lambda xs: b"[" + b",".join(xs) + b"]"),
        st.lists(pair, max_size=4).map(lambda ps: b"{" + b",".join(ps) + b"}"),
        st.lists(pair, max_size=4).map(lambda ps: b"{" + b",".join(sorted(ps)) + b"}"),
    )


_value = st.recursive(_leaf, _render, max_leaves=12)
_member = st.tuples(_key, _value).map(lambda kv: b',"' + kv[0].encode() + b'":' + kv[1])


@given(st.lists(_member, max_size=4), st.booleans())
@example([b',"a":{"b":1,"b":1}'], False)
@example([b',"a":1', b',"\\u0061":1'], False)
def test_envelope_agrees_with_the_checked_reader(members: list[bytes], unsorted: bool) -> None:
    body = b"".join(members if unsorted else sorted(members))
    raw = b'{"signatures":[],"signed":{"_type":"Timestamp"' + body + b"}}"
    try:
        expected = _checked(raw)
    except MetadataFormatError:
        with pytest.raises(MetadataFormatError):
            _envelope(raw)
    else:
        assert _envelope(raw) == expected


@needs_vectors
def test_files_written_by_notary_take_the_shortcut() -> None:
    """notary signs canonical JSON and stores what it signed: its own files (notary 0.1 and 0.3
    compatibility fixtures) are read by the shortcut, to the same result as the checked reader."""
    files = sorted(COMPAT.rglob("*.json")) if COMPAT.is_dir() else []
    assert len(files) >= 9
    for path in files:
        raw = path.read_bytes()
        doc = json.loads(raw)
        kind = {"Root": "root", "Targets": "targets", "Snapshot": "snapshot"}.get(
            doc["signed"]["_type"], "timestamp"
        )
        assert metadata._envelope_canonical(raw.decode(), kind) is not None, path.name
        with mock.patch.object(metadata, "_envelope_canonical", return_value=None):
            checked = metadata._envelope(raw, kind, kind, 1 << 22, metadata.DEFAULT_LIMITS)
        assert metadata._envelope(raw, kind, kind, 1 << 22, metadata.DEFAULT_LIMITS) == checked
