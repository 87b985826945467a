"""Trust state shared by the workers of one host, in a SQLite file (``cache.state_dir``).

Without Redis, this file is what Redis is to replicas: the stored records (a head start for
a refresh: the root pinned under trust on first use, version floors, bytes to reuse), the
cross-process refresh lock (one worker walks a repository's trust data while the others
wait for what it saves) and, with or without Redis, the rollback floors the workers of this
host have verified (:class:`SqliteRollbackFloors`: kept on this host, so a Redis writer
cannot lower them) and the hand-over between them (below; with Redis,
:class:`HostVouchingStore` keeps a copy of each record saved to Redis here for it). It is
a file, so a restart keeps what was verified.

Layout (one file, ``<state_dir>/trust-state.sqlite3``, WAL mode: readers never block the
writer; ``BEGIN IMMEDIATE`` serialises writers across processes)::

    state(ns, repository, gen, data, mac)   the source's record; gen only a claim (see
                                            save); mac: HMAC of the record under the
                                            serve's key
    floors(ns, repository, role, version)   highest verified top-level versions; only
                                            ever raised
    locks(ns, repository, token, expires)   refresh lock: random token, wall-clock expiry

The schema's version is the file's ``user_version`` (:data:`SCHEMA_VERSION`). A file of
another version (version 0 named the repository column after one source's format) is
emptied and made anew when opened, inside one write transaction: never read with the wrong
columns. What it held is only a head start and floors this host had verified, so the cost
is one full walk per repository (as after a lost state directory).

``ns`` is the source's namespace (:func:`proxy.sources.redis_store.source_namespace`: its
name and server URL), so a source pointed at another server starts afresh.

The file is **untrusted input**, exactly like Redis: whoever can write it can put back an
older genuine record dated "now", plant a generation or a lock. So reads are size-bounded
in SQL (an oversized value is never copied out), the source re-verifies every record and
still fetches the signed timestamp before using one, saves judge the stored bytes rather
than the ``gen`` column, a lock that none of our workers can have taken is taken over, and
floors read back can only raise what a worker checks (a refusal, never an allow). The one
thing the file vouches for is a hand-over between sibling workers (``load_vouched``): a
record whose HMAC verifies under the key of this ``serve`` (made by the master, never
written) was saved by a sibling after it verified it; the source still re-verifies it and
uses it only within the sibling's ``fresh_for`` window. Nothing read from Redis is ever
vouched for: the MAC is made over the bytes a worker saves, with a key Redis never sees.

sqlite3 calls block: each runs in a worker thread (``asyncio.to_thread``), on one
connection per process guarded by a lock (SQLite serialises writers anyway; a statement
here takes microseconds, a busy wait at most ``busy_timeout``). Every ``sqlite3.Error`` or
``OSError`` becomes :class:`~proxy.sources.store.StoreUnavailableError` at this boundary:
the source then treats it as a miss, as with Redis down.

Never share a connection across ``fork``: a process opens the file on first use.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol, TypeVar

from proxy.sources.flight import ReplicaLock
from proxy.sources.store import Judge, StoreUnavailableError, TrustStateStore

__all__ = [
    "STATE_FILE_NAME",
    "HostFlooredStore",
    "HostVouchingStore",
    "LockingStore",
    "SqliteRollbackFloors",
    "SqliteStateFile",
    "SqliteTrustStateStore",
    "check_state_dir",
    "with_host_floors",
]

log = logging.getLogger("trustproxy.store")

T = TypeVar("T")

STATE_FILE_NAME = "trust-state.sqlite3"

#: floors kept per repository: the top-level roles only (delegations may restart at 1)
_FLOOR_ROLES = ("root", "timestamp", "snapshot", "targets")
_MAX_VERSION = 2**62  # larger "versions" read back are garbage (ignored, not trusted)
_TOKEN = re.compile(r"[0-9a-f]{32}")
#: seconds a lock's expiry may exceed now + lock_timeout and still be live (the wall clock
#: may be stepped by NTP between the holder's write and our read)
_CLOCK_SLACK = 1.0


class LockingStore(TrustStateStore, ReplicaLock, Protocol):
    """A store that also offers the cross-process refresh lock (Redis, SQLite)."""


#: ``PRAGMA user_version`` of the layout below; bump it when the layout changes
SCHEMA_VERSION = 2
_TABLES = ("state", "floors", "locks")
_SCHEMA = (
    """CREATE TABLE state (
    ns TEXT NOT NULL, repository TEXT NOT NULL, gen INTEGER, data BLOB NOT NULL, mac BLOB,
    PRIMARY KEY (ns, repository))""",
    """CREATE TABLE floors (
    ns TEXT NOT NULL, repository TEXT NOT NULL, role TEXT NOT NULL, version INTEGER NOT NULL,
    PRIMARY KEY (ns, repository, role))""",
    """CREATE TABLE locks (
    ns TEXT NOT NULL, repository TEXT NOT NULL, token TEXT NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (ns, repository))""",
)


class SqliteStateFile:
    """The state file of one process: opened on first use, one connection, one lock.

    ``busy_timeout``: how long a statement waits for another process's write transaction
    before the store counts as unavailable (a miss for that request). ``handoff_key``: the
    key the processes of one ``serve`` authenticate their saves with (see
    :class:`~proxy.sources.store.VouchingStore`); default a fresh one, which vouches only
    for this process's own saves.
    """

    def __init__(
        self, directory: Path, *, busy_timeout: float = 2.0, handoff_key: bytes | None = None
    ) -> None:
        self.directory = directory
        self.handoff_key = handoff_key if handoff_key is not None else secrets.token_bytes(32)
        self.path = directory / STATE_FILE_NAME
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._closed = False

    def _connection(self) -> sqlite3.Connection:
        # A connection inherited through fork must not be used (SQLite's locks are per
        # process): a child opens its own.
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        if self._closed:
            raise StoreUnavailableError("trust state file is closed")
        self._conn = open_state_file(self.directory, busy_timeout=self.busy_timeout)
        self._pid = os.getpid()
        return self._conn

    def run_sync(self, operation: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the connection (in the calling thread); errors become
        StoreUnavailableError."""
        with self._lock:
            try:
                return fn(self._connection())
            except (sqlite3.Error, OSError) as e:
                raise StoreUnavailableError(
                    f"trust state file {self.path}: {operation} failed: {e}"
                ) from e

    async def run(self, operation: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """:meth:`run_sync` off the event loop."""
        return await asyncio.to_thread(self.run_sync, operation, fn)

    def store(
        self, namespace: str, *, max_bytes: int = 64 * 1024 * 1024, lock_timeout: float = 30.0
    ) -> SqliteTrustStateStore:
        return SqliteTrustStateStore(
            self, namespace, max_bytes=max_bytes, lock_timeout=lock_timeout
        )

    def floors(self, namespace: str) -> SqliteRollbackFloors:
        return SqliteRollbackFloors(self, namespace)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
            if conn is not None and self._pid == os.getpid():
                conn.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)


def open_state_file(directory: Path, *, busy_timeout: float = 2.0) -> sqlite3.Connection:
    """Create ``directory`` (0700) and the file if needed; a connection in WAL mode.

    Raises:
        sqlite3.Error, OSError: the directory or file cannot be created or written.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / STATE_FILE_NAME
    # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE below);
    # check_same_thread=False: asyncio.to_thread may use any pool thread (the lock in
    # SqliteStateFile keeps one user at a time).
    conn = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    try:
        os.chmod(path, 0o600)
        # Switching to WAL and creating the tables take locks without SQLite's busy wait
        # when two processes open a new file at once: retry briefly (``serve`` creates
        # the file before it starts workers, so this is for first use elsewhere).
        deadline = time.monotonic() + busy_timeout
        while True:
            try:
                _prepare(conn)
                break
            except sqlite3.OperationalError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection) -> None:
    mode = conn.execute("PRAGMA journal_mode").fetchone()
    if mode is None or str(mode[0]).lower() != "wal":
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            raise sqlite3.DatabaseError(f"cannot use WAL mode (got {mode!r})")
    # NORMAL in WAL mode: a power loss may lose the last transactions, never corrupt them;
    # what is lost is fetched and verified again.
    conn.execute("PRAGMA synchronous=NORMAL")
    if _schema_version(conn) == SCHEMA_VERSION:
        return
    # Checked again under the write lock: another process may be making it right now.
    conn.execute("BEGIN IMMEDIATE")
    try:
        if _schema_version(conn) != SCHEMA_VERSION:
            for table in _TABLES:
                conn.execute(f"DROP TABLE IF EXISTS {table}")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _schema_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0]) if row is not None else 0


def check_state_dir(directory: Path) -> None:
    """Open (creating) the state file once and close it: ``serve`` calls this before it
    starts workers, so a directory that cannot be written is a clear error at startup.

    Raises:
        OSError, sqlite3.Error: not usable (the message says why).
    """
    conn = open_state_file(directory)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    finally:
        conn.close()


class SqliteTrustStateStore:
    """:class:`~proxy.sources.store.TrustStateStore`,
    :class:`~proxy.sources.flight.ReplicaLock` and
    :class:`~proxy.sources.store.SharedFloors` in the host's state file, for one source."""

    def __init__(
        self,
        file: SqliteStateFile,
        namespace: str,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        lock_timeout: float = 30.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        self.file = file
        self.namespace = namespace
        self.max_bytes = max_bytes
        self.lock_timeout = lock_timeout
        # Wall clock: expiries are compared across processes.
        self._wall_clock = wall_clock
        self._floors = SqliteRollbackFloors(file, namespace)

    async def load_floors(self, repository: str) -> dict[str, int]:
        return await self._floors.load_floors(repository)

    async def raise_floors(self, repository: str, versions: Mapping[str, int]) -> None:
        await self._floors.raise_floors(repository, versions)

    async def load(self, repository: str) -> bytes | None:
        ns, limit = self.namespace, self.max_bytes

        def read(conn: sqlite3.Connection) -> tuple[object, int] | None:
            # The size is checked in SQL: an oversized value is never copied out.
            row = conn.execute(
                "SELECT CASE WHEN length(data) <= ? THEN data END, length(data) "
                "FROM state WHERE ns = ? AND repository = ?",
                (limit, ns, repository),
            ).fetchone()
            return None if row is None else (row[0], int(row[1] or 0))

        found = await self.file.run("load", read)
        if found is None:
            return None
        data, size = found
        if data is None:
            log.warning(
                "trust state file: %s: stored state of %d bytes is larger than %d, ignored",
                repository,
                size,
                limit,
            )
            return None
        if not isinstance(data, bytes) or not data:
            return None  # another type (not written by us): a miss
        return data

    async def save(
        self,
        repository: str,
        data: bytes,
        *,
        generation: int | None = None,
        judge: Judge | None = None,
    ) -> None:
        """See :meth:`proxy.sources.store.TrustStateStore.save`: compare-and-set in one
        ``BEGIN IMMEDIATE`` transaction (no other process writes meanwhile). Without
        ``judge`` the ``gen`` column is believed."""
        ns, limit = self.namespace, self.max_bytes
        mac = self._mac(repository, data)

        def write(conn: sqlite3.Connection) -> bool:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if generation is not None:
                    current = _current_generation(conn, ns, repository, generation, judge, limit)
                    if current is not None and current > generation:
                        conn.execute("ROLLBACK")
                        return False
                conn.execute(
                    "INSERT OR REPLACE INTO state (ns, repository, gen, data, mac) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (ns, repository, generation, data, mac),
                )
                conn.execute("COMMIT")
                return True
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        stored = await self.file.run("save", write)
        if not stored:
            log.debug(
                "trust state file: %s: kept a higher generation than %s", repository, generation
            )

    def _mac(self, repository: str, data: bytes) -> bytes:
        message = b"\0".join((self.namespace.encode(), repository.encode(), data))
        return hmac.new(self.file.handoff_key, message, hashlib.sha256).digest()

    async def load_vouched(self, repository: str) -> bytes | None:
        """See :class:`~proxy.sources.store.VouchingStore`."""
        ns, limit = self.namespace, self.max_bytes

        def read(conn: sqlite3.Connection) -> tuple[object, object] | None:
            row = conn.execute(
                "SELECT CASE WHEN length(data) <= ? THEN data END, mac "
                "FROM state WHERE ns = ? AND repository = ?",
                (limit, ns, repository),
            ).fetchone()
            return None if row is None else (row[0], row[1])

        found = await self.file.run("load", read)
        if found is None:
            return None
        data, mac = found
        if not isinstance(data, bytes) or not isinstance(mac, bytes):
            return None
        return data if hmac.compare_digest(mac, self._mac(repository, data)) else None

    async def acquire(self, repository: str) -> str | None:
        token = secrets.token_hex(16)
        ns, timeout = self.namespace, self.lock_timeout

        def take(conn: sqlite3.Connection) -> int:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # The time is read inside the write transaction: a time read before it
                # (waiting for the thread or the file) could be older than the holder's,
                # whose lock would then look longer than lock_timeout, i.e. dead.
                now = self._wall_clock()
                row = conn.execute(
                    "SELECT token, expires FROM locks WHERE ns = ? AND repository = ?",
                    (ns, repository),
                ).fetchone()
                result = 1
                if row is not None:
                    held, expires = row
                    live = (
                        isinstance(held, str)
                        and _TOKEN.fullmatch(held) is not None
                        and isinstance(expires, int | float)
                        and now < expires <= now + timeout + _CLOCK_SLACK
                    )
                    if live:
                        conn.execute("ROLLBACK")
                        return 0
                    # Expired (a crashed holder) is the normal case; anything else no
                    # worker of ours can have written (a longer expiry, not a token).
                    still_valid = isinstance(expires, int | float) and expires > now
                    result = 2 if still_valid else 1
                conn.execute(
                    "INSERT OR REPLACE INTO locks (ns, repository, token, expires) "
                    "VALUES (?, ?, ?, ?)",
                    (ns, repository, token, now + timeout),
                )
                conn.execute("COMMIT")
                return result
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        got = await self.file.run("lock", take)
        if got == 2:
            log.warning(
                "trust state file: %s: took over a refresh lock that no worker can hold "
                "(not a lock token, or an expiry longer than lock_timeout %.0fs)",
                repository,
                timeout,
            )
        return token if got else None

    async def release(self, repository: str, token: str) -> None:
        ns = self.namespace

        def drop(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM locks WHERE ns = ? AND repository = ? AND token = ?",
                (ns, repository, token),
            )

        await self.file.run("unlock", drop)


def _current_generation(
    conn: sqlite3.Connection,
    ns: str,
    repository: str,
    generation: int,
    judge: Judge | None,
    limit: int,
) -> int | None:
    """The generation of what is stored, as far as it matters to a save of ``generation``
    (as in the Redis store: the ``gen`` column is a claim, only a claim above ours is
    checked against the stored bytes, and bytes that do not verify are replaced)."""
    row = conn.execute(
        "SELECT gen, length(data) FROM state WHERE ns = ? AND repository = ?", (ns, repository)
    ).fetchone()
    if row is None:
        return None
    claimed, size = row
    if not isinstance(claimed, int):
        return None  # not ours: replaced
    if judge is None or claimed <= generation:
        return claimed
    if not isinstance(size, int) or not 0 < size <= limit:
        return None  # nothing, or too large to judge: replaced
    stored = conn.execute(
        "SELECT data FROM state WHERE ns = ? AND repository = ?", (ns, repository)
    ).fetchone()
    data = stored[0] if stored is not None else None
    return judge(data) if isinstance(data, bytes) else None


class SqliteRollbackFloors:
    """The highest top-level versions any worker of this host verified, per repository,
    for one source (the shared counterpart of
    :class:`~proxy.sources.store.RollbackFloors`, implementing
    :class:`~proxy.sources.store.SharedFloors`). Only ever raised; what is read back can
    only make a worker refuse more."""

    def __init__(self, file: SqliteStateFile, namespace: str) -> None:
        self.file = file
        self.namespace = namespace

    async def load_floors(self, repository: str) -> dict[str, int]:
        ns = self.namespace

        def read(conn: sqlite3.Connection) -> list[tuple[object, object]]:
            rows = conn.execute(
                "SELECT role, version FROM floors WHERE ns = ? AND repository = ? LIMIT 8",
                (ns, repository),
            ).fetchall()
            return [(r[0], r[1]) for r in rows]

        out: dict[str, int] = {}
        for role, version in await self.file.run("load floors", read):
            if role in _FLOOR_ROLES and isinstance(version, int) and 0 < version < _MAX_VERSION:
                out[str(role)] = version
        return out

    async def raise_floors(self, repository: str, versions: Mapping[str, int]) -> None:
        rows = [
            (self.namespace, repository, role, int(v))
            for role, v in versions.items()
            if role in _FLOOR_ROLES and 0 < int(v) < _MAX_VERSION
        ]
        if not rows:
            return

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT INTO floors (ns, repository, role, version) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (ns, repository, role) DO UPDATE SET version = "
                    "max(version, excluded.version)",
                    rows,
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        await self.file.run("raise floors", write)


class _FlooredStore:
    """The shared floors of one source on the store the source keeps its records in."""

    def __init__(self, floors: SqliteRollbackFloors) -> None:
        self._floors = floors

    async def load_floors(self, repository: str) -> dict[str, int]:
        return await self._floors.load_floors(repository)

    async def raise_floors(self, repository: str, versions: Mapping[str, int]) -> None:
        await self._floors.raise_floors(repository, versions)


class HostFlooredStore(_FlooredStore):
    """A shared store and lock (Redis) with this host's floors (the state file) beside:
    records and the refresh lock stay in Redis, shared by replicas; the floors, which a
    Redis writer must not be able to lower, are shared by this host's workers only.
    (:class:`HostVouchingStore` adds the hand-over between this host's workers.)"""

    def __init__(self, inner: LockingStore, floors: SqliteRollbackFloors) -> None:
        super().__init__(floors)
        self.inner = inner

    @property
    def lock_timeout(self) -> float:
        return self.inner.lock_timeout

    async def load(self, repository: str) -> bytes | None:
        return await self.inner.load(repository)

    async def save(
        self,
        repository: str,
        data: bytes,
        *,
        generation: int | None = None,
        judge: Judge | None = None,
    ) -> None:
        await self.inner.save(repository, data, generation=generation, judge=judge)

    async def acquire(self, repository: str) -> str | None:
        return await self.inner.acquire(repository)

    async def release(self, repository: str, token: str) -> None:
        await self.inner.release(repository, token)


class HostVouchingStore(HostFlooredStore):
    """:class:`HostFlooredStore` that also hands over between this host's workers
    (:class:`~proxy.sources.store.VouchingStore`), as the state file does without Redis.

    Every save is also written to the host's file (``host``: the state file's store of the
    same namespace, its records HMAC'd under the key of this ``serve``), and
    :meth:`load_vouched` reads it back from there. Redis stays the records and the lock
    replicas share, and stays untrusted: :meth:`load` reads Redis only, and no Redis
    content can become vouched (the MAC is over the bytes a worker saved, with a key
    Redis never sees). A replica on another host leaves nothing in this file, so a worker
    waiting for its lock still refreshes from the trust server (signed timestamp and root
    probe) from what it saved in Redis.
    """

    def __init__(self, inner: LockingStore, host: SqliteTrustStateStore) -> None:
        super().__init__(inner, host.file.floors(host.namespace))
        self.host = host

    async def save(
        self,
        repository: str,
        data: bytes,
        *,
        generation: int | None = None,
        judge: Judge | None = None,
    ) -> None:
        """Save to the host's file, then to Redis; each failure is independent.

        The file comes first: a sibling waiting for this worker's Redis lock stops waiting
        when it sees the Redis record move, then asks :meth:`load_vouched`; the vouched copy
        must be there by then, or it refreshes from the network itself.

        The file failing loses only the hand-over (siblings refresh from the trust server
        from the Redis record, as replicas do: one more timestamp fetch, never an allow;
        the floors written beside it warn of the file), so it is logged and Redis is still
        written. Redis failing (raised, as without this wrapper: the source logs it) loses
        the head start other replicas would take; the vouched copy already in the file is
        what this worker verified, so siblings may still use it within its window.
        """
        try:
            await self.host.save(repository, data, generation=generation, judge=judge)
        except StoreUnavailableError as e:
            log.debug("trust state file: %s: vouched copy not saved: %s", repository, e)
        await self.inner.save(repository, data, generation=generation, judge=judge)

    async def load_vouched(self, repository: str) -> bytes | None:
        """See :class:`~proxy.sources.store.VouchingStore`: from the host's file only."""
        return await self.host.load_vouched(repository)


def with_host_floors(
    inner: LockingStore,
    floors: SqliteRollbackFloors,
    *,
    vouched: SqliteTrustStateStore | None = None,
) -> HostFlooredStore:
    """``inner`` (records and lock, e.g. Redis) with the host's shared floors; with
    ``vouched`` (the state file's store of the same namespace), the hand-over between the
    host's workers too (:class:`HostVouchingStore`)."""
    if vouched is not None:
        if vouched.namespace != floors.namespace or vouched.file is not floors.file:
            raise ValueError("the vouched copies and the floors must share file and namespace")
        return HostVouchingStore(inner, vouched)
    return HostFlooredStore(inner, floors)
