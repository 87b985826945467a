"""Enforcement end to end: a real docker-registry, a real notary-server + notary-signer with
trust data written by the real notary CLI, trustproxy enforcing a policy file in the issue's
format, and real skopeo (plus httpx for headers and error bodies) through the proxy.

One proxy serves the whole module: every case lives in its own repository under a pattern
with its own rule (``<ns>/docker/*`` Docker's rule, ``<ns>/qa/*`` a named signer, ...), and
one publisher signs every repository, so one pinned root key covers them all.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from testbed import images
from testbed.enforcement_bed import (
    EnforcementBed,
    EnforcingProxy,
    TamperingUpstream,
    add_multi_key_signer,
    import_signer_key,
    oci_error,
    rule,
    skopeo_copy,
    skopeo_inspect_raw,
    skopeo_list_tags,
    start_enforcing_proxy,
    unenforced,
    upstream,
)
from testbed.notary_server import NotaryBed
from testbed.trust_scenarios import RELEASES
from tests.conftest import RegistryBed, requires

pytestmark = pytest.mark.integration

QA = "targets/qa"
SECURITY = "targets/security-team"
RELEASE_MANAGERS = "targets/release-managers"
PATTERN = "v*.*.*"
WRONG_ROOT = "0" * 64


@dataclass
class World:
    """What the module built: expected digests per (repository, tag) and the proxy."""

    bed: EnforcementBed
    tamper: TamperingUpstream
    signed: dict[tuple[str, str], str] = field(default_factory=dict)  # what must be served
    pushed: dict[tuple[str, str], str] = field(default_factory=dict)  # what the registry has
    extra: dict[str, str] = field(default_factory=dict)  # other digests by name
    proxy: EnforcingProxy = field(init=False)

    def repo(self, name: str) -> str:
        return self.bed.repo(name)

    def gun(self, name: str) -> str:
        return self.bed.gun(name)


def _image(label: str) -> images.Image:
    return images.single_image(label)


def _build(bed: EnforcementBed, world: World) -> None:
    """Push images and sign tags for every case (fast: ~0.05 s per notary command)."""
    ns = bed.namespace

    def push_sign(name: str, tag: str, label: str, **kw: Any) -> str:
        image = _image(f"{ns} {name} {label}")
        target = bed.push_and_sign(name, tag, image, **kw)
        world.signed[(name, tag)] = world.pushed[(name, tag)] = f"sha256:{target.sha256}"
        return image.digest

    def push_only(name: str, tag: str | None, label: str) -> str:
        image = _image(f"{ns} {name} {label}")
        digest = bed.push(name, image, tag)
        if tag is not None:
            world.pushed[(name, tag)] = digest
        return digest

    # Docker's rule, pinned root key.
    d = "docker/app"
    push_sign(d, "v1", "v1")
    push_sign(d, "moved", "moved signed")
    push_only(d, "moved", "moved unsigned re-push")  # the tag moves; the signature does not
    push_only(d, "unsigned", "unsigned")
    repo = bed.trust(d)
    push_sign(d, "both", "both in targets")
    repo.add_signer(f"{ns}-releaser", RELEASES)
    push_sign(d, "both", "both in releases", role=RELEASES)  # releases wins over targets
    repo.add_signer(f"{ns}-qa-docker", QA)
    world.extra["docker-qa-build"] = push_sign(d, "qa-build", "qa build", role=QA)
    del world.signed[(d, "qa-build")]  # Docker's rule ignores targets/qa
    world.extra["docker-unrelated"] = push_only(d, None, "unrelated by digest")

    # No trust data at all.
    push_only("docker/notrust", "v1", "no trust data")

    # A policy that names targets/qa.
    repo = bed.trust("qa/app")
    repo.add_signer(f"{ns}-qa", QA)
    push_sign("qa/app", "qa-build", "qa build", role=QA)
    push_sign("qa/app", "owner-only", "owner only")  # in targets: not what the rule asks
    del world.signed[("qa/app", "owner-only")]

    # Two required signers.
    r = "required/app"
    repo = bed.trust(r)
    repo.add_signer(f"{ns}-sec", SECURITY)
    repo.add_signer(f"{ns}-rm", RELEASE_MANAGERS)
    agreed = _image(f"{ns} {r} agreed")
    bed.push(r, agreed, "agree")
    repo.sign_bytes("agree", agreed.manifest, role=SECURITY)
    repo.sign_bytes("agree", agreed.manifest, role=RELEASE_MANAGERS)
    world.signed[(r, "agree")] = agreed.digest
    one, other = _image(f"{ns} {r} disagree 1"), _image(f"{ns} {r} disagree 2")
    bed.push(r, one, "disagree")
    bed.push(r, other, None)
    repo.sign_bytes("disagree", one.manifest, role=SECURITY)
    repo.sign_bytes("disagree", other.manifest, role=RELEASE_MANAGERS)
    lonely = _image(f"{ns} {r} only security")
    bed.push(r, lonely, "only-one")
    repo.sign_bytes("only-one", lonely.manifest, role=SECURITY)

    # Threshold 2 over distinct keys of targets/release-managers.
    met = bed.trust("threshold/met")
    add_multi_key_signer(met, f"{ns}-rm-pair", RELEASE_MANAGERS, keys=2)
    push_sign("threshold/met", "v1", "two keys", role=RELEASE_MANAGERS)
    unmet = bed.trust("threshold/unmet")
    pair = add_multi_key_signer(unmet, f"{ns}-rm-pair-2", RELEASE_MANAGERS, keys=2)
    single = import_signer_key(unmet, pair, f"{ns}-rm-single")
    push_sign("threshold/unmet", "v1", "one key", role=RELEASE_MANAGERS, signer=single)
    del world.signed[("threshold/unmet", "v1")]

    # Tag pattern.
    push_sign("pattern/app", "v1.2.3", "release")
    push_sign("pattern/app", "latest", "latest")
    del world.signed[("pattern/app", "latest")]

    # digests: signed, with a multi-arch index.
    s = "signed-digests/app"
    index = images.multi_arch_image(f"{ns} {s} index")
    target = bed.push_and_sign(s, "multi", index)
    world.signed[(s, "multi")] = world.pushed[(s, "multi")] = f"sha256:{target.sha256}"
    for n, child in enumerate(index.children):
        world.extra[f"child-{n}"] = child.digest
    push_sign(s, "single", "single")
    world.extra["signed-unrelated"] = push_only(s, None, "unrelated by digest")

    # Audit mode, mode off, a wrong pinned root, no matching rule.
    push_sign("audit/app", "moved", "moved signed")
    push_only("audit/app", "moved", "moved unsigned re-push")
    push_only("audit/app", "unsigned", "unsigned")
    push_only("off/app", "unsigned", "unsigned")
    push_sign("wrongroot/app", "v1", "v1")
    push_sign("unmatched/app", "v1", "v1")


@pytest.fixture(scope="module")
def world(
    registry: RegistryBed, notary_bed: NotaryBed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    requires("skopeo", "notary")
    workdir = tmp_path_factory.mktemp("enforcement")
    namespace = f"enf{uuid.uuid4().hex[:8]}"
    bed = EnforcementBed.create(workdir / "bed", registry.url, notary_bed, namespace=namespace)
    tamper = TamperingUpstream(registry.url).start()
    proxy: EnforcingProxy | None = None
    try:
        world = World(bed=bed, tamper=tamper)
        _build(bed, world)
        key = bed.root_key_id
        p = bed.pattern
        repositories = {
            p("docker/*"): rule(root_keys=[key]),
            p("qa/*"): rule(root_keys=[key], signers=["qa"]),
            p("required/*"): rule(root_keys=[key], signers=["security-team", "release-managers"]),
            p("threshold/*"): rule(
                root_keys=[key], signers=["release-managers"], thresholds={"release-managers": 2}
            ),
            p("pattern/*"): rule(trust_on_first_use=True, paths=[PATTERN]),
            p("signed-digests/*"): rule(root_keys=[key], digests="signed"),
            p("audit/*"): rule(root_keys=[key], mode="audit"),
            p("off/*"): unenforced(),
            p("wrongroot/*"): rule(root_keys=[WRONG_ROOT]),
        }
        proxy = start_enforcing_proxy(
            workdir / "proxy",
            [
                upstream("internal", registry.url),
                # Same registry name: the same GUNs and trust data, bytes from a liar.
                upstream("tampered", tamper.url, registry=registry.host, prefix="tampered"),
            ],
            notary_bed,
            repositories,
        )
        world.proxy = proxy
        yield world
    finally:
        if proxy is not None:
            proxy.stop()
        tamper.stop()
        bed.close()


def _assert_not_found(r: httpx.Response, *needles: str) -> dict[str, Any]:
    assert r.status_code == 404, (r.status_code, r.text)
    error = oci_error(r)
    assert error["code"] == "MANIFEST_UNKNOWN", error
    message = str(error["message"]).lower()
    for needle in needles:
        assert needle.lower() in message, error
    return error


# -- Docker's rule ------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", ["v1", "moved", "both"])
def test_signed_tag_is_served_at_its_signed_digest(world: World, tag: str) -> None:
    name = "docker/app"
    got = skopeo_inspect_raw(world.proxy.host, f"{world.repo(name)}:{tag}")
    assert got.ok, got.stderr
    assert got.digest == world.signed[(name, tag)]


def test_tag_repushed_unsigned_still_serves_the_signed_digest(world: World) -> None:
    name = "docker/app"
    assert world.pushed[(name, "moved")] != world.signed[(name, "moved")]
    direct = skopeo_inspect_raw(world.bed.registry_host, f"{world.repo(name)}:moved")
    assert direct.ok, direct.stderr
    assert direct.digest == world.pushed[(name, "moved")]
    via = skopeo_inspect_raw(world.proxy.host, f"{world.repo(name)}:moved")
    assert via.ok, via.stderr
    assert via.digest == world.signed[(name, "moved")]


def test_releases_wins_over_targets(world: World) -> None:
    r = world.proxy.manifest(world.repo("docker/app"), "both")
    assert r.status_code == 200, r.text
    assert images.sha256(r.content) == world.signed[("docker/app", "both")]
    assert r.headers["docker-content-digest"] == world.signed[("docker/app", "both")]


def test_skopeo_copy_of_a_signed_tag(world: World, tmp_path: Path) -> None:
    got = skopeo_copy(world.proxy.host, f"{world.repo('docker/app')}:moved", tmp_path / "out")
    assert got.ok, got.stderr
    manifest = (tmp_path / "out" / "manifest.json").read_bytes()
    assert images.sha256(manifest) == world.signed[("docker/app", "moved")]


def test_unsigned_tag_is_404_with_reason(world: World) -> None:
    ref = f"{world.repo('docker/app')}:unsigned"
    got = skopeo_inspect_raw(world.proxy.host, ref)
    assert not got.ok
    assert "manifest unknown" in got.error.lower(), got.stderr
    assert "not signed" in got.error.lower(), got.stderr
    error = _assert_not_found(
        world.proxy.manifest(world.repo("docker/app"), "unsigned"), "not signed"
    )
    assert "not signed" in str(error["detail"].get("reason", "")).lower(), error


def test_no_trust_data_is_404(world: World) -> None:
    gun = world.gun("docker/notrust")
    got = skopeo_inspect_raw(world.proxy.host, f"{world.repo('docker/notrust')}:v1")
    assert not got.ok
    assert "trust data" in got.error.lower(), got.stderr
    _assert_not_found(
        world.proxy.manifest(world.repo("docker/notrust"), "v1"), f"no trust data for {gun}"
    )


def test_qa_only_tag_refused_by_docker_rule(world: World) -> None:
    got = skopeo_inspect_raw(world.proxy.host, f"{world.repo('docker/app')}:qa-build")
    assert not got.ok
    assert "manifest unknown" in got.error.lower(), got.stderr
    _assert_not_found(
        world.proxy.manifest(world.repo("docker/app"), "qa-build"),
        "not signed by targets/releases or targets",
    )


def test_qa_only_tag_accepted_when_policy_names_qa(world: World) -> None:
    got = skopeo_inspect_raw(world.proxy.host, f"{world.repo('qa/app')}:qa-build")
    assert got.ok, got.stderr
    assert got.digest == world.signed[("qa/app", "qa-build")]
    # ...and under that rule a tag only the owner signed in `targets` is not enough.
    _assert_not_found(
        world.proxy.manifest(world.repo("qa/app"), "owner-only"), f"not signed by {QA}"
    )


# -- required signers and thresholds ------------------------------------------------------------


def test_required_signers_that_agree_are_served(world: World) -> None:
    got = skopeo_inspect_raw(world.proxy.host, f"{world.repo('required/app')}:agree")
    assert got.ok, got.stderr
    assert got.digest == world.signed[("required/app", "agree")]


@pytest.mark.parametrize(
    ("tag", "reason"),
    [("disagree", "signers disagree"), ("only-one", f"not signed by {RELEASE_MANAGERS}")],
    ids=["disagree", "only-one"],
)
def test_required_signers_that_disagree_or_miss_are_refused(
    world: World, tag: str, reason: str
) -> None:
    got = skopeo_inspect_raw(world.proxy.host, f"{world.repo('required/app')}:{tag}")
    assert not got.ok
    assert reason in got.error, got.stderr
    _assert_not_found(world.proxy.manifest(world.repo("required/app"), tag), reason)


def test_threshold_two_met(world: World) -> None:
    got = skopeo_inspect_raw(world.proxy.host, f"{world.repo('threshold/met')}:v1")
    assert got.ok, got.stderr
    assert got.digest == world.signed[("threshold/met", "v1")]


def test_threshold_two_not_met(world: World) -> None:
    # The role's metadata carries one valid signature (notary 0.7 signs with the one key
    # this signer holds); the policy asks for two distinct keys.
    got = skopeo_inspect_raw(world.proxy.host, f"{world.repo('threshold/unmet')}:v1")
    assert not got.ok
    _assert_not_found(world.proxy.manifest(world.repo("threshold/unmet"), "v1"), "2 required")


# -- tag patterns, tag lists, HEAD --------------------------------------------------------------


def test_tag_pattern(world: World) -> None:
    repo = world.repo("pattern/app")
    got = skopeo_inspect_raw(world.proxy.host, f"{repo}:v1.2.3")
    assert got.ok, got.stderr
    assert got.digest == world.signed[("pattern/app", "v1.2.3")]
    refused = skopeo_inspect_raw(world.proxy.host, f"{repo}:latest")
    assert not refused.ok
    assert PATTERN in refused.error, refused.stderr
    _assert_not_found(world.proxy.manifest(repo, "latest"), "pattern", PATTERN)
    assert world.proxy.tags(repo) == ["v1.2.3"]


def test_tag_list_is_filtered(world: World) -> None:
    repo = world.repo("docker/app")
    got = skopeo_list_tags(world.proxy.host, repo)
    assert got.ok, got.stderr
    listed = json.loads(got.stdout)["Tags"]
    assert sorted(listed) == ["both", "moved", "v1"]
    direct = skopeo_list_tags(world.bed.registry_host, repo)
    assert {"unsigned", "qa-build"} <= set(json.loads(direct.stdout)["Tags"])
    assert world.proxy.tags(world.repo("required/app")) == ["agree"]
    assert world.proxy.tags(world.repo("qa/app")) == ["qa-build"]


@pytest.mark.parametrize(
    ("name", "tag"),
    [
        ("docker/app", "v1"),
        ("docker/app", "moved"),
        ("docker/app", "unsigned"),
        ("docker/notrust", "v1"),
        ("pattern/app", "latest"),
        ("signed-digests/app", "multi"),
    ],
)
def test_head_and_get_agree(world: World, name: str, tag: str) -> None:
    repo = world.repo(name)
    get = world.proxy.manifest(repo, tag)
    head = world.proxy.manifest(repo, tag, method="HEAD")
    assert head.status_code == get.status_code, (head.status_code, get.text)
    assert head.content == b""
    if get.status_code == 200:
        expected = world.signed[(name, tag)]
        assert images.sha256(get.content) == expected
        for h in ("docker-content-digest", "content-type", "content-length"):
            assert head.headers.get(h) == get.headers.get(h), h
        assert head.headers["docker-content-digest"] == expected
    else:
        assert get.status_code == 404
        oci_error(get)


# -- pulls by digest: allow vs signed -----------------------------------------------------------


def test_multi_arch_index_signed_mode(world: World, tmp_path: Path) -> None:
    s = "signed-digests/app"
    repo = world.repo(s)
    got = skopeo_inspect_raw(world.proxy.host, f"{repo}:multi")
    assert got.ok, got.stderr
    assert got.digest == world.signed[(s, "multi")]
    # Children of the signed index are fetchable by digest (what every client does next).
    for n in (0, 1):
        child = world.extra[f"child-{n}"]
        r = world.proxy.manifest(repo, child)
        assert r.status_code == 200, r.text
        assert images.sha256(r.content) == child
    # The signed digests themselves too.
    for tag in ("multi", "single"):
        r = world.proxy.manifest(repo, world.signed[(s, tag)])
        assert r.status_code == 200, r.text
    copied = skopeo_copy(world.proxy.host, f"{repo}:multi", tmp_path / "all", all_images=True)
    assert copied.ok, copied.stderr
    assert (
        images.sha256((tmp_path / "all" / "manifest.json").read_bytes())
        == world.signed[(s, "multi")]
    )


def test_unrelated_digest_refused_in_signed_mode(world: World) -> None:
    repo = world.repo("signed-digests/app")
    unrelated = world.extra["signed-unrelated"]
    direct = httpx.get(
        f"{world.bed.registry_url}/v2/{repo}/manifests/{unrelated}",
        headers={"Accept": images.ACCEPT_ALL},
    )
    assert direct.status_code == 200  # the registry has it...
    refused = world.proxy.manifest(repo, unrelated)  # ...the proxy does not serve it
    _assert_not_found(refused, "not signed")
    assert world.proxy.manifest(repo, unrelated, method="HEAD").status_code == 404
    got = skopeo_inspect_raw(world.proxy.host, f"{repo}@{unrelated}")
    assert not got.ok


def test_unrelated_digest_allowed_in_allow_mode(world: World) -> None:
    # digests: allow (the default) is Docker's behaviour: a digest pull is content-addressed.
    r = world.proxy.manifest(world.repo("docker/app"), world.extra["docker-unrelated"])
    assert r.status_code == 200, r.text
    assert images.sha256(r.content) == world.extra["docker-unrelated"]


# -- modes, roots, rules ------------------------------------------------------------------------


def test_audit_mode_serves_and_logs(world: World) -> None:
    repo, gun = world.repo("audit/app"), world.gun("audit/app")
    got = skopeo_inspect_raw(world.proxy.host, f"{repo}:unsigned")
    assert got.ok, got.stderr
    assert got.digest == world.pushed[("audit/app", "unsigned")]
    record = world.proxy.wait_audit(
        lambda r: (
            r.get("repository") == gun
            and r.get("reference") == "unsigned"
            and r.get("outcome") == "audit_would_deny"
        )
    )
    assert "not signed" in str(record.get("reason", "")).lower(), record
    assert record.get("mode") == "audit", record
    # Where enforce would serve a signed digest, audit serves that digest too.
    moved = skopeo_inspect_raw(world.proxy.host, f"{repo}:moved")
    assert moved.ok, moved.stderr
    assert moved.digest == world.signed[("audit/app", "moved")]


def test_enforce_mode_denial_is_audited(world: World) -> None:
    gun = world.gun("docker/app")
    world.proxy.manifest(world.repo("docker/app"), "unsigned")
    record = world.proxy.wait_audit(
        lambda r: (
            r.get("repository") == gun
            and r.get("reference") == "unsigned"
            and r.get("outcome") == "denied"
        )
    )
    assert "not signed" in str(record.get("reason", "")).lower(), record
    assert record.get("rule") == world.bed.pattern("docker/*"), record
    world.proxy.manifest(world.repo("docker/app"), "v1")
    served = world.proxy.wait_audit(
        lambda r: (
            r.get("repository") == gun
            and r.get("reference") == "v1"
            and r.get("outcome") == "served_signed"
        )
    )
    assert served.get("served_digest") == world.signed[("docker/app", "v1")], served


def test_decisions_are_counted(world: World) -> None:
    world.proxy.manifest(world.repo("docker/app"), "unsigned")
    metrics = world.proxy.metrics()
    assert 'trustproxy_decisions_total{kind="manifest",outcome="denied"}' in metrics, metrics[
        -2000:
    ]


def test_mode_off_passes_through(world: World) -> None:
    got = skopeo_inspect_raw(world.proxy.host, f"{world.repo('off/app')}:unsigned")
    assert got.ok, got.stderr
    assert got.digest == world.pushed[("off/app", "unsigned")]


def test_wrong_pinned_root_key_is_never_served(world: World) -> None:
    # Signed data exists, but not under the root the policy pins: nothing may be served.
    # Trust data that fails verification is never used: 503, not a pass-through, not a 404.
    r = world.proxy.manifest(world.repo("wrongroot/app"), "v1")
    assert r.status_code == 503, (r.status_code, r.text)
    error = oci_error(r)
    assert error["code"] == "UNAVAILABLE", error
    assert "root" in str(error["message"]).lower(), error
    assert not skopeo_inspect_raw(world.proxy.host, f"{world.repo('wrongroot/app')}:v1").ok


def test_repository_without_a_rule_is_refused(world: World) -> None:
    # Fail closed: no pattern matches <ns>/unmatched/app.
    r = world.proxy.manifest(world.repo("unmatched/app"), "v1")
    _assert_not_found(r, "no policy rule matches", world.gun("unmatched/app"))
    assert world.proxy.manifest(world.repo("unmatched/app"), "v1", method="HEAD").status_code == 404


def test_listings_of_a_repository_without_a_rule_are_refused_before_the_registry(
    world: World,
) -> None:
    """Issue 17, finding 7: the tag list and referrers of a repository no rule matches were
    relayed from the registry before the gate ran: the registry's own answers (here its 404
    for a repository it does not have, and its 404 for the referrers API it lacks) reached
    the client. Now the gate refuses first: empty listings, recorded as denied."""
    missing = world.repo("unmatched/never-pushed")
    with world.proxy.client() as http:
        tags = http.get(f"/v2/{missing}/tags/list")
        existing = http.get(f"/v2/{world.repo('unmatched/app')}/tags/list")
        digest = world.pushed.get(("unmatched/app", "v1"), "sha256:" + "0" * 64)
        refs = http.get(f"/v2/{world.repo('unmatched/app')}/referrers/{digest}")
    assert tags.status_code == 200, (tags.status_code, tags.text)
    assert tags.json() == {"name": missing, "tags": []}
    assert existing.json()["tags"] == []
    assert refs.status_code == 200, (refs.status_code, refs.text)
    assert refs.headers["content-type"] == images.OCI_INDEX
    assert refs.json()["manifests"] == []
    record = world.proxy.wait_audit(
        lambda r: r.get("kind") == "referrers" and r.get("repository") == world.gun("unmatched/app")
    )
    assert record["outcome"] == "denied", record
    assert "no policy rule matches" in str(record["reason"]), record


def test_upstream_bytes_not_matching_the_signed_digest_is_502(world: World) -> None:
    name = "docker/app"
    signed = world.signed[(name, "v1")]
    world.tamper.replacements[signed] = _image("something else entirely").manifest
    try:
        r = world.proxy.manifest(f"tampered/{world.repo(name)}", "v1")
        assert r.status_code == 502, (r.status_code, r.text)
        assert oci_error(r)["code"] == "UNAVAILABLE"
        got = skopeo_inspect_raw(world.proxy.host, f"tampered/{world.repo(name)}:v1")
        assert not got.ok
        record = world.proxy.wait_audit(
            lambda r: r.get("outcome") == "upstream_mismatch" and r.get("reference") == "v1"
        )
        assert signed in str(record.get("reason")), record
    finally:
        world.tamper.replacements.clear()
    # The honest path of the same upstream serves it.
    r = world.proxy.manifest(f"tampered/{world.repo(name)}", "v1")
    assert r.status_code == 200, r.text
    assert images.sha256(r.content) == signed
