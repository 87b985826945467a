"""A real dockerd pulling through a real ``trustproxy serve`` (registry + notary behind it),
once per dockerd configuration documented in docs/clients.md, asserting what dockerd does:
enforced, or bypassed to the upstream.

    docker pull --> dockerd --registry-mirrors / proxy host:port--> trustproxy --> registry
                       |                                                  (Hub's stand-in)
                       +--HTTPS_PROXY--> EgressRelay --registry-1.docker.io--> the same registry

The proxy's default upstream is ``docker.io`` (as in config/docker-hub.yaml), so Hub names
(``library/<name>``) are enforced under GUNs ``docker.io/library/<name>``. Docker Hub itself
cannot be reached here: a real registry stands in for it, and dockerd reaches it under the
name ``registry-1.docker.io`` through its egress proxy (testbed.clients.dockerd), which can
also refuse Hub, as an egress firewall does. See :data:`RESULTS` for the table that
docs/clients.md shows and :func:`test_docs_table_matches_the_observed_results` checks.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy import doctor
from testbed import images
from testbed.clients.dockerd import (
    Dockerd,
    DockerdUnavailable,
    DockerResult,
    EgressRelay,
    relay_env,
    start_dockerd,
)
from testbed.enforcement_bed import (
    EnforcementBed,
    EnforcingProxy,
    rule,
    start_enforcing_proxy,
    upstream,
)
from testbed.notary_server import NotaryBed
from testbed.tls import CA
from tests.conftest import RegistryBed

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CLIENTS_DOC = ROOT / "docs" / "clients.md"


class HubBed(EnforcementBed):
    """The enforcement bed with Docker Hub's names: repositories ``library/<name>`` whose
    GUN is ``docker.io/library/<name>``, as for a Hub official image."""

    @property
    def registry_host(self) -> str:
        return "docker.io"


@dataclass(frozen=True)
class Pushed:
    """What one tag is: the manifest digest and the config digest (dockerd's image ID)."""

    digest: str
    image_id: str


def _pushed(image: images.Image) -> Pushed:
    return Pushed(image.digest, image.blobs[0].digest)


@dataclass
class World:
    bed: EnforcementBed  # a HubBed
    registry: RegistryBed
    proxy: EnforcingProxy
    relay: EgressRelay
    engine: Dockerd
    app: str  # library/<ns>-app: tags signed, moved, unsigned
    multi: str  # library/<ns>-multi: tag v1, a signed OCI index (amd64, arm64)
    signed: dict[str, Pushed] = field(default_factory=dict)  # tag -> what must be pulled
    upstream: dict[str, Pushed] = field(default_factory=dict)  # tag -> what the registry has
    children: dict[str, Pushed] = field(default_factory=dict)  # arch -> child of multi:v1
    signed_layer_diff_id: str = ""

    @property
    def short(self) -> str:
        """The Hub short name of the app (``docker pull <ns>-app:tag``)."""
        return self.app.removeprefix("library/")


@pytest.fixture(scope="module")
def world(
    registry: RegistryBed,
    notary_bed: NotaryBed,
    tls_ca: CA,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("dockerd")
    ns = f"tp{uuid.uuid4().hex[:8]}"
    bed = HubBed.create(workdir / "bed", registry.url, notary_bed, namespace="library")
    relay = EgressRelay(tls_ca, workdir / "relay", registry.url).start()
    proxy: EnforcingProxy | None = None
    engine: Dockerd | None = None
    try:
        app, multi = f"{ns}-app", f"{ns}-multi"
        signed = images.single_image(f"{ns} signed")
        moved_signed = images.single_image(f"{ns} moved signed")
        moved_unsigned = images.single_image(f"{ns} moved unsigned re-push")
        unsigned = images.single_image(f"{ns} unsigned")
        index = images.multi_arch_image(f"{ns} multi")
        bed.push_and_sign(app, "signed", signed)
        bed.push_and_sign(app, "moved", moved_signed)
        bed.push(app, moved_unsigned, "moved")  # the tag moves upstream; the signature stays
        bed.push(app, unsigned, "unsigned")
        bed.push_and_sign(multi, "v1", index)
        proxy = start_enforcing_proxy(
            workdir / "proxy",
            [upstream("hub", registry.url, registry="docker.io")],
            notary_bed,
            {bed.pattern(f"{ns}-*"): rule(root_keys=[bed.root_key_id])},
        )
        try:
            engine = start_dockerd(
                workdir / "engine", direct_config(proxy), env=relay_env(relay, tls_ca)
            )
        except DockerdUnavailable as e:
            pytest.skip(f"dockerd cannot run on this machine: {e}")
        w = World(bed, registry, proxy, relay, engine, bed.repo(app), bed.repo(multi))
        w.signed = {"signed": _pushed(signed), "moved": _pushed(moved_signed)}
        w.upstream = {
            "signed": _pushed(signed),
            "moved": _pushed(moved_unsigned),
            "unsigned": _pushed(unsigned),
        }
        w.children = {
            arch: _pushed(child)
            for arch, child in zip(("amd64", "arm64"), index.children, strict=True)
        }
        w.signed["multi"] = Pushed(index.digest, "")
        w.signed_layer_diff_id = images.sha256(gzip.decompress(signed.blobs[1].data))
        yield w
    finally:
        if engine is not None:
            engine.stop()
        if proxy is not None:
            proxy.stop()
        relay.stop()
        bed.close()


# -- the configurations (docs/clients.md, dockerd section, applied verbatim) ----------------------


def direct_config(proxy: EnforcingProxy) -> dict[str, Any]:
    """ "Tests only: insecure-registries" for a plain-HTTP proxy; images name the proxy."""
    return {"insecure-registries": [proxy.host]}


def mirror_config(proxy: EnforcingProxy) -> dict[str, Any]:
    """ "Option B: registry-mirrors" (http:// here: the test proxy is plain HTTP)."""
    return {"registry-mirrors": [proxy.url]}


CONFIGS = {"direct": direct_config, "mirror": mirror_config}


def apply(world: World, config: str, *, hub: str) -> None:
    """Give dockerd ``config``, set Hub reachable or blocked, forget every image.

    SIGHUP where it works; a restart where dockerd keeps mirrors whose key was deleted
    (test_sighup_keeps_mirrors_whose_key_was_deleted)."""
    new = CONFIGS[config](world.proxy)
    if world.engine.mirrors() and "registry-mirrors" not in new:
        world.engine.restart(new)
    else:
        world.engine.reconfigure(new)
    world.relay.hub_reachable = hub == "reachable"
    world.engine.remove_all_images()
    world.relay.connects.clear()


def pull(world: World, ref: str, *extra: str) -> DockerResult:
    return world.engine.docker("pull", *extra, ref)


def inspect(world: World, ref: str) -> tuple[str, list[str]]:
    """(image ID, RepoDigests) of a pulled image."""
    r = world.engine.docker("image", "inspect", "--format", "{{json .}}", ref)
    assert r.ok, r.output
    doc = json.loads(r.stdout)
    return doc["Id"], list(doc.get("RepoDigests") or [])


def pulled_digest(world: World, ref: str) -> str:
    """The manifest digest dockerd recorded for ``ref`` (RepoDigests), checked against the
    image ID (the config digest: what dockerd actually stored)."""
    _, digests = inspect(world, ref)
    name = ref.rsplit(":", 1)[0] if ":" in ref.rsplit("/", 1)[-1] else ref
    found = [d.split("@", 1)[1] for d in digests if d.split("@", 1)[0] == name]
    assert len(found) == 1, (ref, digests)
    return found[0]


def outcome(world: World, ref: str, tag: str) -> str:
    """Pull ``ref`` (a tag of world.app) and classify: ``signed`` (the signed image),
    ``upstream`` (the registry's current, unsigned image) or ``refused``."""
    r = pull(world, ref)
    if not r.ok:
        return "refused"
    image_id, _ = inspect(world, ref)
    digest = pulled_digest(world, ref)
    if tag in world.signed and world.signed[tag] == Pushed(digest, image_id):
        return "signed"
    assert world.upstream[tag] == Pushed(digest, image_id), (ref, digest, image_id)
    return "upstream"


# -- direct: images name the proxy (Option A, plain HTTP here) ---------------------------------


def proxy_ref(world: World, repo: str, tag: str) -> str:
    return f"{world.proxy.host}/{repo}:{tag}"


@pytest.mark.parametrize("tag", ["signed", "moved"])
def test_direct_pull_gets_the_signed_digest(world: World, tag: str) -> None:
    apply(world, "direct", hub="reachable")
    ref = proxy_ref(world, world.app, tag)
    r = pull(world, ref)
    assert r.ok, r.output
    assert pulled_digest(world, ref) == world.signed[tag].digest
    image_id, _ = inspect(world, ref)
    assert image_id == world.signed[tag].image_id  # the signed image's config, not the re-push
    assert world.relay.hub_connects() == []


def test_direct_pull_of_an_unsigned_tag_is_refused_with_the_reason(world: World) -> None:
    apply(world, "direct", hub="reachable")
    r = pull(world, proxy_ref(world, world.app, "unsigned"))
    assert not r.ok
    # What the docker CLI shows: dockerd passes the proxy's OCI error message through.
    assert "manifest unknown" in r.stderr.lower(), r.output
    assert "not signed" in r.stderr.lower(), r.output
    assert world.relay.hub_connects() == []  # nothing to fall back to
    left = world.engine.docker("image", "inspect", proxy_ref(world, world.app, "unsigned"))
    assert not left.ok


def test_engine_api_refusal_carries_the_proxys_reason(world: World) -> None:
    """What tools that speak the Engine API see (docker-py, compose, CI runners):
    POST /images/create answers 404 with the proxy's reason in ``message``."""
    apply(world, "direct", hub="reachable")
    transport = httpx.HTTPTransport(uds=str(world.engine.socket))
    with httpx.Client(transport=transport, base_url="http://docker", timeout=60) as api:
        r = api.post(
            "/v1.41/images/create",
            params={"fromImage": f"{world.proxy.host}/{world.app}", "tag": "unsigned"},
        )
        signed = api.post(
            "/v1.41/images/create",
            params={"fromImage": f"{world.proxy.host}/{world.app}", "tag": "signed"},
        )
    assert r.status_code == 404, r.text
    message = r.json()["message"]
    assert "manifest unknown" in message, message
    assert "not signed" in message, message
    assert signed.status_code == 200, signed.text
    assert f"Digest: {world.signed['signed'].digest}" in signed.text


def test_direct_pull_of_a_multi_arch_index(world: World) -> None:
    apply(world, "direct", hub="reachable")
    ref = proxy_ref(world, world.multi, "v1")
    for arch in ("amd64", "arm64"):
        r = pull(world, ref, "--platform", f"linux/{arch}")
        assert r.ok, r.output
        image_id, _ = inspect(world, ref)
        assert image_id == world.children[arch].image_id, arch  # the platform's child
        # dockerd 20.10 records no RepoDigests for an index pulled by --platform; the CLI
        # prints the digest it resolved the tag to: the signed index.
        assert f"Digest: {world.signed['multi'].digest}" in r.stdout, r.output


def test_direct_pull_all_tags_lists_signed_tags_only(world: World) -> None:
    # `docker pull --all-tags` is dockerd's only use of the tag list.
    apply(world, "direct", hub="reachable")
    r = pull(world, f"{world.proxy.host}/{world.app}", "--all-tags")
    assert r.ok, r.output
    listing = world.engine.docker(
        "images", "--format", "{{.Tag}}", f"{world.proxy.host}/{world.app}"
    )
    assert sorted(listing.stdout.split()) == ["moved", "signed"], listing.output


def test_blobs_arrive_intact_and_are_served_by_the_proxy(world: World, tmp_path: Path) -> None:
    apply(world, "direct", hub="reachable")
    ref = proxy_ref(world, world.app, "signed")
    assert pull(world, ref).ok
    out = tmp_path / "saved.tar"
    saved = world.engine.docker("save", "-o", str(out), ref)
    assert saved.ok, saved.output
    with tarfile.open(out) as tar:
        manifest = json.loads(_member(tar, "manifest.json"))
        layers = [images.sha256(_member(tar, name)) for name in manifest[0]["Layers"]]
    # What dockerd stored is the signed image's layer (uncompressed: its diff ID).
    assert layers == [world.signed_layer_diff_id]


def _member(tar: tarfile.TarFile, name: str) -> bytes:
    f = tar.extractfile(name)
    assert f is not None, name
    return f.read()


def test_sighup_keeps_mirrors_whose_key_was_deleted(world: World) -> None:
    """Observed: deleting "registry-mirrors" from daemon.json and reloading (SIGHUP,
    `systemctl reload docker`) leaves the mirrors in force; `[]` or a restart removes them
    (docs/clients.md says so)."""
    engine = world.engine
    engine.reconfigure(mirror_config(world.proxy))
    assert engine.mirrors() == [world.proxy.url + "/"]
    engine.reload(direct_config(world.proxy))  # the key deleted
    assert engine.mirrors() == [world.proxy.url + "/"]
    engine.reload({**direct_config(world.proxy), "registry-mirrors": []})
    assert engine.mirrors() == []


# -- the result table ------------------------------------------------------------------------


# (configuration, Hub, how the image is named) -> per tag: what dockerd ends up with.
# "signed": the signed digest; "upstream": the registry's current, unsigned image (bypass);
# "refused": the pull fails. The signed tag's image is the same wherever it comes from.
S, U, R = "signed", "upstream", "refused"
RESULTS: dict[tuple[str, str, str], dict[str, str]] = {
    ("direct", "reachable", "proxy"): {"signed": S, "moved": S, "unsigned": R},
    ("direct", "reachable", "hub"): {"signed": S, "moved": U, "unsigned": U},
    ("mirror", "reachable", "hub"): {"signed": S, "moved": S, "unsigned": U},
    ("mirror", "blocked", "hub"): {"signed": S, "moved": S, "unsigned": R},
    ("mirror", "reachable", "registry"): {"signed": S, "moved": U, "unsigned": U},
}


def ref_for(world: World, naming: str, tag: str) -> str:
    if naming == "proxy":
        return proxy_ref(world, world.app, tag)
    if naming == "registry":  # the upstream registry named by its own host:port
        return f"{world.registry.host}/{world.app}:{tag}"
    return f"{world.short}:{tag}"  # a Hub short name: docker.io/library/<name>


@pytest.mark.parametrize(
    ("config", "hub", "naming"), list(RESULTS), ids=["-".join(k) for k in RESULTS]
)
def test_what_dockerd_pulls(world: World, config: str, hub: str, naming: str) -> None:
    apply(world, config, hub=hub)
    got = {}
    for tag in ("signed", "moved", "unsigned"):
        world.engine.remove_all_images()
        got[tag] = outcome(world, ref_for(world, naming, tag), tag)
    assert got == RESULTS[(config, hub, naming)]
    connects = world.relay.hub_connects()
    if naming == "hub" and hub == "reachable":
        # The upstream images came from "Docker Hub", by its real name.
        assert ("registry-1.docker.io:443", True) in connects, world.relay.connects
    if naming == "hub" and hub == "blocked":
        assert connects, world.relay.connects  # dockerd tried Hub after the proxy's 404
        assert not any(ok for _, ok in connects), world.relay.connects
    if naming in ("proxy", "registry"):
        assert connects == []


def test_mirror_fallback_after_the_proxys_404_is_seen_by_the_proxy(world: World) -> None:
    """The bypass really is dockerd's fallback: the proxy refused the tag (audit: denied),
    then dockerd asked Hub and pulled the unsigned image from there."""
    apply(world, "mirror", hub="reachable")
    r = pull(world, f"{world.short}:unsigned")
    assert r.ok, r.output
    world.proxy.wait_audit(
        lambda rec: (
            rec.get("repository") == world.bed.gun(world.short)
            and rec.get("reference") == "unsigned"
            and rec.get("outcome") == "denied"
        )
    )
    assert ("registry-1.docker.io:443", True) in world.relay.hub_connects()
    assert pulled_digest(world, f"{world.short}:unsigned") == world.upstream["unsigned"].digest


def test_mirror_with_hub_blocked_fails_with_hubs_error_not_the_proxys(world: World) -> None:
    apply(world, "mirror", hub="blocked")
    r = pull(world, f"{world.short}:unsigned")
    assert not r.ok
    # The last endpoint's error is what the CLI shows: Hub's, not the proxy's reason.
    assert "not signed" not in r.stderr.lower(), r.output
    assert "registry-1.docker.io" in r.stderr or "proxyconnect" in r.stderr.lower(), r.output


# -- doctor against each configuration ------------------------------------------------------


async def _no_direct_route(host: str, port: int, seconds: float) -> None:
    """The bed's network: nothing but loopback is reachable directly; dockerd's only way
    out is its egress proxy (so the verdict here does not depend on this machine's DNS)."""
    if host not in ("127.0.0.1", "localhost"):
        raise socket.gaierror(-2, "Name or service not known")
    await asyncio.open_connection(host, port)


def run_doctor(world: World, config: str, tmp_path: Path, *, with_dropin: bool) -> doctor.Report:
    """``trustproxy doctor`` on this host with the daemon.json the test applied and, as a
    systemd drop-in, the egress proxy dockerd runs with; the upstream it must not reach is
    Docker Hub by its real name (the default)."""
    root = tmp_path / f"root-{config}"
    (root / "etc/docker").mkdir(parents=True)
    (root / "etc/docker/daemon.json").write_text(json.dumps(CONFIGS[config](world.proxy)))
    if with_dropin:
        dropins = root / doctor.DOCKERD_DROPINS
        dropins.mkdir(parents=True)
        (dropins / "http-proxy.conf").write_text(
            f'[Service]\nEnvironment="HTTPS_PROXY={world.relay.url}" "NO_PROXY=127.0.0.1"\n'
        )
    options = doctor.Options(proxy=world.proxy.url, host_root=root, timeout=10)
    assert options.upstreams == ("https://registry-1.docker.io",)
    return asyncio.run(doctor.run_checks(options, tcp_connect=_no_direct_route))


@pytest.mark.parametrize(("config", "hub"), [("direct", "reachable"), ("mirror", "reachable"),
                                               ("mirror", "blocked")])  # fmt: skip
def test_doctor_verdict_matches_what_dockerd_did(
    world: World, config: str, hub: str, tmp_path: Path
) -> None:
    apply(world, config, hub=hub)
    # Did any way of naming an image give this host's dockerd an unsigned image?
    bypassed = any(
        U in (RESULTS[k]["moved"], RESULTS[k]["unsigned"])
        for k in RESULTS
        if k[0] == config and k[1] == hub
    )
    report = run_doctor(world, config, tmp_path, with_dropin=True)
    text = doctor.format_report(report)
    assert report.ok is (not bypassed), text
    via = [c for c in report.checks if c.name.endswith("via dockerd's egress proxy")]
    assert [c.status for c in via] == ["fail" if bypassed else "pass"], text
    docker_checks = [c for c in report.checks if c.name.endswith("daemon.json")]
    assert docker_checks, text
    if config == "mirror":
        # Never "enforcing": the mirror is flagged as falling back to Hub.
        mirror = [c for c in docker_checks if c.data.get("is_proxy")]
        assert mirror, text
        assert mirror[0].status == "warn", text
        assert "falls back to Docker Hub" in " ".join(mirror[0].details)
    assert not any(c.status == "pass" for c in docker_checks)


def test_doctor_without_dockerds_proxy_settings_sees_only_direct_egress(
    world: World, tmp_path: Path
) -> None:
    """Why doctor reads dockerd's drop-ins: from direct egress alone, Hub looks blocked
    while dockerd pulls the unsigned tag from it (the mirror-reachable row)."""
    apply(world, "mirror", hub="reachable")
    report = run_doctor(world, "mirror", tmp_path, with_dropin=False)
    assert report.ok, doctor.format_report(report)  # what doctor said before reading them
    assert RESULTS[("mirror", "reachable", "hub")]["unsigned"] == U


# -- docs/clients.md agrees ------------------------------------------------------------------


def test_docs_table_matches_the_observed_results(world: World) -> None:
    """docs/clients.md's dockerd table has one row per observed result, with the version."""
    text = CLIENTS_DOC.read_text(encoding="utf-8")
    version = world.engine.version().split("+")[0]
    assert f"**dockerd {version}**" in text, version
    for (config, hub, naming), per_tag in RESULTS.items():
        cells = [f"`{config}`", f"Hub {hub}", f"{naming} name"]
        cells += [per_tag[t] for t in ("signed", "moved", "unsigned")]
        enforced = U not in per_tag.values()
        cells.append("**yes**" if enforced else "**no**")
        row = "| " + " | ".join(cells) + " |"
        assert row in text, f"docs/clients.md lacks the row: {row}"
