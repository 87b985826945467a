"""The Notary refresh walk, once: :func:`walk` is the sans-I/O driver of a :class:`TrustedSet`
(it yields which file it needs and is sent its bytes); :func:`refresh` runs it over a
synchronous fetch callable (tests, tools, bench), ``NotarySource`` over its async fetcher
(production), and :func:`drive` over an async fetch callable, fetching ahead (below). All
run this code, so the attack tests test what serves.

Fetching ahead: a :class:`Need` may name files the walk will ask for next whatever the
answer (``ahead``): ``timestamp.json`` alongside the first next-root probe, the other
delegations of one level alongside the first. :func:`drive` fetches them at the same time;
:func:`refresh` one after the other. Only fetching moves: every file is still verified in
the order TUF sets (the root chain before the timestamp, a verified snapshot before the
targets hashes it vouches for, a parent before its delegations), and the bytes fetched
ahead are checked like any. After a new root the walk asks for the timestamp afresh (one
fetched alongside the probe may predate the rotation).

A fetch returns the bytes of ``/v2/<gun>/_trust/tuf/<name>``, or None for 404; it should read
at most the role's byte limit plus one (so oversize data fails here, not in memory).

Delegations: notary skips an invalid one, and under Docker's rule ``targets`` then answers
for its tags. Two cases end the refresh instead, because only a trust server working
against us produces them and skipping would let it bring back what a delegation replaced
(Docker gives the server the snapshot key, so it can announce any bytes for a delegation):

* a rolled-back delegation (:class:`RollbackError`, raised by the update itself);
* a withheld one (:func:`check_withheld`): a delegation the previous verified state holds,
  still declared exactly as then, now missing or invalid for any reason but its expiry.
"""

from __future__ import annotations

import asyncio
import hashlib
import posixpath
from collections.abc import Awaitable, Callable, Collection, Generator, Mapping
from dataclasses import dataclass

from proxy.sources.notary.tuf.errors import (
    ExpiredError,
    HashMismatchError,
    RollbackError,
    TrustDataError,
)
from proxy.sources.notary.tuf.metadata import DelegatedRole, is_delegation_name, parse_targets
from proxy.sources.notary.tuf.state import TrustedState
from proxy.sources.notary.tuf.trusted_set import TrustedSet

__all__ = [
    "AsyncFetch",
    "Fetch",
    "MissingMetadataError",
    "MissingTimestampError",
    "Need",
    "Walk",
    "check_withheld",
    "drive",
    "refresh",
    "walk",
]

Fetch = Callable[[str], bytes | None]


class MissingMetadataError(HashMismatchError):
    """A role that the parent announces is absent on the server."""


class MissingTimestampError(MissingMetadataError):
    """``timestamp.json`` is gone (``notary delete --remote`` removes every file; the root
    we hold stays pinned). A source reports it as "no trust data"."""


@dataclass(frozen=True)
class Need:
    """The file the walk needs next: ``name`` under ``_trust/tuf/``, read with ``role``'s
    byte limit; ``ahead``: files it will ask for right after, whatever this one holds
    (worth fetching at the same time)."""

    name: str
    role: str
    ahead: tuple[Need, ...] = ()


AsyncFetch = Callable[[Need], Awaitable[bytes | None]]


#: ``walk(...)``: yields what it needs, is sent the bytes (None: 404), returns the errors
#: of skipped delegations.
Walk = Generator[Need, bytes | None, list[TrustDataError]]


def walk(
    ts: TrustedSet,
    *,
    delegations: Collection[str] | None = None,
    previous: TrustedState | None = None,
    known: Mapping[str, bytes] | None = None,
) -> Walk:
    """Walk root versions, then timestamp, snapshot, targets and delegations.

    ``delegations`` limits which delegated roles are fetched (``{"targets/releases"}`` for
    Docker's rule; None = all). ``previous``: the last verified state, for
    :func:`check_withheld`. ``known``: verified bytes already held, by role; reused
    without a fetch when the parent announces exactly their hash (python-tuf loads its
    local snapshot the same way), and checked again by the update like fetched bytes.
    Returns the errors of skipped delegations.

    Raises:
        TrustDataError: any failure of root, timestamp, snapshot or targets, or a missing
            top-level file (:class:`MissingTimestampError` for the timestamp).
        RollbackError: also for a delegated role (a rollback is never skipped).
        MissingMetadataError: a delegation of ``previous`` is withheld.
    """
    held = known or {}
    timestamp = Need("timestamp.json", "timestamp")
    # The timestamp rides along with the first probe; after a new root it is asked afresh.
    probe = Need(ts.next_root_filename(), "root", ahead=(timestamp,))
    while (raw := (yield probe)) is not None:
        ts.update_root(raw)
        probe = Need(ts.next_root_filename(), "root")
    raw = yield timestamp
    if raw is None:
        raise MissingTimestampError("timestamp.json not found", role="timestamp")
    ts.update_timestamp(raw)
    for role in ("snapshot", "targets"):
        name = ts.filename_for(role)
        raw = _reusable(held, role, name)
        if raw is None:
            raw = yield Need(name, role)
        if raw is None:
            raise MissingMetadataError(f"{name} not found", role=role)
        if role == "snapshot":
            ts.update_snapshot(raw)
        else:
            ts.update_targets(raw)
    errors: list[TrustDataError] = []
    while pending := ts.pending_delegations(delegations):
        # One level at a time: each is verified against its parent, which is verified.
        reused = {p.name: _reusable(held, p.name, p.filename) for p in pending}
        wanted = [Need(p.filename, p.name) for p in pending if reused[p.name] is None]
        for p in pending:
            raw = reused[p.name]
            if raw is None:
                need = wanted.pop(0)
                raw = yield Need(need.name, need.role, ahead=tuple(wanted))
            if raw is None:
                err: TrustDataError = MissingMetadataError(f"{p.filename} not found", role=p.name)
                ts.skip_delegation(p.name, err)
                errors.append(err)
                continue
            try:
                ts.update_delegated_targets(raw, p.name, p.parent)
            except RollbackError:
                # Older than a version of this (still declared) role that we verified:
                # the server is rolling it back. Skipping it, as notary does with an
                # invalid delegation, would hand its tags to targets (releases wins).
                raise
            except TrustDataError as e:
                errors.append(e)  # notary skips an invalid delegation; resolution ignores it
    if previous is not None:
        # ... unless we had verified it and it is still declared as then: a server
        # withholding it must not hand its tags to the parent.
        check_withheld(ts, previous)
    return errors


def refresh(
    ts: TrustedSet,
    fetch: Fetch,
    *,
    delegations: Collection[str] | None = None,
    previous: TrustedState | None = None,
    known: Mapping[str, bytes] | None = None,
) -> list[TrustDataError]:
    """:func:`walk` over a synchronous ``fetch(name)``. Raises what :func:`walk` raises."""
    steps = walk(ts, delegations=delegations, previous=previous, known=known)
    try:
        need = next(steps)
        while True:
            need = steps.send(fetch(need.name))
    except StopIteration as done:
        errors: list[TrustDataError] = done.value
        return errors


async def drive(steps: Walk, fetch: AsyncFetch) -> list[TrustDataError]:
    """Run ``steps`` (a :func:`walk`) over an async ``fetch``, fetching each need's
    ``ahead`` at the same time. Raises what the walk or ``fetch`` raises.

    A file fetched ahead answers the walk only if the walk asks for it before the next
    fetch: whatever the walk asks for that is not held is fetched, and what was held is
    dropped first (after a new root, the timestamp is fetched again). A failed fetch ahead
    raises only when the walk asks for that file. Every fetch has ended when this returns
    or raises (none is left running).
    """
    held: dict[str, bytes | BaseException | None] = {}
    try:
        need = next(steps)
        while True:
            if need.name in held:
                result = held.pop(need.name)
            else:
                held.clear()
                batch = [need, *(a for a in need.ahead if a.name != need.name)]
                if len(batch) == 1:
                    result = await fetch(need)
                else:
                    results = await asyncio.gather(
                        *(fetch(n) for n in batch), return_exceptions=True
                    )
                    result = results[0]
                    held = {n.name: r for n, r in zip(batch[1:], results[1:], strict=True)}
            if isinstance(result, BaseException):
                raise result
            need = steps.send(result)
    except StopIteration as done:
        errors: list[TrustDataError] = done.value
        return errors
    finally:
        steps.close()


def _reusable(known: Mapping[str, bytes], role: str, filename: str) -> bytes | None:
    raw = known.get(role)
    if raw is not None and filename == f"{role}.{hashlib.sha256(raw).hexdigest()}.json":
        return raw
    return None


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
