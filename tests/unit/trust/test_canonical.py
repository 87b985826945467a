from __future__ import annotations

import json
import sys
from collections.abc import Callable

import pytest

from proxy.sources.notary.tuf.canonical import encode_canonical, encode_parsed
from proxy.sources.notary.tuf.errors import MetadataFormatError


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"b": 1, "a": [True, False, None]}, b'{"a":[true,false,null],"b":1}'),
        ({"k": 'q"uote\\back'}, b'{"k":"q\\"uote\\\\back"}'),
        ({"k": "caf\u00e9 \u2603"}, '{"k":"caf\u00e9 \u2603"}'.encode()),
        # Go canonical/json escapes only " and \: control characters stay raw
        ({"k": "a\nb\u0001"}, b'{"k":"a\nb\x01"}'),
        ({"\u00e9": 1, "z": 2, "A": 3}, '{"A":3,"z":2,"\u00e9":1}'.encode()),
        ({"n": -(2**53)}, b'{"n":-9007199254740992}'),
        ({}, b"{}"),
        ({"x": "</script>&"}, b'{"x":"</script>&"}'),
    ],
    ids=[
        "sorted-literals",
        "escapes",
        "non-ascii-raw",
        "control-raw",
        "key-order",
        "max-int",
        "empty",
        "no-html-escape",
    ],
)
def test_encode(value: object, expected: bytes) -> None:
    assert encode_canonical(value) == expected


@pytest.mark.parametrize(
    "value",
    [{"f": 1.5}, {"big": 2**53 + 1}, {"s": "\ud800"}, {"nested": [{"f": 0.0}]}],
    ids=["float", "int-beyond-float64", "lone-surrogate", "nested-float"],
)
def test_refuses(value: object) -> None:
    with pytest.raises(MetadataFormatError):
        encode_canonical(value, role="targets")


def test_not_json_is_caller_bug() -> None:
    with pytest.raises(TypeError):
        encode_canonical({"x": object()})


def test_matches_json_dumps_without_control_characters() -> None:
    doc = {"z": [1, {"y": "\u00fc"}], "a": {"c": None, "b": "x"}}
    assert (
        encode_canonical(doc)
        == json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )


def test_slow_path_all_types() -> None:
    doc = {"k\t": [1, True, False, None, {"b": "c\\"}, -3], "a": "x"}
    assert encode_canonical(doc) == b'{"a":"x","k\t":[1,true,false,null,{"b":"c\\\\"},-3]}'


def _at_stack_depth(frames: int, call: Callable[[], object]) -> object:
    """``call()`` with ``frames`` more frames on the stack (the proxy calls the encoder
    from deep inside uvicorn, Starlette and asyncio)."""
    return call() if frames == 0 else _at_stack_depth(frames - 1, call)


@pytest.mark.parametrize("frames", [0, 200, 500])
@pytest.mark.parametrize("control", [False, True], ids=["fast-path", "slow-path"])
def test_too_deep_to_encode_is_malformed_not_a_crash(frames: int, control: bool) -> None:
    # Deeper than any encoder can recurse at any of these stack depths (the slow path
    # spends two frames a level): never a RecursionError, which the proxy answers with 500.
    deep: object = "\n" if control else "x"
    for _ in range(sys.getrecursionlimit()):
        deep = [deep]
    with pytest.raises(MetadataFormatError, match="nested too deeply") as info:
        _at_stack_depth(frames, lambda: encode_canonical({"d": deep}, role="timestamp"))
    assert info.value.role == "timestamp"


@pytest.mark.parametrize("frames", [0, 200, 500])
def test_encode_parsed_too_deep_is_malformed(frames: int) -> None:
    deep: object = 1
    for _ in range(sys.getrecursionlimit()):
        deep = [deep]
    with pytest.raises(MetadataFormatError, match="nested too deeply"):
        _at_stack_depth(frames, lambda: encode_parsed({"d": deep}, b"{}", role="targets"))
