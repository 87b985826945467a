"""Attack scenarios against the trusted set, with the Notary repository simulator."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from proxy.errors import NotSignedError
from proxy.sources.notary.tuf import (
    ExpiredError,
    HashMismatchError,
    KeyIdMismatchError,
    Limits,
    MissingMetadataError,
    OversizeMetadataError,
    PinnedRootKeys,
    RollbackError,
    RootCA,
    RootOfTrustError,
    RootRotationError,
    ThresholdError,
    TrustedSet,
    TrustOnFirstUse,
    UnsupportedKeyError,
    refresh,
    resolve_docker,
)
from proxy.sources.notary.tuf.keys import parse_key
from proxy.sources.notary.tuf.roots import leaf_problem
from tests.simulators.notary_repo import (
    NotaryRepository,
    SimKey,
    envelope,
    generate_key,
    make_ca,
    meta_for,
    x509_key,
)
from tests.unit.trust.helpers import SIM_TIME, sim_set


def _repo(**kw: object) -> NotaryRepository:
    repo = NotaryRepository(**kw)  # type: ignore[arg-type]
    repo.add_target("v1", b"manifest-v1")
    repo.add_delegation("targets/releases")
    repo.add_target("v1", b"manifest-v1", role="targets/releases")
    repo.publish()
    return repo


def _trusted(repo: NotaryRepository) -> TrustedSet:
    ts = sim_set(repo)
    assert refresh(ts, repo.fetch) == []
    return ts


def _again(repo: NotaryRepository, previous: TrustedSet, **kw: object) -> TrustedSet:
    """A refresh that starts from the persisted state of ``previous``."""
    state = previous.state()
    return sim_set(repo, previous_versions=state.versions, **kw)


def _forge(repo: NotaryRepository, **served: bytes) -> None:
    """Server-side attacker holding the snapshot and timestamp keys: announce old bytes."""
    snap = json.loads(repo.current["snapshot"])["signed"]
    for role, raw in served.items():
        name = role.replace("__", "/")
        snap["meta"][name] = meta_for(raw)
        repo.files[f"{name}.{hashlib.sha256(raw).hexdigest()}.json"] = raw
    snap["version"] += 10
    snap_raw = repo.sign("snapshot", snap)
    repo._store("snapshot", snap_raw)
    repo.current["snapshot"] = snap_raw
    repo.versions["snapshot"] = snap["version"]
    repo.publish_timestamp()


# --- rollback ------------------------------------------------------------------------------


def test_rollback_timestamp() -> None:
    repo = _repo()
    old = repo.checkpoint()
    repo.publish()
    first = _trusted(repo)
    repo.serve(old)  # yesterday's timestamp.json
    with pytest.raises(RollbackError) as info:
        refresh(_again(repo, first), repo.fetch)
    assert info.value.role == "timestamp"


def test_rollback_snapshot() -> None:
    repo = _repo()
    old_snapshot = repo.current["snapshot"]
    repo.publish()
    first = _trusted(repo)
    # a fresh timestamp that announces an older snapshot
    ts = json.loads(repo.current["timestamp"])["signed"]
    ts["meta"]["snapshot"] = meta_for(old_snapshot)
    ts["version"] += 1
    repo.files["timestamp.json"] = repo.sign("timestamp", ts)
    with pytest.raises(RollbackError) as info:
        refresh(_again(repo, first), repo.fetch)
    assert info.value.role == "snapshot"


@pytest.mark.parametrize("role", ["targets", "targets/releases"])
def test_rollback_targets_and_delegation(role: str) -> None:
    repo = _repo()
    old = repo.current[role]
    repo.add_target("v2", b"manifest-v2", role=role)
    repo.publish()
    first = _trusted(repo)
    _forge(repo, **{role.replace("/", "__"): old})
    ts = _again(repo, first)
    # Fatal for a delegation too: skipped, its tags would fall to targets (releases wins).
    with pytest.raises(RollbackError) as info:
        refresh(ts, repo.fetch)
    assert info.value.role == role


def test_invalid_delegation_is_still_skipped() -> None:
    """Only a rollback ends the refresh; other delegation failures stay notary's skip."""
    repo = _repo()
    repo.signing_keys["targets/releases"] = [generate_key()]
    repo.touch("targets/releases")
    repo.publish()
    ts = sim_set(repo)
    (err,) = refresh(ts, repo.fetch)
    assert isinstance(err, ThresholdError)
    assert resolve_docker(ts, "v1").role == "targets"


def _withhold_releases(repo: NotaryRepository, how: str) -> None:
    """What a server holding the snapshot key can do to targets/releases."""
    name = "targets/releases"
    if how == "unlisted":
        snap = json.loads(repo.current["snapshot"])["signed"]
        del snap["meta"][name]
        snap["version"] += 10
        raw = repo.sign("snapshot", snap)
        repo._store("snapshot", raw)
        repo.versions["snapshot"] = snap["version"]
        repo.publish_timestamp()
    elif how == "not served":
        del repo.files[f"{name}.{hashlib.sha256(repo.current[name]).hexdigest()}.json"]
    elif how == "re-signed by a stranger":
        body = json.loads(repo.current[name])["signed"]
        body["version"] += 1
        body["targets"]["v1"] = meta_for(b"manifest-evil")
        _forge(repo, targets__releases=envelope(body, [generate_key()]))
    else:  # "garbage"
        _forge(repo, targets__releases=b"<html>maintenance</html>")


WITHHELD = ["unlisted", "not served", "re-signed by a stranger", "garbage"]


@pytest.mark.parametrize("how", WITHHELD)
def test_withheld_delegation_is_refused_when_verified_before(how: str) -> None:
    repo = _repo()
    repo.add_target("v1", b"manifest-v1-new", role="targets/releases")  # releases re-points
    repo.publish()
    first = _trusted(repo)
    assert resolve_docker(first, "v1").role == "targets/releases"
    _withhold_releases(repo, how)
    ts = _again(repo, first)
    with pytest.raises(MissingMetadataError, match="withholding") as info:
        refresh(ts, repo.fetch, previous=first.state())
    assert info.value.role == "targets/releases"


@pytest.mark.parametrize("how", WITHHELD)
def test_withheld_delegation_at_first_contact_is_notarys_skip(how: str) -> None:
    """Nothing verified before: nothing to compare with, so notary's rule (skip)."""
    repo = _repo()
    _withhold_releases(repo, how)
    ts = sim_set(repo)
    refresh(ts, repo.fetch)
    assert ts.status("targets/releases") == "skipped"
    assert resolve_docker(ts, "v1").role == "targets"


def test_publisher_changes_stay_notarys_skip() -> None:
    """A revoked key (the declaration changes), a lapsed delegation (its own expiry) or a
    removed one (undeclared) after we verified it: skipped, not refused."""
    repo = _repo()
    first = _trusted(repo)
    (old,) = repo.delegations["targets/releases"].keys
    repo.delegations["targets/releases"].keys.append(generate_key())
    repo.remove_delegation_key("targets/releases", old)
    repo.signing_keys["targets/releases"] = [old]
    repo.touch("targets/releases")
    repo.publish()
    revoked = _again(repo, first)
    (err,) = refresh(revoked, repo.fetch, previous=first.state())
    assert isinstance(err, ThresholdError)

    repo = _repo()
    first = _trusted(repo)
    repo.expires["targets/releases"] = SIM_TIME - timedelta(hours=1)
    repo.touch("targets/releases")
    repo.publish()
    lapsed = _again(repo, first)
    (err,) = refresh(lapsed, repo.fetch, previous=first.state())
    assert isinstance(err, ExpiredError)
    assert resolve_docker(lapsed, "v1").role == "targets"

    repo = _repo()
    first = _trusted(repo)
    del repo.delegations["targets/releases"]
    repo.touch("targets")
    repo.publish()
    removed = _again(repo, first)
    assert refresh(removed, repo.fetch, previous=first.state()) == []
    assert removed.status("targets/releases") == "undeclared"


def test_rollback_root() -> None:
    repo = _repo()
    repo.rotate_root()
    repo.publish()
    first = _trusted(repo)
    assert first.root.version == 2
    with pytest.raises(RollbackError):
        _again(repo, first)  # bootstrapping from 1.root.json again while 2 is trusted
    ts = sim_set(repo)
    ts.update_root(repo.root_bytes(2))
    with pytest.raises(RollbackError):
        ts.update_root(repo.root_bytes(2))


# --- freeze, mix-and-match, endless data ------------------------------------------------


@pytest.mark.parametrize(
    ("role", "after"),
    [("timestamp", timedelta(days=15)), ("snapshot", timedelta(days=3 * 366))],
)
def test_freeze(role: str, after: timedelta) -> None:
    repo = _repo()
    if role == "snapshot":  # the server keeps re-signing the timestamp; snapshot is stale
        repo.expires["timestamp"] = SIM_TIME + after + timedelta(days=14)
        repo.publish_timestamp()
    ts = sim_set(repo, reference_time=SIM_TIME + after)
    with pytest.raises(ExpiredError) as info:
        refresh(ts, repo.fetch)
    assert info.value.role == role


def test_expired_delegation_is_skipped() -> None:
    repo = _repo()
    repo.expires["targets/releases"] = SIM_TIME - timedelta(days=1)
    repo.touch("targets/releases")
    repo.publish()
    ts = sim_set(repo)
    (err,) = refresh(ts, repo.fetch)
    assert isinstance(err, ExpiredError)
    assert resolve_docker(ts, "v1").role == "targets"


def test_mix_and_match() -> None:
    repo = _repo()
    old_snapshot = repo.current["snapshot"]
    repo.add_target("v2", b"manifest-v2")
    repo.publish()
    # the consistent name of the current snapshot now serves an older snapshot
    name = f"snapshot.{hashlib.sha256(repo.current['snapshot']).hexdigest()}.json"
    repo.overrides[name] = old_snapshot
    with pytest.raises(HashMismatchError) as info:
        refresh(sim_set(repo), repo.fetch)
    assert info.value.role == "snapshot"


def test_mix_and_match_targets() -> None:
    repo = _repo()
    old_targets = repo.current["targets"]
    repo.add_target("v2", b"manifest-v2")
    repo.publish()
    ts = sim_set(repo)
    ts.update_timestamp(repo.current["timestamp"])
    ts.update_snapshot(repo.current["snapshot"])
    with pytest.raises(HashMismatchError):
        ts.update_targets(old_targets)


def test_endless_timestamp() -> None:
    repo = _repo()
    limits = Limits(max_timestamp_bytes=4096)
    # the fetcher cuts at limit + 1 bytes
    repo.overrides["timestamp.json"] = (b"{" + b" " * 10_000)[: limits.max_timestamp_bytes + 1]
    with pytest.raises(OversizeMetadataError) as info:
        refresh(sim_set(repo, limits=limits), repo.fetch)
    assert info.value.role == "timestamp"


def test_endless_targets_cut_at_cap() -> None:
    repo = _repo()
    ts = sim_set(repo)
    ts.update_timestamp(repo.current["timestamp"])
    ts.update_snapshot(repo.current["snapshot"])
    with pytest.raises(HashMismatchError):
        ts.update_targets(repo.current["targets"] + b" " * 1000)


def test_signed_but_oversize_targets() -> None:
    repo = _repo()
    for i in range(200):
        repo.add_target(f"t{i}", b"m")
    repo.publish()
    ts = sim_set(repo, limits=Limits(max_targets_bytes=4096))
    with pytest.raises(OversizeMetadataError):
        refresh(ts, repo.fetch)


# --- keys and thresholds ---------------------------------------------------------------------


def test_wrong_roles_key() -> None:
    repo = _repo()
    repo.signing_keys["targets"] = repo.roles["snapshot"].keys
    repo.touch("targets")
    repo.publish()
    with pytest.raises(ThresholdError) as info:
        refresh(sim_set(repo), repo.fetch)
    assert info.value.role == "targets"


def test_threshold_not_met_and_2_of_3() -> None:
    repo = _repo()
    keys = [generate_key(), generate_key("ed25519"), generate_key("rsa")]
    repo.rotate_key("targets", keys)
    repo.roles["targets"].threshold = 2
    repo.publish()
    ts = _trusted(repo)
    assert len(ts.signers("targets")) == 3
    repo.signing_keys["targets"] = keys[1:]  # two of three: enough
    repo.touch("targets")
    repo.publish()
    assert len(_trusted(repo).signers("targets")) == 2
    repo.signing_keys["targets"] = keys[:1]
    repo.touch("targets")
    repo.publish()
    with pytest.raises(ThresholdError):
        refresh(sim_set(repo), repo.fetch)


def test_duplicate_signatures_count_once() -> None:
    repo = _repo()
    keys = [generate_key(), generate_key()]
    repo.rotate_key("targets", keys)
    repo.roles["targets"].threshold = 2
    repo.signing_keys["targets"] = [keys[0], keys[0], keys[0]]
    repo.publish()
    with pytest.raises(ThresholdError):
        refresh(sim_set(repo), repo.fetch)


def test_same_key_as_cert_and_bare_counts_once() -> None:
    repo = _repo()
    bare = generate_key()
    cert = x509_key("some-signer", private=bare.private)
    repo.rotate_key("targets", [bare, cert])
    repo.roles["targets"].threshold = 2
    repo.publish()
    with pytest.raises(ThresholdError):
        refresh(sim_set(repo), repo.fetch)


class _LyingKey(SimKey):
    """Publishes and signs under an ID that is not the hash of its content."""

    fake_id = "ab" * 32

    @property
    def key_id(self) -> str:
        return self.fake_id


def test_key_id_mismatch() -> None:
    repo = _repo()
    real = generate_key()
    liar = _LyingKey(real.private, real.key_type, real.public_b64, real.method)
    repo.rotate_key("targets", [liar])
    repo.publish()
    with pytest.raises(KeyIdMismatchError) as info:
        refresh(sim_set(repo), repo.fetch)
    assert info.value.role == "targets"


def test_unknown_key_type_in_delegations() -> None:
    repo = _repo()

    def mutate(signed: dict[str, object]) -> None:
        keys = signed["delegations"]["keys"]  # type: ignore[index]
        for k in keys.values():
            k["keytype"] = "ecdsa-sha2-nistp256"

    repo.mutators["targets"] = mutate
    repo.touch("targets")
    repo.publish()
    with pytest.raises(UnsupportedKeyError) as info:
        refresh(sim_set(repo), repo.fetch)
    assert info.value.role == "targets"


def test_revoked_delegation_key() -> None:
    repo = _repo()
    (old,) = repo.delegations["targets/releases"].keys
    new = generate_key()
    repo.delegations["targets/releases"].keys.append(new)
    repo.remove_delegation_key("targets/releases", old)
    repo.signing_keys["targets/releases"] = [old]  # still signed by the revoked key
    repo.touch("targets/releases")
    repo.publish()
    ts = sim_set(repo)
    (err,) = refresh(ts, repo.fetch)
    assert isinstance(err, ThresholdError)
    assert ts.status("targets/releases") == "skipped"


def test_delegation_outside_its_paths() -> None:
    repo = NotaryRepository()
    repo.add_target("prod-1", b"targets-prod")
    repo.add_delegation("targets/releases", paths=["prod-"])
    repo.add_target("prod-1", b"releases-prod", role="targets/releases")
    repo.add_target("dev-1", b"releases-dev", role="targets/releases")
    repo.publish()
    ts = _trusted(repo)
    assert resolve_docker(ts, "prod-1").role == "targets/releases"
    with pytest.raises(NotSignedError):
        resolve_docker(ts, "dev-1")


def test_nested_delegation_restricted_by_parent_paths() -> None:
    repo = NotaryRepository()
    repo.add_delegation("targets/team", paths=["app-"])
    repo.add_delegation("targets/team/ci", paths=[""])
    repo.add_target("app-1", b"a", role="targets/team/ci")
    repo.add_target("other", b"b", role="targets/team/ci")
    repo.publish()
    ts = _trusted(repo)
    assert ts.delegation_names() == ("targets/team", "targets/team/ci")
    assert ts.path_allows("targets/team/ci", "app-1")
    assert not ts.path_allows("targets/team/ci", "other")


# --- root ------------------------------------------------------------------------------------


def test_root_rotation_chain() -> None:
    repo = _repo()
    for _ in range(3):
        repo.rotate_root()
        repo.publish()
    ts = _trusted(repo)
    assert ts.root.version == 4
    assert resolve_docker(ts, "v1").digest


def test_root_rotation_without_old_signature() -> None:
    repo = _repo()
    repo.rotate_root(sign_with_previous=False)
    repo.publish()
    with pytest.raises(RootRotationError):
        refresh(sim_set(repo), repo.fetch)


def test_root_rotation_skipping_a_version() -> None:
    repo = _repo()
    repo.rotate_root()
    repo.publish()
    repo.rotate_root()
    repo.publish()
    with pytest.raises(RootRotationError):
        sim_set(repo).update_root(repo.root_bytes(3))


def test_pinned_root_key_survives_cert_renewal_not_key_change() -> None:
    repo = _repo()
    (key,) = repo.roles["root"].keys
    pin = PinnedRootKeys([key.canonical_id])
    renewed = x509_key(repo.gun, private=key.private)  # new cert, same key
    repo.rotate_root([renewed])
    repo.publish()
    ts = sim_set(repo, root_of_trust=pin)
    refresh(ts, repo.fetch)
    assert ts.root.version == 2
    repo.rotate_root()  # a new key: the pin no longer matches
    repo.publish()
    with pytest.raises(RootOfTrustError):
        refresh(sim_set(repo, root_of_trust=pin), repo.fetch)


def test_root_cn_must_equal_gun() -> None:
    repo = _repo(root_cn="docker.io/library/other")
    with pytest.raises(RootOfTrustError, match="CN"):
        sim_set(repo)


def test_root_leaf_rules() -> None:
    # (cryptography refuses to *create* SHA-1 certificates, so that branch is not exercised)
    repo = _repo()
    (key,) = repo.roles["root"].keys
    sha384 = x509_key(repo.gun, private=key.private, hash_algorithm=hashes.SHA384())
    assert leaf_problem(parse_key(sha384.to_json()), repo.gun) is None
    assert leaf_problem(parse_key(generate_key().to_json()), repo.gun) == (
        "root key is not an x509 certificate"
    )


def test_root_with_threshold_two() -> None:
    repo = _repo(root_keys=2, root_threshold=2)
    ts = _trusted(repo)
    assert len(ts.signers("root")) == 2
    repo.signing_keys["root"] = repo.roles["root"].keys[:1]
    repo.touch("root")
    repo.publish()
    with pytest.raises(RootRotationError):
        refresh(sim_set(repo), repo.fetch)


def test_expired_root_cert() -> None:
    repo = _repo()
    (key,) = repo.roles["root"].keys
    repo.rotate_root(
        [x509_key(repo.gun, private=key.private, not_after=SIM_TIME - timedelta(days=1))]
    )
    repo.publish()
    with pytest.raises(RootOfTrustError, match="expired"):
        refresh(sim_set(repo), repo.fetch)
    relaxed = sim_set(repo, allow_expired_root_cert=True)
    refresh(relaxed, repo.fetch)
    assert relaxed.expired_root_cert_used


def test_expired_root_cert_rotated_away() -> None:
    # a trusted root whose cert expired may still sign its successor with a fresh cert
    repo = NotaryRepository()
    (key,) = repo.roles["root"].keys
    repo.rotate_root(
        [x509_key(repo.gun, private=key.private, not_after=SIM_TIME - timedelta(days=1))]
    )
    repo.publish()  # version 2, expired cert
    repo.rotate_root()  # version 3, fresh cert, signed by the old key too
    repo.publish()
    ts = TrustedSet(
        repo.root_bytes(2),
        gun=repo.gun,
        root_of_trust=TrustOnFirstUse(),
        reference_time=SIM_TIME,
    )
    refresh(ts, repo.fetch)
    assert ts.root.version == 3
    assert not ts.expired_root_cert_used


def test_root_ca() -> None:
    ca = make_ca()
    repo = _repo(root_issuer=ca)
    ts = sim_set(repo, root_of_trust=RootCA(ca[1].public_bytes(Encoding.PEM)))
    refresh(ts, repo.fetch)
    other = make_ca("Other CA")
    with pytest.raises(RootOfTrustError):
        sim_set(repo, root_of_trust=RootCA(other[1].public_bytes(Encoding.PEM)))


@pytest.mark.parametrize("kind", ["ed25519", "rsa"])
def test_other_key_kinds(kind: str) -> None:
    repo = _repo(key_kind=kind, root_kind="rsa" if kind == "rsa" else "ecdsa")
    assert resolve_docker(_trusted(repo), "v1").digest
