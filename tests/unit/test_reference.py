"""proxy.reference: OCI name/tag/digest grammar and /v2/ path parsing."""

from __future__ import annotations

import hashlib

import pytest

from proxy.errors import InvalidDigestError, InvalidNameError, InvalidReferenceError
from proxy.reference import (
    MAX_NAME_LENGTH,
    RepoPath,
    parse_repo_path,
    validate_digest,
    validate_name,
    validate_reference,
)

SHA256 = "sha256:" + hashlib.sha256(b"a manifest").hexdigest()
SHA512 = "sha512:" + hashlib.sha512(b"a manifest").hexdigest()


def _name_of_length(n: int) -> str:
    # "a/a/a..." keeps every component valid so only the length can fail.
    return ("a/" * n)[:n].rstrip("/").ljust(n, "b")


@pytest.mark.parametrize(
    "name",
    ["a", "alpine", "library/alpine", "team/app/sub/deep", "a.b", "a_b", "a__b", "a-b", "a---b",
     "0", "x9/y8", "my.repo_name-1/x", _name_of_length(MAX_NAME_LENGTH)],
    ids=["one", "word", "two", "nested", "dot", "underscore", "double-underscore", "dash",
         "dashes", "digit", "alnum", "mixed", "max-length"],
)  # fmt: skip
def test_valid_names(name: str) -> None:
    validate_name(name)


@pytest.mark.parametrize(
    "name",
    ["", "A", "Team/app", "-a", "a-", "a.", ".a", "_a", "a_", "a___b", "a..b", "a._b", "a/",
     "/a", "a//b", "a b", "a:b", "a@b", "ä", "a\n", _name_of_length(MAX_NAME_LENGTH + 1)],
    ids=["empty", "upper", "upper-nested", "lead-dash", "trail-dash", "trail-dot", "lead-dot",
         "lead-underscore", "trail-underscore", "triple-underscore", "double-dot",
         "dot-underscore", "trail-slash", "lead-slash", "double-slash", "space", "colon", "at",
         "non-ascii", "trailing-newline", "too-long"],
)  # fmt: skip
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_name(name)


def test_name_length_limit_is_exact() -> None:
    assert len(_name_of_length(MAX_NAME_LENGTH)) == MAX_NAME_LENGTH
    validate_name(_name_of_length(MAX_NAME_LENGTH))
    with pytest.raises(InvalidNameError):
        validate_name(_name_of_length(MAX_NAME_LENGTH + 1))


@pytest.mark.parametrize(
    "ref",
    ["latest", "v1.2.3", "_private", "A", "1", "a" * 128, "UPPER-and_lower.9", SHA256, SHA512],
    ids=["latest", "semver", "underscore-first", "upper", "digit", "max-tag", "mixed",
         "sha256", "sha512"],
)  # fmt: skip
def test_valid_references(ref: str) -> None:
    validate_reference(ref)


@pytest.mark.parametrize(
    ("ref", "error"),
    [("", InvalidReferenceError), (".hidden", InvalidReferenceError),
     ("-dash", InvalidReferenceError), ("a" * 129, InvalidReferenceError),
     ("a/b", InvalidReferenceError), ("a b", InvalidReferenceError),
     ("tag+meta", InvalidReferenceError), ("latest\n", InvalidReferenceError),
     ("sha256:abc", InvalidDigestError),
     ("v1:2", InvalidDigestError), (SHA256.upper(), InvalidDigestError),
     ("md5:" + "0" * 32, InvalidDigestError)],
    ids=["empty", "lead-dot", "lead-dash", "too-long", "slash", "space", "plus",
         "trailing-newline", "short-digest", "colon-tag", "upper-digest", "md5"],
)  # fmt: skip
def test_invalid_references(ref: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        validate_reference(ref)


@pytest.mark.parametrize(
    "digest",
    ["sha256:" + "0" * 63, "sha256:" + "0" * 65, "sha256:" + "g" * 64, "sha256:" + "A" * 64,
     "sha512:" + "0" * 64, "sha384:" + "0" * 96, "sha256" + "0" * 64, "sha256:",
     SHA256 + "\n", " " + SHA256],
    ids=["short", "long", "non-hex", "upper-hex", "sha512-with-256-length", "sha384",
         "no-colon", "empty-hex", "trailing-newline", "leading-space"],
)  # fmt: skip
def test_invalid_digests(digest: str) -> None:
    with pytest.raises(InvalidDigestError):
        validate_digest(digest)


def test_error_messages_truncate_huge_input() -> None:
    with pytest.raises(InvalidNameError) as info:
        validate_name("A" * 10_000)
    assert len(str(info.value)) < 400


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v2/alpine/manifests/latest", RepoPath("alpine", "manifests", "latest")),
        (f"/v2/team/app/manifests/{SHA256}", RepoPath("team/app", "manifests", SHA256)),
        (f"/v2/a/b/c/blobs/{SHA512}", RepoPath("a/b/c", "blobs", SHA512)),
        ("/v2/team/app/tags/list", RepoPath("team/app", "tags")),
        (f"/v2/team/app/referrers/{SHA256}", RepoPath("team/app", "referrers", SHA256)),
        ("/v2/team/app/blobs/uploads/", RepoPath("team/app", "uploads")),
        ("/v2/team/app/blobs/uploads", RepoPath("team/app", "uploads")),
        ("/v2/team/app/blobs/uploads/1234-uuid", RepoPath("team/app", "uploads")),
        # Names may contain path words the API uses: the longest valid split wins.
        ("/v2/x/manifests/y/manifests/v1", RepoPath("x/manifests/y", "manifests", "v1")),
        ("/v2/tags/list/tags/list", RepoPath("tags/list", "tags")),
        (f"/v2/blobs/blobs/{SHA256}", RepoPath("blobs", "blobs", SHA256)),
        # ... the upload endpoint's words too: one session segment at most, as distribution.
        ("/v2/a/blobs/uploads/manifests/v1", RepoPath("a/blobs/uploads", "manifests", "v1")),
    ],
    ids=["tag", "digest", "blob-nested", "tags", "referrers", "uploads-slash",
         "uploads-no-slash", "upload-session", "name-with-manifests", "name-tags-list",
         "name-blobs", "name-blobs-uploads"],
)  # fmt: skip
def test_parse_repo_path(path: str, expected: RepoPath) -> None:
    parsed = parse_repo_path(path)
    assert parsed == expected
    assert parsed.is_digest is expected.reference.startswith("sha")


@pytest.mark.parametrize(
    "path",
    ["/v2/", "/v2/_catalog", "/v2/alpine", "/v2/alpine/manifests", "/v2/alpine/manifests/",
     "/v2/alpine/manifests/a/b", "/v2/alpine/tags", "/v2/alpine/tags/list/", "/v3/a/tags/list",
     "/v2/alpine/other/x", "v2/alpine/tags/list"],
    ids=["base", "catalog", "name-only", "manifests-no-ref", "manifests-empty-ref",
         "ref-with-slash", "tags-no-list", "tags-list-slash", "v3", "unknown-kind",
         "relative"],
)  # fmt: skip
def test_paths_naming_no_resource(path: str) -> None:
    assert parse_repo_path(path) is None


@pytest.mark.parametrize(
    ("path", "error"),
    [("/v2/Alpine/manifests/latest", InvalidNameError),
     ("/v2/a//b/tags/list", InvalidNameError),
     (f"/v2/{_name_of_length(MAX_NAME_LENGTH + 1)}/tags/list", InvalidNameError),
     ("/v2/alpine/manifests/-bad", InvalidReferenceError),
     ("/v2/alpine/manifests/sha256:abc", InvalidDigestError),
     ("/v2/alpine/blobs/latest", InvalidDigestError),
     ("/v2/alpine/referrers/latest", InvalidDigestError),
     ("/v2/alpine/manifests/latest\n", InvalidReferenceError),
     (f"/v2/alpine/blobs/{SHA256}\n", InvalidDigestError)],
    ids=["upper-name", "empty-component", "long-name", "bad-tag", "bad-digest",
         "blob-by-tag", "referrers-by-tag", "tag-newline", "digest-newline"],
)  # fmt: skip
def test_bad_parts_of_paths(path: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_repo_path(path)
