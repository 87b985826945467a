"""The invalidation log of a trust source's change feed, in the host's state file (shared by
the workers of one ``serve`` when there is no Redis; see :mod:`proxy.sources.invalidation`).

Two tables beside the state file's own (created on first use)::

    changefeed_log(seq, ns, gun, version)             one row per invalidated repository
    changefeed_feed(ns, cursor, holder, lease_until)  the polling worker's lease, the cursor

The file is untrusted input like Redis: rows only make workers refetch, a cursor that is
not one is ignored, and a lease no worker can hold (not a token, an expiry further away
than our ttl) is taken over.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Sequence

from proxy.sources.invalidation import MAX_REPOSITORY_CHARS, MAX_VERSION, Invalidation
from proxy.sources.sqlite_store import SqliteStateFile

__all__ = ["MAX_ROWS", "SqliteInvalidationLog"]

#: rows kept per source (a reader further behind than this invalidates everything)
MAX_ROWS = 10_000
_MAX_CURSOR_CHARS = 128
_TOKEN = re.compile(r"[0-9a-f]{32}")
_CLOCK_SLACK = 1.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS changefeed_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, ns TEXT NOT NULL, gun TEXT NOT NULL,
    version INTEGER);
CREATE INDEX IF NOT EXISTS changefeed_log_ns ON changefeed_log (ns, seq);
CREATE TABLE IF NOT EXISTS changefeed_feed (
    ns TEXT PRIMARY KEY, cursor TEXT, holder TEXT, lease_until REAL);
"""


class SqliteInvalidationLog:
    """:class:`~proxy.sources.invalidation.InvalidationLog` in the host's state file."""

    def __init__(
        self,
        file: SqliteStateFile,
        namespace: str,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.file = file
        self.namespace = namespace
        self._wall_clock = wall_clock  # leases are compared across processes
        self._ready = False

    async def _run(self, operation: str, fn: Callable[[sqlite3.Connection], object]) -> object:
        def with_schema(conn: sqlite3.Connection) -> object:
            if not self._ready:
                conn.executescript(_SCHEMA)
                self._ready = True
            return fn(conn)

        return await self.file.run(operation, with_schema)

    async def lease(self, token: str, ttl: float) -> bool:
        ns = self.namespace

        def take(conn: sqlite3.Connection) -> bool:
            conn.execute("BEGIN IMMEDIATE")
            try:
                now = self._wall_clock()
                row = conn.execute(
                    "SELECT holder, lease_until FROM changefeed_feed WHERE ns = ?", (ns,)
                ).fetchone()
                if row is not None:
                    holder, until = row
                    live = (
                        isinstance(holder, str)
                        and _TOKEN.fullmatch(holder) is not None
                        and isinstance(until, int | float)
                        and now < until <= now + ttl + _CLOCK_SLACK
                    )
                    if live and holder != token:
                        conn.execute("ROLLBACK")
                        return False
                conn.execute(
                    "INSERT INTO changefeed_feed (ns, holder, lease_until) VALUES (?, ?, ?) "
                    "ON CONFLICT (ns) DO UPDATE SET holder = excluded.holder, "
                    "lease_until = excluded.lease_until",
                    (ns, token, now + ttl),
                )
                conn.execute("COMMIT")
                return True
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        return bool(await self._run("changefeed lease", take))

    async def release(self, token: str) -> None:
        ns = self.namespace

        def drop(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE changefeed_feed SET holder = NULL, lease_until = NULL "
                "WHERE ns = ? AND holder = ?",
                (ns, token),
            )

        await self._run("changefeed lease", drop)

    async def load_cursor(self) -> str | None:
        ns = self.namespace

        def read(conn: sqlite3.Connection) -> object:
            row = conn.execute(
                "SELECT CASE WHEN length(cursor) <= ? THEN cursor END "
                "FROM changefeed_feed WHERE ns = ?",
                (_MAX_CURSOR_CHARS, ns),
            ).fetchone()
            return None if row is None else row[0]

        value = await self._run("changefeed cursor", read)
        return value if isinstance(value, str) and value else None

    async def save_cursor(self, cursor: str) -> None:
        ns = self.namespace

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO changefeed_feed (ns, cursor) VALUES (?, ?) "
                "ON CONFLICT (ns) DO UPDATE SET cursor = excluded.cursor",
                (ns, cursor),
            )

        await self._run("changefeed cursor", write)

    async def publish(self, changes: Sequence[Invalidation]) -> None:
        ns = self.namespace
        rows = [(ns, repo, version) for repo, version in changes]

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT INTO changefeed_log (ns, gun, version) VALUES (?, ?, ?)", rows
                )
                conn.execute(
                    "DELETE FROM changefeed_log WHERE ns = ? AND seq <= "
                    "(SELECT max(seq) FROM changefeed_log WHERE ns = ?) - ?",
                    (ns, ns, MAX_ROWS),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        if rows:
            await self._run("changefeed publish", write)

    async def position(self) -> str:
        ns = self.namespace

        def read(conn: sqlite3.Connection) -> object:
            row = conn.execute("SELECT max(seq) FROM changefeed_log WHERE ns = ?", (ns,)).fetchone()
            return None if row is None else row[0]

        newest = await self._run("changefeed read", read)
        return str(newest) if isinstance(newest, int) else "0"

    async def read(self, after: str, limit: int) -> tuple[str, list[Invalidation]]:
        ns = self.namespace
        start = int(after) if after.isdigit() and len(after) <= 19 else 0

        def read(conn: sqlite3.Connection) -> object:
            return conn.execute(
                "SELECT seq, CASE WHEN length(gun) <= ? THEN gun END, version "
                "FROM changefeed_log "
                "WHERE ns = ? AND seq > ? ORDER BY seq LIMIT ?",
                (MAX_REPOSITORY_CHARS, ns, start, limit),
            ).fetchall()

        rows = await self._run("changefeed read", read)
        position = start
        changes: list[Invalidation] = []
        for seq, gun, version in rows if isinstance(rows, list) else ():
            if isinstance(seq, int):
                position = max(position, seq)
            if isinstance(gun, str):
                known = isinstance(version, int) and 0 < version < MAX_VERSION
                changes.append(Invalidation(gun, version if known else None))
        return str(position), changes
