"""tuf.refresh.walk: the one Notary refresh walk, driven by the sync ``refresh`` (these and
the attack tests) and by ``NotarySource`` (production)."""

from __future__ import annotations

import asyncio

import pytest

from proxy.errors import TrustSourceUnavailableError
from proxy.sources.notary.tuf import (
    TIMESTAMP,
    Limits,
    Lookahead,
    MissingMetadataError,
    MissingTimestampError,
    Need,
    OversizeMetadataError,
    TrustedSet,
    TrustOnFirstUse,
    drive,
    refresh,
    walk,
)
from tests.simulators.notary_repo import NotaryRepository
from tests.unit.trust.helpers import SIM_TIME, sim_set


def _repo() -> NotaryRepository:
    repo = NotaryRepository()
    repo.add_target("v1", b"manifest-v1")
    repo.add_delegation("targets/releases")
    repo.add_target("v1", b"manifest-v1", role="targets/releases")
    repo.publish()
    return repo


def _needs(ts: TrustedSet, repo: NotaryRepository, **kw: object) -> list[Need]:
    asked: list[Need] = []
    steps = walk(ts, **kw)  # type: ignore[arg-type]
    try:
        need = next(steps)
        while True:
            asked.append(need)
            need = steps.send(repo.fetch(need.name))
    except StopIteration as done:
        skipped = done.value
    assert skipped == []
    return asked


def test_the_walk_asks_in_tuf_order_with_each_roles_limit() -> None:
    repo = _repo()
    asked = _needs(sim_set(repo), repo)
    assert [n.role for n in asked] == [
        "root",
        "timestamp",
        "snapshot",
        "targets",
        "targets/releases",
    ]
    assert asked[0].name == "2.root.json"  # the next root version: 404 ends the rotation
    assert asked[1].name == "timestamp.json"
    assert asked[2].name.startswith("snapshot.")
    assert asked[3].name.startswith("targets.")


def test_known_bytes_whose_hash_is_announced_are_not_fetched_again() -> None:
    repo = _repo()
    first = sim_set(repo)
    refresh(first, repo.fetch)
    again = TrustedSet.from_state(
        first.state(),
        gun=repo.gun,
        root_of_trust=TrustOnFirstUse(),
        reference_time=SIM_TIME,
        replay=False,
    )
    asked = _needs(again, repo, previous=first.state(), known=first.state().metadata)
    assert [n.role for n in asked] == ["root", "timestamp"]  # an unchanged repository


def test_a_missing_timestamp_is_its_own_error_for_both_drivers() -> None:
    repo = _repo()
    with pytest.raises(MissingTimestampError) as info:
        refresh(sim_set(repo), lambda name: None if name == "timestamp.json" else repo.fetch(name))
    assert isinstance(info.value, MissingMetadataError)  # what the sync callers catch


# -- drive: the async driver, fetching ahead -------------------------------------------------


class _AsyncServer:
    """``repo`` as an async fetch: records each fetch, which fetches overlapped, and each
    fetch's round (1 + the highest round of the fetches that had ended when it started:
    the number of sequential round trips to it). ``first``: what the first fetch of a name
    answers (bytes, None for 404, or an exception), the repository after that."""

    def __init__(
        self,
        repo: NotaryRepository,
        fail: dict[str, Exception] | None = None,
        *,
        first: dict[str, bytes | Exception | None] | None = None,
        slow: frozenset[str] = frozenset(),
    ) -> None:
        self.repo = repo
        self.fail = dict(fail or {})
        self.first = dict(first or {})
        self.slow = slow
        self.fetched: list[str] = []
        self.in_flight: set[str] = set()
        self.overlaps: list[frozenset[str]] = []
        self.rounds: dict[str, list[int]] = {}
        self._ended: list[int] = []

    async def __call__(self, need: Need) -> bytes | None:
        self.fetched.append(need.name)
        self.in_flight.add(need.name)
        at = 1 + max(self._ended, default=0)
        try:
            await asyncio.sleep(1.0 if need.name in self.slow else 0.01)  # a batch overlaps
            self.overlaps.append(frozenset(self.in_flight))
            self._ended.append(at)
            self.rounds.setdefault(need.name, []).append(at)
            if need.name in self.fail:
                raise self.fail.pop(need.name)
            if need.name in self.first:
                answer = self.first.pop(need.name)
                if isinstance(answer, Exception):
                    raise answer
                return answer
            return self.repo.fetch(need.name)
        finally:
            self.in_flight.discard(need.name)

    @property
    def depth(self) -> int:
        """Sequential round trips of the whole walk."""
        return max(self._ended, default=0)


def _delegated_repo() -> NotaryRepository:
    repo = NotaryRepository()
    repo.add_target("v1", b"manifest-v1")
    for name in ("targets/a", "targets/b", "targets/c"):
        repo.add_delegation(name)
        repo.add_target("v1", f"manifest {name}".encode(), role=name)
    repo.publish()
    return repo


@pytest.mark.anyio
async def test_drive_fetches_the_timestamp_with_the_probe_and_a_level_of_delegations_at_once() -> (
    None
):
    repo = _delegated_repo()
    server = _AsyncServer(repo)
    ts = sim_set(repo)
    assert await drive(walk(ts), server) == []
    expected = sim_set(repo)
    refresh(expected, repo.fetch)
    assert ts.state().metadata == expected.state().metadata  # the same verified set
    assert sorted(server.fetched) == sorted(set(server.fetched)), "a file fetched twice"
    assert frozenset({"2.root.json", "timestamp.json"}) in server.overlaps
    delegations = frozenset(n for n in server.fetched if n.startswith("targets/"))
    assert len(delegations) == 3
    assert delegations in server.overlaps


@pytest.mark.anyio
async def test_drive_fetches_the_timestamp_again_after_a_new_root() -> None:
    repo = _delegated_repo()
    ts = sim_set(repo)  # holds root version 1
    repo.rotate_key("timestamp")  # a new root (version 2) with a new timestamp key
    repo.publish()
    server = _AsyncServer(repo)
    await drive(walk(ts), server)
    assert server.fetched.count("timestamp.json") == 2  # ahead of the probe, then afresh
    assert server.fetched.index("3.root.json") < len(server.fetched) - 1
    assert ts.state().metadata["timestamp"] == repo.fetch("timestamp.json")


@pytest.mark.anyio
async def test_drive_raises_a_failed_fetch_ahead_only_when_the_walk_asks_for_it() -> None:
    outage = TrustSourceUnavailableError("notary", "timestamp.json: timed out")
    # After a new root the timestamp fetched ahead is dropped: its failure does not count.
    repo = _delegated_repo()
    ts = sim_set(repo)
    repo.rotate_root()
    repo.publish()
    await drive(walk(ts), _AsyncServer(repo, fail={"timestamp.json": outage}))
    assert ts.state().metadata["timestamp"] == repo.fetch("timestamp.json")
    # Without one, the walk asks for it next: the failure is the refresh's.
    repo = _delegated_repo()
    server = _AsyncServer(repo, fail={"timestamp.json": outage})
    with pytest.raises(TrustSourceUnavailableError):
        await drive(walk(sim_set(repo)), server)
    assert server.in_flight == set()  # nothing left running


@pytest.mark.anyio
async def test_drive_keeps_the_walks_checks_for_files_fetched_ahead() -> None:
    repo = _delegated_repo()
    name = next(n for n in repo.files if n.startswith("targets/b.") and n != "targets/b.json")
    repo.serve({name: b'{"signed": {}, "signatures": []}'})  # not what the snapshot lists
    ts = sim_set(repo)
    skipped = await drive(walk(ts), _AsyncServer(repo))
    assert [e.role for e in skipped] == ["targets/b"]  # notary's skip, as when sequential
    assert ts.status("targets/b") == "skipped"
    assert ts.status("targets/a") != "skipped"


# -- fetching early: Lookahead -----------------------------------------------------------------


def _plain_repo() -> NotaryRepository:
    repo = NotaryRepository()
    repo.add_target("v1", b"manifest-v1")
    repo.publish()
    return repo


def _sequential(repo: NotaryRepository) -> TrustedSet:
    """What the sequential walk verifies (the reference for every early-fetch walk)."""
    expected = sim_set(repo)
    refresh(expected, repo.fetch)
    return expected


async def _cold(server: _AsyncServer, ts: TrustedSet | None = None) -> TrustedSet:
    """A cold refresh as ``NotarySource`` runs it: timestamp.json beside root.json, then
    the walk with what was fetched early."""
    early = Lookahead(server, limits=Limits())
    early.start(TIMESTAMP)
    root = await server(Need("root.json", "root"))
    assert root is not None
    if ts is None:
        ts = sim_set(server.repo)
        assert ts.root.raw == root
    await drive(walk(ts), server, lookahead=early)
    return ts


def _name(repo: NotaryRepository, role: str) -> str:
    return next(n for n, b in repo.files.items() if b == repo.current[role] and n.count(".") == 2)


@pytest.mark.anyio
async def test_a_cold_walk_makes_the_sequential_requests_in_three_rounds() -> None:
    repo = _plain_repo()
    server = _AsyncServer(repo)
    ts = await _cold(server)
    assert ts.state().metadata == _sequential(repo).state().metadata
    snapshot, targets = _name(repo, "snapshot"), _name(repo, "targets")
    # root, probe, timestamp, snapshot, targets: the same five requests as ever, each once...
    assert sorted(server.fetched) == sorted(
        ["root.json", "2.root.json", "timestamp.json", snapshot, targets]
    )
    # ... in three rounds, not four: root || timestamp, then probe || snapshot (named by
    # the timestamp before it is verified), then targets (named by that snapshot).
    assert server.depth == 3
    assert server.rounds["root.json"] == server.rounds["timestamp.json"] == [1]
    assert server.rounds[snapshot] == server.rounds["2.root.json"] == [2]
    assert server.rounds[targets] == [3]
    assert frozenset({"root.json", "timestamp.json"}) in server.overlaps


@pytest.mark.anyio
async def test_without_a_lookahead_the_same_walk_takes_four_rounds() -> None:
    """The baseline the test above improves on (and what a warm refresh still does)."""
    repo = _plain_repo()
    server = _AsyncServer(repo)
    root = await server(Need("root.json", "root"))
    assert root is not None
    await drive(walk(sim_set(repo)), server)
    assert len(server.fetched) == 5
    assert server.depth == 4


@pytest.mark.anyio
async def test_after_a_new_root_the_timestamp_fetched_early_is_not_used() -> None:
    """The timestamp fetched early predates a root rotation that replaced the timestamp
    key: taken, it would fail the refresh. It is fetched again; the snapshot it named
    (the old one: the new root changed the snapshot) is dropped, never verified; the
    targets it named are the same file as the verified snapshot names and are used.
    At most one wasted request per role."""
    repo = _plain_repo()
    old_timestamp, old_snapshot = repo.current["timestamp"], _name(repo, "snapshot")
    repo.rotate_key("timestamp")  # root version 2 with a new timestamp key
    repo.publish()
    server = _AsyncServer(repo, first={"timestamp.json": old_timestamp})
    ts = await _cold(server, sim_set(repo))  # the root fetched is version 1
    assert ts.root.version == 2
    assert ts.state().metadata["timestamp"] == repo.current["timestamp"]
    assert ts.state().metadata["snapshot"] == repo.current["snapshot"]
    assert server.fetched.count("timestamp.json") == 2
    new_snapshot = _name(repo, "snapshot")
    assert old_snapshot != new_snapshot
    assert server.fetched.count(old_snapshot) == server.fetched.count(new_snapshot) == 1
    assert server.fetched.count(_name(repo, "targets")) == 1  # fetched early, and used
    assert sorted(server.fetched) == sorted(
        [
            "root.json",
            "2.root.json",
            "3.root.json",
            "timestamp.json",
            "timestamp.json",
            old_snapshot,
            new_snapshot,
            _name(repo, "targets"),
        ]
    )


@pytest.mark.anyio
@pytest.mark.parametrize("tamper", ["length", "hash"])
async def test_bytes_fetched_early_that_are_not_what_the_verified_parent_names_are_dropped(
    tamper: str,
) -> None:
    repo = _plain_repo()
    snapshot = _name(repo, "snapshot")
    good = repo.current["snapshot"]
    # Served once under the snapshot's own name: other bytes, or the same length with
    # one byte changed. The walk never sees them: it fetches the file again.
    bad = good + b" " if tamper == "length" else good[:-2] + bytes([good[-2] ^ 1]) + good[-1:]
    server = _AsyncServer(repo, first={snapshot: bad})
    ts = await _cold(server)
    assert ts.state().metadata == _sequential(repo).state().metadata
    assert server.fetched.count(snapshot) == 2
    assert len(server.fetched) == 6


@pytest.mark.anyio
async def test_a_guess_naming_another_file_is_never_used() -> None:
    """The lookahead fetched a snapshot under a name the verified timestamp does not
    announce (as unverified bytes could name): the walk fetches what it announces, the
    guess stays unused, and the walk ends with nothing left running."""
    repo = _plain_repo()
    other = NotaryRepository(repo.gun)
    other.add_target("v1", b"another-manifest")
    other.publish()
    forged = _name(other, "snapshot")
    repo.files[forged] = other.current["snapshot"]  # served, but no verified file names it
    server = _AsyncServer(repo, slow=frozenset({forged}))  # still coming at the end
    early = Lookahead(server, limits=Limits())
    early.start(Need(forged, "snapshot"))
    ts = sim_set(repo)
    await drive(walk(ts), server, lookahead=early)
    assert ts.state().metadata == _sequential(repo).state().metadata
    assert server.fetched.count(forged) == 1
    assert server.fetched.count(_name(repo, "snapshot")) == 1
    assert server.in_flight == set()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "failure",
    [
        None,  # 404
        TrustSourceUnavailableError("notary", "timed out"),
        OversizeMetadataError("too big", role="x"),
    ],
    ids=["404", "unavailable", "oversize"],
)
async def test_a_failed_early_fetch_is_no_failure_of_the_walk(
    failure: Exception | None,
) -> None:
    repo = _plain_repo()
    names = ["timestamp.json", _name(repo, "snapshot"), _name(repo, "targets")]
    for name in names:
        server = _AsyncServer(repo, first={name: failure})
        ts = await _cold(server)
        assert ts.state().metadata == _sequential(repo).state().metadata
        assert server.fetched.count(name) == 2  # once early (failed), once by the walk
        assert len(server.fetched) == 6
        assert server.in_flight == set()


@pytest.mark.anyio
async def test_a_warm_walk_fetches_early_only_what_it_does_not_hold() -> None:
    """With a stored state, nothing is fetched that the sequential walk would not fetch:
    an unchanged repository costs the probe and the timestamp; a changed delegation the
    snapshot (fetched as soon as the timestamp naming it is in) and the delegation, not
    the unchanged targets."""
    repo = _repo()
    first = _sequential(repo)

    def again() -> TrustedSet:
        return TrustedSet.from_state(
            first.state(),
            gun=repo.gun,
            root_of_trust=TrustOnFirstUse(),
            reference_time=SIM_TIME,
            replay=False,
        )

    for change in (False, True):
        if change:
            repo.add_target("v2", b"manifest-v2", role="targets/releases")
            repo.publish()
        ts = again()
        server = _AsyncServer(repo)
        known = first.state().metadata
        early = Lookahead(server, limits=Limits(), known=known)
        await drive(walk(ts, previous=first.state(), known=known), server, lookahead=early)
        wanted = _needs(again(), repo, previous=first.state(), known=known)
        assert sorted(server.fetched) == sorted(n.name for n in wanted)
        assert ts.state().metadata == _sequential(repo).state().metadata
    assert _name(repo, "targets") not in server.fetched
    assert any(n.startswith("targets/releases.") for n in server.fetched)
