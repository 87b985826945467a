"""proxy.sources.flight.take_turn: the cross-replica turn any source takes, over a lock
held (or not) by another replica and a store whose stamp moves when that replica saves."""

from __future__ import annotations

import pytest

from proxy.sources.flight import take_turn
from proxy.sources.store import StoreUnavailableError

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Lock:
    """A lock another replica holds for ``held`` acquire attempts (-1: for ever)."""

    def __init__(self, held: int = 0, *, down: bool = False, lock_timeout: float = 5.0) -> None:
        self.held = held
        self.down = down
        self.lock_timeout = lock_timeout
        self.attempts = 0

    async def acquire(self, repository: str) -> str | None:
        self.attempts += 1
        if self.down:
            raise StoreUnavailableError("down")
        if self.held < 0 or self.attempts <= self.held:
            return None
        return "token"

    async def release(self, repository: str, token: str) -> None:
        return None


class Store:
    """Stored states by stamp; ``after`` loads later the holder's save appears."""

    def __init__(self, first: tuple[int, str] | None, saved: tuple[int, str], after: int) -> None:
        self.first, self.saved, self.after = first, saved, after
        self.loads = 0

    async def load(self) -> tuple[int, str] | None:
        self.loads += 1
        return self.saved if self.loads > self.after else self.first


async def turn(lock: Lock, store: Store) -> tuple[str | None, tuple[int, str] | None]:
    return await take_turn(
        lock, "repo", start=store.first, load=store.load, stamp=lambda r: r[0], poll=0.001,
        label="test",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("lock", "after", "expected"),
    [
        (Lock(), 99, ("token", (1, "old"))),  # free: our turn, from what is stored
        (Lock(), 0, ("token", (2, "new"))),  # saved between our load and the lock
        (Lock(held=-1), 2, (None, (2, "new"))),  # held: wait for the holder's save
        (Lock(down=True), 0, (None, (1, "old"))),  # no lock without the store
        (Lock(held=-1, lock_timeout=0.02), 10**9, (None, (1, "old"))),  # holder never saves
        (Lock(held=2), 10**9, ("token", (1, "old"))),  # released without saving: ours
    ],
    ids=["free", "saved-meanwhile", "wait-for-save", "store-down", "stuck-holder", "released"],
)
async def test_take_turn(lock: Lock, after: int, expected: tuple[object, object]) -> None:
    assert await turn(lock, Store((1, "old"), (2, "new"), after)) == expected


async def test_a_stamp_that_does_not_move_is_not_a_save() -> None:
    """An equal (or older) stamp is the state we had: keep waiting (here: until the lock is
    released)."""
    lock = Lock(held=5)
    store = Store((3, "ours"), (2, "older, put back"), after=0)
    assert await turn(lock, store) == ("token", (2, "older, put back"))
    assert lock.attempts == 6


async def lock_first_turn(lock: Lock, store: Store) -> tuple[str | None, tuple[int, str] | None]:
    return await take_turn(
        lock, "repo", start=None, load=store.load, stamp=lambda r: r[0], poll=0.001,
        label="test", lock_first=True,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("lock", "after", "expected", "loads"),
    [
        (Lock(), 99, ("token", (1, "old")), 1),  # free: one load, after the lock
        (Lock(held=-1), 2, (None, (2, "new")), 3),  # held: wait for a save past our load
        (Lock(down=True), 99, (None, (1, "old")), 1),  # no lock without the store
        (Lock(held=-1, lock_timeout=0.02), 10**9, (None, (1, "old")), None),  # stuck
        (Lock(held=2), 10**9, ("token", (1, "old")), 4),  # released without saving: ours
    ],
    ids=["free", "wait-for-save", "store-down", "stuck-holder", "released"],
)
async def test_take_turn_lock_first(
    lock: Lock, after: int, expected: tuple[object, object], loads: int | None
) -> None:
    """``lock_first``: the lock before the stored state; the state loaded when the lock
    is held is the one the holder's save must move past."""
    store = Store((1, "old"), (2, "new"), after)
    assert await lock_first_turn(lock, store) == expected
    if loads is not None:
        assert store.loads == loads


async def test_lock_first_waits_past_the_state_loaded_after_the_lock() -> None:
    """A save that lands before the load that follows a held lock is the stamp to move
    past, not a save to take: waiting goes on until the lock is released."""
    lock = Lock(held=3)
    store = Store((1, "old"), (2, "new"), after=0)
    assert await lock_first_turn(lock, store) == ("token", (2, "new"))
    assert lock.attempts == 4


async def test_a_waiting_replica_looks_soon_then_backs_off_to_the_poll(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A holder's refresh takes milliseconds and every request for the repository waits
    # for it: the first looks come at a fraction of ``poll``, each next one twice as late.
    import asyncio

    real_sleep = asyncio.sleep
    waits: list[float] = []

    async def sleep(delay: float) -> None:
        waits.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    store = Store((1, "old"), (2, "new"), after=9)
    got = await take_turn(
        Lock(held=-1), "repo", start=store.first, load=store.load, stamp=lambda r: r[0],
        poll=0.32, label="test",
    )  # fmt: skip
    assert got == (None, (2, "new"))
    assert len(waits) == store.loads == 10  # one look after each wait
    assert waits == pytest.approx([0.01, 0.02, 0.04, 0.08, 0.16] + [0.32] * 5)
