"""tuf.refresh.walk: the one Notary refresh walk, driven by the sync ``refresh`` (these and
the attack tests) and by ``NotarySource`` (production)."""

from __future__ import annotations

import asyncio

import pytest

from proxy.errors import TrustSourceUnavailableError
from proxy.sources.notary.tuf import (
    MissingMetadataError,
    MissingTimestampError,
    Need,
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
    """``repo`` as an async fetch: records each fetch and which fetches overlapped."""

    def __init__(self, repo: NotaryRepository, fail: dict[str, Exception] | None = None) -> None:
        self.repo = repo
        self.fail = dict(fail or {})
        self.fetched: list[str] = []
        self.in_flight: set[str] = set()
        self.overlaps: list[frozenset[str]] = []

    async def __call__(self, need: Need) -> bytes | None:
        self.fetched.append(need.name)
        self.in_flight.add(need.name)
        try:
            await asyncio.sleep(0.01)  # every fetch of a batch starts before any ends
            self.overlaps.append(frozenset(self.in_flight))
            if need.name in self.fail:
                raise self.fail.pop(need.name)
            return self.repo.fetch(need.name)
        finally:
            self.in_flight.discard(need.name)


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
