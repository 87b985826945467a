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
fetched alongside the probe may predate the rotation: signed with a key the new root
no longer lists, it would fail the refresh).

Fetching early (:class:`Lookahead`, :func:`drive` only): each round trip of a cold walk
waits for the one before (root, then timestamp, then the snapshot it names, then the
targets that names), yet the names are known sooner. ``timestamp.json`` does not depend on
root, so a cold refresh fetches it beside ``root.json`` (a repository without trust data
then answers two 404s, not one); and as soon as the bytes of a timestamp (or snapshot)
arrive, before they are verified, the snapshot (or targets) they name is fetched, cold or
not, unless the walk's ``known`` bytes are that file. A cold walk then takes three round
trips, not four. Those names come from bytes nobody vouched for yet, so what they bring
is a guess, never an input: the walk takes it only when it asks, after verifying the
parent, for that very name, with the length and sha256 the verified parent announces
(:attr:`Need.meta`); it then verifies it like a fetched file. Anything else (another name,
other bytes, a 404, a failed or oversize fetch) is dropped and the file fetched as without
it. One early fetch per role and walk: a lying server costs at most one wasted request per
role (bounded by the role's byte limit), an honest one exactly the requests of the
sequential walk. The timestamp fetched early is dropped after a new root, like the one
fetched ahead. Delegations are not fetched early (a snapshot may list some that no
verified role declares any more: fetching them would be requests the walk does not make).

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
from typing import Final

from proxy.sources.notary.tuf.errors import (
    ExpiredError,
    HashMismatchError,
    RollbackError,
    TrustDataError,
)
from proxy.sources.notary.tuf.metadata import (
    DelegatedRole,
    Limits,
    MetaFile,
    is_delegation_name,
    parse_snapshot,
    parse_targets,
    parse_timestamp,
)
from proxy.sources.notary.tuf.state import TrustedState
from proxy.sources.notary.tuf.trusted_set import TrustedSet, consistent_filename

__all__ = [
    "TIMESTAMP",
    "AsyncFetch",
    "Fetch",
    "Lookahead",
    "MissingMetadataError",
    "MissingTimestampError",
    "Need",
    "Walk",
    "check_withheld",
    "drive",
    "named_next",
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
    (worth fetching at the same time); ``meta``: the length and hashes its verified parent
    announces (None: a root or the timestamp, vouched for by signatures alone); ``fresh``:
    no copy fetched before this point may answer (the timestamp after a new root)."""

    name: str
    role: str
    ahead: tuple[Need, ...] = ()
    meta: MetaFile | None = None
    fresh: bool = False


#: what every walk asks for, whatever root says (a cold refresh fetches it beside root.json)
TIMESTAMP: Final = Need("timestamp.json", "timestamp")


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
    timestamp = TIMESTAMP
    # The timestamp rides along with the first probe; after a new root it is asked afresh.
    probe = Need(ts.next_root_filename(), "root", ahead=(timestamp,))
    while (raw := (yield probe)) is not None:
        ts.update_root(raw)
        probe = Need(ts.next_root_filename(), "root")
        timestamp = Need(TIMESTAMP.name, TIMESTAMP.role, fresh=True)
    raw = yield timestamp
    if raw is None:
        raise MissingTimestampError("timestamp.json not found", role="timestamp")
    ts.update_timestamp(raw)
    for role in ("snapshot", "targets"):
        name = ts.filename_for(role)
        raw = _reusable(held, role, name)
        if raw is None:
            raw = yield Need(name, role, meta=ts.snapshot_meta_for(role))
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
        wanted = [Need(p.filename, p.name, meta=p.meta) for p in pending if reused[p.name] is None]
        for p in pending:
            raw = reused[p.name]
            if raw is None:
                need = wanted.pop(0)
                raw = yield Need(need.name, need.role, ahead=tuple(wanted), meta=need.meta)
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


async def drive(
    steps: Walk, fetch: AsyncFetch, *, lookahead: Lookahead | None = None
) -> list[TrustDataError]:
    """Run ``steps`` (a :func:`walk`) over an async ``fetch``, fetching each need's
    ``ahead`` at the same time, and with a ``lookahead`` (over the same fetch, given the
    walk's ``known``), fetching early. Raises what the walk or ``fetch`` raises.

    A file fetched ahead answers the walk only if the walk asks for it before the next
    fetch: whatever the walk asks for that is not held is fetched, and what was held is
    dropped first (after a new root, the timestamp is fetched again). A failed fetch ahead
    raises only when the walk asks for that file. A file fetched early answers only as
    :meth:`Lookahead.take` allows; whatever it does not is fetched. Every fetch, early ones
    included, has ended when this returns or raises (none is left running).
    """
    held: dict[str, bytes | BaseException | None] = {}
    try:
        need = next(steps)
        while True:
            early: bytes | None = None
            if lookahead is not None:
                if need.fresh:
                    lookahead.forget(need.name)
                elif need.name not in held:
                    early = await lookahead.take(need)
            result: bytes | BaseException | None
            if early is not None:
                result = early
            elif need.name in held:
                result = held.pop(need.name)
            else:
                held.clear()
                batch = [
                    need,
                    *(
                        a
                        for a in need.ahead
                        if a.name != need.name
                        and (lookahead is None or not lookahead.started(a.name))
                    ),
                ]
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
            if lookahead is not None and early is None and result is not None:
                # Its bytes name the next file: fetch it while the walk verifies these
                # (bytes fetched early were followed as they arrived).
                lookahead.follow(need, result)
            need = steps.send(result)
    except StopIteration as done:
        errors: list[TrustDataError] = done.value
        return errors
    finally:
        steps.close()
        if lookahead is not None:
            await lookahead.aclose()


class Lookahead:
    """Early fetches for one walk under :func:`drive` (see the module docstring): files
    fetched on names read from bytes not verified yet, so that they have arrived, or are
    on their way, when the walk asks for them.

    :meth:`start` fetches a file now, and the file its bytes name next as soon as they
    arrive (:meth:`follow`); :meth:`take` hands the walk what it may use. At most one early
    fetch per role; none of a file whose bytes ``known`` holds under the announced hash
    (the walk reuses those: fetching them would be a request the sequential walk does not
    make). :meth:`aclose` ends every early fetch still running (:func:`drive` calls it).
    """

    def __init__(
        self,
        fetch: AsyncFetch,
        *,
        limits: Limits,
        known: Mapping[str, bytes] | None = None,
    ) -> None:
        self._fetch = fetch
        self._limits = limits
        self._known = known or {}
        self._roles: set[str] = set()
        self._fetched: dict[str, asyncio.Task[bytes | None]] = {}
        self._running: set[asyncio.Task[bytes | None]] = set()
        self._closed = False

    def start(self, need: Need) -> None:
        """Fetch ``need`` now, unless its role was fetched early already in this walk."""
        if self._closed or need.role in self._roles:
            return
        self._roles.add(need.role)
        task = asyncio.create_task(self._fetch_and_follow(need))
        self._fetched[need.name] = task
        self._running.add(task)
        task.add_done_callback(self._ended)

    def started(self, name: str) -> bool:
        """Whether ``name`` is fetched early (and not taken or forgotten yet)."""
        return name in self._fetched

    def follow(self, need: Need, raw: bytes) -> None:
        """Start fetching what ``raw``, the bytes of ``need`` (verified or not), names next:
        a timestamp's snapshot, a snapshot's targets."""
        names = _NAMES_NEXT.get(need.role)
        if self._closed or names is None or names in self._roles:
            return  # nothing to start: spare the parse
        nxt = named_next(need.role, raw, limits=self._limits)
        if nxt is not None and not _matches(self._known.get(nxt.role), nxt.meta):
            self.start(Need(nxt.name, nxt.role))

    async def take(self, need: Need) -> bytes | None:
        """The bytes fetched early for ``need`` if the walk may use them, else None (the
        caller fetches it): they must have been fetched under ``need.name`` and have the
        length and sha256 of ``need.meta`` (which the walk checks again, with every other
        hash, as for fetched bytes). A failed early fetch is no error of the walk's."""
        task = self._fetched.pop(need.name, None)
        if task is None:
            return None
        try:
            raw = await task
        except Exception:  # a guess that failed: the walk fetches the file itself
            return None
        if raw is None:
            return None  # a 404 counts once the walk asks for the file itself
        if need.meta is not None and not _matches(raw, need.meta):
            return None
        return raw

    def forget(self, name: str) -> None:
        """Drop what was fetched early under ``name`` (a timestamp older than a new root)."""
        task = self._fetched.pop(name, None)
        if task is not None:
            task.cancel()

    async def aclose(self) -> None:
        """End every early fetch still running; start no other."""
        self._closed = True
        self._fetched.clear()
        while self._running:
            running = list(self._running)
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    def _ended(self, task: asyncio.Task[bytes | None]) -> None:
        self._running.discard(task)
        if not task.cancelled():
            task.exception()  # a failure is only reported if the walk takes the file

    async def _fetch_and_follow(self, need: Need) -> bytes | None:
        raw = await self._fetch(need)
        if raw is not None:
            self.follow(need, raw)
        return raw


#: role -> the role whose file its bytes name (the consistent name, by hash)
_NAMES_NEXT: Final = {"timestamp": "snapshot", "snapshot": "targets"}


def named_next(role: str, raw: bytes, *, limits: Limits) -> Need | None:
    """The file that ``raw``, ``role``'s bytes, names next: a timestamp's snapshot, a
    snapshot's targets (consistent name; ``meta``: what ``raw`` announces for it); None
    for another role or bytes that do not parse. Nothing is verified: a guess for
    :class:`Lookahead`, never an input."""
    try:
        if role == "timestamp":
            meta = parse_timestamp(raw, limits=limits).signed.snapshot
            return Need(consistent_filename("snapshot", meta), "snapshot", meta=meta)
        if role == "snapshot":
            listed = parse_snapshot(raw, limits=limits).signed.meta.get("targets")
            if listed is not None:
                return Need(consistent_filename("targets", listed), "targets", meta=listed)
    except TrustDataError:
        pass  # the walk will refuse them, or fetch what its verified parent names
    return None


def _matches(raw: bytes | None, meta: MetaFile | None) -> bool:
    """Whether ``raw`` has the length and sha256 ``meta`` announces (the sha256 is the
    one in the file's consistent name; the length, compared first, spares most hashing)."""
    return (
        raw is not None
        and meta is not None
        and len(raw) == meta.length
        and hashlib.sha256(raw).digest() == meta.hashes.get("sha256")
    )


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
