"""NotarySource against a real notary-server + notary-signer with data the real notary CLI
produced (testbed.trust_scenarios): resolutions must equal Docker's, computed independently."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from proxy.errors import NotSignedError
from proxy.settings import LimitSettings, TrustSourceSettings
from proxy.sources import MemoryTrustStateStore, NoTrustDataError
from proxy.sources.notary.rules import SigningRule
from proxy.sources.notary.source import NotarySource, NotarySourceOptions
from proxy.sources.notary.tuf import (
    PinnedRootCerts,
    PinnedRootKeys,
    RoleRequirement,
    RootOfTrustError,
    TrustOnFirstUse,
)
from testbed.notary_server import NotaryBed
from testbed.trust_scenarios import RELEASES, Repository, Scenario, gun_for, payload

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

TOFU = SigningRule(TrustOnFirstUse())
LIVE = ["targets", "releases", "both-roles", "qa-only", "root-rotation", "targets-rotation",
        "revoked"]  # fmt: skip


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_source(bed: NotaryBed, **options: object) -> NotarySource:
    settings = TrustSourceSettings("bed", "notary", bed.url, bed.ca_file)
    return NotarySource.from_settings(
        settings,
        LimitSettings(),
        MemoryTrustStateStore(),
        options=NotarySourceOptions(**options),  # type: ignore[arg-type]
    )


@pytest.fixture
async def source(notary_bed: NotaryBed) -> AsyncIterator[NotarySource]:
    s = make_source(notary_bed)
    try:
        yield s
    finally:
        await s.aclose()


@pytest.mark.parametrize("name", LIVE)
async def test_resolves_what_docker_would(
    name: str, source: NotarySource, notary_bed_scenarios: dict[str, Scenario]
) -> None:
    sc = notary_bed_scenarios[name]
    assert sc.expected, "every live scenario signs something"
    for tag, exp in sc.expected.items():
        got = await source.resolve(sc.gun, tag, TOFU)
        assert (got.tag, got.digest, got.length, got.role) == (
            tag,
            f"sha256:{exp.sha256}",
            exp.length,
            exp.role,
        )
        assert got.key_ids
    for tag in sc.unacceptable:
        with pytest.raises(NotSignedError):
            await source.resolve(sc.gun, tag, TOFU)
    tags = await source.signed_tags(sc.gun, TOFU)
    assert {t: (s.digest, s.role) for t, s in tags.items()} == {
        t: (f"sha256:{e.sha256}", e.role) for t, e in sc.expected.items()
    }


@pytest.mark.parametrize("name", LIVE)
async def test_keys_match_the_published_root(
    name: str,
    source: NotarySource,
    notary_bed: NotaryBed,
    notary_bed_scenarios: dict[str, Scenario],
) -> None:
    sc = notary_bed_scenarios[name]
    assert sc.keys is not None
    ts = await source.load(sc.gun, TOFU)
    assert ts.root.version == sc.keys.root_version
    assert ts.root.signed.roles["root"].key_ids == sc.keys.root
    assert ts.root.signed.roles["targets"].key_ids == sc.keys.targets
    # pinning the canonical root key ("Root Key" in docker) or the certificate both work
    for rule in (
        SigningRule(PinnedRootKeys(sc.keys.root_canonical)),
        SigningRule(PinnedRootCerts(sc.keys.root)),
    ):
        fresh = make_source(notary_bed)
        try:
            await fresh.load(sc.gun, rule)
        finally:
            await fresh.aclose()


async def test_pinned_to_another_root_is_refused(
    source: NotarySource, notary_bed_scenarios: dict[str, Scenario]
) -> None:
    a, b = notary_bed_scenarios["targets"], notary_bed_scenarios["releases"]
    assert b.keys is not None
    with pytest.raises(RootOfTrustError):
        await source.resolve(a.gun, "v1", SigningRule(PinnedRootKeys(b.keys.root_canonical)))


async def test_releases_two_signers(
    source: NotarySource, notary_bed_scenarios: dict[str, Scenario]
) -> None:
    sc = notary_bed_scenarios["releases"]
    assert sc.keys is not None
    declared = set(sc.keys.delegations[RELEASES])
    # alice's x509 key (certificate ID) and bob's bare key are both declared on releases
    assert {k.key_id for k in sc.delegation_keys.values()} == declared
    got = await source.resolve(sc.gun, "v2", TOFU)
    assert set(got.key_ids) <= declared
    need_two = SigningRule(TrustOnFirstUse(), (RoleRequirement(RELEASES, 2),))
    with pytest.raises(NotSignedError, match="2 required"):
        await source.resolve(sc.gun, "v2", need_two)
    need_one = SigningRule(TrustOnFirstUse(), (RoleRequirement(RELEASES, 1),))
    assert (await source.resolve(sc.gun, "v2", need_one)).role == RELEASES


async def test_qa_only_under_required_roles(
    source: NotarySource, notary_bed_scenarios: dict[str, Scenario]
) -> None:
    sc = notary_bed_scenarios["qa-only"]
    qa = SigningRule(TrustOnFirstUse(), (RoleRequirement("targets/qa"),))
    got = await source.resolve(sc.gun, "qa-build", qa)
    assert got.role == "targets/qa"


async def test_deleted_repository_has_no_trust_data(
    source: NotarySource, notary_bed_scenarios: dict[str, Scenario]
) -> None:
    sc = notary_bed_scenarios["deleted"]
    with pytest.raises(NoTrustDataError, match="does not have trust data"):
        await source.resolve(sc.gun, "v1", TOFU)


async def test_changes_are_seen_across_refreshes(notary_bed: NotaryBed, tmp_path: Path) -> None:
    """One repository, one source with a store: sign, rotate root and targets keys, revoke,
    delete; each refresh starts from the stored root and versions."""
    gun = gun_for(f"team/live-{uuid.uuid4().hex[:8]}")
    repo = Repository.create(notary_bed, tmp_path, gun)
    source = make_source(notary_bed, fresh_for=timedelta(0), retry_after=timedelta(0))
    try:
        v1 = repo.sign_bytes("v1", payload("live v1"))
        assert (await source.resolve(gun, "v1", TOFU)).digest == f"sha256:{v1.sha256}"
        repo.rotate_root()
        repo.rotate_targets()
        v2 = repo.sign_bytes("v2", payload("live v2"))
        ts = await source.load(gun, TOFU)
        assert ts.root.version == repo.key_ids().root_version > 1
        assert ts.root.signed.roles["targets"].key_ids == repo.key_ids().targets
        assert (await source.resolve(gun, "v2", TOFU)).digest == f"sha256:{v2.sha256}"
        repo.remove("v1")
        with pytest.raises(NotSignedError, match="tag v1 is not signed by"):
            await source.resolve(gun, "v1", TOFU)
        repo.delete_remote()
        with pytest.raises(NoTrustDataError):
            await source.resolve(gun, "v2", TOFU)
    finally:
        await source.aclose()
