"""``trustproxy trust migrate --to cosign`` against the real registry and notary-server:
every digest that verifies today under the Notary rule (several tags, a delegation, a
multi-arch index) gets a cosign signature by the organisation's key; a dry run pushes
nothing; a second run adds nothing; unsigned tags are not signed."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.cli import main
from proxy.sources.cosign.classic import signature_tag, verify_classic
from proxy.sources.cosign.keys import load_pem_key
from testbed import images
from testbed.enforcement_bed import (
    EnforcementBed,
    proxy_config,
    rule,
    skopeo_inspect_raw,
    upstream,
    write_policy,
)
from testbed.notary_server import NotaryBed
from testbed.proxy_server import start_proxy
from testbed.trust_scenarios import RELEASES
from tests.conftest import RegistryBed, requires

pytestmark = pytest.mark.integration

OCI_ACCEPT = {
    "accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"
}


@dataclass
class Migration:
    bed: EnforcementBed
    registry_url: str
    work: Path
    config: Path
    key: Path
    public_pem: bytes
    repo: str  # as clients name it
    signed: dict[str, str]  # tag -> digest that verifies under the Notary rule
    unsigned_digest: str


@pytest.fixture(scope="module")
def world(
    registry: RegistryBed, notary_bed: NotaryBed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Migration]:
    requires("notary")
    work = tmp_path_factory.mktemp("migrate")
    ns = f"mig{uuid.uuid4().hex[:8]}"
    bed = EnforcementBed.create(work / "bed", registry.url, notary_bed, namespace=ns)
    signed = {}
    for tag in ("v1", "v2"):
        image = images.single_image(f"{ns} {tag}")
        bed.push_and_sign("app", tag, image)
        signed[tag] = image.digest
    index = images.multi_arch_image(f"{ns} index")
    bed.push_and_sign("app", "multi", index)
    signed["multi"] = index.digest
    bed.trust("app").add_signer(f"{ns}-releaser", RELEASES)
    released = images.single_image(f"{ns} released")
    bed.push_and_sign("app", "release", released, role=RELEASES)
    signed["release"] = released.digest
    signed["v1-again"] = signed["v1"]
    bed.push_and_sign("app", "v1-again", images.single_image(f"{ns} v1"))  # same digest
    unsigned = images.single_image(f"{ns} unsigned")
    bed.push("app", unsigned, "unsigned")
    policy = write_policy(
        work / "policy.yaml", {bed.pattern("**"): rule(root_keys=[bed.root_key_id])}
    )
    config = work / "config.yaml"
    config.write_text(
        yaml.safe_dump(proxy_config([upstream("registry", registry.url)], notary_bed, policy))
    )
    private = ec.generate_private_key(ec.SECP256R1())
    key = work / "cosign.key"
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        yield Migration(
            bed, registry.url, work, config, key, public, bed.repo("app"), signed, unsigned.digest
        )
    finally:
        bed.close()


def run(world: Migration, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    code = main(
        ["trust", "migrate", "--to", "cosign", "--key", str(world.key), "--config",
         str(world.config), "--repos", world.repo, "--json", *extra]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err + out
    doc: dict[str, Any] = json.loads(out)
    return doc


def actions(doc: dict[str, Any]) -> dict[str, str]:
    (repo,) = doc["repositories"]
    assert repo["error"] is None
    return {d["digest"]: d["action"] for d in repo["digests"]}


def sig_manifest(world: Migration, digest: str) -> httpx.Response:
    return world.bed.registry_client.get(
        f"/v2/{world.repo}/manifests/{signature_tag(digest)}", headers=OCI_ACCEPT
    )


def test_migrate_dry_run_apply_and_again(
    world: Migration, capsys: pytest.CaptureFixture[str]
) -> None:
    wanted = set(world.signed.values())
    # Dry run: the plan names every signed digest once, and nothing is pushed.
    assert actions(run(world, capsys)) == dict.fromkeys(wanted, "would sign")
    assert all(sig_manifest(world, d).status_code == 404 for d in wanted)

    assert actions(run(world, capsys, "--apply")) == dict.fromkeys(wanted, "signed")
    key = load_pem_key(world.public_pem)
    manifests = {}
    for digest in wanted:
        resp = sig_manifest(world, digest)
        assert resp.status_code == 200, digest
        manifests[digest] = resp.content
        blobs = {}
        for layer in json.loads(resp.content)["layers"]:
            blob = world.bed.registry_client.get(f"/v2/{world.repo}/blobs/{layer['digest']}")
            blobs[layer["digest"]] = blob.content
        got = verify_classic(resp.content, blobs, digest=digest, keys=[key], root=None, now=_now())
        assert [v.reference for v in got.verified] == [world.bed.gun("app")]
    # The unsigned tag got nothing.
    assert sig_manifest(world, world.unsigned_digest).status_code == 404

    # Again: everything is already signed, and the registry is unchanged.
    assert actions(run(world, capsys, "--apply")) == dict.fromkeys(wanted, "already signed")
    for digest in wanted:
        assert sig_manifest(world, digest).content == manifests[digest]


def test_a_repository_without_a_rule_is_reported(
    world: Migration, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(
        ["trust", "migrate", "--to", "cosign", "--key", str(world.key), "--config",
         str(world.config), "--repos", "elsewhere/app"]
    )  # fmt: skip
    out, _ = capsys.readouterr()
    assert code == 1
    assert "elsewhere/app: NOT MIGRATED: no policy rule verifies" in out


def test_the_migrated_repository_passes_a_cosign_rule(
    world: Migration, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's end state: the rule switched from Notary to cosign with the migration
    key; every tag that verified under Notary is served at the same digest, the unsigned
    one is still refused."""
    requires("skopeo")
    run(world, capsys, "--apply")  # idempotent: whatever the order of the tests
    public = world.work / "cosign.pub"
    public.write_bytes(world.public_pem)
    policy = write_policy(
        world.work / "policy-cosign.yaml",
        {
            world.bed.pattern("**"): {
                "requireSignatures": True,
                "source": "sigs",
                "authorities": [{"key": str(public)}],
                "tlog": "optional",  # signed offline by the migration: no Rekor entries
                "digests": "signed",
            }
        },
    )
    config = {
        "upstreams": [upstream("registry", world.registry_url)],
        "trust": {"sources": {"sigs": {"type": "cosign"}}},
        "policy_file": str(policy),
    }
    server = start_proxy(world.work / "cosign-proxy", config, name="trustproxy-migrated")
    try:
        host = server.extra["host"]
        for tag, digest in world.signed.items():
            got = skopeo_inspect_raw(host, f"{world.repo}:{tag}")
            assert got.ok, got.error
            assert got.digest == digest, tag
        refused = skopeo_inspect_raw(host, f"{world.repo}:unsigned")
        assert not refused.ok
        assert f"no cosign signature for {world.unsigned_digest}" in refused.error
    finally:
        server.stop()


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)
