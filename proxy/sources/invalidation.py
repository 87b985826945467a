"""Change feeds: one replica polls a trust server's feed, every replica drops what changed.

A trust source caches verified state for its refresh interval (30 s by default): that is
how long a revoked tag can still be served. A server that publishes a feed of changes
(notary-server's ``/v2/_trust/changefeed``) lets the proxy do better::

    replica holding the lease --poll every interval--> trust server's change feed
          | the repositories that changed (and the version each change made)
          v
    invalidation log in the shared state (Redis stream | the host's state file | memory)
          | read by every process every listen_interval
          v
    source.invalidate(repository, version)  -> its next request refreshes from the trust
                                              server (unless it holds that version already)

One process at a time polls (a lease in the shared state, renewed at every poll, taken
over when its holder stops renewing); its position in the feed (the cursor) lives in the
shared state too, so the next holder goes on from there.

Nothing read here is trusted, and nothing here can allow anything. An invalidation only
makes a source refresh from the trust server, which verifies everything it fetches as
always; the worst a Redis writer or a lying feed can do is make replicas refetch (bounded:
``records`` entries per poll, a refresh per repository per request), or withhold
invalidations (or claim versions it already holds), which leaves revocation at the
refresh interval, as without a feed. When a process could have missed entries (the log
was unreachable for it, the cursor lay past the feed's end), every repository is
invalidated once instead (``ALL``): more refetching, never less. A shared state with no
cursor at all (a new deployment, a flushed Redis) starts at the feed's end: what changed
before is left to the refresh interval.

The pieces are protocols so that sources other than Notary can use them: a
:class:`ChangeFeed` (the source's, see ``proxy/sources/notary/changefeed.py``), an
:class:`InvalidationLog` (the store's, see :func:`invalidation_log_for`) and the
:class:`~proxy.sources.base.Invalidatable` hook every source may offer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

from proxy.errors import TrustDataError, TrustSourceUnavailableError
from proxy.sources.base import Invalidatable
from proxy.sources.store import StoreUnavailableError, TrustStateStore

__all__ = [
    "ALL",
    "ChangeFeed",
    "ChangeWatcher",
    "FeedPage",
    "FeedUnsupportedError",
    "Invalidation",
    "InvalidationLog",
    "InvalidationTimes",
    "MemoryInvalidationLog",
    "changefeed_status",
    "invalidation_log_for",
]

log = logging.getLogger("trustproxy.changefeed")

#: the repository of a log entry that invalidates every repository of the source
ALL = ""
#: versions above this are not versions (read back as "unknown")
MAX_VERSION = 2**62


class Invalidation(NamedTuple):
    """One entry of the log: a repository whose trust data changed, and the version of
    the trust data the change made when the feed says (Notary: the timestamp's; None for a
    deletion or when unknown). Untrusted: see the module docstring."""

    repository: str
    version: int | None = None


def merge(changes: Sequence[Invalidation]) -> list[Invalidation]:
    """One entry per repository, in first-seen order: the highest version, or None when
    any entry has none (a deletion: always invalidate)."""
    out: dict[str, int | None] = {}
    for repo, version in changes:
        if repo in out:
            held = out[repo]
            out[repo] = None if held is None or version is None else max(held, version)
        else:
            out[repo] = version
    return [Invalidation(r, v) for r, v in out.items()]


#: longest repository name an entry may carry (longer entries are dropped as garbage)
MAX_REPOSITORY_CHARS = 1024


class FeedUnsupportedError(TrustSourceUnavailableError):
    """The trust server has no change feed for us (404: an older server; 401/403: our
    credentials may not read it; 400: it does not understand the query). Revocations then
    take the refresh interval, as without a feed."""


@dataclass(frozen=True)
class FeedPage:
    """One read of a change feed: the repositories that changed and where to go on from."""

    cursor: str
    changes: tuple[Invalidation, ...]
    #: the feed returned as many entries as asked for: more may be waiting
    full: bool = False


class ChangeFeed(Protocol):
    """A trust server's feed of changes, read through a thin I/O shell."""

    async def latest(self) -> str:
        """The cursor of the newest change (the feed's start when it has none).

        Raises:
            FeedUnsupportedError: the server offers no feed to us.
            TrustSourceUnavailableError: could not read it.
            TrustDataError: the answer is not a feed.
        """
        ...

    async def changes(self, cursor: str) -> FeedPage:
        """The changes after ``cursor`` (at most one page). Raises: as :meth:`latest`."""
        ...

    def ahead_of(self, cursor: str, latest: str) -> bool:
        """Whether ``cursor`` lies beyond the feed's newest change ``latest`` (the server
        lost its history, or someone wrote the shared cursor): reading on from it would
        miss every change."""
        ...

    async def aclose(self) -> None: ...


class InvalidationLog(Protocol):
    """The shared state's side of a feed, per source: the lease, the cursor, the log.

    Every method raises :class:`~proxy.sources.store.StoreUnavailableError` when the
    state cannot be reached. What it returns is untrusted (see the module docstring)."""

    async def lease(self, token: str, ttl: float) -> bool:
        """Take or renew the right to poll the feed for ``ttl`` seconds; False while
        another holder's lease runs."""
        ...

    async def release(self, token: str) -> None:
        """Give the lease up if ``token`` holds it (shutdown, reload: the next holder need
        not wait for it to expire)."""
        ...

    async def load_cursor(self) -> str | None: ...

    async def save_cursor(self, cursor: str) -> None: ...

    async def publish(self, changes: Sequence[Invalidation]) -> None:
        """Append the entries in order (repository ``ALL``: every repository)."""
        ...

    async def position(self) -> str:
        """Where the log ends now (a reader starting here sees only later entries)."""
        ...

    async def read(self, after: str, limit: int) -> tuple[str, list[Invalidation]]:
        """Up to ``limit`` entries after ``after``: (the new position, the entries)."""
        ...


class MemoryInvalidationLog:
    """The log of a process that shares nothing (no Redis, no state file)."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: list[tuple[int, Invalidation]] = []
        self._next = 1
        self._cursor: str | None = None
        self.max_entries = max_entries

    async def lease(self, token: str, ttl: float) -> bool:
        return True  # one process: it always polls

    async def release(self, token: str) -> None:
        return None

    async def load_cursor(self) -> str | None:
        return self._cursor

    async def save_cursor(self, cursor: str) -> None:
        self._cursor = cursor

    async def publish(self, changes: Sequence[Invalidation]) -> None:
        for change in changes:
            self._entries.append((self._next, change))
            self._next += 1
        del self._entries[: max(0, len(self._entries) - self.max_entries)]

    async def position(self) -> str:
        return str(self._next - 1)

    async def read(self, after: str, limit: int) -> tuple[str, list[Invalidation]]:
        start = int(after) if after.isdigit() else 0
        found = [(n, r) for n, r in self._entries if n > start][:limit]
        return (str(found[-1][0]) if found else str(start)), [r for _, r in found]


def invalidation_log_for(store: TrustStateStore) -> InvalidationLog:
    """The log beside ``store``: in Redis for a Redis store (shared by replicas), in the
    state file for a state-file store (shared by the workers of a host), else in memory."""
    from proxy.sources.redis_invalidation import RedisInvalidationLog
    from proxy.sources.redis_store import RedisTrustStateStore
    from proxy.sources.sqlite_invalidation import SqliteInvalidationLog
    from proxy.sources.sqlite_store import HostFlooredStore, SqliteTrustStateStore

    inner: object = store.inner if isinstance(store, HostFlooredStore) else store
    if isinstance(inner, RedisTrustStateStore):
        return RedisInvalidationLog(inner.connection, inner.key_prefix)
    if isinstance(inner, SqliteTrustStateStore):
        return SqliteInvalidationLog(inner.file, inner.namespace)
    return MemoryInvalidationLog()


class InvalidationTimes:
    """When each repository was last invalidated (and to which version), for a source that
    may take state another process verified *before* that (a sibling's hand-over): such
    state must be refused unless it already holds the version the change made.

    Bounded: past ``max_entries`` the oldest entries are folded into one time (with no
    version) that then stands for every repository not listed: earlier than any listed
    one, so a repository whose entry was dropped is judged at least as strictly as by its
    own. Several invalidations of one repository merge the same way (latest time, highest
    version, none when any had none): only ever stricter."""

    def __init__(self, max_entries: int = 65_536) -> None:
        self.max_entries = max_entries
        self._at: OrderedDict[str, tuple[datetime, int | None]] = OrderedDict()
        self._floor: datetime | None = None

    def mark(self, repository: str | None, at: datetime, version: int | None = None) -> None:
        """``repository`` (None: every repository) was invalidated at ``at`` by a change
        that made ``version`` (None: unknown)."""
        if repository is None:
            self._at.clear()
            self._floor = at
            return
        held = self._at.get(repository)
        if held is not None:
            at = max(at, held[0])
            version = None if held[1] is None or version is None else max(held[1], version)
        self._at[repository] = (at, version)
        self._at.move_to_end(repository)
        while len(self._at) > self.max_entries:
            _, (dropped, _v) = self._at.popitem(last=False)
            self._floor = dropped if self._floor is None else max(self._floor, dropped)

    def superseded(self, repository: str, fetched_at: datetime, version: int) -> bool:
        """Whether state of ``repository`` fetched at ``fetched_at``, at trust-data version
        ``version`` (verified), may predate a change reported since: then it must not be
        used in place of asking the trust server."""
        if self._floor is not None and fetched_at <= self._floor:
            return True
        held = self._at.get(repository)
        if held is None:
            return False
        at, changed_to = held
        return fetched_at <= at and (changed_to is None or version < changed_to)


# --------------------------------------------------------------------------- the watcher


@dataclass
class _Status:
    source: str
    # starting | active (this process polls) | standby (another does) | unsupported |
    # unavailable | bad data
    state: str = "starting"
    polling: bool = False  # this process holds the lease
    detail: str = ""
    last_poll: datetime | None = None
    invalidated: int = 0  # repositories invalidated in this process (ALL counts once)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "polling": self.polling}
        if self.detail:
            out["detail"] = self.detail
        if self.last_poll is not None:
            out["last_poll"] = self.last_poll.isoformat()
        out["invalidated"] = self.invalidated
        return out


_LIVE: dict[int, ChangeWatcher] = {}


def changefeed_status() -> dict[str, Any]:
    """For ``/readyz``: each running change feed's state in this process (empty without)."""
    watchers = list(_LIVE.values())
    if not watchers:
        return {}
    return {"changefeeds": {w.status.source: w.status.as_dict() for w in watchers}}


class ChangeWatcher:
    """Polls ``feed`` while this process holds the lease, and applies the log to ``target``.

    ``interval``: seconds between polls of the feed (by whichever process holds the lease);
    the log is read four times as often (at most every 250 ms), so that an invalidation
    reaches every process within about ``interval`` of the change. ``unsupported_retry``:
    how long to wait before asking a server that had no feed for us again (it may have
    been upgraded, or our credentials fixed).
    """

    def __init__(
        self,
        name: str,
        feed: ChangeFeed,
        log_: InvalidationLog,
        target: Invalidatable,
        *,
        interval: float = 1.0,
        unsupported_retry: float = 300.0,
        max_pages: int = 10,
        read_limit: int = 512,
        resync_every: int = 60,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.feed = feed
        self.log = log_
        self.target = target
        self.interval = interval
        self.listen_interval = min(0.25, interval / 4)
        # A holder renews at every poll; one that stops (crashed, partitioned) is replaced
        # after this long.
        self.lease_ttl = max(5.0, 5 * interval)
        self.unsupported_retry = unsupported_retry
        self.max_pages = max_pages
        self.read_limit = read_limit
        # Every this many polls the cursor is checked against the feed's newest change: a
        # server that lost its history (memory storage, restarted) counts from 1 again,
        # and a cursor past its end would see nothing new for ever.
        self.resync_every = resync_every
        self._polls = 0
        self._monotonic = monotonic
        self._token = secrets.token_hex(16)
        self._task: asyncio.Task[None] | None = None
        self._position: str | None = None
        self._log_lost = False
        self._next_poll = 0.0
        self._check_cursor = True
        self.status = _Status(name)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start polling and listening on the running loop (a no-op while running)."""
        if self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(self._run())
        _LIVE[id(self)] = self

    async def aclose(self) -> None:
        _LIVE.pop(id(self), None)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.status.polling:
            with contextlib.suppress(StoreUnavailableError):  # it expires by itself
                await self.log.release(self._token)
            self.status.polling = False
        await self.feed.aclose()

    async def _run(self) -> None:
        # Two loops: a slow or hanging feed must not hold up applying the log.
        await asyncio.gather(self._loop(self.poll_once, self.interval),
                             self._loop(self.listen_once, self.listen_interval))  # fmt: skip

    async def _loop(self, step: Callable[[], Any], every: float) -> None:
        while True:
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not end revocation for the process's lifetime
                log.exception("change feed of %s: unexpected error", self.name)
            await asyncio.sleep(every)

    # -- one round of each (tests drive them directly) ---------------------------------------

    async def poll_once(self) -> None:
        """Poll the feed when due and this process holds the lease."""
        if self._monotonic() >= self._next_poll:
            await self._poll()
        else:
            # Backing off from a server without a feed: the lease is not renewed meanwhile,
            # so another process may take it (and ask once itself).
            self.status.polling = False

    async def listen_once(self) -> None:
        """Apply what the log holds past this process's position."""
        await self._listen()

    async def _poll(self) -> None:
        try:
            mine = await self.log.lease(self._token, self.lease_ttl)
        except StoreUnavailableError:
            mine = False  # the log is down: nobody can publish; the listener notices
        if mine and not self.status.polling:
            log.info("change feed of %s: this process polls it now", self.name)
            self._check_cursor = True  # the last holder may have left it anywhere
        self.status.polling = mine
        if not mine:
            if self.status.state in ("starting", "active"):
                self.status.state = "standby"  # another process polls; this one listens
            return
        try:
            await self._read_feed()
        except FeedUnsupportedError as e:
            self._next_poll = self._monotonic() + self.unsupported_retry
            self._set_state(
                "unsupported",
                f"{e}; revocations take up to the refresh interval "
                f"(asking again in {self.unsupported_retry:.0f}s)",
            )
        except TrustSourceUnavailableError as e:
            self._set_state("unavailable", str(e))
        except TrustDataError as e:
            self._set_state("bad data", str(e))
        except StoreUnavailableError as e:
            self._set_state("unavailable", f"shared state: {e}")
        else:
            self._set_state("active", "")
            self.status.last_poll = datetime.now(UTC)

    async def _read_feed(self) -> None:
        self._polls += 1
        if self._polls % self.resync_every == 0:
            self._check_cursor = True
        cursor = await self.log.load_cursor()
        if cursor is None or self._check_cursor:
            latest = await self.feed.latest()
            if cursor is None:
                # Nobody has followed this feed in this shared state (a new deployment, or
                # the state was flushed): start at its end. Changes before it are left to
                # the refresh interval; invalidating everything here would make every
                # process refetch what it verified a moment ago, at every first start.
                log.info("change feed of %s: following it from change %s", self.name, latest)
                await self.log.save_cursor(latest)
                cursor = latest
            elif self.feed.ahead_of(cursor, latest):
                # A cursor past the feed's end (the server lost its history, or someone
                # wrote the cursor): what changed meanwhile is unknown, so everything is
                # refreshed once.
                log.warning(
                    "change feed of %s: stored position %r is past the feed's newest "
                    "change %r; starting over from there",
                    self.name,
                    cursor[:64],
                    latest,
                )
                await self.log.publish([Invalidation(ALL)])
                await self.log.save_cursor(latest)
                cursor = latest
            self._check_cursor = False
        for _ in range(self.max_pages):
            page = await self.feed.changes(cursor)
            if page.changes:
                # Published before the cursor moves: a holder that dies in between makes
                # the next one publish them again (a refetch), never skip them.
                await self.log.publish(merge(page.changes))
            if page.cursor != cursor:
                await self.log.save_cursor(page.cursor)
                cursor = page.cursor
            if not page.full:
                break

    async def _listen(self) -> None:
        try:
            if self._position is None:
                self._position = await self.log.position()
            for _ in range(self.max_pages):
                position, changes = await self.log.read(self._position, self.read_limit)
                self._position = position
                self._apply(changes)
                if len(changes) < self.read_limit:
                    break
        except StoreUnavailableError as e:
            if not self._log_lost:
                log.warning(
                    "change feed of %s: invalidation log unavailable (%s); revocations take "
                    "up to the refresh interval until it is back",
                    self.name,
                    e,
                )
            self._log_lost = True
            return
        if self._log_lost:
            # Entries may have been written (or trimmed) while we could not read.
            log.warning("change feed of %s: invalidation log is back", self.name)
            self._log_lost = False
            self._apply([Invalidation(ALL)])

    def _apply(self, changes: Sequence[Invalidation]) -> None:
        if not changes:
            return
        if any(c.repository == ALL for c in changes):
            self.target.invalidate(None)
            self.status.invalidated += 1
            return
        for repo, version in merge(changes):
            if len(repo) <= MAX_REPOSITORY_CHARS:
                self.target.invalidate(repo, version)
                self.status.invalidated += 1
        log.debug(
            "change feed of %s: invalidated %s",
            self.name,
            ", ".join(c.repository for c in changes[:20]),
        )

    def _set_state(self, state: str, detail: str) -> None:
        if state != self.status.state:
            level = logging.INFO if state == "active" else logging.WARNING
            log.log(
                level,
                "change feed of %s: %s%s",
                self.name,
                state,
                f": {detail}" if detail else "",
            )
        self.status.state = state
        self.status.detail = detail
