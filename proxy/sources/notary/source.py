"""The Notary v1 trust source: fetcher + state store + the pure verification core.

Per repository (GUN) and root of trust, one verified :class:`~.tuf.TrustedSet` is
kept in process for ``fresh_for``; after that the next request refreshes it::

    hot set fresh?            -> use it (it was verified in this process)
    otherwise refresh         -> from the stored root and version floors (rollback
                                 protection; this process's own floors on top), or
                                 root.json at first contact; walk <N+1>.root.json until
                                 404, then timestamp, snapshot, targets, every delegation
                                 by consistent name (bytes we hold whose hash the parent
                                 announces are reused, not refetched: an unchanged
                                 repository costs a root probe and timestamp.json, and a
                                 state another replica stored spares the rest, but never
                                 the signed timestamp: see below); the whole walk within
                                 ``refresh_deadline``; an invalid delegation is skipped
                                 (notary), unless it is rolled back or withheld (one the
                                 stored state verified, still declared as then): that
                                 ends the refresh (``proxy.sources.notary.tuf.refresh``)
    refresh could not fetch   -> (unreachable, timed out, past the refresh deadline)
                                 the last state, re-verified at "now" (so only while
                                 unexpired), with a warning; failing that, and only
                                 then, re-verified at "now - expiry_grace" (the rule's
                                 grace past expiry); nothing valid -> unavailable
    root.json / timestamp.json 404 -> NoTrustDataError (the repository has no trust data)

A stored state is never taken as fresh: the store (Redis) is untrusted, and whoever writes
it can put back an older, genuine state with a fetch time of "now". Only the trust server's
signed timestamp says what is current, so every refresh fetches it (and probes for a new
root); the stored state saves the rest of the walk. The rollback floors this process has
verified live in a :class:`~proxy.sources.store.RollbackFloors` map apart from the hot cache
(which requests for other repositories evict), and are applied on top of whatever the store
says, so neither an eviction nor a store rolled back, flushed or down lowers them. When
the store offers :class:`~proxy.sources.store.SharedFloors` (the host's state file, shared
by the workers of ``serve``), every refresh first raises them with what the other workers
verified, and every verified set raises the shared ones: a worker never goes below a
version another worker of the host has seen.

The hot layer is the generic :class:`~proxy.sources.answer_cache.AnswerCache`: one entry
per repository and rule key (a verified set, or the refusal of the last attempt), fresh until
the entry's own end (``fresh_for`` after a refresh, ``retry_after`` after a failure or a
stale answer, the handed-over window, never past the data's expiry except within the
rule's grace for stale data), least recently used out, one refresh for concurrent misses.
Its own grace is off: serving stale Notary data needs the re-verification above (at "now",
then at "now - expiry_grace"), which only this source can do, so the fallback runs inside
the refresh and hands the cache an entry marked stale.

Concurrent requests for the same repository share one refresh; with a store that offers a
:class:`~proxy.sources.flight.ReplicaLock` (Redis), replicas also take turns: one refreshes,
the others wait for the state it saves and then refresh from it (timestamp and root probe
only, when nothing changed meanwhile). A sibling worker of the same host that waited uses
that state as it is instead, when the store vouches for it
(:class:`~proxy.sources.store.VouchingStore`: the host's state file, with or without
Redis; see ``_handoff``). The warm path (a hot set still fresh) touches neither
the store nor a signature: it is a dictionary lookup and a tag resolution. The clock is injected;
the core never reads it. Metrics: ``trustproxy_trust_cache_total`` counts each lookup once
(the cache's: ``hit``: a fresh entry, or a sibling's hand-over; ``miss``: a refresh answered;
``stale_served``: the refresh failed and cached data answered), and
``trustproxy_trust_refresh_seconds`` times each network refresh.

Every delegation is fetched, not only the ones the rule reads: one cached state then
answers every rule (Docker's and required roles) and ``trust inspect``, and notary's
repositories rarely hold more than a handful of delegations (``limits.max_delegated_roles``
bounds the rest).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from proxy.errors import NotSignedError, TrustDataError, TrustSourceUnavailableError
from proxy.metrics import TRUST_REFRESH_SECONDS
from proxy.settings import CacheSettings, LimitSettings, TrustSourceSettings
from proxy.sources.answer_cache import AnswerCache
from proxy.sources.base import (
    ManifestPrefetch,
    NoTrustDataError,
    RegistryReads,
    SignedState,
    TrustInfo,
)
from proxy.sources.flight import ReplicaLock, take_turn
from proxy.sources.invalidation import InvalidationTimes
from proxy.sources.notary.fetcher import NotaryFetcher
from proxy.sources.notary.rules import (
    NotSignedByError,
    SignersDisagreeError,
    SigningRule,
    TooFewSignaturesError,
)
from proxy.sources.notary.tuf import (
    TIMESTAMP,
    AsyncFetch,
    Limits,
    Lookahead,
    MetadataFormatError,
    MissingTimestampError,
    Need,
    RollbackError,
    RootOfTrust,
    SignedTarget,
    TargetFile,
    TrustedSet,
    TrustedState,
    drive,
    resolve_docker,
    resolve_required_roles,
    signed_tags,
    walk,
)
from proxy.sources.notary.tuf.resolve import DOCKER_ROLES, lookup
from proxy.sources.store import (
    STATE_MAX_BYTES,
    Judge,
    RollbackFloors,
    SharedFloors,
    StoreUnavailableError,
    TrustStateStore,
    VouchingStore,
)
from proxy.upstream.auth import UpstreamAuthenticator
from proxy.upstream.client import make_http_client

__all__ = [
    "NotarySource",
    "NotarySourceOptions",
    "acceptable_tags",
    "decode_record",
    "encode_record",
    "metadata_versions",
    "resolve_under_rule",
    "state_generation",
    "trust_info_of",
    "verified_generation",
]

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
_RECORD_MAGIC = b"trustproxy-notary-state/1 "


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class NotarySourceOptions:
    """Tuning of a :class:`NotarySource` (defaults suit a proxy)."""

    #: how long verified data is used before the next request refreshes it
    fresh_for: timedelta = timedelta(seconds=60)
    #: after a failed refresh (outage, bad data), how long to wait before trying again;
    #: requests meanwhile get the cached answer instead of each waiting for a timeout
    retry_after: timedelta = timedelta(seconds=10)
    #: repositories kept verified in process (least recently used out)
    max_hot_entries: int = 1024
    #: repositories whose rollback floors are remembered in process, apart from the hot
    #: cache (least recently raised out; only verified repositories count)
    max_floor_entries: int = 65_536
    #: the largest stored state accepted from the store (it holds every role, base64)
    state_max_bytes: int = STATE_MAX_BYTES
    #: size and count limits of the verification core (byte limits also cap fetches)
    limits: Limits = field(default_factory=Limits)
    #: while another replica holds the refresh lock, how often to look for its result
    flight_poll: timedelta = timedelta(milliseconds=75)
    #: bound on one whole refresh, every file it fetches included (None: only the
    #: fetcher's per-file deadline). Without it a server that sends each file just inside
    #: the per-file deadline holds a cold request for (files) x (deadline).
    refresh_deadline: timedelta | None = None


def encode_record(state: TrustedState, fetched_at: datetime) -> bytes:
    """What goes into the store: when the state was fetched, then the state itself."""
    stamp = fetched_at.astimezone(UTC).isoformat().encode("ascii")
    return _RECORD_MAGIC + stamp + b"\n" + state.to_bytes()


def decode_record(data: bytes, *, max_bytes: int) -> tuple[datetime, TrustedState]:
    """Parse a stored record (shape only: the caller re-verifies the state).

    Raises:
        TrustDataError: not a record (``MetadataFormatError``) or too large
            (``OversizeMetadataError``).
    """
    header, sep, body = data.partition(b"\n")
    if not sep or not header.startswith(_RECORD_MAGIC):
        raise MetadataFormatError("not a trustproxy notary state record", role="state")
    try:
        fetched_at = datetime.fromisoformat(header[len(_RECORD_MAGIC) :].decode("ascii"))
    except (UnicodeDecodeError, ValueError) as e:
        raise MetadataFormatError("bad fetch time", role="state") from e
    if fetched_at.tzinfo is None:
        raise MetadataFormatError("fetch time without time zone", role="state")
    return fetched_at, TrustedState.from_bytes(body, max_bytes=max_bytes)


@dataclass
class _Hot:
    """A verified set (or the failure of the last attempt) and when to look again."""

    ts: TrustedSet | None
    error: Exception | None
    refresh_at: datetime
    #: earliest expiry among the loaded roles: past it, the set must not be used
    expires: datetime
    #: served after a failed refresh: may be used up to the key's grace past ``expires``
    stale: bool = False
    #: the last verified set, kept through failures: its versions stay rollback floors
    #: even when the store lost them (Redis down or flushed)
    last: TrustedSet | None = None
    #: ``trust_info`` of ``ts``, built on first use (the warm path asks on every request)
    info: TrustInfo | None = None
    #: ``acceptable_tags(ts, rule)`` per rule, built on first use: tag lists and pulls by
    #: digest ask on every request, and for 10,000 tags it costs ~100 ms
    acceptable: dict[SigningRule, dict[str, SignedTarget]] = field(default_factory=dict)
    #: the rule's expiry_grace (part of the cache key): how long past ``expires`` a stale
    #: entry may still answer
    grace: timedelta = timedelta(0)
    #: a state a sibling worker verified and handed over (counted as a hit, not a refresh)
    handed: bool = False

    @property
    def usable_until(self) -> datetime:
        """When the entry stops answering: at ``refresh_at``, and never past expiry, except
        for data served after a failed refresh, within grace (a fresh entry that expires
        is refreshed first: the grace is for outages). Usable *at* the expiry instant."""
        end = self.expires + self.grace if self.stale else self.expires
        return min(self.refresh_at, end + _INSTANT)


def _hot_until(hot: _Hot, computed_at: datetime) -> datetime:
    return hot.usable_until


def _hot_kind(hot: _Hot) -> str | None:
    """What a lookup answered by ``hot`` counts as (None: the cache's hit / miss)."""
    if hot.stale:
        return "stale_served"
    return "hit" if hot.handed else None


# The grace is part of the key: a rule without grace must never see what a rule with
# grace accepted past expiry (and a shared refresh must not decide with another's grace).
_Key = tuple[str, RootOfTrust, bool, timedelta]
#: files asked for by the refresh running in this task (for the refresh deadline's message)
_ASKED: ContextVar[list[str] | None] = ContextVar("trustproxy_notary_asked", default=None)
#: set by ``resolve`` around its load: told the set a refresh that request started has just
#: verified (before the floors and the stored state are written, so nothing is served yet)
_ON_VERIFIED: ContextVar[Callable[[TrustedSet], None] | None] = ContextVar(
    "trustproxy_notary_on_verified", default=None
)
_TOP_LEVEL_ROLES = frozenset({"root", "timestamp", "snapshot", "targets"})
_INSTANT = timedelta(microseconds=1)


def _earliest_expiry(ts: TrustedSet) -> datetime:
    times = [ts.root.expires]
    times.extend(md.expires for md in (ts.timestamp, ts.snapshot, ts.targets) if md is not None)
    times.extend(md.expires for md in ts.delegated.values())
    return min(times)


class NotarySource:
    """A :class:`~proxy.sources.base.TrustSource` backed by one notary-server.

    ``fetcher`` belongs to the source (``aclose`` closes it); ``store`` is shared and
    outlives it.
    """

    def __init__(
        self,
        fetcher: NotaryFetcher,
        store: TrustStateStore,
        *,
        clock: Clock = utc_now,
        options: NotarySourceOptions | None = None,
        flight: ReplicaLock | None = None,
    ) -> None:
        self._fetcher = fetcher
        self._store = store
        # A shared store that can lock (Redis) makes replicas take turns refreshing.
        self._flight = flight if flight is not None else _lock_of(store)
        # The workers of one host share their floors (the state file): see _sync_floors.
        self._shared_floors = store if isinstance(store, SharedFloors) else None
        # Sibling workers hand over what they verified (see _handoff).
        self._vouching = store if isinstance(store, VouchingStore) else None
        self._clock = clock
        self.options = options or NotarySourceOptions()
        # Verified sets (and refusals) in process: freshness per entry, LRU, single flight,
        # per-source counters. Its grace stays 0: see the module docstring.
        self._hot: AnswerCache[_Key, _Hot] = AnswerCache(
            fetcher.name,
            clock=clock,
            fresh_for=self.options.fresh_for,
            max_entries=self.options.max_hot_entries,
            fresh_until=_hot_until,
            kind_of=_hot_kind,
        )
        self._seen = RollbackFloors(self.options.max_floor_entries)
        # When each repository was last invalidated (see invalidate and _handoff).
        self._invalidated = InvalidationTimes(self.options.max_floor_entries)

    @classmethod
    def from_settings(
        cls,
        settings: TrustSourceSettings,
        limits: LimitSettings,
        store: TrustStateStore,
        *,
        clock: Clock = utc_now,
        options: NotarySourceOptions | None = None,
        cache: CacheSettings | None = None,
    ) -> NotarySource:
        """A source for a configured notary-server: TLS with its CA, Bearer auth with its
        credentials, the configured timeouts, and ``metadata_max_bytes`` per role file.
        Freshness is the source's ``refresh_interval``, else ``cache.refresh_seconds``.
        One fetch, and one whole refresh, may take ``limits.request_timeout`` (as any
        upstream exchange; default twice ``read_timeout``)."""
        # A whole refresh gets the bound of one fetch: a healthy server answers each file in
        # milliseconds, and a slow one must not hold a cold request for files x deadline.
        deadline = limits.request_deadline
        opts = options or NotarySourceOptions(
            fresh_for=timedelta(seconds=settings.fresh_for(cache or CacheSettings())),
            retry_after=timedelta(seconds=settings.retry_interval),
            refresh_deadline=timedelta(seconds=deadline),
        )
        core = opts.limits
        cap = limits.metadata_max_bytes
        opts = dataclasses.replace(
            opts,
            limits=dataclasses.replace(
                core,
                max_root_bytes=min(core.max_root_bytes, cap),
                max_timestamp_bytes=min(core.max_timestamp_bytes, cap),
                max_snapshot_bytes=min(core.max_snapshot_bytes, cap),
                max_targets_bytes=min(core.max_targets_bytes, cap),
            ),
        )
        http = make_http_client(limits, str(settings.ca_file) if settings.ca_file else None)
        creds = settings.credentials
        auth = UpstreamAuthenticator(
            http,
            settings.name,
            username=creds.username if creds.present else None,
            password=creds.password if creds.present else None,
        )
        fetcher = NotaryFetcher(settings.name, settings.url, http, auth=auth, deadline=deadline)
        return cls(fetcher, store, clock=clock, options=opts)

    @property
    def name(self) -> str:
        return self._fetcher.name

    @property
    def url(self) -> str:
        return self._fetcher.url

    async def aclose(self) -> None:
        self._hot.cancel_all()
        await self._fetcher.aclose()

    # --- the TrustSource interface ----------------------------------------------------------

    # ``registry``, ``tags`` and ``digests`` are not needed: the trust server's data names
    # every signed tag and digest of the repository.

    async def resolve(
        self,
        gun: str,
        tag: str,
        rule: SigningRule,
        *,
        registry: RegistryReads | None = None,
    ) -> SignedTarget:
        """See :meth:`proxy.sources.base.TrustSource.resolve`.

        A cold request waits for its refresh to write the rollback floors and the stored
        state after verification; with a registry that can prefetch, the manifest under
        the digest the verified set signs for ``tag`` is read meanwhile (the read the
        request makes next joins it and checks the bytes as always)."""
        reads: object = registry  # a RegistryReads that may also prefetch
        if not isinstance(reads, ManifestPrefetch):
            return resolve_under_rule(await self.load(gun, rule), tag, rule)
        hook = functools.partial(_prefetch_signed, reads, tag, rule)
        token = _ON_VERIFIED.set(hook)
        try:
            ts = await self.load(gun, rule)
        finally:
            _ON_VERIFIED.reset(token)
        return resolve_under_rule(ts, tag, rule)

    async def signed_tags(
        self,
        gun: str,
        rule: SigningRule,
        *,
        registry: RegistryReads | None = None,
        tags: Sequence[str] | None = None,
    ) -> dict[str, SignedTarget]:
        """See :meth:`proxy.sources.base.TrustSource.signed_tags`."""
        ts = await self.load(gun, rule)
        # The caller's own copy (a dict copy is ~1000x cheaper than building it).
        return dict(self._acceptable_of(gun, rule, ts))

    async def trust_info(self, gun: str, rule: SigningRule) -> TrustInfo:
        """See :meth:`proxy.sources.base.TrustSource.trust_info`."""
        hot = await self._load_hot(gun, rule, count=False)
        self._answer(hot, gun)
        return self._info_of(hot)

    async def signed_state(
        self,
        gun: str,
        rule: SigningRule,
        *,
        registry: RegistryReads | None = None,
        tags: Sequence[str] | None = None,
        digests: Sequence[str] = (),
    ) -> SignedState:
        """See :meth:`proxy.sources.base.TrustSource.signed_state`: one load, and both
        answers derived from that one verified set with no ``await`` in between."""
        ts = await self.load(gun, rule)
        signed = MappingProxyType(self._acceptable_of(gun, rule, ts))  # read-only, no copy
        hot = self._hot_of(gun, rule, ts)
        info = self._info_of(hot) if hot is not None else trust_info_of(metadata_versions(ts))
        return SignedState(signed, info)

    def _hot_of(self, gun: str, rule: SigningRule, ts: TrustedSet) -> _Hot | None:
        """The hot entry that holds ``ts`` (None: replaced or evicted since it was loaded)."""
        last = self._hot.last(self._key(gun, rule))
        return last.value if last is not None and last.value.ts is ts else None

    def _acceptable_of(
        self, gun: str, rule: SigningRule, ts: TrustedSet
    ) -> dict[str, SignedTarget]:
        """``acceptable_tags(ts, rule)``, cached on ``ts``'s hot entry (do not mutate)."""
        hot = self._hot_of(gun, rule, ts)
        if hot is None:
            return acceptable_tags(ts, rule)
        cached = hot.acceptable.get(rule)
        if cached is None:
            # The set is verified and never changes; a refresh makes a new entry.
            cached = hot.acceptable[rule] = acceptable_tags(ts, rule)
        return cached

    @staticmethod
    def _info_of(hot: _Hot) -> TrustInfo:
        """The :class:`TrustInfo` of the hot entry's set, built once per entry."""
        if hot.info is None:
            if hot.ts is None:  # pragma: no cover - _answer raised for an error entry
                raise RuntimeError("no verified set")
            # Read-only: the same object answers every request until the entry is replaced.
            hot.info = trust_info_of(metadata_versions(hot.ts), stale=hot.stale)
        return hot.info

    def invalidate(self, gun: str | None, version: int | None = None, /) -> None:
        """See :class:`proxy.sources.base.Invalidatable`: the trust data of ``gun`` (None:
        of every repository) changed, to timestamp ``version`` when the feed says so; the
        next request refreshes from the trust server unless the verified set held is at
        that version already (``version`` is untrusted: a wrong one only leaves the refresh
        interval in force).

        The hot entries stay, only due now: their verified sets remain the rollback floors
        and what an outage may serve (as when refresh_at passes by itself). A refresh
        already running may have fetched the timestamp before the change: what it leaves
        is due as soon as it lands unless it reached ``version``; without a version, new
        requests do not wait for it but start their own.
        """

        def matches(key: _Key) -> bool:
            return gun is None or key[0] == gun

        for key in self._hot:
            if matches(key):
                self._expire(key, version)
        for key, flight in self._hot.in_flight(matches):
            if version is None:
                self._hot.detach(key)
            flight.add_done_callback(functools.partial(self._expire_landed, key, version))
        # A sibling worker's hand-over fetched before now may predate the change.
        self._invalidated.mark(gun, self._clock(), version)

    def _expire(self, key: _Key, version: int | None) -> None:
        """Make the kept entry of ``key`` due (kept: its set stays a rollback floor and
        what an outage may serve), unless it holds ``version`` already."""
        cached = self._hot.last(key)
        if cached is not None and not _holds(cached.value, version):
            self._hot.put(key, dataclasses.replace(cached.value, refresh_at=_DUE))

    def _expire_landed(self, key: _Key, version: int | None, _flight: object) -> None:
        self._expire(key, version)

    # --- loading -----------------------------------------------------------------------------

    async def load(self, gun: str, rule: SigningRule) -> TrustedSet:
        """The verified trust data of ``gun`` under ``rule``'s root of trust (Notary-specific;
        ``trust inspect`` reads it whole).

        Raises:
            NoTrustDataError: the server has no trust data for ``gun``.
            TrustSourceUnavailableError: could not fetch and nothing valid is cached.
            TrustDataError: the fetched trust data failed verification.
        """
        return self._answer(await self._load_hot(gun, rule, count=True), gun)

    @staticmethod
    def _key(gun: str, rule: SigningRule) -> _Key:
        return (gun, rule.root_of_trust, rule.allow_expired_root_cert, rule.expiry_grace)

    async def _load_hot(self, gun: str, rule: SigningRule, *, count: bool) -> _Hot:
        """The hot entry of ``gun`` under ``rule``: fresh, or after one refresh shared by
        every concurrent caller (shielded: a cancelled request does not cancel the refresh
        others wait for). ``count=False``: a second look within a request, not counted."""
        key = self._key(gun, rule)
        cached = await self._hot.get(key, lambda: self._update(key, gun, rule), count=count)
        return cached.value

    def _answer(self, hot: _Hot, gun: str) -> TrustedSet:
        if hot.error is not None:
            # The cached exception is raised again for every request until refresh_at:
            # drop the old traceback, which would otherwise grow by a few frames each time.
            raise hot.error.with_traceback(None)
        if hot.ts is None:  # pragma: no cover - one of the two is always set
            raise RuntimeError("empty cache entry")
        if hot.ts.expired_root_cert_used:
            log.warning(
                "trust source %s: %s: using a root whose certificate expired "
                "(allow_expired_root_cert)",
                self.name,
                gun,
            )
        return hot.ts

    async def _update(self, key: _Key, gun: str, rule: SigningRule) -> _Hot:
        """The refresh behind a miss: the new hot entry (a verified set, a stale one marked
        so, or the refusal to answer with until the next attempt)."""
        last = self._hot.last(key)
        previous = last.value if last is not None else None
        # What a sibling worker verified within its fresh_for window is as good as ours.
        handed = await self._handoff(key, gun, rule)
        if handed is not None:
            return handed
        # Otherwise the stored state is a head start, never an answer: it may be an older
        # record put back and dated "now" by whoever can write the store (issue 17,
        # finding 1). With a replica lock it is loaded once the lock is tried.
        token: str | None = None
        if self._flight is None:
            record = await self._load_record(gun)
        else:
            token, record = await self._take_turn(gun)
        now = self._clock()  # waiting for the lock took time
        try:
            # Another worker refreshed while we waited (no token), or saved and released
            # its lock between our look above and our taking it (a record saved within
            # the window; its untrusted fetch time only decides whether to look): take
            # its result.
            if (token is None and self._flight is not None) or _within_window(
                record, now, self.options.fresh_for
            ):
                handed = await self._handoff(key, gun, rule)
                if handed is not None:
                    return handed
            return await self._network_update(key, gun, rule, now, previous, record)
        finally:
            if token is not None and self._flight is not None:
                try:
                    await self._flight.release(gun, token)
                except StoreUnavailableError as e:  # it expires by itself
                    log.debug("trust source %s: %s: lock not released: %s", self.name, gun, e)

    async def _take_turn(self, gun: str) -> tuple[str | None, tuple[datetime, TrustedState] | None]:
        """Cross-replica single flight (the generic :func:`~proxy.sources.flight.take_turn`):
        (our lock token or None, the record to refresh from). The lock is tried before
        the record is loaded (one store round trip less). While another replica holds
        the lock, wait for the record it saves (its fetch time moves): the refresh from it
        then costs the signed timestamp and a root probe."""
        if self._flight is None:  # pragma: no cover - checked by the caller
            return None, await self._load_record(gun)
        return await take_turn(
            self._flight,
            gun,
            start=None,
            load=lambda: self._load_record(gun),
            stamp=_fetched_at,
            poll=self.options.flight_poll.total_seconds(),
            label=self.name,
            lock_first=True,
        )

    async def _network_update(
        self,
        key: _Key,
        gun: str,
        rule: SigningRule,
        now: datetime,
        previous: _Hot | None,
        record: tuple[datetime, TrustedState] | None,
    ) -> _Hot:
        opts = self.options
        state = record[1] if record is not None else None
        # Floors from the higher of the stored and the hot state: a store that is down,
        # flushed or behind must not make this process forget versions it has seen.
        last = _last_verified(previous)
        hot_state = last.state() if last is not None else None
        base, fallback = _order_by_generation(state, hot_state)
        try:
            ts = await self._timed_refresh(gun, rule, now, base, fallback)
        except NoTrustDataError as e:
            until = self._clock() + opts.fresh_for
            return _Hot(None, e, until, until, last=_last_verified(previous))
        except TrustSourceUnavailableError as e:
            # A failure is remembered from when it was known, not from when the refresh
            # started: a refresh that timed out took the whole deadline, and an entry dated
            # from its start would already be due, so every request (and the gate's second
            # look, trust_info) would wait the deadline again. The cache is checked at that
            # time too: it may have expired while we waited.
            now = self._clock()
            found = self._stale(gun, rule, now, previous, state)
            if found is None:
                return self._failure(previous, e, now)
            stale, past_expiry = found
            expires = _earliest_expiry(stale)
            if past_expiry:
                log.warning(
                    "trust source %s: %s: refresh failed, serving verified cached trust data "
                    "that expired at %s, within expiry_grace (%s, until %s): %s",
                    self.name,
                    gun,
                    expires.isoformat(),
                    rule.expiry_grace,
                    (expires + rule.expiry_grace).isoformat(),
                    e,
                )
            else:
                log.warning(
                    "trust source %s: %s: refresh failed, serving verified cached trust data "
                    "until it expires (%s): %s",
                    self.name,
                    gun,
                    expires.isoformat(),
                    e,
                )
            await self._raise_floors(gun, _top_level_versions(stale))
            hot = self._hot_for(stale, refresh_at=now + opts.retry_after)
            return dataclasses.replace(hot, stale=True, grace=rule.expiry_grace)
        except TrustDataError as e:
            # Bad data is never served; remember the refusal briefly so a burst of requests
            # does not refetch it once each.
            log.warning("trust source %s: %s: trust data refused: %s", self.name, gun, e)
            return self._failure(previous, e, self._clock())

        if (on_verified := _ON_VERIFIED.get()) is not None:
            on_verified(ts)
        # The host's floors (the state file) and the stored state (Redis, or the same
        # file) are written side by side; both are done before anything is served.
        await asyncio.gather(
            self._raise_floors(gun, _top_level_versions(ts)),
            self._save_record(gun, rule, ts, now),
        )
        # Fresh for fresh_for from when the refresh ended (see the failures above): a slow
        # but successful refresh must not leave an entry that is due at once.
        return self._hot_for(ts, refresh_at=self._clock() + opts.fresh_for)

    async def _handoff(self, key: _Key, gun: str, rule: SigningRule) -> _Hot | None:
        """A state a sibling process of this ``serve`` verified and saved (the store vouches
        for it with the key only they hold), used for what is left of its ``fresh_for``
        window, as that sibling uses it: the workers of a host then ask the trust server
        once per window between them. It is re-verified here at "now" against this
        process's floors; anything else (not vouched, out of its window, not verifying) is
        None: the caller refreshes from the network as usual."""
        if self._vouching is None:
            return None
        try:
            data = await self._vouching.load_vouched(gun)
        except StoreUnavailableError:
            return None
        if data is None:
            return None
        now = self._clock()
        try:
            fetched_at, state = decode_record(data, max_bytes=self.options.state_max_bytes)
        except TrustDataError:
            return None
        fresh_until = fetched_at + self.options.fresh_for
        # A fetch time ahead of our clock is not one a sibling on this host wrote.
        if not fetched_at <= now < fresh_until or state.gun != gun:
            return None
        await self._sync_floors(gun)
        try:
            ts = self._replay(state, gun, rule, now)
        except TrustDataError as e:
            log.info("trust source %s: %s: handed-over state unusable: %s", self.name, gun, e)
            return None
        if ts is None:
            return None
        if self._invalidated.superseded(gun, fetched_at, _timestamp_version(ts)):
            return None  # fetched before a change the feed reported: refresh ourselves
        await self._raise_floors(gun, _top_level_versions(ts))
        return dataclasses.replace(self._hot_for(ts, refresh_at=fresh_until), handed=True)

    async def _sync_floors(self, gun: str) -> None:
        """Raise this process's floors with the ones other workers of the host verified
        (the shared floors can only raise ours: a refusal, never an allow)."""
        if self._shared_floors is None:
            return
        try:
            shared = await self._shared_floors.load_floors(gun)
        except StoreUnavailableError as e:
            log.debug("trust source %s: %s: shared floors unavailable: %s", self.name, gun, e)
            return
        if shared:
            self._seen.raise_to(gun, shared)

    async def _raise_floors(self, gun: str, versions: Mapping[str, int]) -> None:
        self._seen.raise_to(gun, versions)
        if self._shared_floors is None:
            return
        try:
            await self._shared_floors.raise_floors(gun, versions)
        except StoreUnavailableError as e:
            # This process still remembers them; other workers refuse the rollback from
            # the stored record, or once the file is writable again.
            log.warning("trust source %s: %s: shared floors not raised: %s", self.name, gun, e)

    def _failure(self, previous: _Hot | None, error: Exception, now: datetime) -> _Hot:
        """A refusal kept until ``retry_after``: a burst of requests does not refetch bad
        data (or wait on a down server) once each. The last verified set stays with it,
        for its floors and as a stale candidate."""
        until = now + self.options.retry_after
        return _Hot(None, error, until, until, last=_last_verified(previous))

    @staticmethod
    def _hot_for(ts: TrustedSet, *, refresh_at: datetime) -> _Hot:
        return _Hot(ts, None, refresh_at, _earliest_expiry(ts))

    def _stale(
        self,
        gun: str,
        rule: SigningRule,
        now: datetime,
        previous: _Hot | None,
        stored: TrustedState | None,
    ) -> tuple[TrustedSet, bool] | None:
        """The last known state that still verifies at ``now`` (so: unexpired), else one
        that verifies at ``now - expiry_grace`` (expired less than the grace ago); with
        whether it is past expiry. None when neither exists.

        Only called when the trust server could not be reached: the grace never applies
        to an answer the server gave (a server that serves expired data is refused).
        """
        candidates: list[TrustedState] = []
        if previous is not None and previous.ts is not None:
            candidates.append(previous.ts.state())
        if stored is not None:
            candidates.append(stored)
        times = [now]
        if rule.expiry_grace > timedelta(0):
            times.append(now - rule.expiry_grace)
        for at in times:
            for state in candidates:
                try:
                    ts = self._replay(state, gun, rule, at)
                except TrustDataError as e:
                    log.info("trust source %s: %s: cached state unusable: %s", self.name, gun, e)
                    continue
                if ts is not None:
                    return ts, at != now
        return None

    async def _timed_refresh(
        self,
        gun: str,
        rule: SigningRule,
        now: datetime,
        state: TrustedState | None,
        fallback: TrustedState | None = None,
    ) -> TrustedSet:
        started = time.perf_counter()
        result = "error"
        try:
            ts = await self._bounded_refresh(gun, rule, now, state, fallback)
            result = "ok"
            return ts
        except NoTrustDataError:
            result = "no_trust_data"
            raise
        except TrustSourceUnavailableError:
            result = "unavailable"
            raise
        except TrustDataError:
            result = "bad_data"
            raise
        finally:
            # perf_counter, not the injected clock: that one is the verification time.
            TRUST_REFRESH_SECONDS.labels(self.name, result).observe(time.perf_counter() - started)

    async def _bounded_refresh(
        self,
        gun: str,
        rule: SigningRule,
        now: datetime,
        state: TrustedState | None,
        fallback: TrustedState | None,
    ) -> TrustedSet:
        """:meth:`_refresh` within ``options.refresh_deadline``; past it, the server counts
        as unreachable (the verified cache may answer, as in an outage)."""
        limit = self.options.refresh_deadline
        if limit is None:
            return await self._refresh(gun, rule, now, state, fallback)
        deadline = asyncio.timeout(limit.total_seconds())
        asked = _ASKED.set([])  # file names, for the message: which one was still coming
        try:
            async with deadline:
                return await self._refresh(gun, rule, now, state, fallback)
        except TimeoutError as e:
            if not deadline.expired():
                raise
            names = _ASKED.get() or ["nothing"]
            raise TrustSourceUnavailableError(
                self.name,
                f"refresh of {gun} took longer than {limit.total_seconds():g}s: the trust "
                f"server is too slow (waiting for {names[-1]}, {len(names) - 1} file(s) "
                "received before it)",
            ) from e
        finally:
            _ASKED.reset(asked)

    def _replay(
        self, state: TrustedState, gun: str, rule: SigningRule, now: datetime
    ) -> TrustedSet | None:
        """Re-verify a whole stored state at ``now``; None when it lacks top-level roles.

        Raises RollbackError when the state is older than what this process has already
        verified for ``gun``: a stored record is untrusted input, and replaying an older
        (validly signed) record must not roll a replica back to a revoked tag.
        """
        for role, seen in self._seen.get(gun).items():
            stored = state.versions.get(role, 0)
            if stored < seen:
                raise RollbackError(
                    f"stored state has version {stored}, this process already trusts {seen}",
                    role=role,
                    field="version",
                )
        ts = TrustedSet.from_state(
            state,
            gun=gun,
            root_of_trust=rule.root_of_trust,
            reference_time=now,
            limits=self.options.limits,
            allow_expired_root_cert=rule.allow_expired_root_cert,
            replay=True,
        )
        # A stored role that no longer verifies means the state is not what we saved (or
        # it expired): refuse it whole. Skipping just that delegation, as a fresh refresh
        # would, could let a store writer turn "releases wins" into "targets wins".
        for role, err in ts.skipped.items():
            if role in state.metadata:
                raise err
        return ts if ts.targets is not None else None

    async def _load_record(self, gun: str) -> tuple[datetime, TrustedState] | None:
        try:
            data = await self._store.load(gun)
        except StoreUnavailableError as e:
            # The store's health logs an outage once; per request this is only a miss.
            log.debug("trust source %s: %s: state store unavailable: %s", self.name, gun, e)
            return None
        if data is None:
            return None
        try:
            return decode_record(data, max_bytes=self.options.state_max_bytes)
        except TrustDataError as e:
            log.warning("trust source %s: %s: stored state unreadable: %s", self.name, gun, e)
            return None

    async def _save_record(
        self, gun: str, rule: SigningRule, ts: TrustedSet, now: datetime
    ) -> None:
        state = ts.state()
        judge: Judge = lambda data: verified_generation(  # noqa: E731
            data,
            gun=gun,
            rule=rule,
            now=now,
            limits=self.options.limits,
            max_bytes=self.options.state_max_bytes,
        )
        try:
            await self._store.save(
                gun, encode_record(state, now), generation=state_generation(state), judge=judge
            )
        except StoreUnavailableError as e:
            log.debug("trust source %s: %s: state not saved: %s", self.name, gun, e)

    # --- the refresh: tuf.refresh.walk over the async fetcher ---

    async def _fetch(self, gun: str, name: str, role: str) -> bytes | None:
        if (asked := _ASKED.get()) is not None:
            asked.append(name)
        return await self._fetcher.fetch(
            gun, name, max_bytes=self.options.limits.max_bytes_for(role)
        )

    async def _refresh(
        self,
        gun: str,
        rule: SigningRule,
        now: datetime,
        state: TrustedState | None,
        fallback: TrustedState | None = None,
    ) -> TrustedSet:
        limits = self.options.limits

        async def fetch(need: Need) -> bytes | None:
            return await self._fetch(gun, need.name, need.role)

        # Cold (nothing to start from), each round trip of the walk would wait for the one
        # before: root, then timestamp, snapshot, targets. timestamp.json's name does not
        # depend on root, so it is fetched beside root.json, and the snapshot and targets
        # its unverified bytes name as they arrive (tuf.refresh.Lookahead): three round
        # trips, not four, each file used only once the walk, verifying in TUF's order,
        # asks for those very bytes. What this saves is the trust server's latency (on
        # loopback a GET costs mostly our own CPU, and little is won). Warm, the lookahead
        # is made below with the state the walk reuses (never fetching what it holds).
        cold = state is None and fallback is None
        early = Lookahead(fetch, limits=limits) if cold else None
        try:
            return await self._walk_from(gun, rule, now, state, fallback, fetch, early)
        finally:
            if early is not None:
                await early.aclose()  # a refresh ended before the walk: none left running

    async def _walk_from(
        self,
        gun: str,
        rule: SigningRule,
        now: datetime,
        state: TrustedState | None,
        fallback: TrustedState | None,
        fetch: AsyncFetch,
        early: Lookahead | None,
    ) -> TrustedSet:
        limits = self.options.limits
        ts: TrustedSet | None = None
        # With nothing to start from, root.json is fetched while the other workers' floors
        # are read: they are first needed to verify it (previous_versions below).
        raw: bytes | None = None
        fetched_root = early is not None
        if early is not None:
            early.start(TIMESTAMP)
            floors = asyncio.ensure_future(self._sync_floors(gun))
            try:
                raw = await self._fetch(gun, "root.json", "root")
            finally:
                await floors
        else:
            await self._sync_floors(gun)
        # This process's own floors on top of the stored ones: the store may have been
        # rolled back (an older record put back) or lost, the hot cache evicted.
        seen = self._seen.get(gun)
        for candidate in (state, fallback):
            if candidate is None or ts is not None:
                continue
            state = candidate
            try:
                # The stored root and version floors: a server that rolls back is refused.
                ts = TrustedSet.from_state(
                    _with_floors(candidate, seen),
                    gun=gun,
                    root_of_trust=rule.root_of_trust,
                    reference_time=now,
                    limits=limits,
                    allow_expired_root_cert=rule.allow_expired_root_cert,
                    replay=False,
                )
            except TrustDataError as e:
                log.warning(
                    "trust source %s: %s: stored root refused, starting over: %s",
                    self.name,
                    gun,
                    e,
                )
        if ts is None:
            if not fetched_root:
                raw = await self._fetch(gun, "root.json", "root")
            if raw is None:
                raise NoTrustDataError(self.name, gun)
            ts = TrustedSet(
                raw,
                gun=gun,
                root_of_trust=rule.root_of_trust,
                reference_time=now,
                previous_versions=seen,
                limits=limits,
                allow_expired_root_cert=rule.allow_expired_root_cert,
            )
        # The one walk (tuf.refresh.walk, which the attack tests drive too), over the async
        # fetcher. Verified bytes we hold are reused when the parent announces the same
        # hash: a refresh of an unchanged repository costs a root probe and timestamp.json.
        # Files the walk says are independent (the timestamp beside the first next-root
        # probe, one level of delegations) are fetched together, and the file a timestamp
        # or snapshot names as soon as its bytes are in (never one the state holds);
        # verification keeps the walk's order (tuf.refresh.drive).
        known = state.metadata if state is not None else None
        if early is None:
            early = Lookahead(fetch, limits=limits, known=known)
        steps = walk(ts, previous=state, known=known)
        try:
            skipped = await drive(steps, fetch, lookahead=early)
        except MissingTimestampError as e:
            # notary delete --remote: every file is gone, the stored root stays pinned.
            raise NoTrustDataError(self.name, gun) from e
        for err in skipped:
            log.warning("trust source %s: %s: skipped: %s", self.name, gun, err)
        if ts.expired_root_cert_used:
            log.warning(
                "trust source %s: %s: root certificate expired; accepted because "
                "allow_expired_root_cert is set",
                self.name,
                gun,
            )
        return ts


def _prefetch_signed(
    registry: ManifestPrefetch, tag: str, rule: SigningRule, ts: TrustedSet
) -> None:
    """Start reading the manifest ``ts`` signs for ``tag`` under ``rule`` (nothing when it
    signs none: the request is refused with the reason after the load)."""
    try:
        target = resolve_under_rule(ts, tag, rule)
    except (NotSignedError, RuntimeError):
        return
    registry.prefetch_manifest(target.digest, tag=tag)


def state_generation(state: TrustedState) -> int:
    """The store's compare-and-set generation of a state: its timestamp version.

    Every change to a Notary repository (new targets, delegation, key rotation: the root's
    hash is listed in the snapshot) publishes a new snapshot, hence a new timestamp with a
    higher version, and the timestamp floor is what rollback protection checks first; so
    a higher timestamp version means a state at least as new in every role. Fetch times
    would not do: replicas' clocks differ and an older fetch can finish later.
    """
    return state.versions.get("timestamp", 0)


def verified_generation(
    data: bytes,
    *,
    gun: str,
    rule: SigningRule,
    now: datetime,
    limits: Limits,
    max_bytes: int,
) -> int | None:
    """The generation of a stored record as its signed data proves it, or None.

    The store's compare-and-set judges what it holds with this, not with a ``gen`` it
    keeps beside the bytes: a store writer who plants ``gen=999999`` (or a record with
    forged versions) would otherwise freeze every later save. The record's root must
    verify under ``rule``'s root of trust and its timestamp under that root, unexpired at
    ``now``; its claimed versions are floors, so a forged higher one fails here too. A
    record that does not verify is not worth keeping: None (any save replaces it).
    """
    try:
        _, state = decode_record(data, max_bytes=max_bytes)
        raw = state.metadata.get("timestamp")
        if raw is None:
            return None
        ts = TrustedSet.from_state(
            state,
            gun=gun,
            root_of_trust=rule.root_of_trust,
            reference_time=now,
            limits=limits,
            allow_expired_root_cert=rule.allow_expired_root_cert,
            replay=False,
        )
        ts.update_timestamp(raw)
    except TrustDataError:
        return None
    return ts.timestamp.version if ts.timestamp is not None else None


def _top_level_versions(ts: TrustedSet) -> dict[str, int]:
    """Versions of root, timestamp, snapshot and targets: delegations are left out of the
    floors, as a delegation may be removed and re-created at version 1 legitimately."""
    return {r: v for r, v in ts.state().versions.items() if r in _TOP_LEVEL_ROLES}


def _with_floors(state: TrustedState, floors: Mapping[str, int]) -> TrustedState:
    """``state`` with each version raised to this process's floor for it."""
    if all(state.versions.get(r, 0) >= v for r, v in floors.items()):
        return state
    versions = dict(state.versions)
    for role, version in floors.items():
        versions[role] = max(versions.get(role, 0), version)
    return dataclasses.replace(state, versions=MappingProxyType(versions))


def _order_by_generation(
    a: TrustedState | None, b: TrustedState | None
) -> tuple[TrustedState | None, TrustedState | None]:
    """(higher, other) by generation; ``a`` wins ties (the stored state: newer fetch)."""
    if a is None:
        return b, None
    if b is None or state_generation(a) >= state_generation(b):
        return a, b
    return b, a


def _last_verified(hot: _Hot | None) -> TrustedSet | None:
    if hot is None:
        return None
    return hot.ts if hot.ts is not None else hot.last


def _fetched_at(record: tuple[datetime, TrustedState]) -> datetime:
    return record[0]


def _within_window(
    record: tuple[datetime, TrustedState] | None, now: datetime, fresh_for: timedelta
) -> bool:
    """Whether ``record`` says it was fetched less than ``fresh_for`` before ``now``."""
    return record is not None and record[0] <= now < record[0] + fresh_for


#: a refresh_at every clock has passed (an invalidated entry)
_DUE = datetime.min.replace(tzinfo=UTC)


def _timestamp_version(ts: TrustedSet) -> int:
    return ts.timestamp.version if ts.timestamp is not None else 0


def _holds(hot: _Hot, version: int | None) -> bool:
    """Whether ``hot`` is a fresh verified set at timestamp ``version`` or later (so a
    change to ``version`` is already in it)."""
    return (
        version is not None
        and hot.ts is not None
        and not hot.stale
        and _timestamp_version(hot.ts) >= version
    )


def _lock_of(store: TrustStateStore) -> ReplicaLock | None:
    return store if isinstance(store, ReplicaLock) else None


def acceptable_tags(ts: TrustedSet, rule: SigningRule) -> dict[str, SignedTarget]:
    """Every tag of a loaded set acceptable under ``rule``, sorted by tag."""
    out: dict[str, SignedTarget] = {}
    if rule.required_roles is None:
        for tag, target in signed_tags(ts).items():
            try:
                _check_optional(ts, tag, target, rule.optional_roles)
            except NotSignedError:
                continue
            out[tag] = target
        return out
    names: set[str] | None = None
    for req in rule.required_roles:
        md = ts.targets_role(req.name)
        tags = set(md.signed.targets) if md is not None else set()
        names = tags if names is None else names & tags
    for tag in sorted(names or ()):
        if all(lookup(ts, r.name, tag) is not None for r in rule.required_roles):
            try:
                out[tag] = resolve_under_rule(ts, tag, rule)
            except NotSignedError:
                continue
    return out


def resolve_under_rule(ts: TrustedSet, tag: str, rule: SigningRule) -> SignedTarget:
    """Resolve ``tag`` under ``rule``, refusing with reasons users understand.

    The reasons are worked out here; the answer still comes from the core's
    ``resolve_docker`` / ``resolve_required_roles``, which check everything again.

    Raises:
        NotSignedByError: no acceptable role signs the tag (or a required role is missing
            or invalid).
        SignersDisagreeError: required roles disagree, or an optional role signs the tag
            at another digest.
        TooFewSignaturesError: a required role has fewer valid signatures than required.
        NotSignedError: other refusals of the core (no sha256 hash).
        RuntimeError: the set is not fully loaded (a caller bug).
    """
    if rule.required_roles is None:
        if all(lookup(ts, role, tag) is None for role in DOCKER_ROLES):
            raise NotSignedByError(tag, DOCKER_ROLES)
        target = resolve_docker(ts, tag)
    else:
        claims: list[tuple[str, TargetFile]] = []
        for req in rule.required_roles:
            status = ts.status(req.name)
            if status == "pending":
                raise RuntimeError(f"{req.name} is declared but not loaded")
            if status == "undeclared":
                raise NotSignedByError(tag, (req.name,), "no such role in the trust data")
            if status == "skipped":
                raise NotSignedByError(tag, (req.name,), "the role's trust data is not valid")
            tf = lookup(ts, req.name, tag)
            if tf is None:
                raise NotSignedByError(tag, (req.name,))
            claims.append((req.name, tf))
        first = claims[0][1]
        if any(tf.digest != first.digest or tf.length != first.length for _, tf in claims):
            raise _disagree(tag, [(r, tf.digest, tf.length) for r, tf in claims])
        for req in rule.required_roles:
            valid = len(ts.signers(req.name))
            if valid < req.min_signatures:
                raise TooFewSignaturesError(tag, req.name, valid, req.min_signatures)
        target = resolve_required_roles(ts, tag, rule.required_roles)
    _check_optional(ts, tag, target, rule.optional_roles)
    return target


def _disagree(tag: str, claims: list[tuple[str, str | None, int]]) -> SignersDisagreeError:
    # Lengths only when the digests alone look alike (the entries differ in length).
    same_digest = len({d for _, d, _ in claims}) == 1
    shown = tuple(
        (role, f"{d or 'no sha256'} ({n} bytes)" if same_digest else d or "no sha256")
        for role, d, n in claims
    )
    return SignersDisagreeError(tag, shown)


def _check_optional(
    ts: TrustedSet, tag: str, target: SignedTarget, optional: tuple[str, ...]
) -> None:
    """An optional signer that signs ``tag`` elsewhere makes it refused: signers that
    disagree are never resolved by picking one (policy model). A role that is absent,
    invalid or silent on the tag says nothing."""
    for role in optional:
        tf = lookup(ts, role, tag)
        if tf is not None and (tf.digest != target.digest or tf.length != target.length):
            raise _disagree(
                tag, [(target.role, target.digest, target.length), (role, tf.digest, tf.length)]
            )


def trust_info_of(versions: Mapping[str, int], *, stale: bool = False) -> TrustInfo:
    """The shared :class:`TrustInfo` of a Notary state: keyed by its role versions (they
    change whenever the trust data does), which the audit record shows."""
    return TrustInfo(
        state_key=tuple(sorted(versions.items())),
        evidence=MappingProxyType({"metadata_versions": MappingProxyType(dict(versions))}),
        stale=stale,
    )


def metadata_versions(ts: TrustedSet) -> dict[str, int]:
    """Version of every loaded role, for audit records and cache keys."""
    out = {"root": ts.root.version}
    for role, md in (("timestamp", ts.timestamp), ("snapshot", ts.snapshot),
                     ("targets", ts.targets)):  # fmt: skip
        if md is not None:
            out[role] = md.version
    out.update((name, md.version) for name, md in ts.delegated.items())
    return out
