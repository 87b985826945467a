"""Change feeds: the Notary feed parser (table-driven, bad input refused), its HTTP shell over
a simulated server, the watcher (lease, cursor, log, failures), the state-file log, and
what an invalidation does to a NotarySource (a refetch, nothing else)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.errors import TrustSourceUnavailableError
from proxy.settings import ChangefeedSettings
from proxy.sources.invalidation import (
    ALL,
    ChangeWatcher,
    FeedPage,
    FeedUnsupportedError,
    Invalidation,
    InvalidationTimes,
    MemoryInvalidationLog,
    invalidation_log_for,
)
from proxy.sources.notary.changefeed import (
    ChangefeedFormatError,
    NotaryChangefeed,
    max_body_bytes,
    parse_changefeed,
)
from proxy.sources.notary.rules import SigningRule
from proxy.sources.notary.tuf import TrustOnFirstUse
from proxy.sources.sqlite_invalidation import MAX_ROWS, SqliteInvalidationLog
from proxy.sources.sqlite_store import SqliteStateFile
from proxy.sources.store import MemoryTrustStateStore, StoreUnavailableError
from proxy.upstream.auth import UpstreamAuthenticator
from tests.simulators.notary_repo import NotaryRepository
from tests.unit.sources.sim import GUN, Clock, SimServer, make_source

TOFU = SigningRule(TrustOnFirstUse())
Inv = Invalidation
M1 = b'{"manifest": 1}'
M2 = b'{"manifest": 2}'


def record(
    change_id: str, gun: str = "reg.example/ns/app", category: str = "update"
) -> dict[str, Any]:
    return {
        "ID": change_id,
        "CreatedAt": "2026-12-05T02:00:48.124902196Z",
        "GUN": gun,
        "Version": 2,
        "SHA256": "ab" * 32,
        "Category": category,
    }


def feed(*records: dict[str, Any], count: int | None = None) -> bytes:
    return json.dumps(
        {"count": len(records) if count is None else count, "records": list(records) or None}
    ).encode()


# -- the parser ------------------------------------------------------------------------------------

APP = "reg.example/ns/app"
GOOD = [
    ("empty, records null", b'{"count":0,"records":null}', "0", []),
    ("empty, records []", b'{"count":0,"records":[]}', "7", []),
    ("two updates", feed(record("1"), record("2", "reg/b")), "0", [("1", APP), ("2", "reg/b")]),
    ("a deletion", feed(record("9", category="deletion")), "8", [("9", APP)]),
    ("newest, after -1", feed(record("41")), "-1", [("41", APP)]),
    ("opaque IDs (no order)", feed(record("b_2"), record("a_1")), "x", [("b_2", APP),
                                                                        ("a_1", APP)]),
    ("a host:port GUN", feed(record("3", "127.0.0.1:5000/ns/app")), "2",
     [("3", "127.0.0.1:5000/ns/app")]),
    ("unknown category", feed(record("3", category="rotation")), "2", [("3", APP)]),
]  # fmt: skip


@pytest.mark.parametrize(("body", "after", "want"), [g[1:] for g in GOOD], ids=[g[0] for g in GOOD])
def test_parse_changefeed(body: bytes, after: str, want: list[tuple[str, str]]) -> None:
    changes = parse_changefeed(body, after=after, max_records=10)
    assert [(c.id, c.gun) for c in changes] == want


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


BAD = [
    ("not JSON", b"<html>oops</html>", "not JSON"),
    ("deep nesting", _nested(50_000), "answer of"),  # over the size bound first
    ("deep nesting, small", _nested(5_000), "not JSON"),
    ("a list", b"[]", "not a JSON object"),
    ("no count", b'{"records":[]}', "count"),
    ("count is a bool", b'{"count":true,"records":[]}', "count"),
    ("negative count", b'{"count":-1,"records":[]}', "count"),
    ("records not a list", b'{"count":1,"records":{"a":1}}', "records"),
    ("count mismatch", feed(record("1"), count=2), "count says 2"),
    ("more than asked", feed(*(record(str(i)) for i in range(1, 12))), "asked for 10"),
    ("record not an object", b'{"count":1,"records":["x"]}', "records[0]"),
    ("no ID", json.dumps({"count": 1, "records": [{"GUN": "a/b", "Category": "update"}]}).encode(),
     "records[0].ID"),
    ("numeric ID", feed({**record("1"), "ID": 1}), "records[0].ID"),
    ("ID with a slash", feed(record("1/2")), "records[0].ID"),
    ("ID too long", feed(record("9" * 65)), "records[0].ID"),
    ("empty GUN", feed(record("1", "")), "records[0].GUN"),
    ("GUN with a space", feed(record("1", "a b")), "records[0].GUN"),
    ("GUN with a newline", feed(record("1", "a\nb")), "records[0].GUN"),
    ("GUN too long", feed(record("1", "a" * 1025)), "records[0].GUN"),
    ("GUN not a string", feed({**record("1"), "GUN": ["a"]}), "records[0].GUN"),
    ("no category", feed({**record("1"), "Category": None}), "Category"),
    ("category in capitals", feed(record("1", category="UPDATE")), "Category"),
    ("negative version", feed({**record("6"), "Version": -1}), "records[0].Version"),
    ("version a string", feed({**record("6"), "Version": "2"}), "records[0].Version"),
    ("version a bool", feed({**record("6"), "Version": True}), "records[0].Version"),
    ("ID not after the cursor", feed(record("5")), "does not follow 5"),
    ("IDs going back", feed(record("7"), record("6")), "does not follow 7"),
    ("oversized", b" " * (max_body_bytes(10) + 1), "answer of"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_parse_changefeed_refuses(body: bytes, message: str) -> None:
    with pytest.raises(ChangefeedFormatError, match="changefeed") as caught:
        parse_changefeed(body, after="5", max_records=10)
    assert message in str(caught.value)


def test_parse_versions() -> None:
    body = feed(record("1"), record("2", category="deletion"), {**record("3"), "Version": 0})
    changes = parse_changefeed(body, after="0", max_records=10)
    # An update names the timestamp version it published; a deletion (version 0) none.
    assert [c.version for c in changes] == [2, None, None]


def test_parse_bound_grows_with_the_page_only() -> None:
    assert max_body_bytes(1) < max_body_bytes(100) < 1024 * 1024


# -- the HTTP shell over a simulated notary-server ------------------------------------------


class FeedServer:
    """notary-server's changefeed endpoint over httpx.MockTransport."""

    def __init__(self) -> None:
        self.changes: list[dict[str, Any]] = []
        self.requests: list[httpx.Request] = []
        self.status: int | None = None
        self.body: bytes | None = None
        self.headers: dict[str, str] = {}
        self.token: str | None = None

    def add(self, gun: str, category: str = "update") -> None:
        self.changes.append(record(str(len(self.changes) + 1), gun, category))

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            return httpx.Response(200, json={"token": self.token, "expires_in": 300})
        self.requests.append(request)
        if self.token is not None and request.headers.get("authorization") != (
            f"Bearer {self.token}"
        ):
            return httpx.Response(
                401,
                headers={
                    "www-authenticate": 'Bearer realm="https://auth.example/token",'
                    'service="notary-server",scope="registry:catalog:*"'
                },
            )
        if self.status is not None:
            body = self.body or b""

            async def stream() -> AsyncIterator[bytes]:  # not decoded by the transport
                yield body

            return httpx.Response(self.status, content=stream(), headers=self.headers)
        if request.url.path != "/v2/_trust/changefeed":
            return httpx.Response(404)
        change_id = int(request.url.params["change_id"])
        records = int(request.url.params["records"])
        if change_id < 0:
            page = self.changes[records:] if records < 0 else []
        else:
            page = self.changes[change_id : change_id + records]
        return httpx.Response(200, content=feed(*page), headers=self.headers)


def make_feed(server: FeedServer, *, records: int = 100) -> NotaryChangefeed:
    http = httpx.AsyncClient(transport=httpx.MockTransport(server))
    auth = UpstreamAuthenticator(http, "notary", username="u", password="p")
    return NotaryChangefeed("notary", "https://notary.example", http, auth=auth, records=records)


@pytest.mark.anyio
async def test_feed_latest_and_pages() -> None:
    server = FeedServer()
    cf = make_feed(server, records=2)
    try:
        assert await cf.latest() == "0"
        for gun in ("a/1", "a/2", "a/3"):
            server.add(gun)
        assert await cf.latest() == "3"
        page = await cf.changes("0")
        assert page == FeedPage("2", (Inv("a/1", 2), Inv("a/2", 2)), full=True)
        page = await cf.changes("2")
        assert page == FeedPage("3", (Inv("a/3", 2),), full=False)
        assert await cf.changes("3") == FeedPage("3", (), full=False)
        q = server.requests[-1].url.params
        assert (q["change_id"], q["records"]) == ("3", "2")
    finally:
        await cf.aclose()


@pytest.mark.anyio
async def test_feed_behind_token_auth_uses_the_challenge_scope() -> None:
    server = FeedServer()
    server.token = "t0k3n"
    server.add("a/1")
    cf = make_feed(server)
    try:
        assert (await cf.changes("0")).changes == (Inv("a/1", 2),)
        assert server.requests[-1].headers["authorization"] == "Bearer t0k3n"
    finally:
        await cf.aclose()


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405])
@pytest.mark.anyio
async def test_feed_refused_is_unsupported(status: int) -> None:
    server = FeedServer()
    server.status = status
    cf = make_feed(server)
    try:
        with pytest.raises(FeedUnsupportedError, match=f"HTTP {status}"):
            await cf.changes("0")
    finally:
        await cf.aclose()


@pytest.mark.parametrize("status", [500, 502, 503, 302])
@pytest.mark.anyio
async def test_feed_server_errors_are_unavailable(status: int) -> None:
    server = FeedServer()
    server.status = status
    cf = make_feed(server)
    try:
        with pytest.raises(TrustSourceUnavailableError) as caught:
            await cf.latest()
        assert not isinstance(caught.value, FeedUnsupportedError)
    finally:
        await cf.aclose()


@pytest.mark.anyio
async def test_feed_body_is_bounded_and_identity_only() -> None:
    server = FeedServer()
    server.status = 200
    server.body = b"x" * (max_body_bytes(100) + 1)
    cf = make_feed(server)
    try:
        with pytest.raises(ChangefeedFormatError, match="exceeds"):
            await cf.changes("0")
        server.body = feed()
        server.headers = {"content-encoding": "gzip"}
        with pytest.raises(ChangefeedFormatError, match="Content-Encoding"):
            await cf.changes("0")
    finally:
        await cf.aclose()


@pytest.mark.anyio
async def test_feed_that_drips_is_cut_at_the_deadline() -> None:
    """A server that sends a byte at a time within every read timeout: one read of the
    feed is bounded as a whole (the poll must not hang holding the lease)."""

    async def drip() -> AsyncIterator[bytes]:
        while True:
            yield b" "
            await asyncio.sleep(0.05)

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=drip())

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    cf = NotaryChangefeed("notary", "https://notary.example", http, deadline=0.3)
    try:
        with pytest.raises(TrustSourceUnavailableError, match="timed out"):
            await cf.changes("0")
    finally:
        await cf.aclose()


AHEAD = [
    ("behind", "3", "5", False),
    ("at the end", "5", "5", False),
    ("past the end (server restarted)", "9", "5", True),
    ("not a cursor", "../../x", "5", True),
    ("opaque IDs", "b_1", "a_2", False),
]


@pytest.mark.parametrize(
    ("cursor", "latest", "ahead"), [a[1:] for a in AHEAD], ids=[a[0] for a in AHEAD]
)
def test_ahead_of(cursor: str, latest: str, ahead: bool) -> None:
    cf = NotaryChangefeed("n", "https://x", httpx.AsyncClient())
    assert cf.ahead_of(cursor, latest) is ahead


# -- the watcher --------------------------------------------------------------------------------


class Target:
    def __init__(self) -> None:
        self.calls: list[str | None] = []
        self.versions: list[int | None] = []

    def invalidate(self, repository: str | None, version: int | None = None, /) -> None:
        self.calls.append(repository)
        self.versions.append(version)


class ScriptedFeed:
    """A ChangeFeed whose changes and failures the test sets."""

    def __init__(self) -> None:
        self.entries: list[str] = []
        self.error: Exception | None = None
        self.calls = 0

    async def latest(self) -> str:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return str(len(self.entries))

    async def changes(self, cursor: str) -> FeedPage:
        self.calls += 1
        if self.error is not None:
            raise self.error
        start = int(cursor)
        page = self.entries[start : start + 2]
        changes = tuple(Inv(r, start + n + 1) for n, r in enumerate(page))
        return FeedPage(str(start + len(page)), changes, full=len(page) == 2)

    def ahead_of(self, cursor: str, latest: str) -> bool:
        return int(cursor) > int(latest)

    async def aclose(self) -> None:
        return None


class FlakyLog(MemoryInvalidationLog):
    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.leased = True

    async def lease(self, token: str, ttl: float) -> bool:
        return self.leased

    async def read(self, after: str, limit: int) -> tuple[str, list[Invalidation]]:
        if self.down:
            raise StoreUnavailableError("down")
        return await super().read(after, limit)


def watcher(feed_: ScriptedFeed, log_: MemoryInvalidationLog, target: Target) -> ChangeWatcher:
    t = [0.0]
    return ChangeWatcher("notary", feed_, log_, target, interval=1.0, monotonic=lambda: t[0])


@pytest.mark.anyio
async def test_watcher_starts_at_the_feeds_end_then_follows_it() -> None:
    feed_, log_, target = ScriptedFeed(), MemoryInvalidationLog(), Target()
    feed_.entries = ["old/1"]  # before anyone followed the feed: left to the refresh
    w = watcher(feed_, log_, target)
    await w.listen_once()  # a listener starts at the log's end
    await w.poll_once()
    await w.listen_once()
    assert target.calls == []
    assert await log_.load_cursor() == "1"
    feed_.entries += ["a/1", "a/2", "a/1", "b/1", "c/1"]  # three pages of two
    await w.poll_once()
    await w.listen_once()
    # One invalidation per repository read, with the highest version it was changed to.
    got = sorted(zip((str(c) for c in target.calls), target.versions, strict=True))
    assert got == [("a/1", 4), ("a/2", 3), ("b/1", 5), ("c/1", 6)]
    assert await log_.load_cursor() == "6"
    assert w.status.state == "active"
    assert w.status.polling


@pytest.mark.anyio
async def test_watcher_without_the_lease_only_listens() -> None:
    feed_, log_, target = ScriptedFeed(), FlakyLog(), Target()
    log_.leased = False
    w = watcher(feed_, log_, target)
    await w.listen_once()
    await w.poll_once()
    assert feed_.calls == 0
    assert w.status.state == "standby"
    assert not w.status.polling
    await log_.publish([Inv("x/1")])  # what the holder elsewhere wrote
    await w.listen_once()
    assert target.calls == ["x/1"]


@pytest.mark.anyio
async def test_watcher_unsupported_feed_logs_once_and_backs_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    feed_, log_, target = ScriptedFeed(), MemoryInvalidationLog(), Target()
    feed_.error = FeedUnsupportedError("notary", "change feed: HTTP 404")
    w = watcher(feed_, log_, target)
    with caplog.at_level(logging.WARNING, logger="trustproxy.changefeed"):
        await w.poll_once()
        await w.poll_once()  # backed off: not asked again
    assert feed_.calls == 1
    assert w.status.state == "unsupported"
    assert not w.status.polling  # not renewing the lease while backing off
    assert "refresh interval" in w.status.detail
    assert len([r for r in caplog.records if "unsupported" in r.getMessage()]) == 1


@pytest.mark.anyio
async def test_watcher_cursor_past_the_feed_starts_over_with_all() -> None:
    feed_, log_, target = ScriptedFeed(), MemoryInvalidationLog(), Target()
    feed_.entries = ["a/1", "a/2"]
    await log_.save_cursor("999")  # planted, or the server lost its history
    w = watcher(feed_, log_, target)
    await w.listen_once()
    await w.poll_once()
    await w.listen_once()
    assert target.calls == [None]
    assert await log_.load_cursor() == "2"


@pytest.mark.anyio
async def test_watcher_notices_a_feed_that_started_over() -> None:
    """A notary-server on memory storage restarts: its change IDs count from 1 again, below
    the shared cursor. The holder checks the cursor against the feed every resync_every
    polls, starts over from the feed's end and invalidates everything once."""
    feed_, log_, target = ScriptedFeed(), MemoryInvalidationLog(), Target()
    feed_.entries = ["a/1", "a/2", "a/3"]
    w = ChangeWatcher("notary", feed_, log_, target, interval=1.0, resync_every=3)
    await w.listen_once()
    await w.poll_once()  # first poll: cursor 3
    feed_.entries = ["b/1"]  # restarted, one change since
    await w.poll_once()  # cursor 3 > everything: nothing seen
    await w.listen_once()
    assert target.calls == []
    await w.poll_once()  # third poll: resync
    await w.listen_once()
    assert target.calls == [None]
    assert await log_.load_cursor() == "1"


@pytest.mark.anyio
async def test_watcher_garbage_cursor_starts_over_with_all() -> None:
    log_, target = MemoryInvalidationLog(), Target()

    class Strict(ScriptedFeed):
        def ahead_of(self, cursor: str, latest: str) -> bool:
            return not cursor.isdigit() or int(cursor) > int(latest)

    feed_ = Strict()
    feed_.entries = ["a/1"]
    await log_.save_cursor("../x")
    w = watcher(feed_, log_, target)
    await w.listen_once()
    await w.poll_once()
    await w.listen_once()
    assert target.calls == [None]
    assert await log_.load_cursor() == "1"


@pytest.mark.anyio
async def test_watcher_bad_feed_data_keeps_the_cursor() -> None:
    feed_, log_, target = ScriptedFeed(), MemoryInvalidationLog(), Target()
    w = watcher(feed_, log_, target)
    await w.poll_once()
    feed_.entries = ["a/1"]
    feed_.error = ChangefeedFormatError("not JSON")
    await w.poll_once()
    assert w.status.state == "bad data"
    assert await log_.load_cursor() == "0"
    feed_.error = None
    await w.poll_once()
    assert await log_.load_cursor() == "1"


@pytest.mark.anyio
async def test_watcher_log_outage_ends_with_all() -> None:
    feed_, log_, target = ScriptedFeed(), FlakyLog(), Target()
    w = watcher(feed_, log_, target)
    await w.listen_once()
    log_.down = True
    await w.listen_once()
    await w.listen_once()
    assert target.calls == []
    log_.down = False
    await w.listen_once()
    assert target.calls == [None]  # entries may have been missed meanwhile


@pytest.mark.anyio
async def test_watcher_start_and_close() -> None:
    feed_, log_, target = ScriptedFeed(), MemoryInvalidationLog(), Target()
    w = ChangeWatcher("notary", feed_, log_, target, interval=0.05)
    w.start()
    w.start()  # idempotent
    await asyncio.sleep(0.2)
    feed_.entries.append("a/1")
    await asyncio.sleep(0.3)
    await w.aclose()
    assert "a/1" in target.calls


def test_invalidation_times() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    sec = timedelta(seconds=1)
    times = InvalidationTimes(max_entries=2)
    assert not times.superseded("a", t0, 1)
    times.mark("a", t0, 5)
    assert times.superseded("a", t0 - sec, 4)  # fetched before, older version
    assert not times.superseded("a", t0 - sec, 5)  # fetched before, but has the change
    assert not times.superseded("a", t0 + sec, 1)  # fetched after
    times.mark("b", t0 + sec)  # no version: only the fetch time counts
    assert times.superseded("b", t0, 99)
    times.mark("c", t0 + 2 * sec, 3)  # "a" folds into the floor, without its version
    assert times.superseded("a", t0 - sec, 5)
    assert times.superseded("zz", t0, 1)  # unknown: judged by the floor
    assert not times.superseded("zz", t0 + sec, 1)
    times.mark("c", t0 + 3 * sec, 2)  # merged: latest time, highest version
    assert times.superseded("c", t0 + 3 * sec, 2)
    times.mark(None, t0 + 5 * sec)
    assert times.superseded("c", t0 + 4 * sec, 10)


def test_memory_store_gets_a_memory_log() -> None:
    assert isinstance(invalidation_log_for(MemoryTrustStateStore()), MemoryInvalidationLog)


# -- the state file's log ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_sqlite_log_shared_by_two_processes(tmp_path: Path) -> None:
    now = [1000.0]
    files = [SqliteStateFile(tmp_path), SqliteStateFile(tmp_path)]
    a, b = (SqliteInvalidationLog(f, "n:", wall_clock=lambda: now[0]) for f in files)
    other = SqliteInvalidationLog(files[0], "other:")
    try:
        assert invalidation_log_for(files[0].store("n:")).__class__ is SqliteInvalidationLog
        # One holder at a time; it renews; another takes over once it stops renewing.
        assert await a.lease("a" * 32, 5.0)
        assert not await b.lease("b" * 32, 5.0)
        now[0] += 3
        assert await a.lease("a" * 32, 5.0)
        now[0] += 4
        assert not await b.lease("b" * 32, 5.0)
        now[0] += 2
        assert await b.lease("b" * 32, 5.0)
        await a.release("a" * 32)  # not a's any more: nothing happens
        assert not await a.lease("a" * 32, 5.0)
        await b.release("b" * 32)  # given up: taken at once
        assert await a.lease("a" * 32, 5.0)
        # The cursor is shared.
        assert await b.load_cursor() is None
        await a.save_cursor("17")
        assert await b.load_cursor() == "17"
        # The log: b reads what a published, from where it started.
        start = await b.position()
        await a.publish([Inv("r/1", 7), Inv(ALL)])
        await other.publish([Inv("elsewhere/1")])
        pos, repos = await b.read(start, 10)
        assert repos == [Inv("r/1", 7), Inv(ALL)]
        assert (await b.read(pos, 10))[1] == []
        # Trimmed to MAX_ROWS per source.
        await a.publish([Inv(f"r/{i}") for i in range(MAX_ROWS + 5)])
        _, repos = await b.read("0", 20_000)
        assert len(repos) == MAX_ROWS
    finally:
        for f in files:
            await f.aclose()


@pytest.mark.anyio
async def test_sqlite_log_takes_over_a_lease_no_worker_holds(tmp_path: Path) -> None:
    import sqlite3

    f = SqliteStateFile(tmp_path)
    log_ = SqliteInvalidationLog(f, "n:", wall_clock=lambda: 1000.0)
    try:
        await log_.save_cursor("1")  # creates the tables and the row
        with sqlite3.connect(tmp_path / "trust-state.sqlite3") as db:
            db.execute("UPDATE changefeed_feed SET holder = 'x', lease_until = 1e12")
            db.execute("UPDATE changefeed_feed SET cursor = ?", ("9" * 500,))
        assert await log_.lease("a" * 32, 5.0)  # garbage holder, far expiry: dead
        assert await log_.load_cursor() is None  # too long to be a cursor
        assert await log_.read("not-a-position", 5) == ("0", [])
    finally:
        await f.aclose()


# -- what an invalidation does to a NotarySource --------------------------------------------


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def signed_repo(gun: str = GUN) -> NotaryRepository:
    repo = NotaryRepository(gun)
    repo.add_target("v1", M1)
    repo.publish()
    return repo


def timestamps(server: SimServer, since: int) -> list[str]:
    return [n for n in server.names[since:] if n == "timestamp.json"]


@pytest.mark.anyio
async def test_invalidate_makes_the_next_request_refetch_that_repository_only() -> None:
    other_gun = "registry.example:5000/team/other"
    server = SimServer()
    repo = server.add(signed_repo())
    server.add(signed_repo(other_gun))
    source = make_source(server)
    try:
        assert (await source.resolve(GUN, "v1", TOFU)).digest == digest(M1)
        await source.resolve(other_gun, "v1", TOFU)
        repo.remove_target("v1")
        repo.publish()
        before = len(server.names)
        # Cached: still served (the refresh interval has not passed).
        assert (await source.resolve(GUN, "v1", TOFU)).digest == digest(M1)
        assert server.names[before:] == []
        source.invalidate(GUN)
        with pytest.raises(Exception, match="v1"):
            await source.resolve(GUN, "v1", TOFU)
        assert timestamps(server, before) == ["timestamp.json"]
        await source.resolve(other_gun, "v1", TOFU)
        assert len(timestamps(server, before)) == 1  # the other repository stayed cached
        source.invalidate(None)
        await source.resolve(other_gun, "v1", TOFU)
        assert len(timestamps(server, before)) == 2
    finally:
        await source.aclose()


@pytest.mark.anyio
async def test_invalidate_to_a_version_already_held_keeps_the_cache() -> None:
    """The feed says which timestamp version the change made: a source already holding it
    (it refreshed after the publish) does not fetch again; an older one does."""
    server = SimServer()
    repo = server.add(signed_repo())
    source = make_source(server)
    try:
        await source.resolve(GUN, "v1", TOFU)
        held = (await source.load(GUN, TOFU)).timestamp
        assert held is not None
        before = len(server.names)
        source.invalidate(GUN, held.version)
        await source.resolve(GUN, "v1", TOFU)
        assert server.names[before:] == []
        repo.remove_target("v1")
        repo.publish()
        source.invalidate(GUN, held.version + 1)
        with pytest.raises(Exception, match="v1"):
            await source.resolve(GUN, "v1", TOFU)
        assert timestamps(server, before) == ["timestamp.json"]
    finally:
        await source.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("with_version", [False, True], ids=["no-version", "next-version"])
async def test_invalidate_during_a_refresh_leaves_its_result_due(with_version: bool) -> None:
    """A refresh that fetched the timestamp before the change lands after the invalidation:
    its result must not count as fresh."""
    server = SimServer()
    repo = server.add(signed_repo())
    clock = Clock()
    source = make_source(server, clock=clock)
    try:
        await source.resolve(GUN, "v1", TOFU)
        held = (await source.load(GUN, TOFU)).timestamp
        assert held is not None
        version = held.version + 1 if with_version else None
        clock.advance(seconds=61)  # due: the next request refreshes
        server.gate = asyncio.Event()
        running = asyncio.ensure_future(source.resolve(GUN, "v1", TOFU))
        await asyncio.sleep(0.05)
        source.invalidate(GUN, version)  # the feed reports a change while it runs
        server.gate.set()
        assert (await running).digest == digest(M1)  # it started before the change
        repo.remove_target("v1")
        repo.publish()
        with pytest.raises(Exception, match="v1"):
            await source.resolve(GUN, "v1", TOFU)
    finally:
        await source.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("invalidate", [False, True], ids=["baseline", "invalidated"])
async def test_a_sibling_hand_over_from_before_the_change_is_refused(
    tmp_path: Path, invalidate: bool
) -> None:
    """Workers of one serve hand over what they verified (the state file): one fetched
    before the change must not be taken after the feed reported it."""
    key = b"k" * 32
    fa, fb = (SqliteStateFile(tmp_path, handoff_key=key) for _ in range(2))
    server = SimServer()
    repo = server.add(signed_repo())
    clock = Clock()
    a = make_source(server, clock=clock, store=fa.store("n:"))
    b = make_source(server, clock=clock, store=fb.store("n:"))
    try:
        await a.resolve(GUN, "v1", TOFU)  # saved, vouched
        repo.remove_target("v1")
        repo.publish()
        clock.advance(seconds=1)
        if invalidate:
            b.invalidate(GUN)
        before = len(server.names)
        if invalidate:
            with pytest.raises(Exception, match="v1"):
                await b.resolve(GUN, "v1", TOFU)
            assert timestamps(server, before) == ["timestamp.json"]
        else:
            # Without the feed the sibling's state is used for its window (as designed).
            assert (await b.resolve(GUN, "v1", TOFU)).digest == digest(M1)
            assert server.names[before:] == []
    finally:
        await a.aclose()
        await b.aclose()
        await fa.aclose()
        await fb.aclose()


# -- settings ---------------------------------------------------------------------------------


def _settings(changefeed: object) -> ChangefeedSettings:
    from proxy.settings import parse_settings

    raw: dict[str, Any] = {
        "upstreams": [{"name": "r", "url": "http://127.0.0.1:5000"}],
        "trust": {"sources": {"notary": {"type": "notary", "url": "https://n.example"}}},
    }
    if changefeed is not None:
        raw["trust"]["sources"]["notary"]["changefeed"] = changefeed
    return parse_settings(raw, base_dir=Path("."), check_files=False).trust.sources[0].changefeed


SETTINGS = [
    ("default: on, every second", None, (True, 1.0)),
    ("off", {"enabled": False}, (False, 1.0)),
    ("500ms", {"interval": "500ms"}, (True, 0.5)),
]


@pytest.mark.parametrize(
    ("changefeed", "want"), [c[1:] for c in SETTINGS], ids=[c[0] for c in SETTINGS]
)
def test_changefeed_settings(changefeed: object, want: tuple[bool, float]) -> None:
    got = _settings(changefeed)
    assert (got.enabled, got.interval) == want


SETTINGS_BAD = [
    ("unknown key", {"every": 1}, "trust.sources.notary.changefeed.every"),
    ("zero interval", {"interval": 0}, "trust.sources.notary.changefeed.interval"),
    ("enabled not a bool", {"enabled": "yes"}, "trust.sources.notary.changefeed.enabled"),
    ("not a mapping", [1], "trust.sources.notary.changefeed"),
]


@pytest.mark.parametrize(
    ("changefeed", "path"), [c[1:] for c in SETTINGS_BAD], ids=[c[0] for c in SETTINGS_BAD]
)
def test_changefeed_settings_refused(changefeed: object, path: str) -> None:
    from proxy.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        _settings(changefeed)
    assert caught.value.path == path
