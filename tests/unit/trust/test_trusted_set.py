"""TrustedSet mechanics: order, file names, persisted state."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime

import pytest

from proxy.sources.notary.tuf import (
    HashMismatchError,
    MetadataFormatError,
    RollbackError,
    RootOfTrustError,
    ThresholdError,
    TrustedSet,
    TrustedState,
    TrustOnFirstUse,
    refresh,
    resolve_docker,
)
from tests.simulators.notary_repo import NotaryRepository
from tests.unit.trust.helpers import SIM_TIME, sim_set


@pytest.fixture
def repo() -> NotaryRepository:
    r = NotaryRepository()
    r.add_target("v1", b"m1")
    r.add_delegation("targets/releases")
    r.add_target("v2", b"m2", role="targets/releases")
    r.add_delegation("targets/releases/nightly")
    r.add_delegation("targets/qa")
    r.publish()
    return r


def test_file_names(repo: NotaryRepository) -> None:
    ts = sim_set(repo)
    assert ts.next_root_filename() == "2.root.json"
    ts.update_timestamp(repo.fetch("timestamp.json") or b"")
    snap_hex = hashlib.sha256(repo.current["snapshot"]).hexdigest()
    assert ts.filename_for("snapshot") == f"snapshot.{snap_hex}.json"
    assert ts.snapshot_meta_for("snapshot").length == len(repo.current["snapshot"])
    ts.update_snapshot(repo.fetch(f"snapshot.{snap_hex}.json") or b"")
    hexes = {r: hashlib.sha256(repo.current[r]).hexdigest() for r in repo.current}
    assert ts.filename_for("targets") == f"targets.{hexes['targets']}.json"
    ts.update_targets(repo.fetch(ts.filename_for("targets")) or b"")
    pending = ts.pending_delegations()
    assert [(p.name, p.parent, p.filename) for p in pending] == [
        ("targets/releases", "targets", f"targets/releases.{hexes['targets/releases']}.json"),
        ("targets/qa", "targets", f"targets/qa.{hexes['targets/qa']}.json"),
    ]
    ts.update_delegated_targets(
        repo.fetch(pending[0].filename) or b"", "targets/releases", "targets"
    )
    # pre-order: children of releases come before qa
    assert ts.delegation_names() == ("targets/releases", "targets/releases/nightly", "targets/qa")
    assert [p.name for p in ts.pending_delegations()] == ["targets/releases/nightly", "targets/qa"]
    assert [p.name for p in ts.pending_delegations({"targets/releases"})] == []


def test_order_is_enforced(repo: NotaryRepository) -> None:
    ts = sim_set(repo)
    with pytest.raises(RuntimeError):
        ts.update_snapshot(repo.current["snapshot"])
    with pytest.raises(RuntimeError):
        ts.update_targets(repo.current["targets"])
    with pytest.raises(RuntimeError):
        ts.update_delegated_targets(repo.current["targets/releases"], "targets/releases", "targets")
    refresh(ts, repo.fetch)
    with pytest.raises(RuntimeError):
        ts.update_root(repo.current["root"])
    with pytest.raises(RuntimeError):
        ts.update_timestamp(repo.current["timestamp"])
    with pytest.raises(RuntimeError):
        ts.update_targets(repo.current["targets"])
    with pytest.raises(RuntimeError):
        ts.update_delegated_targets(repo.current["targets/releases"], "targets/releases", "targets")
    with pytest.raises(RuntimeError):
        ts.update_delegated_targets(b"{}", "targets/nope", "targets")


def test_naive_reference_time_refused(repo: NotaryRepository) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        TrustedSet(
            repo.root_bytes(),
            gun=repo.gun,
            root_of_trust=TrustOnFirstUse(),
            reference_time=datetime(2026, 1, 2),
        )


def test_delegation_not_in_snapshot_is_skipped(repo: NotaryRepository) -> None:
    def drop(signed: dict[str, object]) -> None:
        del signed["meta"]["targets/qa"]  # type: ignore[attr-defined]

    repo.mutators["snapshot"] = drop
    repo.publish()
    ts = sim_set(repo)
    assert refresh(ts, repo.fetch) == []
    assert ts.status("targets/qa") == "skipped"
    with pytest.raises(HashMismatchError):
        ts.snapshot_meta_for("targets/qa")


def test_unfetchable_delegation_is_skipped(repo: NotaryRepository) -> None:
    name = f"targets/releases.{hashlib.sha256(repo.current['targets/releases']).hexdigest()}.json"
    del repo.files[name]
    ts = sim_set(repo)
    errors = refresh(ts, repo.fetch)
    assert [e.role for e in errors] == ["targets/releases"]
    assert ts.status("targets/releases/nightly") == "skipped"
    with pytest.raises(Exception, match="No valid trust data"):
        resolve_docker(ts, "v2")


def test_state_round_trip(repo: NotaryRepository) -> None:
    ts = sim_set(repo)
    refresh(ts, repo.fetch)
    state = ts.state()
    assert state.versions["targets/releases"] == 1
    raw = state.to_bytes()
    back = TrustedState.from_bytes(raw)
    assert back == state
    again = TrustedSet.from_state(
        back, gun=repo.gun, root_of_trust=TrustOnFirstUse(), reference_time=SIM_TIME
    )
    assert resolve_docker(again, "v2").role == "targets/releases"
    assert again.state() == state


def test_state_is_reverified(repo: NotaryRepository) -> None:
    ts = sim_set(repo)
    refresh(ts, repo.fetch)
    doc = json.loads(ts.state().to_bytes())
    tampered = json.loads(base64.b64decode(doc["metadata"]["targets"]))
    tampered["signed"]["targets"]["v1"]["length"] = 1
    doc["metadata"]["targets"] = base64.b64encode(json.dumps(tampered).encode()).decode()
    state = TrustedState.from_bytes(json.dumps(doc).encode())
    with pytest.raises((ThresholdError, HashMismatchError)):
        TrustedSet.from_state(
            state, gun=repo.gun, root_of_trust=TrustOnFirstUse(), reference_time=SIM_TIME
        )


def test_state_bad_delegation_is_skipped_on_restore(repo: NotaryRepository) -> None:
    ts = sim_set(repo)
    refresh(ts, repo.fetch)
    state = ts.state()
    metadata = dict(state.metadata)
    metadata["targets/releases"] = b"garbage"
    bad = TrustedState(state.gun, state.root, state.versions, metadata)
    again = TrustedSet.from_state(
        bad, gun=repo.gun, root_of_trust=TrustOnFirstUse(), reference_time=SIM_TIME
    )
    assert again.status("targets/releases") == "skipped"


def test_state_for_other_gun(repo: NotaryRepository) -> None:
    ts = sim_set(repo)
    with pytest.raises(RootOfTrustError):
        TrustedSet.from_state(
            ts.state(),
            gun="docker.io/x/y",
            root_of_trust=TrustOnFirstUse(),
            reference_time=SIM_TIME,
        )


def test_refresh_from_state_keeps_floors(repo: NotaryRepository) -> None:
    ts = sim_set(repo)
    refresh(ts, repo.fetch)
    old = repo.checkpoint()
    repo.publish()
    newer = TrustedSet.from_state(
        ts.state(),
        gun=repo.gun,
        root_of_trust=TrustOnFirstUse(),
        reference_time=SIM_TIME,
        replay=False,
    )
    refresh(newer, repo.fetch)
    assert newer.timestamp is not None
    assert newer.timestamp.version == 3
    repo.serve(old)
    rolled = TrustedSet.from_state(
        newer.state(),
        gun=repo.gun,
        root_of_trust=TrustOnFirstUse(),
        reference_time=SIM_TIME,
        replay=False,
    )
    with pytest.raises(RollbackError):
        refresh(rolled, repo.fetch)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[]",
        b'{"format": 2}',
        b'{"format":1,"gun":"g","root":"***","versions":{},"metadata":{}}',
        b'{"format":1,"gun":"g","root":"","versions":{"root":-1},"metadata":{}}',
    ],
    ids=["empty", "array", "format", "bad-b64", "bad-version"],
)
def test_state_bad_bytes(raw: bytes) -> None:
    with pytest.raises(MetadataFormatError):
        TrustedState.from_bytes(raw)


def test_escaped_strings_verify(repo: NotaryRepository) -> None:
    # escape sequences in the JSON text take the slow canonical path; signatures still match
    tag = 'we"ird\\tag\u00e9'
    repo.add_target(tag, b"m")
    repo.publish()
    assert b'we\\"ird' in repo.current["targets"]
    ts = sim_set(repo)
    refresh(ts, repo.fetch)
    assert resolve_docker(ts, tag).role == "targets"


def test_raw_control_character_is_not_json(repo: NotaryRepository) -> None:
    # canonical JSON leaves control characters raw, which no JSON parser accepts
    repo.add_target("tab\there", b"m")
    repo.publish()
    with pytest.raises(MetadataFormatError):
        refresh(sim_set(repo), repo.fetch)


def test_too_many_delegated_roles_are_skipped(repo: NotaryRepository) -> None:
    from proxy.sources.notary.tuf import Limits

    ts = sim_set(repo, limits=Limits(max_delegated_roles=1))
    errors = refresh(ts, repo.fetch)
    assert ts.status("targets/releases") == "loaded"
    assert [type(e) for e in errors] == [MetadataFormatError, MetadataFormatError]


def test_floor_of_removed_delegation_is_forgotten(repo: NotaryRepository) -> None:
    ts = sim_set(repo)
    refresh(ts, repo.fetch)
    assert "targets/qa" in ts.state().versions
    del repo.delegations["targets/qa"]
    repo.touch("targets")
    repo.publish()
    again = TrustedSet.from_state(
        ts.state(),
        gun=repo.gun,
        root_of_trust=TrustOnFirstUse(),
        reference_time=SIM_TIME,
        replay=False,
    )
    refresh(again, repo.fetch)
    assert "targets/qa" not in again.state().versions
    assert "targets/releases" in again.state().versions
