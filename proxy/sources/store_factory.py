"""Where each trust source keeps its verified state: the one place memory vs Redis is chosen.

With ``cache.redis_url`` every source gets a store on one shared connection (one pool per
process), each under its own key namespace (its name and a digest of its server URL: trust
state belongs to the server it came from), with the host's shared rollback floors on top
when the workers of ``serve`` share a state file (``cache.state_dir``), and, for a source
type that hands over between workers (``SourceType.hands_over``: Notary), a vouched copy
of each record in that file too, so the workers of one host refresh a repository once per
window between them, as without Redis; without Redis, a store in that state file; without
either, one in-memory store each. Stores are keyed by repository inside, so sources never
share one.
"""

from __future__ import annotations

from collections.abc import Callable

from proxy.settings import CacheSettings, Settings
from proxy.sources.flight import ReplicaLock
from proxy.sources.redis_store import RedisConnection, source_namespace
from proxy.sources.registry import source_type
from proxy.sources.sqlite_store import SqliteStateFile, with_host_floors
from proxy.sources.store import STATE_MAX_BYTES, MemoryTrustStateStore, TrustStateStore

__all__ = ["StoreFactory", "redis_connection", "state_stores", "wants_redis"]

#: ``store(source_name)`` -> that source's state store
StoreFactory = Callable[[str], TrustStateStore]


def wants_redis(settings: Settings) -> bool:
    """Whether the stores of ``settings`` live in Redis (else in memory)."""
    return settings.cache.redis_url is not None and bool(settings.trust.sources)


def redis_connection(cache: CacheSettings) -> RedisConnection:
    """The process's connection to ``cache.redis_url`` (the caller closes it).

    Raises RuntimeError without ``cache.redis_url`` (a caller bug: ask :func:`wants_redis`).
    """
    if cache.redis_url is None:
        raise RuntimeError("no cache.redis_url")
    return RedisConnection(cache.redis_url, timeout=cache.redis_timeout)


def state_stores(
    settings: Settings,
    redis: RedisConnection | None,
    state_file: SqliteStateFile | None = None,
) -> StoreFactory:
    """The stores of ``settings``' sources: on ``redis`` when given (see :func:`wants_redis`),
    with ``state_file``'s shared floors (and vouched copies, for a type that hands over) on
    top when given; else in ``state_file``; else one in-memory store each."""
    by_name = {s.name: s for s in settings.trust.sources}
    cache = settings.cache

    def store(name: str) -> TrustStateStore:
        namespace = source_namespace(name, by_name[name].url)
        if redis is not None:
            shared = redis.store(
                namespace,
                key_prefix=cache.key_prefix,
                max_bytes=STATE_MAX_BYTES,
                lock_timeout=cache.lock_timeout,
            )
            if state_file is not None and isinstance(shared, ReplicaLock):
                vouched = None
                if source_type(by_name[name].type).hands_over:
                    vouched = state_file.store(
                        namespace, max_bytes=STATE_MAX_BYTES, lock_timeout=cache.lock_timeout
                    )
                return with_host_floors(shared, state_file.floors(namespace), vouched=vouched)
            return shared
        if state_file is not None:
            return state_file.store(
                namespace, max_bytes=STATE_MAX_BYTES, lock_timeout=cache.lock_timeout
            )
        return MemoryTrustStateStore()

    return store
