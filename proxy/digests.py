"""Digests of exact bytes (pure). We hash what we serve; we never trust a digest header."""

from __future__ import annotations

import hashlib

from proxy.errors import DigestMismatchError, InvalidDigestError
from proxy.reference import validate_digest


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    """``<algorithm>:<hex>`` of ``data``; only sha256 and sha512 are supported."""
    if algorithm not in ("sha256", "sha512"):
        raise InvalidDigestError(f"unsupported digest algorithm: {algorithm!r}")
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def verify_digest(data: bytes, expected: str, *, what: str, length: int | None = None) -> None:
    """Raises DigestMismatchError (an UpstreamContentError) unless ``data`` hashes to
    ``expected`` (and has ``length``)."""
    validate_digest(expected)
    algorithm = expected.split(":", 1)[0]
    actual = digest_of(data, algorithm)
    if actual != expected:
        raise DigestMismatchError(
            f"{what}: upstream sent bytes with digest {actual}, expected {expected}",
            expected=expected, actual=actual, size=len(data),
        )  # fmt: skip
    if length is not None and len(data) != length:
        raise DigestMismatchError(
            f"{what}: upstream sent {len(data)} bytes, expected {length}",
            expected=expected, actual=actual, size=len(data),
        )  # fmt: skip
