"""proxy.digests: we hash what we serve."""

from __future__ import annotations

import hashlib

import pytest

from proxy.digests import digest_of, verify_digest
from proxy.errors import InvalidDigestError, UpstreamContentError

DATA = b'{"schemaVersion":2}'


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_digest_of(algorithm: str) -> None:
    assert digest_of(DATA, algorithm) == f"{algorithm}:{hashlib.new(algorithm, DATA).hexdigest()}"


def test_default_is_sha256() -> None:
    assert digest_of(DATA).startswith("sha256:")
    assert digest_of(DATA) == digest_of(DATA, "sha256")


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "SHA256", ""], ids=str)
def test_unsupported_algorithm(algorithm: str) -> None:
    with pytest.raises(InvalidDigestError):
        digest_of(DATA, algorithm)


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_verify_accepts_exact_bytes(algorithm: str) -> None:
    verify_digest(DATA, digest_of(DATA, algorithm), what="manifest")
    verify_digest(DATA, digest_of(DATA, algorithm), what="manifest", length=len(DATA))


@pytest.mark.parametrize(
    "data",
    [DATA + b" ", DATA[:-1], b"", DATA.upper()],
    ids=["appended", "truncated", "empty", "changed"],
)
@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_verify_rejects_other_bytes(data: bytes, algorithm: str) -> None:
    expected = digest_of(DATA, algorithm)
    with pytest.raises(UpstreamContentError) as info:
        verify_digest(data, expected, what="manifest team/app:v1")
    message = str(info.value)
    assert "manifest team/app:v1" in message
    assert expected in message
    assert digest_of(data, algorithm) in message


@pytest.mark.parametrize("length", [len(DATA) - 1, len(DATA) + 1, 0])
def test_verify_rejects_length_mismatch(length: int) -> None:
    with pytest.raises(UpstreamContentError, match=f"expected {length}"):
        verify_digest(DATA, digest_of(DATA), what="manifest", length=length)


@pytest.mark.parametrize(
    "expected",
    ["sha256:abc", "md5:" + "0" * 32, digest_of(DATA).upper()],
    ids=["short", "md5", "upper"],
)
def test_verify_rejects_malformed_expected_digest(expected: str) -> None:
    with pytest.raises(InvalidDigestError):
        verify_digest(DATA, expected, what="manifest")
