"""The blob hash computed on a worker thread: the same digest as hashlib in one thread, in
order, bounded backlog, failures reported, abandoned hashes never reported as a digest."""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import anyio
import pytest

from proxy.http.background_hash import BackgroundHash

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


CHUNKS = [bytes([i % 251]) * (1000 + 37 * i) for i in range(300)]


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
@pytest.mark.parametrize(
    ("batch", "backlog"), [(1, 1), (4096, 8192), (256 * 1024, 1024 * 1024)], ids=str
)
async def test_same_digest_as_hashlib(algorithm: str, batch: int, backlog: int) -> None:
    job = BackgroundHash(hashlib.new(algorithm), batch_bytes=batch, max_backlog=backlog)
    for chunk in CHUNKS:
        await job.update(chunk)
    expected = hashlib.new(algorithm, b"".join(CHUNKS)).hexdigest()
    assert await job.digest() == f"{algorithm}:{expected}"


async def test_a_partly_fed_hasher_continues() -> None:
    hasher = hashlib.sha256(b"head")
    job = BackgroundHash(hasher, batch_bytes=1)
    await job.update(b"tail" * 1000)
    assert await job.digest() == "sha256:" + hashlib.sha256(b"head" + b"tail" * 1000).hexdigest()


class _Slow:
    """A hasher whose update blocks until released: the relay must wait for it."""

    name = "sha256"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.inner = hashlib.sha256()

    def update(self, data: bytes) -> None:
        self.release.wait(5)
        self.inner.update(data)

    def hexdigest(self) -> str:
        return self.inner.hexdigest()


async def test_the_backlog_is_bounded() -> None:
    slow = _Slow()
    job = BackgroundHash(slow, batch_bytes=1, max_backlog=10_000)
    await job.update(b"a" * 6000)  # 6,000 behind: goes on at once
    with anyio.move_on_after(0.3) as scope:
        await job.update(b"b" * 6000)  # 12,000 behind: waits for the worker
    assert scope.cancelled_caught, "update() must wait while the hash is too far behind"
    slow.release.set()
    await job.update(b"c" * 10)
    # The cancelled update's chunk had been queued: it is part of the hash.
    expected = hashlib.sha256(b"a" * 6000 + b"b" * 6000 + b"c" * 10).hexdigest()
    assert await job.digest() == f"sha256:{expected}"


class _Broken:
    name = "sha256"

    def update(self, data: Any) -> None:
        raise MemoryError("no memory")

    def hexdigest(self) -> str:  # pragma: no cover - never reached
        return "0" * 64


async def test_a_failing_worker_makes_digest_raise() -> None:
    job = BackgroundHash(_Broken(), batch_bytes=1, max_backlog=1)
    for _ in range(5):
        await job.update(b"x" * 100)  # never waits forever on a failed worker
    with pytest.raises(RuntimeError, match="hashing the blob failed"):
        await job.digest()


async def test_an_abandoned_hash_never_gives_a_digest() -> None:
    slow = _Slow()
    job = BackgroundHash(slow, batch_bytes=1)
    await job.update(b"x" * 100)
    job.abandon()
    await job.update(b"y" * 100)
    slow.release.set()
    with pytest.raises(RuntimeError):
        await job.digest()
