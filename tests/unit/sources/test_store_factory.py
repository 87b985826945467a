"""Which store each source gets (:func:`proxy.sources.store_factory.state_stores`): Redis,
the host's state file, memory; with both Redis and the file, the host's floors for every
source and the hand-over between workers for the types that use it (Notary), not for the
others (their saves stay Redis-only)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.settings import CacheSettings, ServerSettings, Settings, TrustSettings
from proxy.settings import TrustSourceSettings as Source
from proxy.sources.redis_store import RedisConnection, RedisTrustStateStore
from proxy.sources.sqlite_store import (
    HostFlooredStore,
    HostVouchingStore,
    SqliteStateFile,
    SqliteTrustStateStore,
)
from proxy.sources.store import MemoryTrustStateStore, SharedFloors, VouchingStore
from proxy.sources.store_factory import state_stores

pytestmark = pytest.mark.anyio

# Nothing is sent to Redis here (the client connects on first use).
REDIS_URL = "redis://127.0.0.1:9/0"


def settings(redis_url: str | None) -> Settings:
    return Settings(
        server=ServerSettings(),
        upstreams=(),
        trust=TrustSettings(
            sources=(
                Source("notary", "notary", "https://notary.test"),
                Source("cosign", "cosign", "https://sigstore.test"),
            )
        ),
        cache=CacheSettings(redis_url=redis_url),
    )


@pytest.fixture
async def redis() -> AsyncIterator[RedisConnection]:
    conn = RedisConnection(REDIS_URL)
    yield conn
    await conn.aclose()


@pytest.fixture
async def state_file(tmp_path: Path) -> AsyncIterator[SqliteStateFile]:
    f = SqliteStateFile(tmp_path / "state")
    yield f
    await f.aclose()


async def test_redis_and_state_file_hand_over_for_notary_only(
    redis: RedisConnection, state_file: SqliteStateFile
) -> None:
    store = state_stores(settings(REDIS_URL), redis, state_file)
    notary, cosign = store("notary"), store("cosign")
    assert isinstance(notary, HostVouchingStore)
    assert isinstance(notary, VouchingStore)
    assert isinstance(notary.inner, RedisTrustStateStore)  # records and lock in Redis
    assert notary.host.file is state_file
    assert isinstance(cosign, HostFlooredStore)
    assert isinstance(cosign, SharedFloors)
    assert not isinstance(cosign, VouchingStore)
    assert isinstance(cosign.inner, RedisTrustStateStore)


async def test_redis_alone_state_file_alone_neither(
    redis: RedisConnection, state_file: SqliteStateFile
) -> None:
    only_redis = state_stores(settings(REDIS_URL), redis)("notary")
    assert isinstance(only_redis, RedisTrustStateStore)
    assert not isinstance(only_redis, VouchingStore)
    only_file = state_stores(settings(None), None, state_file)("notary")
    assert isinstance(only_file, SqliteTrustStateStore)
    assert isinstance(only_file, VouchingStore)
    assert isinstance(state_stores(settings(None), None)("notary"), MemoryTrustStateStore)
