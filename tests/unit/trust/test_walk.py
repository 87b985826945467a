"""tuf.refresh.walk: the one Notary refresh walk, driven by the sync ``refresh`` (these and
the attack tests) and by ``NotarySource`` (production)."""

from __future__ import annotations

import pytest

from proxy.sources.notary.tuf import (
    MissingMetadataError,
    MissingTimestampError,
    Need,
    TrustedSet,
    TrustOnFirstUse,
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
