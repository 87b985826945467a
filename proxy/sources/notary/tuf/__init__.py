"""Notary v1 / Docker Content Trust verification core (pure: no I/O, no clock).

How a caller (the I/O shell) drives it, per repository (GUN)::

    state = TrustedState.from_bytes(stored) if stored else None
    if state is None:                                  # first contact
        ts = TrustedSet(fetch("root.json"), gun=gun, root_of_trust=rot, reference_time=now)
    else:                                              # refresh with rollback floors
        ts = TrustedSet.from_state(state, gun=gun, root_of_trust=rot, reference_time=now,
                                   replay=False)
    while (raw := fetch(ts.next_root_filename())) is not None:   # "<N+1>.root.json", 404 ends
        ts.update_root(raw)
    ts.update_timestamp(fetch("timestamp.json"))
    ts.update_snapshot(fetch(ts.filename_for("snapshot")))       # "snapshot.<hex>.json"
    ts.update_targets(fetch(ts.filename_for("targets")))
    while pending := ts.pending_delegations({"targets/releases"}):   # or None = all roles
        for p in pending:                                         # "targets/releases.<hex>.json"
            try:
                ts.update_delegated_targets(fetch(p.filename), p.name, p.parent)
            except RollbackError: raise                          # never skipped
            except TrustDataError: ...                           # skipped: log, go on
    if state is not None:
        check_withheld(ts, state)             # a delegation we had, withheld now: refuse
    store(ts.state().to_bytes())
    signed = resolve_docker(ts, tag)          # or resolve_required_roles(ts, tag, reqs)

:func:`walk` is that loop, sans I/O (it yields the file it needs and is sent its bytes);
:func:`refresh` drives it over a synchronous fetch callable, ``NotarySource`` over its
async fetcher: one walk, so the attack tests drive what production runs. A cache hit is
``TrustedSet.from_state(state, ...)`` (replay: every stored byte is verified again).
Any ``TrustDataError`` from root/timestamp/snapshot/targets is fatal for the refresh.
"""

from __future__ import annotations

from proxy.sources.notary.tuf.canonical import encode_canonical
from proxy.sources.notary.tuf.errors import (
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
from proxy.sources.notary.tuf.keys import PublicKey, compute_key_id, parse_key
from proxy.sources.notary.tuf.metadata import (
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
from proxy.sources.notary.tuf.refresh import (
    TIMESTAMP,
    AsyncFetch,
    Fetch,
    Lookahead,
    MissingMetadataError,
    MissingTimestampError,
    Need,
    Walk,
    check_withheld,
    drive,
    refresh,
    walk,
)
from proxy.sources.notary.tuf.resolve import (
    RoleRequirement,
    SignedTarget,
    resolve_docker,
    resolve_required_roles,
    signed_tags,
)
from proxy.sources.notary.tuf.roots import (
    PinnedRootCerts,
    PinnedRootKeys,
    RootCA,
    RootOfTrust,
    TrustOnFirstUse,
)
from proxy.sources.notary.tuf.state import TrustedState
from proxy.sources.notary.tuf.trusted_set import PendingRole, TrustedSet, consistent_filename

__all__ = [
    "TIMESTAMP",
    "AsyncFetch",
    "DelegatedRole",
    "Delegations",
    "ExpiredError",
    "Fetch",
    "HashMismatchError",
    "KeyIdMismatchError",
    "Limits",
    "Lookahead",
    "MetaFile",
    "Metadata",
    "MetadataFormatError",
    "MissingMetadataError",
    "MissingTimestampError",
    "Need",
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
    "Walk",
    "check_withheld",
    "compute_key_id",
    "consistent_filename",
    "drive",
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
    "walk",
]
