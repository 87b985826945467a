"""The SQLite trust-state store (the host's state file): the same contract as the Redis store
(compare-and-set saves judged by signed data, bounded reads, the refresh lock, namespaces),
shared floors, and sources sharing one file as the workers of ``serve`` do. Two
:class:`SqliteStateFile` objects on one directory stand for two processes (each has its
own connection, as a worker does after fork)."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.sources.notary.rules import SigningRule
from proxy.sources.notary.source import NotarySource, NotarySourceOptions
from proxy.sources.notary.tuf import RollbackError, TrustOnFirstUse
from proxy.sources.sqlite_store import (
    SCHEMA_VERSION,
    STATE_FILE_NAME,
    HostFlooredStore,
    HostVouchingStore,
    SqliteStateFile,
    SqliteTrustStateStore,
    check_state_dir,
    with_host_floors,
)
from proxy.sources.store import (
    Judge,
    MemoryTrustStateStore,
    SharedFloors,
    StoreUnavailableError,
    VouchingStore,
)
from tests.simulators.notary_repo import NotaryRepository
from tests.unit.sources.sim import GUN, Clock, SimServer, make_source

pytestmark = pytest.mark.anyio

TOFU = SigningRule(TrustOnFirstUse())
M1 = b'{"manifest": 1}'
M2 = b'{"manifest": 2}'


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
async def files(state_dir: Path) -> AsyncIterator[list[SqliteStateFile]]:
    opened = [SqliteStateFile(state_dir), SqliteStateFile(state_dir)]
    yield opened
    for f in opened:
        await f.aclose()


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def repo() -> NotaryRepository:
    r = NotaryRepository(GUN)
    r.add_target("v1", M1)
    r.publish()
    return r


def source(server: SimServer, store: object, clock: Clock) -> NotarySource:
    return make_source(server, clock=clock, store=store, options=NotarySourceOptions())  # type: ignore[arg-type]


def raw(state_dir: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    """A statement on the file from outside (someone who can write it)."""
    conn = sqlite3.connect(state_dir / STATE_FILE_NAME, isolation_level=None)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


# -- the store ----------------------------------------------------------------------------------


async def test_file_is_created_in_wal_mode_private(
    files: list[SqliteStateFile], state_dir: Path
) -> None:
    store = files[0].store("s:")
    assert await store.load("g") is None  # opened on first use
    path = state_dir / STATE_FILE_NAME
    assert path.stat().st_mode & 0o777 == 0o600
    assert raw(state_dir, "PRAGMA journal_mode")[0][0] == "wal"


def _write_old_layout(state_dir: Path) -> None:
    """A state file as version 0 made it, with a record and a floor."""
    state_dir.mkdir(mode=0o700)
    old = sqlite3.connect(state_dir / STATE_FILE_NAME, isolation_level=None)
    try:
        old.executescript(
            "CREATE TABLE state (ns TEXT NOT NULL, gun TEXT NOT NULL, gen INTEGER, "
            "data BLOB NOT NULL, mac BLOB, PRIMARY KEY (ns, gun));"
            "CREATE TABLE floors (ns TEXT NOT NULL, gun TEXT NOT NULL, role TEXT NOT NULL, "
            "version INTEGER NOT NULL, PRIMARY KEY (ns, gun, role));"
            "INSERT INTO state VALUES ('s:', 'g', 1, X'6f6c64', NULL);"
            "INSERT INTO floors VALUES ('s:', 'g', 'targets', 9);"
        )
    finally:
        old.close()


async def test_a_file_of_another_schema_version_is_made_anew_not_misread(
    state_dir: Path,
) -> None:
    """The layout before version 2 named the repository column ``gun``: such a file (and a
    file of any other version) is emptied and recreated when opened, never read."""
    _write_old_layout(state_dir)
    file = SqliteStateFile(state_dir)
    try:
        store = file.store("s:")
        assert await store.load("g") is None  # the old record is gone, not misread
        assert await store.load_floors("g") == {}
        await store.save("g", b"new", generation=1)
        await store.raise_floors("g", {"targets": 2})
        assert await store.load("g") == b"new"
        assert await store.load_floors("g") == {"targets": 2}
    finally:
        await file.aclose()
    assert raw(state_dir, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    columns = [row[1] for row in raw(state_dir, "PRAGMA table_info(state)")]
    assert columns == ["ns", "repository", "gen", "data", "mac"]
    reopened = SqliteStateFile(state_dir)  # the current version is kept as it is
    try:
        assert await reopened.store("s:").load("g") == b"new"
    finally:
        await reopened.aclose()


async def test_save_is_compare_and_set_on_generation(files: list[SqliteStateFile]) -> None:
    store = files[0].store("s:")
    await store.save("g", b"v5", generation=5)
    await store.save("g", b"v3", generation=3)  # a worker that saw less, saving late
    assert await store.load("g") == b"v5"
    await store.save("g", b"v5-later", generation=5)  # equal: the newer fetch time wins
    assert await store.load("g") == b"v5-later"
    await store.save("g", b"v6", generation=6)
    assert await store.load("g") == b"v6"
    await store.save("g", b"forced", generation=None)
    assert await store.load("g") == b"forced"


async def test_concurrent_saves_from_two_processes_keep_the_highest(
    files: list[SqliteStateFile],
) -> None:
    a, b = files[0].store("s:"), files[1].store("s:")
    saves = [(a if g % 2 else b).save("g", str(g).encode(), generation=g) for g in range(40, 0, -1)]
    await asyncio.gather(*saves)
    assert await a.load("g") == b"40"
    assert await b.load("g") == b"40"


async def test_judged_save_keeps_a_genuinely_higher_generation(
    files: list[SqliteStateFile], state_dir: Path
) -> None:
    store = files[0].store("s:")
    await store.save("g", b"seven", generation=7, judge=lambda _d: None)
    judge = {b"seven": 7, b"five": 5}.get
    await store.save("g", b"five", generation=5, judge=judge)  # a late, older save
    assert await store.load("g") == b"seven"
    await store.save("g", b"eight", generation=8, judge=judge)
    assert await store.load("g") == b"eight"
    await store.save("g", b"six", generation=6, judge=lambda _d: None)  # "eight" unverifiable
    assert await store.load("g") == b"six"
    # A planted generation does not freeze saves: the judge reads the bytes.
    raw(state_dir, "UPDATE state SET gen = 999999")
    await store.save("g", b"seven-again", generation=7, judge={b"six": 6}.get)
    assert await store.load("g") == b"seven-again"


async def test_oversized_and_foreign_values_are_misses(
    files: list[SqliteStateFile], state_dir: Path
) -> None:
    store = files[0].store("s:", max_bytes=16)
    await store.save("big", b"x" * 17, generation=1)
    assert await store.load("big") is None  # refused in SQL, never copied out
    raw(state_dir, "INSERT OR REPLACE INTO state VALUES ('s:', 'txt', 1, 'text, not bytes', NULL)")
    assert await store.load("txt") is None
    raw(state_dir, "INSERT OR REPLACE INTO state VALUES ('s:', 'junk', 'junk', X'00', NULL)")
    await store.save("junk", b"ours", generation=1)  # a gen that is not ours: replaced
    assert await store.load("junk") == b"ours"


async def test_namespaces_are_apart(files: list[SqliteStateFile]) -> None:
    await files[0].store("a:").save("g", b"A", generation=1)
    assert await files[0].store("b:").load("g") is None


async def test_lock_is_exclusive_across_processes_expires_and_releases_only_its_own(
    files: list[SqliteStateFile],
) -> None:
    now = [1000.0]
    a = SqliteTrustStateStore(files[0], "s:", lock_timeout=30, wall_clock=lambda: now[0])
    b = SqliteTrustStateStore(files[1], "s:", lock_timeout=30, wall_clock=lambda: now[0])
    token = await a.acquire("g")
    assert token is not None
    assert await b.acquire("g") is None
    await b.release("g", "someone-else")
    assert await b.acquire("g") is None
    now[0] += 31  # the holder "crashed": its lock expires
    other = await b.acquire("g")
    assert other is not None
    await a.release("g", token)  # the old holder's late release does not free it
    assert await a.acquire("g") is None
    await b.release("g", other)
    assert await a.acquire("g") is not None


@pytest.mark.parametrize(
    ("token", "expires_in"),
    [("0" * 32, 10**9), ("not-a-token", 10), (None, 10)],
    ids=["eternal", "garbage-token", "null-token"],
)
async def test_a_lock_no_worker_can_hold_is_taken_over(
    files: list[SqliteStateFile], state_dir: Path, token: str | None, expires_in: float
) -> None:
    store = SqliteTrustStateStore(files[0], "s:", lock_timeout=30, wall_clock=lambda: 1000.0)
    await store.load("g")  # creates the schema
    value = token if token is not None else ""
    raw(state_dir, "INSERT INTO locks VALUES ('s:', 'g', ?, ?)", value, 1000.0 + expires_in)
    assert await store.acquire("g") is not None


async def test_unwritable_directory_is_store_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    f = SqliteStateFile(blocker / "state")
    try:
        with pytest.raises(StoreUnavailableError):
            await f.store("s:").load("g")
        with pytest.raises(NotADirectoryError):
            check_state_dir(blocker / "state")
    finally:
        await f.aclose()


# -- shared floors ------------------------------------------------------------------------------


async def test_floors_only_rise_and_garbage_is_ignored(
    files: list[SqliteStateFile], state_dir: Path
) -> None:
    a, b = files[0].floors("s:"), files[1].floors("s:")
    await a.raise_floors("g", {"root": 1, "timestamp": 5, "targets/releases": 9})
    await b.raise_floors("g", {"root": 2, "timestamp": 3})
    assert await a.load_floors("g") == {"root": 2, "timestamp": 5}  # delegations left out
    raw(state_dir, "INSERT INTO floors VALUES ('s:', 'g', 'snapshot', 'junk')")
    raw(state_dir, "INSERT INTO floors VALUES ('s:', 'g', 'other', 7)")
    assert await b.load_floors("g") == {"root": 2, "timestamp": 5}
    assert await b.load_floors("unknown") == {}


async def test_stores_offer_shared_floors_memory_does_not(files: list[SqliteStateFile]) -> None:
    assert isinstance(files[0].store("s:"), SharedFloors)
    wrapped = with_host_floors(files[0].store("r:"), files[0].floors("r:"))
    assert isinstance(wrapped, SharedFloors)
    assert not isinstance(MemoryTrustStateStore(), SharedFloors)


# -- sources sharing the file (workers) -----------------------------------------------------------


async def test_two_workers_share_rollback_floors_and_a_restart_keeps_them(
    files: list[SqliteStateFile], state_dir: Path
) -> None:
    server = SimServer()
    r = server.add(repo())
    old = r.checkpoint()
    clock = Clock()
    a = source(server, files[0].store("n:"), clock)
    b = source(server, files[1].store("n:"), clock)
    try:
        assert (await b.resolve(GUN, "v1", TOFU)).digest == digest(M1)
        r.add_target("v1", M2)
        r.publish()
        clock.advance(seconds=61)
        assert (await a.resolve(GUN, "v1", TOFU)).digest == digest(M2)  # A sees newer
        r.serve(old)  # the server replays the older, validly signed files
        clock.advance(seconds=61)
        with pytest.raises(RollbackError):
            await b.resolve(GUN, "v1", TOFU)  # B never saw the newer version itself
    finally:
        await a.aclose()
        await b.aclose()
    # A restart (a new process on the same file) refuses it too.
    restarted = SqliteStateFile(state_dir)
    c = source(server, restarted.store("n:"), clock)
    try:
        with pytest.raises(RollbackError):
            await c.resolve(GUN, "v1", TOFU)
    finally:
        await c.aclose()
        await restarted.aclose()


async def test_floors_hold_when_the_record_is_rolled_back(
    files: list[SqliteStateFile], state_dir: Path
) -> None:
    """Someone puts back the older record (genuine, v1) after A saved v2: B, cold, reads
    it, but the shared floors A raised make B refuse the server's rollback to v1."""
    server = SimServer()
    r = server.add(repo())
    old = r.checkpoint()
    clock = Clock()
    store_a = files[0].store("n:")
    a = source(server, store_a, clock)
    b = source(server, files[1].store("n:"), clock)
    try:
        await a.resolve(GUN, "v1", TOFU)
        v1_record = await store_a.load(GUN)
        assert v1_record is not None
        r.add_target("v1", M2)
        r.publish()
        clock.advance(seconds=61)
        assert (await a.resolve(GUN, "v1", TOFU)).digest == digest(M2)
        await store_a.save(GUN, v1_record, generation=None)  # the record rolled back
        r.serve(old)
        with pytest.raises(RollbackError):
            await b.resolve(GUN, "v1", TOFU)
    finally:
        await a.aclose()
        await b.aclose()


async def test_one_worker_refreshes_the_other_waits_and_reuses(
    files: list[SqliteStateFile],
) -> None:
    server = SimServer()
    server.add(repo())
    clock = Clock()
    server.gate = asyncio.Event()
    a = source(server, files[0].store("n:"), clock)
    b = source(server, files[1].store("n:"), clock)
    try:
        tasks = [
            asyncio.ensure_future(s.resolve(GUN, "v1", TOFU)) for s in (a, b) for _ in range(5)
        ]
        await asyncio.sleep(0.3)  # one holds the lock and waits on notary
        server.gate.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert {t.digest for t in results} == {digest(M1)}
        names = server.names
        # One walk; the other worker checks the signed timestamp (and probes for a new
        # root) itself: a stored state never stands in for freshness.
        assert names.count("timestamp.json") == 2, names
        assert names.count("root.json") == 1, names
        assert len([n for n in names if n.startswith(("snapshot.", "targets."))]) == 2, names
    finally:
        await a.aclose()
        await b.aclose()


async def test_corrupted_record_is_refetched_never_allowed(
    files: list[SqliteStateFile], state_dir: Path
) -> None:
    server = SimServer()
    server.add(repo())
    clock = Clock()
    a = source(server, files[0].store("n:"), clock)
    try:
        await a.resolve(GUN, "v1", TOFU)
    finally:
        await a.aclose()
    raw(state_dir, "UPDATE state SET data = ?", b"trustproxy-notary-state/1 garbage\n{}")
    before = len(server.names)
    b = source(server, files[1].store("n:"), clock)
    try:
        assert (await b.resolve(GUN, "v1", TOFU)).digest == digest(M1)
        assert "root.json" in server.names[before:]  # started over from the server
    finally:
        await b.aclose()


async def test_redis_like_store_with_host_floors(files: list[SqliteStateFile]) -> None:
    """Records in one store (here another namespace of the file, standing in for Redis),
    floors in the host's file: a wiped record store does not lower them."""
    server = SimServer()
    r = server.add(repo())
    old = r.checkpoint()
    clock = Clock()
    records = files[0].store("redis:")
    a = source(server, with_host_floors(records, files[0].floors("n:")), clock)
    try:
        await a.resolve(GUN, "v1", TOFU)
        r.add_target("v1", M2)
        r.publish()
        clock.advance(seconds=61)
        await a.resolve(GUN, "v1", TOFU)
    finally:
        await a.aclose()
    await records.save(GUN, b"", generation=None)  # "Redis flushed"
    r.serve(old)
    b = source(server, with_host_floors(files[1].store("redis:"), files[1].floors("n:")), clock)
    try:
        with pytest.raises(RollbackError):
            await b.resolve(GUN, "v1", TOFU)
    finally:
        await b.aclose()


# -- handing over between siblings (one serve: one key) -------------------------------------------


async def test_siblings_hand_over_what_one_verified_within_its_window(state_dir: Path) -> None:
    """Workers of one serve share a key: the second uses the first's verified state for the
    rest of its fresh_for window, so the trust server is asked once between them."""
    key = b"k" * 32
    fa, fb = (
        SqliteStateFile(state_dir, handoff_key=key),
        SqliteStateFile(state_dir, handoff_key=key),
    )
    server = SimServer()
    server.add(repo())
    clock = Clock()
    server.gate = asyncio.Event()
    a = source(server, fa.store("n:"), clock)
    b = source(server, fb.store("n:"), clock)
    try:
        tasks = [
            asyncio.ensure_future(s.resolve(GUN, "v1", TOFU)) for s in (a, b) for _ in range(5)
        ]
        await asyncio.sleep(0.3)
        server.gate.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert {t.digest for t in results} == {digest(M1)}
        names = server.names
        assert names.count("timestamp.json") == 1, names
        assert names.count("root.json") == 1, names
        # Past the window each refreshes again (the handed-over state is not kept longer).
        before = len(server.names)
        clock.advance(seconds=61)
        await b.resolve(GUN, "v1", TOFU)
        assert server.names[before:].count("timestamp.json") == 1, server.names[before:]
    finally:
        await a.aclose()
        await b.aclose()
        await fa.aclose()
        await fb.aclose()


async def test_a_replayed_vouched_record_past_its_window_is_not_handed_over(
    state_dir: Path,
) -> None:
    """Someone who can write the file puts back an older record with its genuine MAC: its
    fetch time is outside the window, so a sibling refreshes from the server (and refuses
    the rollback the server then serves, from the floors)."""
    key = b"k" * 32
    fa, fb = (
        SqliteStateFile(state_dir, handoff_key=key),
        SqliteStateFile(state_dir, handoff_key=key),
    )
    server = SimServer()
    r = server.add(repo())
    old = r.checkpoint()
    clock = Clock()
    a = source(server, fa.store("n:"), clock)
    b = source(server, fb.store("n:"), clock)
    try:
        await a.resolve(GUN, "v1", TOFU)
        old_row = raw(state_dir, "SELECT gen, data, mac FROM state")[0]
        r.add_target("v1", M2)
        r.publish()
        clock.advance(seconds=61)
        assert (await a.resolve(GUN, "v1", TOFU)).digest == digest(M2)
        raw(state_dir, "UPDATE state SET gen = ?, data = ?, mac = ?", *old_row)
        r.serve(old)
        with pytest.raises(RollbackError):
            await b.resolve(GUN, "v1", TOFU)
    finally:
        await a.aclose()
        await b.aclose()
        await fa.aclose()
        await fb.aclose()


async def test_a_record_without_the_key_is_not_handed_over(state_dir: Path) -> None:
    """Another key (another serve, or a forged MAC): a head start only, the signed
    timestamp is fetched."""
    fa = SqliteStateFile(state_dir, handoff_key=b"a" * 32)
    fb = SqliteStateFile(state_dir, handoff_key=b"b" * 32)
    server = SimServer()
    server.add(repo())
    clock = Clock()
    a = source(server, fa.store("n:"), clock)
    b = source(server, fb.store("n:"), clock)
    try:
        await a.resolve(GUN, "v1", TOFU)
        assert await fb.store("n:").load_vouched(GUN) is None
        assert await fa.store("n:").load_vouched(GUN) is not None
        before = len(server.names)
        await b.resolve(GUN, "v1", TOFU)
        assert "timestamp.json" in server.names[before:]
    finally:
        await a.aclose()
        await b.aclose()
        await fa.aclose()
        await fb.aclose()


# -- with Redis: records and lock shared by replicas, the hand-over in the host's file ---------


class _DownRecords:
    """A record store and lock that are down (Redis unreachable)."""

    lock_timeout = 30.0

    async def load(self, repository: str) -> bytes | None:
        raise StoreUnavailableError("down")

    async def save(
        self,
        repository: str,
        data: bytes,
        *,
        generation: int | None = None,
        judge: Judge | None = None,
    ) -> None:
        raise StoreUnavailableError("down")

    async def acquire(self, repository: str) -> str | None:
        raise StoreUnavailableError("down")

    async def release(self, repository: str, token: str) -> None:
        raise StoreUnavailableError("down")


@pytest.fixture
async def redis_like(tmp_path: Path) -> AsyncIterator[SqliteTrustStateStore]:
    """Records and lock shared by every "host" (a file of its own, standing in for Redis:
    its key is no host's, so nothing in it is vouched for anywhere)."""
    shared = SqliteStateFile(tmp_path / "redis")
    yield shared.store("redis:")
    await shared.aclose()


def vouching(file: SqliteStateFile, records: SqliteTrustStateStore) -> HostVouchingStore:
    store = with_host_floors(records, file.floors("n:"), vouched=file.store("n:"))
    assert isinstance(store, HostVouchingStore)
    return store


async def test_host_vouching_store_keeps_a_vouched_copy_of_each_save(
    state_dir: Path, redis_like: SqliteTrustStateStore
) -> None:
    key = b"k" * 32
    fa, fb = (SqliteStateFile(state_dir, handoff_key=key) for _ in range(2))
    try:
        a, b = vouching(fa, redis_like), vouching(fb, redis_like)
        assert isinstance(a, HostVouchingStore)
        assert isinstance(a, VouchingStore)
        assert isinstance(a, SharedFloors)
        plain = with_host_floors(redis_like, fa.floors("n:"))
        assert type(plain) is HostFlooredStore
        assert not isinstance(plain, VouchingStore)  # floors only: no hand-over
        await a.save(GUN, b"record", generation=3)
        assert await redis_like.load(GUN) == b"record"  # the records replicas share
        assert await b.load(GUN) == b"record"
        assert await b.load_vouched(GUN) == b"record"  # a sibling: vouched (same key)
        assert raw(state_dir, "SELECT ns, repository, gen FROM state") == [("n:", GUN, 3)]
        # A writer of Redis only (another replica, or an attacker) changes the head start,
        # never what is vouched for.
        await redis_like.save(GUN, b"planted", generation=9)
        assert await b.load(GUN) == b"planted"
        assert await b.load_vouched(GUN) == b"record"
        await redis_like.save("other/repo", b"planted")
        assert await b.load_vouched("other/repo") is None
        # Another serve on this host (another key) is not vouched for.
        other = SqliteStateFile(state_dir, handoff_key=b"o" * 32)
        try:
            assert await vouching(other, redis_like).load_vouched(GUN) is None
        finally:
            await other.aclose()
    finally:
        await fa.aclose()
        await fb.aclose()


async def test_a_vouched_copy_must_verify_under_the_key(
    state_dir: Path, redis_like: SqliteTrustStateStore
) -> None:
    key = b"k" * 32
    f = SqliteStateFile(state_dir, handoff_key=key)
    try:
        store = vouching(f, redis_like)
        await store.save(GUN, b"record", generation=1)
        assert await store.load_vouched(GUN) == b"record"
        # Whoever writes the file changes the bytes (keeping the MAC), or plants a MAC.
        raw(state_dir, "UPDATE state SET data = ?", b"recorc")
        assert await store.load_vouched(GUN) is None
        raw(state_dir, "UPDATE state SET data = ?, mac = ?", b"record", b"\0" * 32)
        assert await store.load_vouched(GUN) is None
        raw(state_dir, "UPDATE state SET mac = NULL")
        assert await store.load_vouched(GUN) is None
    finally:
        await f.aclose()


async def test_the_vouched_copy_is_saved_before_redis_is(state_dir: Path) -> None:
    """A sibling waiting for the lock stops waiting when the Redis record moves and then
    asks for the vouched copy: it must already be in the file when Redis is written."""
    f = SqliteStateFile(state_dir, handoff_key=b"k" * 32)
    seen: list[bytes | None] = []

    class Records(_DownRecords):
        async def save(
            self,
            repository: str,
            data: bytes,
            *,
            generation: int | None = None,
            judge: Judge | None = None,
        ) -> None:
            seen.append(await f.store("n:").load_vouched(repository))

    try:
        await vouching(f, Records()).save(GUN, b"record", generation=1)  # type: ignore[arg-type]
        assert seen == [b"record"]
    finally:
        await f.aclose()


async def test_host_file_and_redis_fail_apart(
    state_dir: Path, redis_like: SqliteTrustStateStore
) -> None:
    """A file that fails loses the hand-over only (the Redis save still happens; reading
    the vouched copy is StoreUnavailableError, which the source takes as a miss); Redis
    down fails the save as before, but the vouched copy is written."""
    f = SqliteStateFile(state_dir, handoff_key=b"k" * 32)
    try:
        down = vouching(f, _DownRecords())  # type: ignore[arg-type]
        with pytest.raises(StoreUnavailableError):
            await down.save(GUN, b"record", generation=1)
        assert await down.load_vouched(GUN) == b"record"
        store = vouching(f, redis_like)
        await f.aclose()  # the file is gone (closed here; unwritable or locked alike)
        await store.save(GUN, b"record 2", generation=2)
        assert await redis_like.load(GUN) == b"record 2"
        with pytest.raises(StoreUnavailableError):
            await store.load_vouched(GUN)
    finally:
        await f.aclose()


async def test_with_redis_siblings_hand_over_and_another_host_asks_the_server(
    tmp_path: Path, state_dir: Path, redis_like: SqliteTrustStateStore
) -> None:
    """Two workers of one host (one key, one file) and a replica on another host share
    records and lock in "Redis": a cold burst over the siblings fetches each file once
    (the one that waited for the lock takes the vouched copy), and the other host, with
    nothing vouched for it, refreshes from the Redis record: it fetches the signed
    timestamp itself."""
    key = b"k" * 32
    fa, fb = (SqliteStateFile(state_dir, handoff_key=key) for _ in range(2))
    fc = SqliteStateFile(tmp_path / "other-host", handoff_key=b"c" * 32)
    server = SimServer()
    server.add(repo())
    clock = Clock()
    server.gate = asyncio.Event()
    a, b, c = (source(server, vouching(f, redis_like), clock) for f in (fa, fb, fc))
    try:
        tasks = [
            asyncio.ensure_future(s.resolve(GUN, "v1", TOFU)) for s in (a, b) for _ in range(5)
        ]
        await asyncio.sleep(0.3)
        server.gate.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert {t.digest for t in results} == {digest(M1)}
        names = server.names
        assert names.count("timestamp.json") == 1, names
        assert names.count("root.json") == 1, names
        assert len([n for n in names if n.endswith(".root.json")]) == 1, names
        before = len(server.names)
        assert (await c.resolve(GUN, "v1", TOFU)).digest == digest(M1)
        fetched = server.names[before:]
        assert fetched.count("timestamp.json") == 1, fetched
        assert "root.json" not in fetched, fetched  # its head start came from Redis
    finally:
        for s in (a, b, c):
            await s.aclose()
        for f in (fa, fb, fc):
            await f.aclose()


class _LookedTooEarly(SqliteTrustStateStore):
    """A sibling's view of the host's file when its first look came just before the other
    worker saved (and that worker released its lock before this one tried it)."""

    looked = False

    async def load_vouched(self, repository: str) -> bytes | None:
        if not self.looked:
            self.looked = True
            return None
        return await super().load_vouched(repository)


@pytest.mark.parametrize("with_redis", [False, True])
async def test_a_sibling_that_gets_the_lock_just_after_a_save_takes_it_over(
    state_dir: Path, redis_like: SqliteTrustStateStore, with_redis: bool
) -> None:
    """The lock is free when this worker tries it, but the record loaded with it was saved
    within the window: the vouched copy is looked for again before asking the server."""
    key = b"k" * 32
    fa, fb = (SqliteStateFile(state_dir, handoff_key=key) for _ in range(2))
    server = SimServer()
    server.add(repo())
    clock = Clock()
    early = _LookedTooEarly(fb, "n:")
    store_a: object = vouching(fa, redis_like) if with_redis else fa.store("n:")
    store_b: object = HostVouchingStore(redis_like, early) if with_redis else early
    a, b = source(server, store_a, clock), source(server, store_b, clock)
    try:
        await a.resolve(GUN, "v1", TOFU)
        clock.advance(seconds=30)  # within a's window (60 s)
        before = len(server.names)
        assert (await b.resolve(GUN, "v1", TOFU)).digest == digest(M1)
        assert early.looked
        assert server.names[before:] == [], server.names[before:]
        # Past a's window the record is only a head start again.
        clock.advance(seconds=31)
        await b.resolve(GUN, "v1", TOFU)
        assert "timestamp.json" in server.names[before:]
    finally:
        await a.aclose()
        await b.aclose()
        await fa.aclose()
        await fb.aclose()
