"""Trust state shared by replicas, in Redis (``cache.redis_url``).

Layout, per trust source (``<prefix>`` = ``cache.key_prefix`` + the source's namespace)::

    <prefix>state:<repository>   hash  gen  = generation (the timestamp version the source passes;
                                       informative only, see below)
                                data = the source's record (fetch time + TrustedState bytes)
    <prefix>lock:<repository>    string  random token, PX lock_timeout (cross-replica single flight)

Redis is untrusted storage: anyone who can write it may put back an older record, date it
"now", change ``gen`` or plant a lock. So:

* Everything read back is untrusted: values larger than ``max_bytes`` are a miss without
  being transferred (checked by a script on the server), and the source re-verifies what it
  gets. Nothing read here stands in for freshness (the source always asks the trust server
  for its signed timestamp before it uses a stored state).
* Saves are an atomic compare-and-set (a script): a replica that fetched an older
  timestamp and saves late never lowers the rollback floors another replica saved. The
  ``gen`` field is only a claim: one above the saver's generation is checked by the
  caller's ``judge`` against the stored bytes' signed data, so a planted ``gen=999999``
  (or a forged record) cannot freeze the store. No TTL is set: configure Redis with
  ``maxmemory-policy noeviction`` (or a ``volatile-*`` policy) so it keeps them.
* The lock only saves work. A lock that no replica of ours can have set (not one of our
  tokens, another type, no expiry, or an expiry longer than ``lock_timeout``) is dead: it is
  taken over at once instead of stalling every refresh for ``lock_timeout``.

Failures: every Redis error (connection, timeout, protocol) becomes
:class:`~proxy.sources.store.StoreUnavailableError` here, at the boundary. A
:class:`StoreHealth` per connection logs once when Redis goes down and once when it is back,
sets ``trustproxy_store_up``, and while down lets one probe through every ``retry_after``
seconds: requests meanwhile fail fast (a miss) instead of each waiting for a timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from proxy.metrics import STORE_ERRORS, STORE_UP
from proxy.sources.store import Judge, StoreUnavailableError

__all__ = [
    "RedisConnection",
    "RedisTrustStateStore",
    "StoreHealth",
    "redact_url",
    "source_namespace",
    "store_status",
]

log = logging.getLogger("trustproxy.store")

T = TypeVar("T")

# Bounded read: the size is checked on the server, so an oversized (poisoned) value is never
# transferred. A key of another type (not written by us) is a miss, not an error.
_LOAD = """
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return false end
local n = redis.call('HSTRLEN', KEYS[1], 'data')
if n == 0 then return false end
if n > tonumber(ARGV[1]) then return -1 end
return redis.call('HGET', KEYS[1], 'data')
"""

# Take the lock, or take over a dead one. A live lock of ours is a 32-hex-digit token
# with an expiry of at most lock_timeout (SET NX PX). Anything else under the key cannot be
# a replica refreshing: garbage, another type, no expiry (it would stall every refresh
# forever) or a longer expiry than any of ours. Returns 1 (taken), 2 (taken over), 0 (held).
_ACQUIRE = """
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
return 2
"""

# Compare-and-set on the generation, atomically: replicas saving at the same time never
# conflict (an optimistic WATCH transaction gave up under contention and lost the highest
# save). ARGV: generation ("" forces), data, and for the second call of a save only, the
# claim that save judged false with the sha1 of the record it judged and the size limit:
# then that exact record (or one too large or empty to judge), and nothing else, is
# replaced. Returns 1 (saved), or the stored claim (kept).
_SAVE = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'none' and kind ~= 'hash' then redis.call('DEL', KEYS[1]) kind = 'none' end
local claim = false
if kind == 'hash' then claim = redis.call('HGET', KEYS[1], 'gen') end
local keep = false
if ARGV[1] ~= '' and claim and tonumber(claim) and tonumber(claim) > tonumber(ARGV[1]) then
  keep = true
  if ARGV[3] ~= '' and claim == ARGV[3] then
    local n = redis.call('HSTRLEN', KEYS[1], 'data')
    if n == 0 or n > tonumber(ARGV[5]) then
      keep = false
    elseif redis.sha1hex(redis.call('HGET', KEYS[1], 'data')) == ARGV[4] then
      keep = false
    end
  end
end
if keep then return claim end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'gen', ARGV[1], 'data', ARGV[2])
return 1
"""

#: a save that found a false claim re-judges this often if the record keeps changing under it
_SAVE_ATTEMPTS = 5

# Release only our own lock: after an expiry another replica may hold it.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def redact_url(url: str) -> str:
    """``url`` without its password (for logs, metrics and /readyz)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable redis url>"
    if parts.password is None and "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username
    netloc = f"{user}:***@{host}" if user else f"***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def source_namespace(name: str, url: str) -> str:
    """Key namespace of one trust source: its name and (a digest of) its server URL.

    Trust state belongs to the server it came from: pointing a source at another server
    starts afresh, as the in-memory store does across reloads."""
    return f"{name}:{hashlib.sha256(url.encode()).hexdigest()[:12]}:"


@dataclass
class _Status:
    up: bool
    since: datetime
    last_error: str | None


class StoreHealth:
    """Up/down of one store connection: logs transitions once, paces probes while down."""

    def __init__(
        self,
        label: str,
        *,
        retry_after: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.retry_after = retry_after
        self._monotonic = monotonic
        self._status = _Status(True, datetime.now(UTC), None)
        self._next_try = 0.0
        STORE_UP.labels(label).set(1)

    @property
    def up(self) -> bool:
        return self._status.up

    @property
    def since(self) -> datetime:
        return self._status.since

    @property
    def last_error(self) -> str | None:
        return self._status.last_error

    def allow(self) -> bool:
        """Whether to try Redis now: always while up; while down, one caller per
        ``retry_after`` (the probe), so a dead Redis is not hit by every request."""
        if self._status.up:
            return True
        now = self._monotonic()
        if now < self._next_try:
            return False
        self._next_try = now + self.retry_after
        return True

    def succeeded(self) -> None:
        if self._status.up:
            return
        down_for = datetime.now(UTC) - self._status.since
        self._status = _Status(True, datetime.now(UTC), None)
        STORE_UP.labels(self.label).set(1)
        log.warning(
            "trust state store %s is back after %.1fs; sharing trust state again",
            self.label,
            down_for.total_seconds(),
        )

    def failed(self, operation: str, error: BaseException) -> None:
        STORE_ERRORS.labels(self.label, operation).inc()
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        if not self._status.up:
            self._status.last_error = text
            return
        self._status = _Status(False, datetime.now(UTC), text)
        self._next_try = self._monotonic() + self.retry_after
        STORE_UP.labels(self.label).set(0)
        log.warning(
            "trust state store %s is unavailable (%s): serving from per-process trust state, "
            "retrying every %.1fs; logged once until it is back",
            self.label,
            text,
            self.retry_after,
        )

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "store": self.label,
            "status": "up" if self._status.up else "down",
            "since": self._status.since.isoformat(),
        }
        if self._status.last_error is not None:
            out["error"] = self._status.last_error
        return out


# Live connections, for /readyz (closed ones unregister).
_LIVE: dict[int, RedisConnection] = {}


def store_status() -> dict[str, Any]:
    """For ``/readyz``: ``{"trust_store": "memory"}`` without Redis, else ``"up"`` when
    every live connection is up, ``"down"`` otherwise, with the details."""
    conns = list(_LIVE.values())
    if not conns:
        return {"trust_store": "memory"}
    up = all(c.health.up for c in conns)
    return {
        "trust_store": "up" if up else "down",
        "trust_stores": [c.health.status() for c in conns],
    }


class RedisConnection:
    """One Redis client (with its connection pool) and its health, shared by every source's
    store in the process. Socket timeouts are ``timeout`` and nothing is retried inside the
    client: a slow Redis costs a request at most about ``timeout``, then it counts as down.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 1.0,
        retry_after: float = 2.0,
        client: aioredis.Redis | None = None,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.health = StoreHealth(redact_url(url), retry_after=retry_after)
        self.client: aioredis.Redis = client or aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._closed = False
        _LIVE[id(self)] = self

    async def call(self, operation: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis operation; every failure becomes StoreUnavailableError."""
        if self._closed:
            raise StoreUnavailableError("trust state store is closed")
        if not self.health.allow():
            raise StoreUnavailableError(
                f"trust state store {self.health.label} is down ({self.health.last_error})"
            )
        try:
            # The socket timeout bounds each read; this bounds the whole call (connect +
            # several reads) in case a frozen server keeps the socket alive.
            async with asyncio.timeout(self.timeout * 3):
                result = await fn()
        except (RedisError, OSError, TimeoutError) as e:
            self.health.failed(operation, e)
            if isinstance(e, RedisConnectionError | OSError):
                await self._drop_idle_connections()
            raise StoreUnavailableError(
                f"trust state store {self.health.label}: {operation} failed: {e}"
            ) from e
        self.health.succeeded()
        return result

    async def _drop_idle_connections(self) -> None:
        """The server closed a connection (it died or restarted): every idle pooled
        connection went to that server too. Without this, each would fail once more after
        Redis is back ("Connection closed by server"), marking the store down again and
        leaving refresh locks to expire: seen with Redis killed and restarted under load
        (loadtest/hardening). The next call connects afresh."""
        pool = getattr(self.client, "connection_pool", None)
        if pool is None:
            return
        try:
            await pool.disconnect(inuse_connections=False)
        except Exception as e:  # closing dead sockets may fail; they are gone either way
            log.debug("trust state store %s: dropping idle connections: %s", self.health.label, e)

    def store(
        self, namespace: str = "", *, key_prefix: str = "trustproxy:", **kw: Any
    ) -> RedisTrustStateStore:
        """A store on this connection whose keys start with ``key_prefix + namespace``."""
        return RedisTrustStateStore(self, key_prefix=key_prefix + namespace, **kw)

    def retire(self) -> None:
        """Leave /readyz (replaced by a reload; still usable until closed)."""
        _LIVE.pop(id(self), None)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.retire()
        await self.client.aclose()


class RedisTrustStateStore:
    """:class:`~proxy.sources.store.TrustStateStore` and
    :class:`~proxy.sources.flight.ReplicaLock` in Redis.

    ``connection`` is a URL (the store then owns its connection: ``aclose`` closes it) or a
    shared :class:`RedisConnection` (closed by its owner).
    """

    def __init__(
        self,
        connection: str | RedisConnection,
        *,
        key_prefix: str = "trustproxy:",
        timeout: float = 1.0,
        max_bytes: int = 64 * 1024 * 1024,
        lock_timeout: float = 30.0,
    ) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if isinstance(connection, str):
            self._conn = RedisConnection(connection, timeout=timeout)
            self._owned = True
        else:
            self._conn = connection
            self._owned = False
        self.key_prefix = key_prefix
        self.max_bytes = max_bytes
        self.lock_timeout = lock_timeout
        client = self._conn.client
        self._load_script = client.register_script(_LOAD)
        self._save_script = client.register_script(_SAVE)
        self._acquire_script = client.register_script(_ACQUIRE)
        self._unlock_script = client.register_script(_UNLOCK)

    @property
    def connection(self) -> RedisConnection:
        return self._conn

    @property
    def health(self) -> StoreHealth:
        return self._conn.health

    def state_key(self, repository: str) -> str:
        return f"{self.key_prefix}state:{repository}"

    def lock_key(self, repository: str) -> str:
        return f"{self.key_prefix}lock:{repository}"

    async def load(self, repository: str) -> bytes | None:
        key = self.state_key(repository)
        result = await self._conn.call(
            "load", lambda: self._load_script(keys=[key], args=[self.max_bytes])
        )
        if result is None:
            return None
        if isinstance(result, int):  # -1: larger than max_bytes, not transferred
            log.warning(
                "trust state store: %s: stored state larger than %d bytes, ignored",
                repository,
                self.max_bytes,
            )
            return None
        if not isinstance(result, bytes):  # decode_responses would be a wiring bug
            raise StoreUnavailableError(f"unexpected reply type {type(result).__name__}")
        return result

    async def save(
        self,
        repository: str,
        data: bytes,
        *,
        generation: int | None = None,
        judge: Judge | None = None,
    ) -> None:
        """See :meth:`proxy.sources.store.TrustStateStore.save`. Without ``judge`` the
        stored ``gen`` field is believed (for callers whose writers are all trusted)."""
        key = self.state_key(repository)
        stored = await self._conn.call(
            "save", lambda: self._save_checked(key, data, generation, judge)
        )
        if not stored:
            log.debug(
                "trust state store: %s: kept a higher generation than %s", repository, generation
            )

    async def _save_checked(
        self, key: str, data: bytes, generation: int | None, judge: Judge | None
    ) -> bool:
        """One atomic compare-and-set (``_SAVE``). The stored ``gen`` is only a claim: when
        it claims more than ours, the record is read (bounded) and judged here, and a claim
        its signed data does not back is replaced, if that record is still the one judged."""
        gen = "" if generation is None else str(int(generation))
        result = await self._save_script(keys=[key], args=[gen, data, "", "", 0])
        for _ in range(_SAVE_ATTEMPTS):
            if result == 1 or generation is None or judge is None:
                return bool(result == 1)
            claim = result.decode("ascii", "replace") if isinstance(result, bytes) else ""
            held = await self._bounded_data(key)
            judged = judge(held) if held is not None else None
            if judged is not None and judged > generation:
                return False  # genuinely newer: keep it
            # A false claim (planted, or unreadable data): replace exactly what was judged.
            digest = hashlib.sha1(held or b"", usedforsecurity=False).hexdigest()
            result = await self._save_script(
                keys=[key], args=[gen, data, claim, digest, self.max_bytes]
            )
        log.warning("trust state store: %s: save gave up after %d changes", key, _SAVE_ATTEMPTS)
        return False

    async def _bounded_data(self, key: str) -> bytes | None:
        """The stored record's bytes, or None when absent, empty or over ``max_bytes``."""
        held = await self._load_script(keys=[key], args=[self.max_bytes])
        return held if isinstance(held, bytes) else None

    async def acquire(self, repository: str) -> str | None:
        token = secrets.token_hex(16)
        ms = max(1, int(self.lock_timeout * 1000))
        key = self.lock_key(repository)
        got = await self._conn.call(
            "lock", lambda: self._acquire_script(keys=[key], args=[token, ms])
        )
        if got == 2:
            log.warning(
                "trust state store: %s: took over a refresh lock that no replica can hold "
                "(not a lock token, no expiry, or one longer than lock_timeout %.0fs)",
                repository,
                self.lock_timeout,
            )
        return token if got in (1, 2) else None

    async def release(self, repository: str, token: str) -> None:
        key = self.lock_key(repository)
        await self._conn.call("unlock", lambda: self._unlock_script(keys=[key], args=[token]))

    async def aclose(self) -> None:
        if self._owned:
            await self._conn.aclose()
