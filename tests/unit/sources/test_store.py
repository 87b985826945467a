"""MemoryTrustStateStore and the stored record format."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from proxy.sources.notary.source import decode_record, encode_record
from proxy.sources.notary.tuf import MetadataFormatError, OversizeMetadataError, TrustedState
from proxy.sources.store import MemoryTrustStateStore

pytestmark = pytest.mark.anyio


async def test_memory_store_is_lru_bounded() -> None:
    store = MemoryTrustStateStore(max_entries=2)
    await store.save("a", b"1")
    await store.save("b", b"2")
    assert await store.load("a") == b"1"  # a is now the most recent
    await store.save("c", b"3")
    assert await store.load("b") is None
    assert await store.load("a") == b"1"
    assert await store.load("c") == b"3"
    assert len(store) == 2


def test_memory_store_needs_room() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        MemoryTrustStateStore(max_entries=0)


STATE = TrustedState(gun="g", root=b"root", versions={"root": 1}, metadata={"targets": b"t"})
AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_record_round_trip() -> None:
    at, state = decode_record(encode_record(STATE, AT), max_bytes=1 << 20)
    assert at == AT
    assert state == STATE


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{}",
        b"trustproxy-notary-state/1 \n{}",
        b"trustproxy-notary-state/1 yesterday\n{}",
        b"trustproxy-notary-state/1 2026-01-01T00:00:00\n{}",  # naive time
        b"trustproxy-notary-state/1 2026-01-01T00:00:00+00:00\nnot json",
    ],
    ids=["empty", "no-header", "no-time", "bad-time", "naive-time", "bad-state"],
)
def test_bad_records(data: bytes) -> None:
    with pytest.raises(MetadataFormatError):
        decode_record(data, max_bytes=1 << 20)


def test_record_size_bound() -> None:
    with pytest.raises(OversizeMetadataError):
        decode_record(encode_record(STATE, AT), max_bytes=10)
