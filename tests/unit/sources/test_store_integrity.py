"""The pure parts of "the store is untrusted" (issue 17, findings 1 and 6): the
in-process rollback floors and the generation a save judges stored bytes by."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import timedelta
from types import MappingProxyType

import pytest

from proxy.sources.notary.rules import SigningRule
from proxy.sources.notary.source import (
    NotarySource,
    decode_record,
    encode_record,
    verified_generation,
)
from proxy.sources.notary.tuf import Limits, PinnedRootKeys, TrustedState, TrustOnFirstUse
from proxy.sources.store import MemoryTrustStateStore, RollbackFloors
from tests.simulators.notary_repo import NotaryRepository, generate_key
from tests.unit.sources.sim import GUN, SIM_TIME, Clock, SimServer, make_source

TOFU = SigningRule(TrustOnFirstUse())


# -- RollbackFloors -----------------------------------------------------------------------------


def test_floors_only_rise() -> None:
    floors = RollbackFloors()
    floors.raise_to("g", {"root": 1, "timestamp": 5})
    floors.raise_to("g", {"root": 2, "timestamp": 3, "snapshot": 4})
    assert floors.get("g") == {"root": 2, "timestamp": 5, "snapshot": 4}
    assert floors.get("other") == {}


def test_floors_are_a_copy() -> None:
    floors = RollbackFloors()
    floors.raise_to("g", {"timestamp": 5})
    floors.get("g")["timestamp"] = 0
    assert floors.get("g") == {"timestamp": 5}


def test_floors_are_bounded_least_recently_raised_out() -> None:
    floors = RollbackFloors(max_entries=2)
    floors.raise_to("a", {"timestamp": 1})
    floors.raise_to("b", {"timestamp": 1})
    floors.raise_to("a", {"timestamp": 2})  # a is now the most recent
    floors.raise_to("c", {"timestamp": 1})
    assert len(floors) == 2
    assert floors.get("b") == {}
    assert floors.get("a") == {"timestamp": 2}


def test_floors_need_room() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        RollbackFloors(max_entries=0)


# -- verified_generation ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved() -> tuple[NotaryRepository, bytes]:
    """A genuine record, saved by a source from the simulator's current data."""
    import asyncio

    server = SimServer()
    repo = server.add(NotaryRepository(GUN))
    repo.add_target("v1", b"m1")
    repo.publish()
    repo.add_target("v2", b"m2")
    repo.publish()
    store = MemoryTrustStateStore()

    async def run() -> None:
        source: NotarySource = make_source(server, clock=Clock(), store=store)
        try:
            await source.resolve(GUN, "v1", TOFU)
        finally:
            await source.aclose()

    asyncio.run(run())
    data = asyncio.run(store.load(GUN))
    assert data is not None
    return repo, data


def _edit(change: Callable[[TrustedState], TrustedState]) -> Callable[[bytes], bytes]:
    def edit(data: bytes) -> bytes:
        at, state = decode_record(data, max_bytes=1 << 26)
        return encode_record(change(state), at)

    return edit


def _versions(**versions: int) -> Callable[[TrustedState], TrustedState]:
    def change(state: TrustedState) -> TrustedState:
        return dataclasses.replace(state, versions=MappingProxyType({**state.versions, **versions}))

    return change


def _timestamp_version(version: int) -> Callable[[TrustedState], TrustedState]:
    """The timestamp's signed version changed, its signature left as it was."""

    def change(state: TrustedState) -> TrustedState:
        doc = json.loads(state.metadata["timestamp"])
        doc["signed"]["version"] = version
        metadata = {**state.metadata, "timestamp": json.dumps(doc).encode()}
        return dataclasses.replace(state, metadata=MappingProxyType(metadata))

    return change


def _without_timestamp(state: TrustedState) -> TrustedState:
    metadata = {k: v for k, v in state.metadata.items() if k != "timestamp"}
    return dataclasses.replace(state, metadata=MappingProxyType(metadata))


def _other_gun(state: TrustedState) -> TrustedState:
    return dataclasses.replace(state, gun=f"{GUN}-other")


REFUSED: list[tuple[str, Callable[[bytes], bytes]]] = [
    ("garbage", lambda _data: b"\x00garbage"),
    ("not-a-record", lambda data: data.partition(b"\n")[2]),
    ("forged-version", _edit(_timestamp_version(999_999))),
    ("claimed-floor-above-its-timestamp", _edit(_versions(timestamp=999_999))),
    ("no-timestamp", _edit(_without_timestamp)),
    ("another-gun", _edit(_other_gun)),
]


def _judge(data: bytes, rule: SigningRule = TOFU, later: timedelta = timedelta(0)) -> int | None:
    return verified_generation(
        data, gun=GUN, rule=rule, now=SIM_TIME + later, limits=Limits(), max_bytes=1 << 26
    )


def test_a_genuine_record_is_judged_by_its_signed_timestamp(
    saved: tuple[NotaryRepository, bytes],
) -> None:
    repo, data = saved
    assert _judge(data) == repo.versions["timestamp"]


def test_claimed_versions_below_the_signed_ones_do_not_matter(
    saved: tuple[NotaryRepository, bytes],
) -> None:
    repo, data = saved
    assert _judge(_edit(_versions(timestamp=0))(data)) == repo.versions["timestamp"]


@pytest.mark.parametrize(("_name", "edit"), REFUSED, ids=[n for n, _ in REFUSED])
def test_records_that_do_not_verify_are_judged_none(
    saved: tuple[NotaryRepository, bytes], _name: str, edit: Callable[[bytes], bytes]
) -> None:
    _, data = saved
    assert _judge(edit(data)) is None


def test_a_record_under_another_root_of_trust_is_judged_none(
    saved: tuple[NotaryRepository, bytes],
) -> None:
    _, data = saved
    other = SigningRule(PinnedRootKeys(frozenset({generate_key().key_id})))
    assert _judge(data, other) is None


def test_an_expired_record_is_judged_none(saved: tuple[NotaryRepository, bytes]) -> None:
    _, data = saved
    assert _judge(data, later=timedelta(days=3650)) is None
