"""Public vectors: notary's compatibility fixtures and connaisseur's Notary v1 test data."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from proxy.errors import NotSignedError
from proxy.sources.notary.tuf import (
    ExpiredError,
    HashMismatchError,
    MetadataFormatError,
    PinnedRootCerts,
    PinnedRootKeys,
    RoleRequirement,
    RootOfTrustError,
    ThresholdError,
    TrustedSet,
    TrustOnFirstUse,
    refresh,
    resolve_docker,
    resolve_required_roles,
    signed_tags,
)
from proxy.sources.notary.tuf.errors import TrustDataError
from proxy.sources.notary.tuf.keys import compute_key_id
from proxy.sources.notary.tuf.roots import RootOfTrust
from tests.unit.trust.helpers import (
    COMPAT,
    COMPAT_TIME,
    CONN_DATA,
    CONN_GUN,
    CONNAISSEUR,
    NOW_2026,
    ConnaisseurRepo,
    b64,
    compact,
    dir_repo,
    make_set,
    needs_vectors,
)

pytestmark = needs_vectors

LICENSE = "sha256:9395bac6fccb26bcb55efb083d1b4b0fe72a1c25f959f056c016120b3bb56a62"
EMPTY = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
V01 = ("notary0.1", "docker.com/notary0.1/samplerepo")
V03 = ("notary0.3", "docker.com/notary0.3/tst")


def _compat(version: str, gun: str) -> tuple[bytes, dict[str, bytes]]:
    files = dir_repo(COMPAT / version / "tuf" / gun / "metadata")
    return files["root.json"], files


def _pinned_key_from_yaml(name: str) -> str:
    cfg = yaml.safe_load((CONNAISSEUR / name).read_text())
    pub = serialization.load_pem_public_key(cfg["trustRoots"][0]["key"].encode())
    der = pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return compute_key_id("ecdsa", b64(der))


# --- notary-compat: two valid repositories, end to end --------------------------------------


@pytest.mark.parametrize(
    "root_of_trust",
    [
        TrustOnFirstUse(),
        PinnedRootCerts(["4ff57dc987163053a12c066f2dd36b1ae6037a92f5416d381fe311a3db1868d8"]),
        PinnedRootKeys(["d0c623c8e70c70d42a8a8125c44a8598588b3f6e31d5c21a83cbc338dfde8a68"]),
    ],
    ids=["tofu", "pinned-cert", "pinned-canonical-key"],
)
def test_notary01_end_to_end(root_of_trust: RootOfTrust) -> None:
    root, files = _compat(*V01)
    ts = make_set(root, V01[1], reference_time=COMPAT_TIME, root_of_trust=root_of_trust)
    assert refresh(ts, files.get) == []
    tags = signed_tags(ts)
    assert list(tags) == ["LICENSE"]
    assert tags["LICENSE"].digest == LICENSE
    assert tags["LICENSE"].length == 11309
    assert tags["LICENSE"].role == "targets"
    assert tags["LICENSE"].key_ids == (
        "7fc757801b9bab4ec9e35bfe7a6b61668ff6f4c81b5632af19e6c728ab799599",
    )


def test_notary03_end_to_end_with_rsapss_delegation() -> None:
    root, files = _compat(*V03)
    pin = PinnedRootKeys(["f4eaf871a74aa3b3a0ff95cef2455a1e4d461639f5625418e76756fc5c948690"])
    ts = make_set(root, V03[1], reference_time=COMPAT_TIME, root_of_trust=pin)
    assert refresh(ts, files.get) == []
    assert ts.status("targets/releases") == "loaded"
    hello = resolve_docker(ts, "hello")
    assert (hello.digest, hello.length, hello.role) == (EMPTY, 0, "targets/releases")
    # the rsa-x509 delegation key signed with rsapss
    assert hello.key_ids == ("68243a1f948be7841403f65fc8f24d5eda9050c337e727e2eacc3d3cb5227d73",)
    assert ts.delegated["targets/releases"].signatures[0].method == "rsapss"
    assert resolve_docker(ts, "LICENSE").role == "targets"
    assert resolve_docker(ts, "change").digest == EMPTY
    assert sorted(signed_tags(ts)) == ["LICENSE", "change", "hello"]
    with pytest.raises(NotSignedError, match="No valid trust data for MAINTAINERS"):
        resolve_docker(ts, "MAINTAINERS")  # only in an unpublished changelist


def test_notary03_root_cert_expired_today() -> None:
    # notary0.3's root certificate expired on 2026-07-25
    root, files = _compat(*V03)
    ts = make_set(root, V03[1], reference_time=NOW_2026)
    with pytest.raises(RootOfTrustError, match="expired"):
        refresh(ts, files.get)
    relaxed = make_set(root, V03[1], reference_time=NOW_2026, allow_expired_root_cert=True)
    refresh(relaxed, files.get)
    assert relaxed.expired_root_cert_used
    assert resolve_docker(relaxed, "hello").digest == EMPTY


def test_compat_not_flagged_when_cert_valid() -> None:
    root, files = _compat(*V03)
    ts = make_set(root, V03[1], reference_time=COMPAT_TIME, allow_expired_root_cert=True)
    refresh(ts, files.get)
    assert not ts.expired_root_cert_used


def test_compat_wrong_gun_is_cn_mismatch() -> None:
    root, _ = _compat(*V03)
    with pytest.raises(RootOfTrustError, match="does not match GUN"):
        make_set(root, "docker.com/notary0.3/samplerepo", reference_time=COMPAT_TIME)


def test_compat_wrong_pin() -> None:
    root, _ = _compat(*V01)
    with pytest.raises(RootOfTrustError, match="PinnedRootKeys"):
        make_set(root, V01[1], reference_time=COMPAT_TIME, root_of_trust=PinnedRootKeys(["0" * 64]))
    # a certificate ID is not a canonical key ID
    cert_id = "4ff57dc987163053a12c066f2dd36b1ae6037a92f5416d381fe311a3db1868d8"
    with pytest.raises(RootOfTrustError):
        make_set(root, V01[1], reference_time=COMPAT_TIME, root_of_trust=PinnedRootKeys([cert_id]))


# --- connaisseur: valid, expired and broken repositories ------------------------------------


def _conn_set(name: str, gun: str = CONN_GUN, **kw: object) -> tuple[TrustedSet, dict[str, bytes]]:
    files = dir_repo(CONN_DATA / name, recompact=True)
    return make_set(files["root.json"], gun, reference_time=NOW_2026, **kw), files  # type: ignore[arg-type]


def test_connaisseur_never_expire_pinned_by_public_key() -> None:
    pin = PinnedRootKeys([_pinned_key_from_yaml("08_never_expire_notary.yaml")])
    ts, files = _conn_set("never-expire-image", root_of_trust=pin)
    refresh(ts, files.get)
    assert sorted(signed_tags(ts)) == ["sign", "v1"]
    assert resolve_docker(ts, "v1").role == "targets"


def test_connaisseur_default_pin_rejects_other_root() -> None:
    # 01_notaryv1.yaml pins Docker Hub's and another root: not this repository's
    cfg = yaml.safe_load((CONNAISSEUR / "01_notaryv1.yaml").read_text())
    ids = []
    for root in cfg["trustRoots"]:
        pub = serialization.load_pem_public_key(root["key"].encode())
        der = pub.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        ids.append(compute_key_id("ecdsa", b64(der)))
    with pytest.raises(RootOfTrustError):
        _conn_set("never-expire-image", root_of_trust=PinnedRootKeys(ids))


def test_connaisseur_cn_is_not_the_repository_name() -> None:
    # its root certificate's CN is "securesystems.de": as a repository's root it is refused
    with pytest.raises(RootOfTrustError, match="CN"):
        _conn_set("never-expire-image", gun="docker.io/securesystemsengineering/testimage")


@pytest.mark.parametrize(
    ("name", "gun"),
    [
        ("sample-image", "docker.io/phbelitz/sample-image"),
        ("alice-image", "docker.io/phbelitz/alice-image"),
    ],
)
def test_connaisseur_expired(name: str, gun: str) -> None:
    ts, files = _conn_set(name, gun)
    with pytest.raises(ExpiredError) as info:
        refresh(ts, files.get)
    assert info.value.role == "timestamp"


def test_connaisseur_alice_valid_when_it_was_fresh() -> None:
    from datetime import UTC, datetime

    files = dir_repo(CONN_DATA / "alice-image", recompact=True)
    ts = make_set(
        files["root.json"],
        "docker.io/phbelitz/alice-image",
        reference_time=datetime(2019, 10, 1, tzinfo=UTC),
    )
    refresh(ts, files.get)
    test = resolve_docker(ts, "test")
    assert test.role == "targets/releases"
    assert len(ts.signers("targets/releases")) == 2  # signed by both delegation keys
    both = resolve_required_roles(
        ts, "test", [RoleRequirement("targets/releases", 2), RoleRequirement("targets/phbelitz")]
    )
    assert both.digest == test.digest


def test_connaisseur_err_image_swapped_roles() -> None:
    files = dir_repo(CONN_DATA / "err-image", recompact=True)
    with pytest.raises(MetadataFormatError) as info:
        make_set(files["root.json"], CONN_GUN, reference_time=NOW_2026)
    assert (info.value.role, info.value.field) == ("root", "_type")
    with pytest.raises(MetadataFormatError):
        make_set(files["invalid.json"], CONN_GUN, reference_time=NOW_2026)


def test_connaisseur_edge_case_err_image_targets_hash() -> None:
    ts, files = _conn_set("edge-case-err-image")
    with pytest.raises(HashMismatchError) as info:
        refresh(ts, files.get)
    assert info.value.role == "targets"


def test_connaisseur_edge_case_image() -> None:
    ts, files = _conn_set("edge-case-image")
    with pytest.raises(HashMismatchError) as info:  # hand-edited: hashes drifted
        refresh(ts, files.get)
    assert info.value.role == "snapshot"
    repo = ConnaisseurRepo("edge-case-image")
    repo.resign()
    ts, _ = _conn_set("edge-case-image")
    refresh(ts, repo.files().get)
    # delegations are declared but not in snapshot: notary cannot use them; tags in targets
    assert ts.status("targets/releases") == "skipped"
    assert resolve_docker(ts, "sign").role == "targets"


def _resigned(name: str, **replace: Path) -> tuple[TrustedSet, list[TrustDataError]]:
    repo = ConnaisseurRepo(name)
    for role, path in replace.items():
        repo.replace(role.replace("__", "/"), path)
    repo.resign()
    ts = make_set(repo.roles["root"], CONN_GUN, reference_time=NOW_2026)
    return ts, refresh(ts, repo.files().get)


def test_connaisseur_delegations() -> None:
    ts, errors = _resigned("never-expire-with-delegations-image")
    assert errors == []
    assert resolve_docker(ts, "sign").role == "targets/releases"
    # v1 is only in targets/del2: Docker ignores it, a named-signer policy can require it
    with pytest.raises(NotSignedError):
        resolve_docker(ts, "v1")
    assert resolve_required_roles(ts, "v1", [RoleRequirement("targets/del2")]).role == (
        "targets/del2"
    )
    agree = resolve_required_roles(
        ts, "sign", [RoleRequirement("targets/releases"), RoleRequirement("targets/del1")]
    )
    assert agree.roles == ("targets/releases", "targets/del1")


def test_connaisseur_conflicting_delegations() -> None:
    ts, _ = _resigned("never-expire-with-conflicting-delegations-image")
    releases = resolve_docker(ts, "sign")
    assert releases.role == "targets/releases"
    with pytest.raises(NotSignedError, match="disagree"):
        resolve_required_roles(
            ts, "sign", [RoleRequirement("targets/releases"), RoleRequirement("targets/del2")]
        )


def test_connaisseur_01_expired_root() -> None:
    ts = make_set(compact(CONN_DATA / "01_expired_root.json"), CONN_GUN, reference_time=NOW_2026)
    with pytest.raises(ExpiredError) as info:
        ts.update_timestamp(b"{}")
    assert info.value.role == "root"


def test_connaisseur_02_invalid_signature_targets() -> None:
    with pytest.raises(ThresholdError) as info:
        _resigned("never-expire-image", targets=CONN_DATA / "02_invalid_signature_targets.json")
    assert info.value.role == "targets"


def test_connaisseur_03_expired_snapshot() -> None:
    with pytest.raises(ExpiredError) as info:
        _resigned("never-expire-image", snapshot=CONN_DATA / "03_expired_snapshot.json")
    assert info.value.role == "snapshot"


@pytest.mark.parametrize(
    ("file", "error"),
    [
        ("04_invalid_signature_delegation.json", ThresholdError),
        ("05_expired_delegation.json", ExpiredError),
    ],
    ids=["04-invalid-signature", "05-expired"],
)
def test_connaisseur_bad_delegation_is_skipped(file: str, error: type[Exception]) -> None:
    ts, errors = _resigned(
        "never-expire-with-delegations-image", targets__releases=CONN_DATA / file
    )
    assert [type(e) for e in errors] == [error]
    assert ts.status("targets/releases") == "skipped"
    assert isinstance(ts.skipped["targets/releases"], error)
    # Docker's rule then falls back to targets, which lists no tags
    with pytest.raises(NotSignedError):
        resolve_docker(ts, "sign")
    with pytest.raises(NotSignedError, match="no valid trust data"):
        resolve_required_roles(ts, "sign", [RoleRequirement("targets/releases")])
    assert resolve_required_roles(ts, "sign", [RoleRequirement("targets/del1")])


def test_connaisseur_06_unsigned_root() -> None:
    with pytest.raises(ThresholdError) as info:
        make_set(
            compact(CONN_DATA / "06_no_signature_root.json"), CONN_GUN, reference_time=NOW_2026
        )
    assert info.value.role == "root"


def test_connaisseur_07_extra_signature_by_non_root_key_ignored() -> None:
    ts = make_set(
        compact(CONN_DATA / "07_root_multiple_signatures.json"), CONN_GUN, reference_time=NOW_2026
    )
    assert ts.signers("root") == (
        "52e8085cd75be93c5062130e08663a83a20f2eb9baf31f28eef4735e50f3a407",
    )
