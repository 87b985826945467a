"""The invalidation log of a trust source's change feed, in Redis (shared by replicas).

Layout, beside the source's state (``<prefix>`` = the store's prefix, source namespace
included; see :mod:`proxy.sources.invalidation` for what it is for)::

    <prefix>changes           stream   one entry per invalidated repository (field r) and
                                       the version the change made (field v, if known),
                                       trimmed to about MAX_ENTRIES
    <prefix>changefeed:lease  string   the polling replica's random token, PX lease ttl
    <prefix>changefeed:cursor string   where the feed was read up to

Like everything in Redis, these are untrusted: entries only make replicas refetch, a
cursor that is not one is ignored (the poller then starts from the feed's end and
invalidates everything once), and a lease that no replica can hold (not a token, no
expiry, a longer one than ours) is taken over at once. Errors become
:class:`~proxy.sources.store.StoreUnavailableError` through the connection's ``call``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from proxy.sources.invalidation import MAX_REPOSITORY_CHARS, MAX_VERSION, Invalidation
from proxy.sources.redis_store import RedisConnection

# What redis-py accepts as a stream field name or value.
_Field = bytes | bytearray | memoryview | str | int | float

__all__ = ["MAX_CURSOR_CHARS", "MAX_ENTRIES", "RedisInvalidationLog"]

#: entries kept in the stream (a reader further behind than this invalidates everything)
MAX_ENTRIES = 10_000
#: longest cursor read back (a feed's change IDs are short)
MAX_CURSOR_CHARS = 128
_STREAM_ID = re.compile(rb"^\d{1,20}-\d{1,20}\Z")

# Take, renew or take over the lease (as the refresh lock in redis_store: a live lease
# is a 32-hex token with an expiry of at most the ttl). Returns 1 when ours now, else 0.
_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('TYPE', KEYS[1]).ok == 'string' then
  local v = redis.call('GET', KEYS[1])
  local ttl = redis.call('PTTL', KEYS[1])
  if string.len(v) == 32 and string.find(v, '^[0-9a-f]+$') and ttl > 0
     and ttl <= tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# Give up the lease only if it is still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# A bounded read of the cursor: a planted huge value is never transferred.
_CURSOR = """
if redis.call('TYPE', KEYS[1]).ok ~= 'string' then return false end
if redis.call('STRLEN', KEYS[1]) > tonumber(ARGV[1]) then return false end
return redis.call('GET', KEYS[1])
"""


class RedisInvalidationLog:
    """:class:`~proxy.sources.invalidation.InvalidationLog` on a shared connection."""

    def __init__(self, connection: RedisConnection, key_prefix: str) -> None:
        self._conn = connection
        self.stream_key = f"{key_prefix}changes"
        self.lease_key = f"{key_prefix}changefeed:lease"
        self.cursor_key = f"{key_prefix}changefeed:cursor"
        client = connection.client
        self._lease_script = client.register_script(_LEASE)
        self._cursor_script = client.register_script(_CURSOR)
        self._release_script = client.register_script(_RELEASE)

    async def lease(self, token: str, ttl: float) -> bool:
        ms = max(1, int(ttl * 1000))
        got = await self._conn.call(
            "changefeed lease",
            lambda: self._lease_script(keys=[self.lease_key], args=[token, ms]),
        )
        return bool(got == 1)

    async def release(self, token: str) -> None:
        await self._conn.call(
            "changefeed lease",
            lambda: self._release_script(keys=[self.lease_key], args=[token]),
        )

    async def load_cursor(self) -> str | None:
        raw = await self._conn.call(
            "changefeed cursor",
            lambda: self._cursor_script(keys=[self.cursor_key], args=[MAX_CURSOR_CHARS]),
        )
        if not isinstance(raw, bytes):
            return None
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            return None

    async def save_cursor(self, cursor: str) -> None:
        await self._conn.call(
            "changefeed cursor", lambda: self._conn.client.set(self.cursor_key, cursor)
        )

    async def publish(self, changes: Sequence[Invalidation]) -> None:
        async def add() -> None:
            pipe = self._conn.client.pipeline(transaction=False)
            for repo, version in changes:
                fields: dict[_Field, _Field] = {"r": repo}
                if version is not None:
                    fields["v"] = str(version)
                pipe.xadd(self.stream_key, fields, maxlen=MAX_ENTRIES, approximate=True)
            await pipe.execute()

        if changes:
            await self._conn.call("changefeed publish", add)

    async def position(self) -> str:
        newest = await self._conn.call(
            "changefeed read", lambda: self._conn.client.xrevrange(self.stream_key, count=1)
        )
        if isinstance(newest, list) and newest:
            entry_id = newest[0][0]
            if isinstance(entry_id, bytes) and _STREAM_ID.match(entry_id):
                return entry_id.decode("ascii")
        return "0-0"

    async def read(self, after: str, limit: int) -> tuple[str, list[Invalidation]]:
        found = await self._conn.call(
            "changefeed read",
            lambda: self._conn.client.xread({self.stream_key: after}, count=limit),
        )
        changes: list[Invalidation] = []
        position = after
        if not isinstance(found, list):
            return position, changes
        for _stream, entries in found:
            for entry_id, fields in entries:
                if isinstance(entry_id, bytes) and _STREAM_ID.match(entry_id):
                    position = entry_id.decode("ascii")
                value = fields.get(b"r") if isinstance(fields, dict) else None
                if not isinstance(value, bytes) or len(value) > MAX_REPOSITORY_CHARS:
                    continue  # not an entry of ours: nothing to invalidate
                try:
                    repo = value.decode("utf-8")
                except UnicodeDecodeError:
                    continue
                changes.append(Invalidation(repo, _version(fields.get(b"v"))))
        return position, changes


def _version(raw: object) -> int | None:
    """A stored version, or None (unknown: the entry then invalidates unconditionally)."""
    if not isinstance(raw, bytes) or not raw.isdigit() or len(raw) > 19:
        return None
    value = int(raw)
    return value if 0 < value < MAX_VERSION else None
