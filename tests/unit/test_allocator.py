"""The relay tracker hands the heap back once, after a quiet period with no blob relay."""

from __future__ import annotations

import asyncio

import pytest

from proxy.http.allocator import RelayTracker, tune_allocator

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not tune_allocator(), reason="glibc only: no allocator to tune"),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_trims_once_after_the_last_relay_has_been_quiet() -> None:
    trims: list[int] = []
    tracker = RelayTracker(quiet=0.05, trim=trims.append)
    tracker.started()
    tracker.started()
    tracker.finished()
    await asyncio.sleep(0.1)
    assert trims == []  # one relay still streams
    tracker.finished()
    assert trims == []  # not at once: a burst often has gaps between its blobs
    await asyncio.sleep(0.1)
    assert trims == [0]
    assert tracker.trims == 1
    await asyncio.sleep(0.1)
    assert trims == [0]  # once per quiet period, not a timer loop


async def test_a_relay_starting_within_the_quiet_period_cancels_the_trim() -> None:
    trims: list[int] = []
    tracker = RelayTracker(quiet=0.05, trim=trims.append)
    tracker.started()
    tracker.finished()
    await asyncio.sleep(0.02)
    tracker.started()
    await asyncio.sleep(0.1)
    assert trims == []
    tracker.finished()
    await asyncio.sleep(0.1)
    assert trims == [0]


async def test_the_real_trim_runs() -> None:
    tracker = RelayTracker(quiet=0.01)
    tracker.started()
    tracker.finished()
    await asyncio.sleep(0.05)
    assert tracker.trims == 1
