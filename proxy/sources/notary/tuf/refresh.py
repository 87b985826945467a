"""A synchronous driver of :class:`TrustedSet` over a fetch callable (tests, tools, bench).

The I/O shell can mirror this loop with its own (async) fetcher. ``fetch(name)`` returns the
bytes of ``/v2/<gun>/_trust/tuf/<name>``, or None for 404; it should read at most the
role's byte limit plus one (so oversize data fails here, not in memory).

Delegations: notary skips an invalid one, and under Docker's rule ``targets`` then answers
for its tags. Two cases end the refresh instead, because only a trust server working
against us produces them and skipping would let it bring back what a delegation replaced
(Docker gives the server the snapshot key, so it can announce any bytes for a delegation):

* a rolled-back delegation (:class:`RollbackError`, raised by the update itself);
* a withheld one (:func:`check_withheld`): a delegation the previous verified state holds,
  still declared exactly as then, now missing or invalid for any reason but its expiry.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Collection

from proxy.sources.notary.tuf.errors import (
    ExpiredError,
    HashMismatchError,
    RollbackError,
    TrustDataError,
)
from proxy.sources.notary.tuf.metadata import DelegatedRole, is_delegation_name, parse_targets
from proxy.sources.notary.tuf.state import TrustedState
from proxy.sources.notary.tuf.trusted_set import TrustedSet

__all__ = ["Fetch", "MissingMetadataError", "check_withheld", "refresh"]

Fetch = Callable[[str], bytes | None]


class MissingMetadataError(HashMismatchError):
    """A role that the parent announces is absent on the server."""


def refresh(
    ts: TrustedSet,
    fetch: Fetch,
    *,
    delegations: Collection[str] | None = None,
    previous: TrustedState | None = None,
) -> list[TrustDataError]:
    """Walk root versions, then timestamp, snapshot, targets and delegations.

    ``delegations`` limits which delegated roles are fetched (``{"targets/releases"}`` for
    Docker's rule; None = all). ``previous``: the last verified state, for
    :func:`check_withheld`. Returns the errors of skipped delegations.

    Raises:
        TrustDataError: any failure of root, timestamp, snapshot or targets, or a missing
            top-level file.
        RollbackError: also for a delegated role (a rollback is never skipped).
        MissingMetadataError: a delegation of ``previous`` is withheld.
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
            except RollbackError:
                raise  # never skipped: see TrustedSet.update_delegated_targets
            except TrustDataError as e:
                errors.append(e)
    if previous is not None:
        check_withheld(ts, previous)
    return errors


def check_withheld(ts: TrustedSet, previous: TrustedState) -> None:
    """Refuse a refreshed set in which the server withholds a delegation we had verified.

    For every delegated role that ``previous`` holds (it was verified then) and whose
    parent in ``ts`` still declares it with the same keys, threshold and paths: if ``ts``
    skipped it (not listed in the snapshot, not served, hash, format or signatures wrong)
    for any reason but its own expiry, raise. Only a server produces those: the publisher
    keeps a role valid while its declaration stands (notary-server keeps listing and
    serving a delegation even after the publisher removes it), and a publisher who revokes
    a key or removes the role changes or drops the declaration, which stays notary's skip.
    A repository seen for the first time has no ``previous``: notary's rule applies.

    Raises:
        MissingMetadataError: such a delegation is skipped.
        RuntimeError: ``ts`` has no targets loaded (a caller bug).
    """
    if ts.targets is None:
        raise RuntimeError("targets is not loaded: refresh the trusted set first")
    for name in previous.metadata:
        if not is_delegation_name(name) or ts.status(name) != "skipped":
            continue
        reason = ts.skipped.get(name)
        if isinstance(reason, ExpiredError):
            continue  # the publisher let it lapse: notary skips it, so do we
        now = ts.declaration(name)
        if now is None or now != _declared_in(previous, name, ts):
            continue
        why = str(reason) if reason is not None else "it is no longer listed in snapshot"
        raise MissingMetadataError(
            f"verified before and still declared as then, but now invalid ({why}): the "
            f"trust server is withholding it; refusing rather than let "
            f"{posixpath.dirname(name)} answer for its tags",
            role=name,
        )


def _declared_in(state: TrustedState, name: str, ts: TrustedSet) -> DelegatedRole | None:
    """How ``state``'s copy of ``name``'s parent declared it (None: unknown)."""
    parent = posixpath.dirname(name)
    raw = state.metadata.get(parent)
    if raw is None:
        return None
    current = ts.targets_role(parent)
    if current is not None and current.raw == raw:  # unchanged parent: no parse needed
        return current.signed.delegations.get(name)
    try:
        # Only compared, never trusted: a state that is not what we verified can only
        # make this check refuse more, never accept anything.
        md = parse_targets(raw, role=parent, limits=ts.limits)
    except TrustDataError:
        return None
    return md.signed.delegations.get(name)
