"""Notary v1 / Docker Content Trust verification core (pure: no I/O, no clock).

Drive a :class:`TrustedSet` in notary's order (root versions, timestamp, snapshot, targets,
delegations), then resolve tags with :func:`resolve_docker` or
:func:`resolve_required_roles`. Persist :meth:`TrustedSet.state` and rebuild with
:meth:`TrustedSet.from_state` (which re-verifies everything).
"""

from __future__ import annotations

from proxy.trust.canonical import encode_canonical
from proxy.trust.errors import (
    ExpiredError,
    HashMismatchError,
    KeyIdMismatchError,
    MetadataFormatError,
    OversizeMetadataError,
    RollbackError,
    RootOfTrustError,
    RootRotationError,
    SignatureError,
    ThresholdError,
    UnsupportedKeyError,
)
from proxy.trust.keys import PublicKey, compute_key_id, parse_key
from proxy.trust.metadata import (
    DelegatedRole,
    Delegations,
    Limits,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
    parse_root,
    parse_snapshot,
    parse_targets,
    parse_timestamp,
)
from proxy.trust.refresh import Fetch, MissingMetadataError, refresh
from proxy.trust.resolve import (
    RoleRequirement,
    SignedTarget,
    resolve_docker,
    resolve_required_roles,
    signed_tags,
)
from proxy.trust.roots import (
    PinnedRootCerts,
    PinnedRootKeys,
    RootCA,
    RootOfTrust,
    TrustOnFirstUse,
)
from proxy.trust.state import TrustedState
from proxy.trust.trusted_set import PendingRole, TrustedSet, consistent_filename

__all__ = [
    "DelegatedRole",
    "Delegations",
    "ExpiredError",
    "Fetch",
    "HashMismatchError",
    "KeyIdMismatchError",
    "Limits",
    "MetaFile",
    "Metadata",
    "MetadataFormatError",
    "MissingMetadataError",
    "OversizeMetadataError",
    "PendingRole",
    "PinnedRootCerts",
    "PinnedRootKeys",
    "PublicKey",
    "RoleRequirement",
    "RollbackError",
    "Root",
    "RootCA",
    "RootOfTrust",
    "RootOfTrustError",
    "RootRotationError",
    "SignatureError",
    "SignedTarget",
    "Snapshot",
    "TargetFile",
    "Targets",
    "ThresholdError",
    "Timestamp",
    "TrustOnFirstUse",
    "TrustedSet",
    "TrustedState",
    "UnsupportedKeyError",
    "compute_key_id",
    "consistent_filename",
    "encode_canonical",
    "parse_key",
    "parse_root",
    "parse_snapshot",
    "parse_targets",
    "parse_timestamp",
    "refresh",
    "resolve_docker",
    "resolve_required_roles",
    "signed_tags",
]
