"""Cosign end to end: signatures pushed into a real docker-registry (Debian's 2.8.2: no
referrers API, so bundles are found through the tag schema), trustproxy enforcing a
``type: cosign`` source, and real skopeo (plus httpx for error bodies) through the proxy.

Classic key-based ``.sig`` signatures come from the test signer (testbed/cosign_signer.py,
whose layout is checked against the connaisseur vectors); cosign 3 bundles are made by an
independent signer, sigstore-js (npm ``@sigstore/sign``), offline.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.sources.cosign.keys import VerifyingKey
from testbed import cosign_signer, images, sigstore_js_signer
from testbed.enforcement_bed import (
    EnforcingProxy,
    oci_error,
    skopeo_copy,
    skopeo_inspect_raw,
    wait_until,
    write_policy,
)
from testbed.processes import Server
from testbed.proxy_server import REPO_ROOT, start_proxy, upstream_config
from testbed.registry import registry_binary, start_registry
from tests.conftest import requires

pytestmark = pytest.mark.integration

REFRESH = 1.0  # seconds a verdict or a tag resolution answers (refresh_interval)


@dataclass
class Bed:
    registry: Server
    proxy: EnforcingProxy
    keys: dict[str, ec.EllipticCurvePrivateKey]
    digests: dict[str, str] = field(default_factory=dict)
    images: dict[str, images.Image] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return str(self.registry.extra["host"])

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.registry.extra["url"], timeout=30)

    def push(self, repo: str, label: str, tag: str | None, *, index: bool = False) -> str:
        image = images.multi_arch_image(label) if index else images.single_image(label)
        with self.client() as c:
            digest = images.push_image(c, repo, image, tag)
        self.images[label] = image
        self.digests[label] = digest
        return digest

    def sign(self, repo: str, digest: str, *signers: str) -> str:
        with self.client() as c:
            return cosign_signer.sign_classic(
                c, repo, digest, f"{self.host}/{repo}", [self.keys[s] for s in signers]
            )

    def pull(self, repo: str, ref: str) -> Any:
        return skopeo_inspect_raw(self.proxy.host, f"{repo}:{ref}")


def key_id(key: ec.EllipticCurvePrivateKey) -> str:
    return VerifyingKey(key.public_key()).key_id


def cosign_rule(bed_keys: dict[str, Path], *names: str, **extra: Any) -> dict[str, Any]:
    return {
        "requireSignatures": True,
        "source": "sigs",
        "authorities": [{"key": str(bed_keys[n]), "name": n} for n in names],
        "tlog": "optional",  # key-based, offline: no Rekor entries here
        **extra,
    }


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    requires("skopeo")
    if registry_binary() is None:
        pytest.skip("docker-registry is not installed (run `make test` to install it)")
    work = tmp_path_factory.mktemp("cosign")
    registry = start_registry(work / "registry", delete=True)
    keys = {n: cosign_signer.new_key() for n in ("release", "a", "b", "c")}
    key_files = {}
    for name, key in keys.items():
        key_files[name] = work / f"{name}.pub"
        key_files[name].write_bytes(cosign_signer.public_pem(key))
    host = registry.extra["host"]
    policy = write_policy(
        work / "policy.yaml",
        {
            f"{host}/cosign/app": cosign_rule(key_files, "release", digests="signed"),
            f"{host}/cosign/keep": cosign_rule(key_files, "release", onUnsignedTag="lastSigned"),
            f"{host}/cosign/three": cosign_rule(key_files, "a", "b", "c", threshold=2),
        },
    )
    audit = work / "audit.jsonl"
    config = {
        "upstreams": [upstream_config("internal", registry.extra["url"])],
        "trust": {"sources": {"sigs": {"type": "cosign", "refresh_interval": f"{REFRESH}s"}}},
        "policy_file": str(policy),
        "logging": {"format": "json"},
        "audit": {"sink": "file", "path": str(audit)},
    }
    try:
        server = start_proxy(work / "proxy", config)
    except BaseException:
        registry.stop()
        raise
    proxy = EnforcingProxy(server=server, policy_file=policy, audit_file=audit)
    made = Bed(registry, proxy, keys)
    try:
        _publish(made)
        yield made
    finally:
        server.stop()
        registry.stop()


def _publish(bed: Bed) -> None:
    app = "cosign/app"
    bed.sign(app, bed.push(app, "v1", "v1"), "release")
    bed.push(app, "unsigned", "unsigned")
    bed.sign(app, bed.push(app, "index", "index", index=True), "release")
    # A signature copied from v1 to another image: it signs v1's digest, not this one.
    copied = bed.push(app, "copied", "copied")
    manifest, blobs = cosign_signer.sig_manifest(
        bed.digests["v1"], f"{bed.host}/{app}", [bed.keys["release"]]
    )
    with bed.client() as c:
        for blob in blobs:
            images.push_blob(c, app, blob)
        c.put(f"/v2/{app}/manifests/{cosign_signer.signature_tag(copied)}", content=manifest,
              headers={"Content-Type": images.OCI_MANIFEST}).raise_for_status()  # fmt: skip
    # Signed for another repository of the same registry.
    other = bed.push(app, "elsewhere", "elsewhere")
    with bed.client() as c:
        cosign_signer.sign_classic(c, app, other, f"{bed.host}/cosign/tools", [bed.keys["release"]])
    bed.sign(app, bed.push(app, "revoked", "revoked"), "release")
    for repo in (app, "cosign/keep"):
        bed.sign(repo, bed.push(repo, f"moved {repo}", "moved"), "release")
    three = "cosign/three"
    bed.sign(three, bed.push(three, "two", "two"), "a", "b")
    bed.sign(three, bed.push(three, "one", "one"), "a")
    bed.sign(three, bed.push(three, "all", "all"), "a", "b", "c")


def refusal(bed: Bed, repo: str, ref: str) -> str:
    r = bed.proxy.manifest(repo, ref)
    assert r.status_code == 404, (r.status_code, r.text[:300])
    return str(oci_error(r)["message"]) + " " + json.dumps(oci_error(r).get("detail"))


def test_signed_tag_is_served(bed: Bed) -> None:
    result = bed.pull("cosign/app", "v1")
    assert result.ok, result.error
    assert result.digest == bed.digests["v1"]
    record = bed.proxy.wait_audit(lambda r: r.get("reference") == "v1" and bool(r.get("key_ids")))
    assert record["key_ids"] == [key_id(bed.keys["release"])]
    assert record["signers"] == [f"key {key_id(bed.keys['release'])[:12]}…"]


def test_unsigned_tag_is_refused_with_the_reason(bed: Bed) -> None:
    assert not bed.pull("cosign/app", "unsigned").ok
    reason = refusal(bed, "cosign/app", "unsigned")
    assert f"no cosign signature for {bed.digests['unsigned']}" in reason
    assert f"of rule {bed.host}/cosign/app" in reason


def test_signature_for_another_digest_is_refused(bed: Bed) -> None:
    assert not bed.pull("cosign/app", "copied").ok
    assert "layer 0" in refusal(bed, "cosign/app", "copied")


def test_signature_for_another_repository_is_refused(bed: Bed) -> None:
    assert f"is for {bed.host}/cosign/tools" in refusal(bed, "cosign/app", "elsewhere")


def test_index_with_signed_children_pulled_by_digest(bed: Bed, tmp_path: Path) -> None:
    """skopeo copies every platform: the index by tag, the children by digest (under
    ``digests: signed``, they pass as children of the signed index)."""
    result = skopeo_copy(bed.proxy.host, "cosign/app:index", tmp_path / "out", all_images=True)
    assert result.ok, result.error
    child = bed.images["index"].children[0]
    r = bed.proxy.manifest("cosign/app", child.digest)
    assert r.status_code == 200
    assert images.sha256(r.content) == child.digest
    # An unsigned image by digest is refused.
    assert bed.proxy.manifest("cosign/app", bed.digests["unsigned"]).status_code == 404


def test_threshold_two_of_three(bed: Bed) -> None:
    assert bed.pull("cosign/three", "two").digest == bed.digests["two"]
    assert bed.pull("cosign/three", "all").digest == bed.digests["all"]
    assert "signed by a but the rule needs 2 authorities" in refusal(bed, "cosign/three", "one")


def test_bundle_made_by_sigstore_js(bed: Bed) -> None:
    why = sigstore_js_signer.ensure_installed()
    if why is not None:
        pytest.skip(why)
    digest = bed.push("cosign/app", "bundled", "bundled")
    assert bed.proxy.manifest("cosign/app", "bundled").status_code == 404
    bundle = cosign_signer.dsse_bundle(bed.keys["release"], digest)
    with bed.client() as c:
        cosign_signer.attach_bundle(c, "cosign/app", bed.images["bundled"], bundle)
    wait_until(lambda: bed.pull("cosign/app", "bundled").ok, timeout=10 * REFRESH)
    assert bed.pull("cosign/app", "bundled").digest == digest
    record = bed.proxy.wait_audit(
        lambda r: r.get("reference") == "bundled" and bool(r.get("key_ids"))
    )
    assert record["key_ids"] == [key_id(bed.keys["release"])]


def test_deleted_signature_is_revoked(bed: Bed) -> None:
    assert bed.pull("cosign/app", "revoked").ok
    with bed.client() as c:
        sig = c.head(
            f"/v2/cosign/app/manifests/{cosign_signer.signature_tag(bed.digests['revoked'])}",
            headers={"Accept": images.OCI_MANIFEST},
        ).headers["docker-content-digest"]
        cosign_signer.delete_manifest(c, "cosign/app", sig)
    took = wait_until(lambda: not bed.pull("cosign/app", "revoked").ok, timeout=10 * REFRESH)
    assert took <= 5 * REFRESH
    assert "no cosign signature" in refusal(bed, "cosign/app", "revoked")


@pytest.mark.parametrize(("repo", "keeps"), [("cosign/app", False), ("cosign/keep", True)])
def test_moved_tag(bed: Bed, repo: str, keeps: bool) -> None:
    """The tag moves upstream to an unsigned image: ``deny`` refuses it, ``lastSigned``
    keeps serving the digest it had while signed."""
    signed = bed.digests[f"moved {repo}"]
    assert bed.pull(repo, "moved").digest == signed
    bed.push(repo, f"moved {repo} unsigned", "moved")
    unsigned = bed.digests[f"moved {repo} unsigned"]
    assert _head_digest(bed, repo, "moved") == unsigned
    if keeps:
        time.sleep(2 * REFRESH)  # past the tag's resolution and the verdict
        assert bed.pull(repo, "moved").digest == signed
        record = bed.proxy.wait_audit(
            lambda r: r.get("reference") == "moved" and r.get("last_signed") is True
        )
        assert record["current_digest"] == unsigned
    else:
        wait_until(lambda: not bed.pull(repo, "moved").ok, timeout=10 * REFRESH)
        assert f"no cosign signature for {unsigned}" in refusal(bed, repo, "moved")


def _head_digest(bed: Bed, repo: str, tag: str) -> str | None:
    with bed.client() as c:
        r = c.head(f"/v2/{repo}/manifests/{tag}", headers={"Accept": images.ACCEPT_ALL})
    found: str | None = r.headers.get("docker-content-digest")
    return found


def test_tag_list_shows_signed_tags_only(bed: Bed) -> None:
    tags = bed.proxy.tags("cosign/three")
    assert sorted(tags) == ["all", "two"]
    with bed.client() as c:
        upstream = c.get("/v2/cosign/three/tags/list").json()["tags"]
    assert len(upstream) == 6  # three images and their .sig tags


def trust_inspect(bed: Bed, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "trust", "inspect",
         "--config", bed.proxy.server.extra["config"], *args],
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO_ROOT,
    )  # fmt: skip


def test_trust_inspect(bed: Bed) -> None:
    """The CLI judges as the proxy does, with the policy's rule: signatures per digest,
    who signed, the verdict per authority."""
    done = trust_inspect(bed, f"{bed.host}/cosign/three:two", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    (item,) = report["tags"]
    assert (item["digest"], item["acceptable"]) == (bed.digests["two"], True)
    assert item["authorities"] == {"a": True, "b": True, "c": False}
    assert {s["key_id"] for s in item["signatures"]} == {key_id(bed.keys[k]) for k in "ab"}

    done = trust_inspect(bed, f"{bed.host}/cosign/three:one")
    assert done.returncode == 1
    assert "signed by a but the rule needs 2 authorities" in done.stdout
    assert "✓ a" in done.stdout
    assert "✗ b" in done.stdout

    # A whole repository: its images, not cosign's own tags.
    done = trust_inspect(bed, f"{bed.host}/cosign/three", "--json")
    assert done.returncode == 0, done.stderr
    shown = {t["tag"]: t["acceptable"] for t in json.loads(done.stdout)["tags"]}
    assert shown == {"all": True, "one": False, "two": True}

    # Ad-hoc keys instead of the policy's rule.
    key_file = Path(bed.proxy.policy_file).parent / "c.pub"
    done = trust_inspect(bed, f"{bed.host}/cosign/three:all", "--key", str(key_file), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tags"][0]["authorities"] == {"c.pub": True}


def test_last_signed_is_shared_by_replicas_through_redis(bed: Bed, tmp_path: Path) -> None:
    """Two replicas on one redis-server: the tag memory of ``lastSigned`` is shared. Replica
    A sees a tag signed; the tag moves upstream to an unsigned image; replica B, which never
    saw it signed, serves the digest A remembered (judged again by B: still signed)."""
    requires("redis-server")
    from testbed.redis_server import start_redis
    from testbed.replica_bed import cache_section

    repo = "cosign/replicas"
    key_file = Path(bed.proxy.policy_file).parent / "release.pub"
    policy = write_policy(
        tmp_path / "policy.yaml",
        {f"{bed.host}/{repo}": cosign_rule({"release": key_file}, "release",
                                           onUnsignedTag="lastSigned")},
    )  # fmt: skip
    signed = bed.push(repo, "replicas signed", "v1")
    bed.sign(repo, signed, "release")
    with start_redis(tmp_path / "redis") as redis:
        config = {
            "upstreams": [upstream_config("internal", bed.registry.extra["url"])],
            "trust": {"sources": {"sigs": {"type": "cosign", "refresh_interval": "1s"}}},
            "policy_file": str(policy),
            "cache": cache_section(redis, key_prefix="cosign-test:", refresh_seconds=1),
        }
        a = start_proxy(tmp_path / "a", config, name="replica-a")
        try:
            b = start_proxy(tmp_path / "b", config, name="replica-b")
            try:
                first = skopeo_inspect_raw(a.extra["host"], f"{repo}:v1")
                assert first.digest == signed, first.error
                unsigned = bed.push(repo, "replicas unsigned", "v1")
                on_b = skopeo_inspect_raw(b.extra["host"], f"{repo}:v1")
                assert on_b.ok, on_b.error
                assert on_b.digest == signed != unsigned
            finally:
                b.stop()
        finally:
            a.stop()


def test_keyless_classic_signature_under_a_private_sigstore(bed: Bed, tmp_path: Path) -> None:
    """A keyless signature (Fulcio certificate of a CI workflow identity, embedded SCT,
    Rekor SET) from a private Sigstore instance whose trusted_root.json the source is given:
    accepted for the workflow identity with tlog required, refused for another identity, and
    the audit record names the identity and the log index."""
    from tests.simulators.sigstore_instance import SigstoreInstance

    instance = SigstoreInstance()
    root_file = tmp_path / "trusted_root.json"
    root_file.write_bytes(instance.trusted_root())
    workflow = "https://github.com/myorg/app/.github/workflows/release.yml@refs/tags/v1"
    issuer = "https://token.actions.githubusercontent.com"
    repo = "cosign/keyless"
    digest = bed.push(repo, "keyless", "v1")
    other = bed.push(repo, "keyless other", "other")
    logged: dict[str, int] = {}
    with bed.client() as c:
        for image, san in ((digest, workflow), (other, "someone@example.com")):
            layer = instance.keyless_layer(
                image, f"{bed.host}/{repo}", cert=instance.issue(san=san, issuer=issuer)
            )
            logged[image] = instance.log_index
            manifest, blobs = cosign_signer.layered_manifest([(layer.payload, layer.annotations)])
            cosign_signer.push_signature(c, repo, image, manifest, blobs)
    policy = write_policy(
        tmp_path / "policy.yaml",
        {f"{bed.host}/{repo}": {
            "source": "sigs",
            "authorities": [{"keyless": {"issuer": issuer,
                                         "subjectRegExp": r"^https://github\.com/myorg/"}}],
            "tlog": "required",
        }},
    )  # fmt: skip
    audit = tmp_path / "audit.jsonl"
    config = {
        "upstreams": [upstream_config("internal", bed.registry.extra["url"])],
        "trust": {"sources": {"sigs": {"type": "cosign", "trusted_root": str(root_file)}}},
        "policy_file": str(policy),
        "audit": {"sink": "file", "path": str(audit)},
    }
    server = start_proxy(tmp_path / "proxy", config, name="keyless")
    try:
        proxy = EnforcingProxy(server=server, policy_file=policy, audit_file=audit)
        result = skopeo_inspect_raw(proxy.host, f"{repo}:v1")
        assert result.ok, result.error
        assert result.digest == digest
        record = proxy.wait_audit(lambda r: r.get("reference") == "v1")
        assert record["identities"] == [f"{workflow} (issuer {issuer})"]
        assert record["log_indexes"] == [logged[digest]]
        assert record["key_ids"] == []
        r = proxy.manifest(repo, "other")
        assert r.status_code == 404
        assert "signed by identity someone@example.com" in str(oci_error(r)["message"])
    finally:
        server.stop()
