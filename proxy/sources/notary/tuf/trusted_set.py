"""The trusted metadata set of one Notary v1 repository (python-tuf ``TrustedMetadataSet`` shape).

Pure: bytes in, verified models out; the caller fetches, this object decides. Update order
and checks follow the notary client (see ``shared/notes/notary-v1-format.md``):

1. root: the constructor's root is checked against the root of trust; each newer version
   (``update_root``, fetched as ``<N>.root.json``) must be version N+1, signed by a threshold
   of version N's root keys *and* of its own pinned, CN-valid keys.
2. ``update_timestamp``: the final root must be unexpired (and its cert, unless
   ``allow_expired_root_cert``); timestamp signed by root's timestamp role; version >= last
   trusted; unexpired.
3. ``update_snapshot``: bytes match length + hashes in timestamp; snapshot role; version;
   expiry.
4. ``update_targets``: bytes match snapshot ``meta.targets``; targets role; version; expiry.
5. ``update_delegated_targets``: bytes match snapshot ``meta[<role>]``; keys and threshold
   from the *parent's* ``delegations``; version; expiry. A delegation that fails is recorded
   in ``skipped`` (notary skips it) and the error is raised for the caller to log, except
   that a ``RollbackError`` must end the refresh: the role is still declared and its floor
   comes from a version we verified (floors of undeclared roles are dropped, and
   notary-server refuses a lower version), so only a server rolling it back serves it.
   Skipping it would let ``targets`` answer for the tags the delegation re-signed.

Errors of top-level roles are fatal: the caller must not use the set for resolution then.
Calling methods out of order is a caller bug and raises ``RuntimeError``.
"""

from __future__ import annotations

import contextlib
import hashlib
import posixpath
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Literal

from proxy.sources.notary.tuf.errors import (
    ExpiredError,
    HashMismatchError,
    KeyIdMismatchError,
    MetadataFormatError,
    RollbackError,
    RootOfTrustError,
    RootRotationError,
    SignatureError,
    ThresholdError,
    TrustDataError,
)
from proxy.sources.notary.tuf.keys import PublicKey
from proxy.sources.notary.tuf.metadata import (
    DEFAULT_LIMITS,
    DelegatedRole,
    Limits,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    Targets,
    Timestamp,
    parse_root,
    parse_snapshot,
    parse_targets,
    parse_timestamp,
)
from proxy.sources.notary.tuf.roots import RootOfTrust, is_expired, leaf_problem
from proxy.sources.notary.tuf.state import TrustedState

__all__ = [
    "PendingRole",
    "RoleStatus",
    "TrustedSet",
    "check_meta",
    "consistent_filename",
    "verify_threshold",
]

RoleStatus = Literal["loaded", "skipped", "pending", "undeclared"]


@dataclass(frozen=True)
class PendingRole:
    """A delegated role the caller should fetch next."""

    name: str
    parent: str
    #: notary-server consistent name, e.g. ``targets/releases.<sha256hex>.json``
    filename: str
    meta: MetaFile


def consistent_filename(role: str, meta: MetaFile) -> str:
    """``<role>.<sha256 hex>.json``: the name notary-server serves a hashed copy under."""
    return f"{role}.{meta.sha256_hex}.json"


def check_meta(raw: bytes, meta: MetaFile, *, role: str) -> None:
    """Check raw bytes against an announced length and every known hash.

    Raises:
        HashMismatchError: length or a hash differs.
    """
    if len(raw) != meta.length:
        raise HashMismatchError(
            f"length {len(raw)} does not match announced {meta.length}", role=role, field="length"
        )
    for alg, digest in meta.hashes.items():
        if hashlib.new(alg, raw).digest() != digest:
            raise HashMismatchError(f"{alg} does not match", role=role, field=f"hashes.{alg}")


def verify_threshold(
    md: Metadata[Root] | Metadata[Targets] | Metadata[Snapshot] | Metadata[Timestamp],
    keys: Mapping[str, PublicKey],
    key_ids: Collection[str],
    threshold: int,
    *,
    role: str,
) -> tuple[str, ...]:
    """Count valid signatures by distinct keys of the role; return the signing key IDs.

    Signatures by keys that are not the role's are ignored (notary). Two entries for the
    same underlying key (cert and bare) count once.

    Raises:
        KeyIdMismatchError: a signature names a role key listed under an ID that is not the
            key's own ID.
        ThresholdError: fewer than ``threshold`` distinct valid signatures.
    """
    allowed = set(key_ids)
    seen: set[str] = set()
    signers: list[str] = []
    for sig in md.signatures:
        if sig.key_id not in allowed:
            continue
        key = keys.get(sig.key_id)
        if key is None:
            continue
        if key.key_id != sig.key_id:
            # notary tuf/signed/verify.go: ErrInvalidKeyID, fatal for the role
            raise KeyIdMismatchError(
                f"key listed as {sig.key_id[:8]} has ID {key.key_id[:8]}",
                role=role,
                field="signatures",
            )
        if key.canonical_id in seen:
            continue
        try:
            key.verify(sig.method, sig.sig, md.message)
        except SignatureError:
            continue
        seen.add(key.canonical_id)
        signers.append(sig.key_id)
    if len(signers) < threshold:
        raise ThresholdError(
            f"{len(signers)} valid signature(s) by role keys, threshold is {threshold}",
            role=role,
            field="signatures",
        )
    return tuple(signers)


class TrustedSet:
    """Verified metadata of one repository at one ``reference_time``.

    Args:
        root: bytes of the trusted root (from the state store, or fetched for the first
            time: they are checked against ``root_of_trust`` either way).
        gun: the repository's GUN; the root certificate's CN must equal it.
        root_of_trust: how the root is anchored (pins, CA, or trust on first use).
        reference_time: timezone-aware "now" for every expiry check.
        previous_versions: last trusted version per role (rollback protection).
        allow_expired_root_cert: accept an expired root leaf certificate; when it was
            needed, ``expired_root_cert_used`` becomes True so the caller can log loudly.

    Raises:
        ValueError: ``reference_time`` is naive.
        OversizeMetadataError, MetadataFormatError, UnsupportedKeyError: malformed root.
        RollbackError: root version below ``previous_versions["root"]``.
        RootOfTrustError: no root key passes the CN / pin / CA checks.
        ThresholdError, KeyIdMismatchError: root not signed by its own threshold.
    """

    def __init__(
        self,
        root: bytes,
        *,
        gun: str,
        root_of_trust: RootOfTrust,
        reference_time: datetime,
        previous_versions: Mapping[str, int] | None = None,
        limits: Limits = DEFAULT_LIMITS,
        allow_expired_root_cert: bool = False,
    ) -> None:
        if reference_time.tzinfo is None or reference_time.utcoffset() is None:
            raise ValueError("reference_time must be timezone-aware")
        self.gun = gun
        self.root_of_trust = root_of_trust
        self.reference_time = reference_time
        self.limits = limits
        self.allow_expired_root_cert = allow_expired_root_cert
        self.expired_root_cert_used = False
        self._floors: dict[str, int] = dict(previous_versions or {})
        self._timestamp: Metadata[Timestamp] | None = None
        self._snapshot: Metadata[Snapshot] | None = None
        self._targets: Metadata[Targets] | None = None
        self._delegated: dict[str, Metadata[Targets]] = {}
        self._declared: dict[str, DelegatedRole] = {}
        self._skipped: dict[str, TrustDataError] = {}
        self._signers: dict[str, tuple[str, ...]] = {}
        self._root_rotations = 0

        md = parse_root(root, max_bytes=limits.max_root_bytes, limits=limits)
        self._check_floor(md.version, "root")
        self._signers["root"] = self._verify_root(md, prev=None)
        self._root = md

    # --- read access ---------------------------------------------------------------------

    @property
    def root(self) -> Metadata[Root]:
        return self._root

    @property
    def timestamp(self) -> Metadata[Timestamp] | None:
        return self._timestamp

    @property
    def snapshot(self) -> Metadata[Snapshot] | None:
        return self._snapshot

    @property
    def targets(self) -> Metadata[Targets] | None:
        return self._targets

    @property
    def delegated(self) -> Mapping[str, Metadata[Targets]]:
        """Loaded (verified) delegated roles by name."""
        return MappingProxyType(self._delegated)

    @property
    def skipped(self) -> Mapping[str, TrustDataError]:
        """Delegated roles that failed verification (or could not be fetched), with why."""
        return MappingProxyType(self._skipped)

    def targets_role(self, name: str) -> Metadata[Targets] | None:
        """``targets`` or a loaded delegated role, else None."""
        return self._targets if name == "targets" else self._delegated.get(name)

    def signers(self, role: str) -> tuple[str, ...]:
        """Key IDs whose valid signatures were counted for a loaded role."""
        return self._signers.get(role, ())

    def declaration(self, name: str) -> DelegatedRole | None:
        """How the parent declared a loaded or pending delegated role."""
        return self._declared.get(name) or self._find_declaration(name)

    def path_allows(self, name: str, target: str) -> bool:
        """Whether every delegation from ``targets`` down to ``name`` allows ``target``."""
        while name != "targets":
            d = self.declaration(name)
            if d is None or not d.allows(target):
                return False
            name = posixpath.dirname(name)
        return True

    def status(self, name: str) -> RoleStatus:
        """``loaded``, ``skipped`` (invalid, unfetchable or not in snapshot), ``pending``
        (declared by a loaded parent, not yet loaded) or ``undeclared``."""
        if name == "targets":
            return "loaded" if self._targets is not None else "pending"
        if name in self._delegated:
            return "loaded"
        if name in self._skipped:
            return "skipped"
        parent = posixpath.dirname(name)
        if self.status(parent) == "skipped":
            return "skipped"
        if self.targets_role(parent) is None or self._find_declaration(name) is None:
            return "undeclared"
        if self._snapshot is None or name not in self._snapshot.signed.meta:
            return "skipped"  # notary cannot fetch a delegation the snapshot does not list
        return "pending"

    def delegation_names(self) -> tuple[str, ...]:
        """Delegated roles declared by loaded roles, in pre-order from ``targets``."""
        out: list[str] = []

        def walk(role: str) -> None:
            md = self.targets_role(role)
            if md is None:
                return
            for d in md.signed.delegations.roles:
                out.append(d.name)
                walk(d.name)

        walk("targets")
        return tuple(out)

    def pending_delegations(self, only: Collection[str] | None = None) -> tuple[PendingRole, ...]:
        """Delegated roles to fetch next, pre-order; with ``only``, just those roles and
        their ancestors (``only={"targets/releases"}`` for Docker's rule)."""
        out: list[PendingRole] = []
        for name in self.delegation_names():
            if self.status(name) != "pending":
                continue
            if only is not None and not any(o == name or o.startswith(name + "/") for o in only):
                continue
            meta = self.snapshot_meta_for(name)
            out.append(
                PendingRole(name, posixpath.dirname(name), consistent_filename(name, meta), meta)
            )
        return tuple(out)

    # --- what to fetch ---------------------------------------------------------------------

    def next_root_filename(self) -> str:
        """``<N+1>.root.json``: fetch it until the server answers 404."""
        return f"{self._root.version + 1}.root.json"

    def snapshot_meta_for(self, role: str) -> MetaFile:
        """Length and hashes announced for ``role`` (``snapshot`` from timestamp, others
        from snapshot).

        Raises:
            RuntimeError: the announcing role is not loaded yet.
            HashMismatchError: the snapshot does not list ``role``.
        """
        if role == "snapshot":
            if self._timestamp is None:
                raise RuntimeError("timestamp is not loaded")
            return self._timestamp.signed.snapshot
        if self._snapshot is None:
            raise RuntimeError("snapshot is not loaded")
        meta = self._snapshot.signed.meta.get(role)
        if meta is None:
            raise HashMismatchError("not listed in snapshot", role=role)
        return meta

    def filename_for(self, role: str) -> str:
        """The consistent file name to fetch for ``snapshot``, ``targets`` or a delegation."""
        return consistent_filename(role, self.snapshot_meta_for(role))

    # --- updates ---------------------------------------------------------------------------

    def update_root(self, raw: bytes) -> Metadata[Root]:
        """Rotate to root version N+1.

        Raises:
            RuntimeError: timestamp already loaded (roots come first).
            OversizeMetadataError, MetadataFormatError, UnsupportedKeyError: malformed.
            RollbackError: version <= the trusted version.
            RootRotationError: version skips ahead, or not signed by a threshold of the
                trusted root's root keys.
            RootOfTrustError, ThresholdError, KeyIdMismatchError: see the constructor.
        """
        if self._timestamp is not None:
            raise RuntimeError("cannot update root after timestamp")
        if self._root_rotations >= self.limits.max_root_rotations:
            raise RootRotationError("too many root rotations in one refresh", role="root")
        md = parse_root(raw, max_bytes=self.limits.max_root_bytes, limits=self.limits)
        expected = self._root.version + 1
        if md.version < expected:
            raise RollbackError(
                f"version {md.version} is not newer than {self._root.version}",
                role="root",
                field="version",
            )
        if md.version > expected:
            raise RootRotationError(
                f"expected version {expected}, got {md.version}", role="root", field="version"
            )
        self._signers["root"] = self._verify_root(md, prev=self._root)
        self._root = md
        self._root_rotations += 1
        return md

    def update_timestamp(self, raw: bytes) -> Metadata[Timestamp]:
        """Load timestamp; the root is final from here on.

        Raises:
            RuntimeError: snapshot already loaded.
            ExpiredError: the root (role ``root``) or the timestamp expired.
            RootOfTrustError: root certificate expired and not allowed.
            OversizeMetadataError, MetadataFormatError: malformed.
            ThresholdError, KeyIdMismatchError: not signed by root's timestamp role.
            RollbackError: version below the last trusted timestamp.
        """
        if self._snapshot is not None:
            raise RuntimeError("cannot update timestamp after snapshot")
        self._check_final_root()
        md = parse_timestamp(raw, max_bytes=self.limits.max_timestamp_bytes, limits=self.limits)
        signers = self._verify_top_level(md, "timestamp")
        self._check_floor(md.version, "timestamp")
        self._check_expiry(md)
        self._timestamp = md
        self._signers["timestamp"] = signers
        return md

    def update_snapshot(self, raw: bytes) -> Metadata[Snapshot]:
        """Load snapshot.

        Raises:
            RuntimeError: timestamp not loaded, or targets already loaded.
            HashMismatchError: bytes do not match the timestamp's length/hashes.
            OversizeMetadataError, MetadataFormatError, ThresholdError, KeyIdMismatchError,
            RollbackError, ExpiredError: as for timestamp.
        """
        if self._timestamp is None:
            raise RuntimeError("timestamp is not loaded")
        if self._targets is not None:
            raise RuntimeError("cannot update snapshot after targets")
        check_meta(raw, self._timestamp.signed.snapshot, role="snapshot")
        md = parse_snapshot(raw, max_bytes=self.limits.max_snapshot_bytes, limits=self.limits)
        signers = self._verify_top_level(md, "snapshot")
        self._check_floor(md.version, "snapshot")
        self._check_expiry(md)
        self._snapshot = md
        self._signers["snapshot"] = signers
        return md

    def update_targets(self, raw: bytes) -> Metadata[Targets]:
        """Load top-level targets.

        Raises:
            RuntimeError: snapshot not loaded, or targets already loaded.
            HashMismatchError: bytes do not match snapshot ``meta.targets``.
            OversizeMetadataError, MetadataFormatError, UnsupportedKeyError, ThresholdError,
            KeyIdMismatchError, RollbackError, ExpiredError: as for timestamp.
        """
        if self._snapshot is None:
            raise RuntimeError("snapshot is not loaded")
        if self._targets is not None:
            raise RuntimeError("targets already loaded")
        check_meta(raw, self.snapshot_meta_for("targets"), role="targets")
        md = parse_targets(raw, max_bytes=self.limits.max_targets_bytes, limits=self.limits)
        signers = self._verify_top_level(md, "targets")
        self._check_floor(md.version, "targets")
        self._check_expiry(md)
        self._targets = md
        self._signers["targets"] = signers
        return md

    def update_delegated_targets(self, raw: bytes, role: str, parent: str) -> Metadata[Targets]:
        """Load a delegated targets role declared by the loaded role ``parent``.

        On a ``TrustDataError`` the role is recorded in :attr:`skipped` (with its subtree)
        before the error propagates: notary skips invalid delegations.

        Raises:
            RuntimeError: ``parent`` not loaded, ``role`` not declared by it, already
                loaded or skipped.
            HashMismatchError: not listed in snapshot, or bytes do not match it.
            MetadataFormatError: malformed, or more than ``limits.max_delegated_roles``.
            OversizeMetadataError, UnsupportedKeyError,
            ThresholdError, KeyIdMismatchError, RollbackError, ExpiredError.
        """
        parent_md = self.targets_role(parent)
        if parent_md is None:
            raise RuntimeError(f"parent role {parent} is not loaded")
        decl = parent_md.signed.delegations.get(role)
        if decl is None:
            raise RuntimeError(f"{parent} does not delegate to {role}")
        if role in self._delegated or role in self._skipped:
            raise RuntimeError(f"{role} was already processed")
        try:
            if len(self._delegated) + len(self._skipped) >= self.limits.max_delegated_roles:
                raise MetadataFormatError(
                    f"more than {self.limits.max_delegated_roles} delegated roles", role=role
                )
            check_meta(raw, self.snapshot_meta_for(role), role=role)
            md = parse_targets(
                raw, role=role, max_bytes=self.limits.max_targets_bytes, limits=self.limits
            )
            signers = verify_threshold(
                md, parent_md.signed.delegations.keys, decl.key_ids, decl.threshold, role=role
            )
            self._check_floor(md.version, role)
            self._check_expiry(md)
        except TrustDataError as e:
            self._skipped[role] = e
            raise
        self._delegated[role] = md
        self._declared[role] = decl
        self._signers[role] = signers
        return md

    def skip_delegation(self, role: str, reason: TrustDataError) -> None:
        """Record that a pending delegated role could not be fetched (treated as invalid)."""
        if role in self._delegated:
            raise RuntimeError(f"{role} is already loaded")
        self._skipped[role] = reason

    # --- persistence -----------------------------------------------------------------------

    def state(self) -> TrustedState:
        """What to persist: current root, highest trusted versions, verified bytes."""
        versions = dict(self._floors)
        metadata: dict[str, bytes] = {}
        loaded: list[
            tuple[
                str, Metadata[Root] | Metadata[Timestamp] | Metadata[Snapshot] | Metadata[Targets]
            ]
        ] = [("root", self._root)]
        if self._timestamp is not None:
            loaded.append(("timestamp", self._timestamp))
        if self._snapshot is not None:
            loaded.append(("snapshot", self._snapshot))
        if self._targets is not None:
            loaded.append(("targets", self._targets))
        loaded.extend(self._delegated.items())
        for name, md in loaded:
            versions[name] = max(versions.get(name, 0), md.version)
            if name != "root":
                metadata[name] = md.raw
        if self._targets is not None:
            # A delegation the publisher removed may come back starting at version 1
            # (``docker trust signer remove`` + ``add``): forget floors of undeclared roles.
            declared = set(self.delegation_names())
            for name in [n for n in versions if n.startswith("targets/")]:
                if name not in declared:
                    del versions[name]
        return TrustedState(
            gun=self.gun,
            root=self._root.raw,
            versions=MappingProxyType(versions),
            metadata=MappingProxyType(metadata),
        )

    @classmethod
    def from_state(
        cls,
        state: TrustedState,
        *,
        gun: str,
        root_of_trust: RootOfTrust,
        reference_time: datetime,
        limits: Limits = DEFAULT_LIMITS,
        allow_expired_root_cert: bool = False,
        replay: bool = True,
    ) -> TrustedSet:
        """Rebuild a set from persisted state, re-verifying every role.

        With ``replay=False`` only the root and the version floors are taken: the start of
        a refresh (``update_root`` ... ``update_targets`` with fresh bytes). With replay, the
        stored timestamp/snapshot/targets/delegations are verified again (a cache hit);
        top-level roles missing from the state are simply not loaded (check ``ts.targets``);
        delegations that fail, or that the state does not hold, are skipped.

        Raises:
            RootOfTrustError: the state belongs to another GUN.
            every error of the constructor and of ``update_timestamp/snapshot/targets``.
        """
        if state.gun != gun:
            raise RootOfTrustError(f"state is for {state.gun!r}, not {gun!r}", role="root")
        ts = cls(
            state.root,
            gun=gun,
            root_of_trust=root_of_trust,
            reference_time=reference_time,
            previous_versions=state.versions,
            limits=limits,
            allow_expired_root_cert=allow_expired_root_cert,
        )
        md = state.metadata
        if not replay or "timestamp" not in md:
            return ts
        ts.update_timestamp(md["timestamp"])
        if "snapshot" not in md:
            return ts
        ts.update_snapshot(md["snapshot"])
        if "targets" not in md:
            return ts
        ts.update_targets(md["targets"])
        while pending := [p for p in ts.pending_delegations() if p.name in md]:
            for p in pending:
                # a failure is recorded in ts.skipped, as in a fresh update
                with contextlib.suppress(TrustDataError):
                    ts.update_delegated_targets(md[p.name], p.name, p.parent)
        for p in ts.pending_delegations():
            # not persisted (skipped or not fetched last time): unusable, never "pending"
            ts.skip_delegation(p.name, HashMismatchError("not in the persisted state", role=p.name))
        return ts

    # --- checks ----------------------------------------------------------------------------

    def _find_declaration(self, name: str) -> DelegatedRole | None:
        parent = self.targets_role(posixpath.dirname(name))
        return None if parent is None else parent.signed.delegations.get(name)

    def _check_floor(self, version: int, role: str) -> None:
        floor = self._floors.get(role, 0)
        current: Metadata[Root] | Metadata[Timestamp] | Metadata[Snapshot] | None = None
        if role == "timestamp":
            current = self._timestamp
        elif role == "snapshot":
            current = self._snapshot
        if current is not None:
            floor = max(floor, current.version)
        if version < floor:
            raise RollbackError(
                f"version {version} is lower than trusted version {floor}",
                role=role,
                field="version",
            )

    def _check_expiry(
        self, md: Metadata[Root] | Metadata[Timestamp] | Metadata[Snapshot] | Metadata[Targets]
    ) -> None:
        if md.expires < self.reference_time:  # notary: IsExpired = expires.Before(now)
            raise ExpiredError(
                f"expired at {md.expires.isoformat()}", role=md.role, field="expires"
            )

    def _verify_top_level(
        self,
        md: Metadata[Timestamp] | Metadata[Snapshot] | Metadata[Targets],
        role: str,
    ) -> tuple[str, ...]:
        r = self._root.signed.roles[role]
        return verify_threshold(md, self._root.signed.keys, r.key_ids, r.threshold, role=role)

    def _anchored_root_keys(
        self, md: Metadata[Root], *, first_use: bool, check_cert_expiry: bool
    ) -> dict[str, PublicKey]:
        """Root role keys that pass notary's leaf checks and the root of trust."""
        root = md.signed
        ok: dict[str, PublicKey] = {}
        problems: list[str] = []
        for kid in root.roles["root"].key_ids:
            key = root.keys[kid]
            problem = leaf_problem(key, self.gun)
            cert = key.certificate
            if (
                problem is None
                and check_cert_expiry
                and cert is not None
                and is_expired(cert, self.reference_time)
            ):
                problem = f"root certificate {kid[:8]} is expired or not yet valid"
            if problem is None and not self.root_of_trust.accepts(
                key, self.reference_time, first_use=first_use
            ):
                problem = (
                    f"root key {kid[:8]} (canonical {key.canonical_id[:8]}) does not match the "
                    f"{type(self.root_of_trust).__name__} root of trust"
                )
            if problem is None:
                ok[kid] = key
            else:
                problems.append(problem)
        if not ok:
            raise RootOfTrustError(
                "; ".join(problems) or "root role has no keys", role="root", field="keys"
            )
        return ok

    def _verify_root(self, md: Metadata[Root], *, prev: Metadata[Root] | None) -> tuple[str, ...]:
        if prev is not None:
            # TUF / notary ValidateRoot: the trusted root's keys must sign their successor.
            pr = prev.signed.roles["root"]
            try:
                verify_threshold(md, prev.signed.keys, pr.key_ids, pr.threshold, role="root")
            except ThresholdError as e:
                raise RootRotationError(
                    f"version {md.version} is not signed by a threshold of version "
                    f"{prev.version}'s root keys: {e}",
                    role="root",
                    field="signatures",
                ) from e
        # Certificate expiry is checked on the final root only (update_timestamp): a
        # trusted root whose cert expired must still be able to sign its successor.
        keys = self._anchored_root_keys(md, first_use=prev is None, check_cert_expiry=False)
        threshold = md.signed.roles["root"].threshold
        return verify_threshold(md, keys, keys.keys(), threshold, role="root")

    def _check_final_root(self) -> None:
        md = self._root
        self._check_expiry(md)
        threshold = md.signed.roles["root"].threshold
        try:
            keys = self._anchored_root_keys(md, first_use=False, check_cert_expiry=True)
            verify_threshold(md, keys, keys.keys(), threshold, role="root")
        except (RootOfTrustError, ThresholdError) as e:
            if not self.allow_expired_root_cert:
                raise RootOfTrustError(
                    f"root certificate not valid at {self.reference_time.isoformat()}: {e}",
                    role="root",
                    field="keys",
                ) from e
            self.expired_root_cert_used = True
