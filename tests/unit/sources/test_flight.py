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
