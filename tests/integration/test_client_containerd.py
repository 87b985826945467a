"""A real containerd pulling with ``ctr`` through a real ``trustproxy serve`` in front of the real
registry + notary: each ``hosts.toml`` recipe of docs/clients.md, applied verbatim, and what
containerd actually does with it (enforced, or bypassed to the upstream registry).

    ctr --hosts-dir D image pull 127.0.0.1:<registry>/<ns>/ctd/app:<tag>
        D/127.0.0.1:<registry>/hosts.toml  (a recipe: proxy as server and/or [host])
            --> trustproxy (plain HTTP, TLS, or mTLS) --> docker-registry + notary
            --> or straight to docker-registry (containerd's default host for the namespace)

The ``hosts.toml`` folder is the upstream registry's own name, as ``docker.io`` is in the
docs: the "default host" containerd falls back to is the real registry, which serves the
unsigned tags. The unsigned tag pulled, or the re-pushed tag at its unsigned digest, is a
bypass. ``ctr --debug`` shows every URL it requested, so each case also asserts which hosts
served it. Then ``trustproxy doctor`` reads the same file under a host root and must give
the verdict containerd's behaviour did.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from proxy import doctor
from testbed import images
from testbed.clients.containerd import Containerd, ContainerdUnavailable, start_containerd
from testbed.enforcement_bed import (
    EnforcementBed,
    EnforcingProxy,
    proxy_config,
    rule,
    upstream,
    write_policy,
)
from testbed.notary_server import NotaryBed
from testbed.proxy_server import REPO_ROOT, start_proxy
from testbed.tls import CA, CertPair
from tests.conftest import RegistryBed, requires

pytestmark = pytest.mark.integration

DOC = REPO_ROOT / "docs" / "clients.md"
APP = "ctd/app"
# The example names in docs/clients.md, replaced by this bed's when a recipe is applied.
DOC_TLS_PROXY = "https://proxy.example.com:8443"
DOC_HTTP_PROXY = "http://proxy.example.com:8080"
DOC_UPSTREAM = "https://registry-1.docker.io"
DOC_FOLDER = "/etc/containerd/certs.d/docker.io/"
#: which proxy each recipe is pointed at (default: TLS with a CA)
RECIPE_PROXY = {"enforcing-mtls": "mtls", "enforcing-http": "http"}
# The recipes docs/clients.md must have, and the version its table was written from.
RECIPES = ("enforcing", "enforcing-mtls", "enforcing-http", "server-only", "host-only", "mirror")
DOC_TESTED_VERSION = (1, 6)

_RECIPE_RE = re.compile(r"<!-- containerd-recipe: ([a-z-]+) -->\n```toml\n(.*?)```", re.S)
_ROW_RE = re.compile(r"^\| `([a-z-]+)` \| \*\*(yes|no)\*\* \|", re.M)


def doc_recipes() -> dict[str, str]:
    return dict(_RECIPE_RE.findall(DOC.read_text()))


def doc_claims() -> dict[str, bool]:
    """``recipe -> enforces?`` from the table in docs/clients.md's containerd section."""
    return {name: answer == "yes" for name, answer in _ROW_RE.findall(DOC.read_text())}


@dataclass
class World:
    bed: EnforcementBed
    containerd: Containerd
    proxies: dict[str, EnforcingProxy]
    workdir: Path
    ca: CA
    client_pair: CertPair
    digests: dict[str, str] = field(default_factory=dict)  # signed / moved-unsigned / ...
    children: dict[str, str] = field(default_factory=dict)  # platform -> child digest
    observed: dict[str, Observation] = field(default_factory=dict)

    @property
    def upstream_host(self) -> str:
        return self.bed.registry_host

    def ref(self, tag: str) -> str:
        return f"{self.upstream_host}/{self.bed.repo(APP)}:{tag}"


@dataclass
class Pull:
    ok: bool
    digest: str | None  # the image's target digest as containerd recorded it
    hosts: list[str]  # scheme://host of every request ctr made, in order
    error: str
    blobs: set[str] = field(default_factory=set)
    decode_errors: list[str] = field(default_factory=list)  # containerd's hosts.toml errors


@dataclass
class Observation:
    recipe: str
    hosts_toml: str
    pulls: dict[str, Pull]

    def proxy_only(self, proxy_url: str) -> bool:
        return all(h == proxy_url for p in self.pulls.values() for h in p.hosts)


def _apply(
    world: World, recipe: str, text: str, proxy_kind: str | None = None
) -> tuple[Path, str, str]:
    """Write ``recipe`` (docs/clients.md's text, example names replaced) as the upstream's
    hosts.toml in a hosts dir of its own; (hosts dir, the text written, the proxy's URL)."""
    kind = proxy_kind or RECIPE_PROXY.get(recipe, "tls")
    proxy = world.proxies[kind]
    hosts_dir = world.workdir / "hosts" / f"{recipe}-{kind}"
    folder = hosts_dir / world.upstream_host
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(world.ca.cert, folder / "proxy-ca.crt")  # `sudo cp ca.crt .../proxy-ca.crt`
    shutil.copy(world.client_pair.cert, folder / "node.crt")
    shutil.copy(world.client_pair.key, folder / "node.key")
    applied = (
        text.replace(DOC_TLS_PROXY, proxy.url)
        .replace(DOC_HTTP_PROXY, proxy.url)
        .replace(DOC_UPSTREAM, world.bed.registry_url)
        .replace(DOC_FOLDER, f"{folder}/")
    )
    assert "example.com" not in applied, applied
    assert "/etc/" not in applied, applied
    (folder / "hosts.toml").write_text(applied)
    return hosts_dir, applied, proxy.url


def _pull(world: World, hosts_dir: Path, tag: str, platform: str | None = None) -> Pull:
    namespace = f"t{uuid.uuid4().hex[:12]}"  # fresh content store: every blob is fetched
    ref = world.ref(tag)
    result = world.containerd.pull(ref, namespace=namespace, platform=platform, hosts_dir=hosts_dir)
    digest = world.containerd.image_digest(ref, namespace=namespace) if result.ok else None
    blobs = world.containerd.content_digests(namespace=namespace) if result.ok else set()
    world.containerd.ctr("image", "rm", ref, namespace=namespace)
    decode_errors = [ln for ln in result.stderr.splitlines() if "failed to decode" in ln]
    return Pull(result.ok, digest, result.hosts_tried(), result.error, blobs, decode_errors)


def observe(world: World, recipe: str) -> Observation:
    """Apply ``recipe`` and pull every kind of tag through it (once per module)."""
    if recipe not in world.observed:
        text = doc_recipes()[recipe]
        hosts_dir, applied, _ = _apply(world, recipe, text)
        pulls = {
            "signed": _pull(world, hosts_dir, "v1"),
            "moved": _pull(world, hosts_dir, "moved"),
            "unsigned": _pull(world, hosts_dir, "unsigned"),
            "multi-amd64": _pull(world, hosts_dir, "multi", "linux/amd64"),
            "multi-arm64": _pull(world, hosts_dir, "multi", "linux/arm64"),
        }
        world.observed[recipe] = Observation(recipe, applied, pulls)
    return world.observed[recipe]


def verdict(world: World, obs: Observation) -> str:
    """ "enforced": nothing unsigned came through; "bypassed": the upstream served it."""
    moved, unsigned = obs.pulls["moved"], obs.pulls["unsigned"]
    if unsigned.ok or moved.digest == world.digests["moved-unsigned"]:
        return "bypassed"
    return "enforced"


@pytest.fixture(scope="module")
def world(
    registry: RegistryBed,
    notary_bed: NotaryBed,
    tls_ca: CA,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    requires("notary")
    workdir = tmp_path_factory.mktemp("containerd")
    try:
        containerd = start_containerd(workdir / "containerd")
    except ContainerdUnavailable as e:
        pytest.skip(f"containerd cannot run here: {e}")
    namespace = f"ctd{uuid.uuid4().hex[:8]}"
    bed = EnforcementBed.create(workdir / "bed", registry.url, notary_bed, namespace=namespace)
    proxies: dict[str, EnforcingProxy] = {}
    try:
        digests: dict[str, str] = {}
        signed = bed.push_and_sign(APP, "v1", images.single_image(f"{namespace} v1"))
        digests["signed"] = f"sha256:{signed.sha256}"
        moved = bed.push_and_sign(APP, "moved", images.single_image(f"{namespace} moved signed"))
        digests["moved-signed"] = f"sha256:{moved.sha256}"
        # The tag moves upstream to an unsigned image; the signature does not.
        digests["moved-unsigned"] = bed.push(
            APP, images.single_image(f"{namespace} moved unsigned"), "moved"
        )
        digests["unsigned"] = bed.push(
            APP, images.single_image(f"{namespace} unsigned"), "unsigned"
        )
        index = images.multi_arch_image(f"{namespace} multi")
        digests["multi"] = f"sha256:{bed.push_and_sign(APP, 'multi', index).sha256}"
        children = {
            f"linux/{arch}": child.digest
            for arch, child in zip(("amd64", "arm64"), index.children, strict=True)
        }
        policy = write_policy(
            workdir / "policy.yaml", {bed.pattern("ctd/**"): rule(root_keys=[bed.root_key_id])}
        )
        certs = workdir / "certs"
        server_pair = tls_ca.issue_server(certs, "proxy")
        client_pair = tls_ca.issue_client(certs, "node", "node-1")
        tls = {"tls_cert_file": str(server_pair.cert), "tls_key_file": str(server_pair.key)}
        servers: dict[str, dict[str, Any]] = {
            "http": {},
            "tls": tls,
            "mtls": {**tls, "client_auth": {"client_ca_file": str(tls_ca.cert)}},
        }
        for kind, server in servers.items():
            audit = workdir / f"audit-{kind}.jsonl"
            config = proxy_config(
                [upstream("internal", registry.url)], notary_bed, policy, audit_file=audit
            )
            config["server"] = server
            proxies[kind] = EnforcingProxy(
                start_proxy(workdir / kind, config, name=f"trustproxy-{kind}"), policy, audit
            )
        yield World(bed, containerd, proxies, workdir, tls_ca, client_pair, digests, children)
    finally:
        for p in proxies.values():
            p.stop()
        containerd.stop()
        bed.close()


def test_docs_have_every_recipe_and_a_claim_for_each() -> None:
    recipes, claims = doc_recipes(), doc_claims()
    assert sorted(recipes) == sorted(RECIPES)
    assert sorted(claims) == sorted(RECIPES)
    version = ".".join(map(str, DOC_TESTED_VERSION))
    assert f"Tested with containerd {version}" in DOC.read_text()


def test_config_path_recipe_is_what_containerd_runs_with(world: World) -> None:
    """docs/clients.md's config.toml lines for containerd 1.x are in the config the test
    containerd runs with, and containerd reads config_path from them."""
    found = re.search(r"<!-- containerd-config: 1.x -->\n```toml\n(.*?)```", DOC.read_text(), re.S)
    assert found is not None
    hosts_dir = str(world.containerd.hosts_dir)
    lines = [ln for ln in found[1].splitlines() if ln and not ln.startswith("#")]
    snippet = "\n".join(lines).replace("/etc/containerd/certs.d", hosts_dir)
    config = world.containerd.directory / "config.toml"
    assert snippet in config.read_text()
    dump = subprocess.run(
        ["containerd", "--config", str(config), "config", "dump"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert f'config_path = "{hosts_dir}"' in dump.stdout
    assert 'snapshotter = "native"' in dump.stdout


@pytest.mark.parametrize("recipe", ["enforcing", "enforcing-mtls", "enforcing-http"])
def test_enforcing_recipe(world: World, recipe: str) -> None:
    obs = observe(world, recipe)
    proxy_url = world.proxies[RECIPE_PROXY.get(recipe, "tls")].url
    p = obs.pulls
    assert p["signed"].ok, p["signed"]
    assert p["signed"].digest == world.digests["signed"]
    # The tag re-pushed upstream is served at the digest the signature names.
    assert p["moved"].ok, p["moved"]
    assert p["moved"].digest == world.digests["moved-signed"]
    # Refused: containerd reports only "not found" (the proxy's reason is in the audit log).
    assert not p["unsigned"].ok
    error = p["unsigned"].error
    assert error.startswith("ctr: failed to resolve reference"), error
    assert error.endswith("not found"), error
    assert "not signed by" not in error, error  # the reason stops at the proxy
    for platform in ("linux/amd64", "linux/arm64"):
        pull = p[f"multi-{platform.split('/')[1]}"]
        assert pull.ok, pull
        assert pull.digest == world.digests["multi"]
        # The platform's manifest and its blobs came through the proxy, hash-checked.
        assert world.children[platform] in pull.blobs, (platform, pull.blobs)
        assert len(pull.blobs) == 4, pull.blobs  # index, manifest, config, layer
    assert obs.proxy_only(proxy_url), {k: v.hosts for k, v in p.items()}
    assert not any(pull.decode_errors for pull in p.values())
    assert verdict(world, obs) == "enforced"
    proxy = world.proxies[RECIPE_PROXY.get(recipe, "tls")]
    # ... with the reason, which containerd does not show.
    denied = proxy.wait_audit(lambda r: r.get("reference") == "unsigned")
    assert denied["outcome"] == "denied", denied
    assert "not signed" in denied["reason"], denied


def test_unsigned_image_by_digest_is_served_under_digests_allow(world: World) -> None:
    """The guide says so: the default `digests: allow` serves an unsigned image by digest."""
    hosts_dir, _, proxy_url = _apply(world, "enforcing", doc_recipes()["enforcing"])
    namespace = f"t{uuid.uuid4().hex[:12]}"
    ref = f"{world.upstream_host}/{world.bed.repo(APP)}@{world.digests['unsigned']}"
    result = world.containerd.pull(ref, namespace=namespace, hosts_dir=hosts_dir)
    assert result.ok, result.stderr[-2000:]
    assert result.hosts_tried() == [proxy_url]


def test_enforcing_recipe_without_client_certificate_pulls_nothing(world: World) -> None:
    """The TLS recipe (no `client`) against the mTLS proxy: the handshake fails, and there is
    no fallback to the upstream either."""
    hosts_dir, _, proxy_url = _apply(world, "enforcing", doc_recipes()["enforcing"], "mtls")
    for tag in ("v1", "unsigned"):
        namespace = f"t{uuid.uuid4().hex[:12]}"
        result = world.containerd.pull(world.ref(tag), namespace=namespace, hosts_dir=hosts_dir)
        assert not result.ok, result.stderr[-2000:]
        assert result.hosts_tried() == [proxy_url], result.hosts_tried()


@pytest.mark.parametrize("recipe", ["server-only", "host-only", "mirror"])
def test_recipe_that_does_not_enforce(world: World, recipe: str) -> None:
    obs = observe(world, recipe)
    proxy_url = world.proxies["tls"].url
    upstream_url = world.bed.registry_url
    p = obs.pulls
    version = world.containerd.parsed_version
    if recipe == "server-only" and version >= doctor.CONTAINERD_NO_HOST_TABLE_FIXED:
        # Fixed containerd reads the file: then it enforces like the full recipe.
        assert verdict(world, obs) == "enforced"
        return
    assert verdict(world, obs) == "bypassed"
    # The unsigned tag comes from the upstream itself.
    assert p["unsigned"].ok, p["unsigned"]
    assert p["unsigned"].digest == world.digests["unsigned"]
    assert upstream_url in p["unsigned"].hosts, p["unsigned"].hosts
    if recipe == "server-only":
        # Finding 1: the file is ignored, the proxy is never asked: the moved tag is pulled
        # at its unsigned image too. Only the client's debug log says why.
        assert p["moved"].digest == world.digests["moved-unsigned"], p["moved"]
        assert "invalid `host` tree" in p["unsigned"].decode_errors[0], p["unsigned"]
        assert all(pull.hosts == [upstream_url] for pull in p.values()), {
            k: v.hosts for k, v in p.items()
        }
    else:
        # Finding 2 (host-only) and the mirror: the proxy first, the upstream after its 404.
        # (The manifest and blobs are then fetched by digest, the proxy first again: under
        # `digests: allow` the proxy serves them, so the last hosts may be the proxy.)
        assert p["unsigned"].hosts[:2] == [proxy_url, upstream_url], p["unsigned"].hosts
        assert p["signed"].hosts == [proxy_url], p["signed"].hosts
        # The proxy answers the moved tag (200, signed digest): no fallback for it.
        assert p["moved"].digest == world.digests["moved-signed"], p["moved"]
        assert p["moved"].hosts == [proxy_url], p["moved"].hosts


@pytest.mark.parametrize("recipe", RECIPES)
def test_docs_table_says_what_containerd_did(world: World, recipe: str) -> None:
    if world.containerd.parsed_version[:2] != DOC_TESTED_VERSION:
        pytest.skip(f"docs/clients.md's table is for containerd {DOC_TESTED_VERSION}")
    obs = observe(world, recipe)
    assert doc_claims()[recipe] == (verdict(world, obs) == "enforced")


@pytest.mark.parametrize("recipe", RECIPES)
def test_doctor_verdict_matches_containerd(world: World, recipe: str, tmp_path: Path) -> None:
    """``trustproxy doctor`` reads the same hosts.toml under a host root (with this node's
    containerd binary in it) and must say "enforcing" exactly when containerd enforced."""
    obs = observe(world, recipe)
    proxy = world.proxies[RECIPE_PROXY.get(recipe, "tls")]
    root = tmp_path / "node"
    folder = root / "etc/containerd/certs.d" / world.upstream_host
    folder.mkdir(parents=True)
    (folder / "hosts.toml").write_text(obs.hosts_toml)
    (root / "usr/bin").mkdir(parents=True)
    found = shutil.which("containerd")
    assert found is not None
    (root / "usr/bin/containerd").symlink_to(found)
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "doctor", "--json", "--timeout", "3",
         "--proxy", proxy.url, "--ca-file", str(world.ca.cert),
         "--upstream", world.bed.registry_url, "--host-root", str(root)],
        capture_output=True, timeout=60, check=False, cwd=REPO_ROOT,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr.decode()
    report = json.loads(done.stdout)
    (check,) = [
        c for c in report["checks"] if c["group"] == "client-config" and "hosts.toml" in c["name"]
    ]
    enforced = verdict(world, obs) == "enforced"
    assert check["data"]["enforcing"] is enforced, check
    assert check["status"] == ("pass" if enforced else "warn"), check
    assert check["data"]["containerd_version"] == ".".join(
        map(str, world.containerd.parsed_version)
    )
