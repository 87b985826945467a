"""Answer "which digest is tag T signed at, and by whom?" from a loaded :class:`TrustedSet`.

Two modes:

* Docker's rule (:func:`resolve_docker`, :func:`signed_tags`): ``targets/releases`` first,
  then ``targets``; every other delegation is ignored, as ``docker pull`` does with DCT.
* Required signer roles (:func:`resolve_required_roles`): every named role must sign the
  tag, all at the same digest, each with at least its required number of signatures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from proxy.errors import NotSignedError
from proxy.sources.notary.tuf.metadata import TargetFile
from proxy.sources.notary.tuf.trusted_set import TrustedSet

__all__ = [
    "DOCKER_ROLES",
    "RoleRequirement",
    "SignedTarget",
    "resolve_docker",
    "resolve_required_roles",
    "signed_tags",
]

#: Docker: targets/releases wins over targets.
DOCKER_ROLES: Final = ("targets/releases", "targets")


@dataclass(frozen=True)
class SignedTarget:
    """A tag as signed: digest and length of the manifest bytes, and who signed it."""

    tag: str
    #: ``sha256:<hex>``
    digest: str
    length: int
    #: the role whose entry is authoritative
    role: str
    #: key IDs whose signatures were counted for ``role`` (all required roles in that mode)
    key_ids: tuple[str, ...]
    #: every considered role that signs the tag at this digest
    roles: tuple[str, ...]

    # The shared answer shape (proxy.sources.base.SignedAnswer): who signed, for people,
    # and the Notary facts behind it, for the audit record.
    @property
    def signers(self) -> tuple[str, ...]:
        """The roles that sign the tag at this digest (the authoritative one if none)."""
        return self.roles or (self.role,)

    @property
    def evidence(self) -> Mapping[str, Any]:
        return {"roles": self.roles, "key_ids": self.key_ids}


@dataclass(frozen=True)
class RoleRequirement:
    """A role that must sign the tag, with at least ``min_signatures`` valid signatures."""

    name: str
    min_signatures: int = 1

    def __post_init__(self) -> None:
        if self.min_signatures < 1:
            raise ValueError("min_signatures must be >= 1")


def _require_targets(ts: TrustedSet) -> None:
    if ts.targets is None:
        raise RuntimeError("targets is not loaded: refresh the trusted set first")


def lookup(ts: TrustedSet, role: str, tag: str) -> TargetFile | None:
    """The entry of ``tag`` in a loaded role, if the role (and its ancestors) may sign it."""
    md = ts.targets_role(role)
    if md is None:
        return None
    tf = md.signed.targets.get(tag)
    if tf is None or not ts.path_allows(role, tag):
        return None
    return tf


def _docker_entries(ts: TrustedSet, tag: str) -> list[tuple[str, TargetFile]]:
    _require_targets(ts)
    status = ts.status("targets/releases")
    if status == "pending":
        # Falling back to targets here could serve a digest that releases overrides.
        raise RuntimeError("targets/releases is declared but not loaded")
    out = []
    for role in DOCKER_ROLES:
        tf = lookup(ts, role, tag)
        if tf is not None:
            out.append((role, tf))
    return out


def resolve_docker(ts: TrustedSet, tag: str) -> SignedTarget:
    """Resolve ``tag`` with Docker's rule.

    Raises:
        NotSignedError: neither role signs the tag (``No valid trust data for <tag>``), or
            the authoritative entry has no sha256 hash.
        RuntimeError: targets, or a declared ``targets/releases``, is not loaded yet.
    """
    entries = _docker_entries(ts, tag)
    if not entries:
        raise NotSignedError(f"No valid trust data for {tag}")
    role, tf = entries[0]
    digest = tf.digest
    if digest is None:
        raise NotSignedError(f"trust data for {tag} in {role} has no sha256 hash")
    roles = tuple(r for r, t in entries if t.digest == digest and t.length == tf.length)
    return SignedTarget(tag, digest, tf.length, role, ts.signers(role), roles)


def signed_tags(ts: TrustedSet) -> dict[str, SignedTarget]:
    """Every tag signed under Docker's rule (for a filtered tag list), sorted by tag.

    Raises:
        RuntimeError: as :func:`resolve_docker`.
    """
    _docker_entries(ts, "")  # order checks
    names: set[str] = set()
    for role in DOCKER_ROLES:
        md = ts.targets_role(role)
        if md is not None:
            names.update(md.signed.targets)
    out: dict[str, SignedTarget] = {}
    for tag in sorted(names):
        try:
            out[tag] = resolve_docker(ts, tag)
        except NotSignedError:
            continue
    return out


def resolve_required_roles(
    ts: TrustedSet, tag: str, requirements: Sequence[RoleRequirement]
) -> SignedTarget:
    """Resolve ``tag`` requiring every listed role to sign it at one digest.

    Raises:
        NotSignedError: a role is missing, invalid (skipped), does not sign the tag, has too
            few signatures, lacks a sha256 hash, or the roles disagree on the digest.
        RuntimeError: no requirements, or targets / a declared role is not loaded yet.
    """
    if not requirements:
        raise RuntimeError("no role requirements given")
    _require_targets(ts)
    found: list[tuple[str, TargetFile]] = []
    key_ids: list[str] = []
    for req in requirements:
        status = ts.status(req.name)
        if status == "pending":
            raise RuntimeError(f"{req.name} is declared but not loaded")
        if status == "undeclared":
            raise NotSignedError(f"role {req.name} does not exist in the trust data")
        if status == "skipped":
            why = ts.skipped.get(req.name)
            raise NotSignedError(
                f"role {req.name} has no valid trust data" + (f": {why}" if why else "")
            )
        tf = lookup(ts, req.name, tag)
        if tf is None:
            raise NotSignedError(f"{tag} is not signed by {req.name}")
        signers = ts.signers(req.name)
        if len(signers) < req.min_signatures:
            raise NotSignedError(
                f"{req.name} has {len(signers)} valid signature(s), {req.min_signatures} required"
            )
        if tf.digest is None:
            raise NotSignedError(f"trust data for {tag} in {req.name} has no sha256 hash")
        found.append((req.name, tf))
        key_ids.extend(k for k in signers if k not in key_ids)
    first_role, first = found[0]
    for role, tf in found[1:]:
        if tf.digest != first.digest or tf.length != first.length:
            raise NotSignedError(
                f"signer roles disagree on {tag}: {first_role} signs {first.digest}, "
                f"{role} signs {tf.digest}"
            )
    digest = first.digest
    if digest is None:  # pragma: no cover - checked above
        raise NotSignedError(f"trust data for {tag} has no sha256 hash")
    return SignedTarget(
        tag, digest, first.length, first_role, tuple(key_ids), tuple(r for r, _ in found)
    )
