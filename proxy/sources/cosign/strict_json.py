"""Strict, bounded JSON for signed Cosign data.

Signed payloads are verified over their exact bytes and then parsed; a parser that keeps the
last of two duplicate keys (Python, Go) and one that keeps the first (some JS) would read
different digests from the same signed bytes, so duplicate keys are refused outright, as are
``NaN``/``Infinity`` (not JSON) and nesting deeper than a small bound.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from proxy.sources.cosign.errors import CosignFormatError, CosignLimitError

__all__ = ["MAX_DEPTH", "b64_field", "int_field", "loads_strict"]

#: Nothing Cosign signs is nested more than a handful of levels (bundles reach about 6).
MAX_DEPTH = 32


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise CosignFormatError(f"duplicate key {key[:100]!r}")
        out[key] = value
    return out


def _constant(name: str) -> Any:
    raise CosignFormatError(f"{name} is not JSON")


def _depth_ok(data: bytes, limit: int) -> bool:
    # Counted on the bytes before parsing, so a deeply nested document costs no recursion;
    # brackets inside strings (PEM, JSON carried as a string) do not count.
    depth = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # "
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return False
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return True


def loads_strict(data: bytes, *, what: str, limit: int, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``data`` (UTF-8 JSON, at most ``limit`` bytes).

    Raises:
        CosignLimitError: more than ``limit`` bytes, or nested deeper than ``max_depth``.
        CosignFormatError: not UTF-8, not JSON, duplicate keys, NaN/Infinity.
    """
    if len(data) > limit:
        raise CosignLimitError(f"{what} is {len(data)} bytes, limit {limit}", field=what)
    if not _depth_ok(data, max_depth):
        raise CosignLimitError(f"{what} is nested deeper than {max_depth}", field=what)
    try:
        text = data.decode("utf-8")
        return json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant)
    except CosignFormatError as e:
        raise CosignFormatError(f"{what}: {e.detail}", field=what) from e
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CosignFormatError(f"{what} is not valid JSON: {e}", field=what) from e


#: Largest integer Go's int64 (Rekor's indexes and times) holds.
MAX_INT64 = 2**63 - 1


def b64_field(value: Any, field: str) -> bytes:
    """Standard base64 text of a parsed field, strictly decoded.

    Raises:
        CosignFormatError: not a string, or not valid base64.
    """
    if not isinstance(value, str):
        raise CosignFormatError("must be base64 text", field=field)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise CosignFormatError("not valid base64", field=field) from e


def int_field(value: Any, field: str) -> int:
    """A non-negative int64: a JSON number (cosign's annotations) or a decimal string
    (protobuf JSON, as bundles write int64).

    Raises:
        CosignFormatError: anything else.
    """
    if isinstance(value, str) and value.isdigit() and len(value) <= 19:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT64:
        raise CosignFormatError("must be a non-negative integer", field=field)
    return value
