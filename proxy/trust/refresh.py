"""A synchronous driver of :class:`TrustedSet` over a fetch callable (tests, tools, bench).

The I/O shell can mirror this loop with its own (async) fetcher. ``fetch(name)`` returns the
bytes of ``/v2/<gun>/_trust/tuf/<name>``, or None for 404; it should read at most the
role's byte limit plus one (so oversize data fails here, not in memory).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from proxy.trust.errors import HashMismatchError, TrustDataError
from proxy.trust.trusted_set import TrustedSet

__all__ = ["Fetch", "MissingMetadataError", "refresh"]

Fetch = Callable[[str], bytes | None]


class MissingMetadataError(HashMismatchError):
    """A role that the parent announces is absent on the server."""


def refresh(
    ts: TrustedSet, fetch: Fetch, *, delegations: Collection[str] | None = None
) -> list[TrustDataError]:
    """Walk root versions, then timestamp, snapshot, targets and delegations.

    ``delegations`` limits which delegated roles are fetched (``{"targets/releases"}`` for
    Docker's rule; None = all). Returns the errors of skipped delegations.

    Raises:
        TrustDataError: any failure of root, timestamp, snapshot or targets, or a missing
            top-level file.
    """
    while (raw := fetch(ts.next_root_filename())) is not None:
        ts.update_root(raw)
    for role in ("timestamp", "snapshot", "targets"):
        name = "timestamp.json" if role == "timestamp" else ts.filename_for(role)
        raw = fetch(name)
        if raw is None:
            raise MissingMetadataError(f"{name} not found", role=role)
        if role == "timestamp":
            ts.update_timestamp(raw)
        elif role == "snapshot":
            ts.update_snapshot(raw)
        else:
            ts.update_targets(raw)
    errors: list[TrustDataError] = []
    while pending := ts.pending_delegations(delegations):
        for p in pending:
            raw = fetch(p.filename)
            if raw is None:
                err: TrustDataError = MissingMetadataError(f"{p.filename} not found", role=p.name)
                ts.skip_delegation(p.name, err)
                errors.append(err)
                continue
            try:
                ts.update_delegated_targets(raw, p.name, p.parent)
            except TrustDataError as e:
                errors.append(e)
    return errors
