"""Canonical JSON exactly as notary signs it (``github.com/docker/go/canonical/json``).

Rules of that encoder: object keys sorted (byte order of UTF-8 = code point order), no
whitespace, strings with only ``"`` and ``\\`` escaped (control characters and non-ASCII are
written raw, as UTF-8), integers only. Notary parses ``signed`` into Go ``interface{}``
values, so every number passes through ``float64``: integers beyond 2**53 cannot round-trip
and are refused here rather than risk signing or verifying different bytes than notary.
"""

from __future__ import annotations

import json
import re

from proxy.sources.notary.tuf.errors import MetadataFormatError

__all__ = ["MAX_SAFE_INT", "encode_canonical", "encode_parsed"]

#: Largest integer a Go float64 holds exactly.
MAX_SAFE_INT = 2**53

_CONTROL = re.compile(r"[\x00-\x1f]")
# A value parsed from JSON text holds no reference cycle, so the encoder's per-container cycle
# bookkeeping is skipped (a tenth of encoding a large role); a cycle would end in
# RecursionError all the same.
_PARSED_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, check_circular=False
)


def encode_canonical(value: object, *, role: str = "") -> bytes:
    """Return the canonical JSON bytes of a parsed JSON value.

    Raises:
        MetadataFormatError: the value holds a float, an integer beyond 2**53, a non-string
            key, a string that is not valid Unicode, or is nested too deeply to encode.
        TypeError: a value that is not JSON (a caller bug).
    """
    slow = _needs_slow_path(value, role)
    try:
        if slow:
            return _slow(value).encode("utf-8")
        # With ensure_ascii=False, json.dumps escapes only '"', '\\' and control characters;
        # none is present (else the slow path runs), so the bytes are the same.
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8"
        )
    except UnicodeEncodeError as e:  # lone surrogate from a \ud8xx escape
        raise MetadataFormatError("string is not valid Unicode", role=role) from e
    except RecursionError as e:
        raise _too_deep(role) from e


def encode_parsed(value: object, source: bytes, *, role: str = "") -> bytes:
    """Canonical bytes of ``value`` parsed from JSON text ``source`` by ``metadata``'s readers
    (which refuses floats and integers beyond 2**53).

    Fast path: a JSON text without a backslash has no escape sequence, hence no control
    character in any string (raw ones are invalid JSON), so ``json.dumps`` is already
    canonical. Otherwise falls back to :func:`encode_canonical`.

    Raises:
        MetadataFormatError: as :func:`encode_canonical`.
    """
    if b"\\" in source:
        return encode_canonical(value, role=role)
    try:
        return _PARSED_ENCODER.encode(value).encode("utf-8")
    except RecursionError as e:
        raise _too_deep(role) from e
    except (UnicodeEncodeError, TypeError, ValueError) as e:  # pragma: no cover - defensive
        raise MetadataFormatError(f"cannot encode canonically: {e}", role=role) from e


def _too_deep(role: str) -> MetadataFormatError:
    # The parser (json.loads, C) stops at Python's recursion limit minus the caller's stack;
    # the encoders recurse too (the slow path twice per level), so a document the parser
    # just accepted can still be too deep to encode. Untrusted bytes must not turn into a
    # RecursionError (a 500) whatever the stack depth: they are malformed metadata.
    return MetadataFormatError("nested too deeply to encode canonically", role=role)


def _needs_slow_path(value: object, role: str) -> bool:
    """Validate types recursively; tell whether a string holds a control character."""
    stack: list[object] = [value]
    control = False
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _CONTROL.search(item):
                control = True
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if abs(item) > MAX_SAFE_INT:
                raise MetadataFormatError("integer out of range", role=role)
        elif isinstance(item, dict):
            for k, v in item.items():
                if not isinstance(k, str):
                    raise MetadataFormatError("object key is not a string", role=role)
                if _CONTROL.search(k):
                    control = True
                stack.append(v)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, float):
            raise MetadataFormatError("floating point numbers are not canonical", role=role)
        else:
            raise TypeError(f"not a JSON value: {type(item).__name__}")
    return control


def _slow(value: object) -> str:
    if isinstance(value, str):
        return _string(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ",".join(_slow(v) for v in value) + "]"
    if isinstance(value, dict):
        items = sorted(value.items())
        return "{" + ",".join(_string(k) + ":" + _slow(v) for k, v in items) + "}"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def _string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
