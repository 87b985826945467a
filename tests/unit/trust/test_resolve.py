"""Docker's rule and the required-signer-roles mode."""

from __future__ import annotations

import hashlib

import pytest

from proxy.errors import NotSignedError
from proxy.sources.notary.tuf import (
    RoleRequirement,
    refresh,
    resolve_docker,
    resolve_required_roles,
    signed_tags,
)
from proxy.sources.notary.tuf.trusted_set import TrustedSet
from tests.simulators.notary_repo import NotaryRepository, generate_key
from tests.unit.trust.helpers import sim_set


def _digest(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def _loaded(repo: NotaryRepository) -> TrustedSet:
    ts = sim_set(repo)
    assert refresh(ts, repo.fetch) == []
    return ts


@pytest.fixture
def repo() -> NotaryRepository:
    r = NotaryRepository()
    r.add_target("both", b"targets-both")
    r.add_target("only-targets", b"targets-only")
    r.add_delegation("targets/releases")
    r.add_target("both", b"releases-both", role="targets/releases")
    r.add_target("same", b"same", role="targets/releases")
    r.add_target("same", b"same")
    r.add_delegation("targets/qa")
    r.add_target("qa-only", b"qa", role="targets/qa")
    r.add_target("both", b"releases-both", role="targets/qa")
    r.add_target("same", b"qa-differs", role="targets/qa")
    r.publish()
    return r


def test_releases_wins_over_targets(repo: NotaryRepository) -> None:
    t = resolve_docker(_loaded(repo), "both")
    assert (t.digest, t.length, t.role) == (_digest(b"releases-both"), 13, "targets/releases")
    assert t.roles == ("targets/releases",)
    assert t.key_ids == tuple(k.key_id for k in repo.delegations["targets/releases"].keys)


def test_targets_fallback_and_roles_agreeing(repo: NotaryRepository) -> None:
    ts = _loaded(repo)
    assert resolve_docker(ts, "only-targets").role == "targets"
    assert resolve_docker(ts, "same").roles == ("targets/releases", "targets")


def test_other_delegations_ignored_by_docker(repo: NotaryRepository) -> None:
    with pytest.raises(NotSignedError, match="No valid trust data for qa-only"):
        resolve_docker(_loaded(repo), "qa-only")


def test_signed_tags(repo: NotaryRepository) -> None:
    tags = signed_tags(_loaded(repo))
    assert sorted(tags) == ["both", "only-targets", "same"]
    assert tags["both"].role == "targets/releases"


def test_only_releases_fetched(repo: NotaryRepository) -> None:
    ts = sim_set(repo)
    refresh(ts, repo.fetch, delegations={"targets/releases"})
    assert ts.status("targets/qa") == "pending"
    assert resolve_docker(ts, "both").role == "targets/releases"
    with pytest.raises(RuntimeError):
        resolve_required_roles(ts, "both", [RoleRequirement("targets/qa")])


def test_releases_not_loaded_is_a_caller_bug(repo: NotaryRepository) -> None:
    ts = sim_set(repo)
    refresh(ts, repo.fetch, delegations=())
    with pytest.raises(RuntimeError, match="targets/releases"):
        resolve_docker(ts, "both")


def test_not_refreshed_is_a_caller_bug(repo: NotaryRepository) -> None:
    with pytest.raises(RuntimeError):
        resolve_docker(sim_set(repo), "both")


def test_required_roles_agree(repo: NotaryRepository) -> None:
    t = resolve_required_roles(
        _loaded(repo), "both", [RoleRequirement("targets/releases"), RoleRequirement("targets/qa")]
    )
    assert t.digest == _digest(b"releases-both")
    assert t.roles == ("targets/releases", "targets/qa")
    assert len(t.key_ids) == 2


def test_required_roles_disagree(repo: NotaryRepository) -> None:
    with pytest.raises(NotSignedError, match="disagree"):
        resolve_required_roles(
            _loaded(repo),
            "same",
            [RoleRequirement("targets/releases"), RoleRequirement("targets/qa")],
        )


def test_required_role_missing_tag(repo: NotaryRepository) -> None:
    with pytest.raises(NotSignedError, match="not signed by targets/releases"):
        resolve_required_roles(_loaded(repo), "qa-only", [RoleRequirement("targets/releases")])


def test_required_role_undeclared(repo: NotaryRepository) -> None:
    with pytest.raises(NotSignedError, match="does not exist"):
        resolve_required_roles(_loaded(repo), "both", [RoleRequirement("targets/security")])


def test_required_signatures() -> None:
    repo = NotaryRepository()
    keys = [generate_key(), generate_key(), generate_key()]
    repo.add_delegation("targets/qa", keys=keys, threshold=2)
    repo.add_target("v1", b"m", role="targets/qa")
    repo.signing_keys["targets/qa"] = keys[:2]
    repo.publish()
    ts = _loaded(repo)
    assert resolve_required_roles(ts, "v1", [RoleRequirement("targets/qa", 2)]).role == "targets/qa"
    with pytest.raises(NotSignedError, match="3 required"):
        resolve_required_roles(ts, "v1", [RoleRequirement("targets/qa", 3)])
    # the top-level role can be required too
    with pytest.raises(NotSignedError):
        resolve_required_roles(ts, "v1", [RoleRequirement("targets")])


def test_requirement_validation() -> None:
    with pytest.raises(ValueError, match="min_signatures"):
        RoleRequirement("targets/qa", 0)
    repo = NotaryRepository()
    with pytest.raises(RuntimeError):
        resolve_required_roles(_loaded(repo), "v1", [])


def test_target_without_sha256() -> None:
    repo = NotaryRepository()
    entry = repo.add_target("v1", b"m", sha512=True)
    del entry["hashes"]["sha256"]  # type: ignore[attr-defined]
    repo.touch("targets")
    repo.publish()
    with pytest.raises(NotSignedError, match="sha256"):
        resolve_docker(_loaded(repo), "v1")
