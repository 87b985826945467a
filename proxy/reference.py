"""Parse OCI Distribution paths and references: the name/tag/digest grammar (pure).

Grammar from the OCI Distribution Spec ("Pulling manifests"):
  name   [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*(\\/[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*)*
  tag    [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}
  digest <algorithm>:<encoded>; we accept sha256 (64 hex) and sha512 (128 hex) only, because
         a digest we cannot compute is a digest we cannot check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from proxy.errors import InvalidDigestError, InvalidNameError, InvalidReferenceError

# \Z, not $: "$" also matches before a final newline, so "latest\n" (%0A in a path) passed.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*\Z")
TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}\Z")
DIGEST_RE = re.compile(r"^(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})\Z")
MAX_NAME_LENGTH = 255  # distribution's limit for a repository name

Kind = Literal["manifests", "blobs", "tags", "referrers", "uploads"]

# uploads first: "/v2/<name>/blobs/uploads" (no slash) is the upload endpoint, not a blob
# whose digest is "uploads". At most one segment after it (the session, as distribution's
# route): with any number, "/v2/a/blobs/uploads/manifests/v1" was an upload to "a" instead
# of a manifest of the repository "a/blobs/uploads" (found by tests/hardening fuzzing).
_PATH_RE = re.compile(
    r"^/v2/(?P<name>.+?)/(?:(?P<uploads>blobs/uploads(?:/[^/]*)?)"
    r"|(?P<kind>manifests|blobs|referrers)/(?P<ref>[^/]+)|(?P<tags>tags/list))\Z"
)


@dataclass(frozen=True)
class RepoPath:
    """A parsed ``/v2/<name>/<kind>/<reference>`` request path."""

    name: str
    kind: Kind
    reference: str = ""  # tag or digest for manifests; digest for blobs and referrers

    @property
    def is_digest(self) -> bool:
        return self.reference.startswith(("sha256:", "sha512:"))


def parse_repo_path(path: str) -> RepoPath | None:
    """Parse a ``/v2/...`` path naming a repository resource, or None if it names none.

    Raises InvalidNameError, InvalidReferenceError or InvalidDigestError on bad parts.
    """
    m = _PATH_RE.match(path)
    if m is None:
        return None
    name = m.group("name")
    validate_name(name)
    if m.group("tags"):
        return RepoPath(name=name, kind="tags")
    if m.group("uploads"):
        return RepoPath(name=name, kind="uploads")
    kind: Kind = m.group("kind")  # type: ignore[assignment]
    ref = m.group("ref")
    if kind == "manifests":
        validate_reference(ref)
    else:
        validate_digest(ref)
    return RepoPath(name=name, kind=kind, reference=ref)


def validate_name(name: str) -> None:
    """Raises InvalidNameError unless ``name`` is a valid repository name."""
    if len(name) > MAX_NAME_LENGTH or not NAME_RE.match(name):
        raise InvalidNameError(f"invalid repository name: {name[:300]!r}")


def validate_reference(ref: str) -> None:
    """Raises InvalidReferenceError/InvalidDigestError unless ``ref`` is a tag or a digest."""
    if ":" in ref:
        validate_digest(ref)
    elif not TAG_RE.match(ref):
        raise InvalidReferenceError(f"invalid tag: {ref[:300]!r}")


def validate_digest(digest: str) -> None:
    """Raises InvalidDigestError unless ``digest`` is a sha256 or sha512 digest."""
    if not DIGEST_RE.match(digest):
        raise InvalidDigestError(f"invalid or unsupported digest: {digest[:300]!r}")


DOCKER_HUB_ALIASES = ("index.docker.io", "registry-1.docker.io")


def parse_image_ref(ref: str) -> tuple[str, str | None]:
    """``[registry/]repo[:tag]`` -> (``<registry>/<repo>``, tag or None): an image reference
    as users type it, with Docker's normalisation. A first segment with a dot, a port or
    ``localhost`` is a registry (lower-cased); otherwise the image is on Docker Hub
    (``docker.io``), where a one-segment name is an official image under ``library/``.

    Raises InvalidReferenceError (a digest, or a bad tag) or InvalidNameError.
    """
    if "@" in ref:
        raise InvalidReferenceError("give a tag, not a digest")
    name, tag = ref, None
    slash, colon = ref.rfind("/"), ref.rfind(":")
    if colon > slash:
        name, tag = ref[:colon], ref[colon + 1 :]
        if not TAG_RE.match(tag):
            raise InvalidReferenceError(f"invalid tag {tag!r}")
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, repo = first.lower(), rest
    else:
        registry, repo = "docker.io", name
    if registry in DOCKER_HUB_ALIASES:
        registry = "docker.io"
    if registry == "docker.io" and "/" not in repo:
        repo = f"library/{repo}"
    if not NAME_RE.match(repo):
        raise InvalidNameError(f"invalid repository name {repo!r}")
    return f"{registry}/{repo}", tag
