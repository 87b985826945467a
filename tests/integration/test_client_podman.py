"""Real podman and skopeo pulling through a real ``proxy serve`` (docker-registry + notary),
once per documented registries.conf configuration: what does the client actually do?

    podman/skopeo --(registries.conf)--> trustproxy --> docker-registry (the upstream)
                  \\------------------------------------^  (a bypass: straight to the upstream)

The upstream registry itself serves the unsigned tag and the moved tag's unsigned image, so a
client that gets them went around the proxy. The upstream's own host name plays Docker Hub's
part (``docker.io`` in the recipes of docs/clients.md, which are applied verbatim with the
names substituted). Each client runs in a private mount namespace with the bed's
``/etc/containers`` and ``$HOME`` (testbed.clients.podman), and ``trustproxy doctor`` reads the
same files: its verdict must equal what the client did.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from proxy import doctor
from testbed import images
from testbed.clients import podman as clients
from testbed.clients.podman import ContainersHost
from testbed.enforcement_bed import (
    EnforcementBed,
    EnforcingProxy,
    proxy_config,
    rule,
    start_enforcing_proxy,
    upstream,
)
from testbed.notary_server import NotaryBed
from testbed.processes import Server, free_port
from testbed.proxy_server import start_proxy
from testbed.tls import CA
from tests.conftest import RegistryBed, requires

pytestmark = pytest.mark.integration

DOCS = Path(__file__).resolve().parents[2] / "docs" / "clients.md"
DOC_PROXY = "proxy.example.com:8443"


@dataclass
class World:
    bed: EnforcementBed
    proxy: EnforcingProxy
    tls_proxy: Server  # the same policy, over TLS from the session CA
    tls_ca: CA
    host: ContainersHost
    digests: dict[str, str] = field(default_factory=dict)  # signed/moved/moved-upstream/...
    children: dict[str, str] = field(default_factory=dict)  # arch -> config digest

    @property
    def upstream(self) -> str:
        return self.bed.registry_host

    def ref(self, tag: str) -> str:
        """The name clients pull: the upstream's (Docker Hub's part)."""
        return f"{self.upstream}/{self.bed.repo('app')}:{tag}"


@pytest.fixture(scope="module")
def world(
    registry: RegistryBed,
    notary_bed: NotaryBed,
    tls_ca: CA,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    requires("notary", "skopeo")
    reason = clients.install_podman() or clients.unavailable_reason()
    if reason is not None:
        pytest.skip(f"podman/skopeo client tests cannot run here: {reason}")
    workdir = tmp_path_factory.mktemp("client-podman")
    namespace = f"pod{uuid.uuid4().hex[:8]}"
    bed = EnforcementBed.create(workdir / "bed", registry.url, notary_bed, namespace=namespace)
    proxy: EnforcingProxy | None = None
    tls_proxy: Server | None = None
    try:
        d: dict[str, str] = {}
        signed = bed.push_and_sign("app", "signed", images.single_image(f"{namespace} signed"))
        d["signed"] = f"sha256:{signed.sha256}"
        moved = bed.push_and_sign("app", "moved", images.single_image(f"{namespace} moved"))
        d["moved"] = f"sha256:{moved.sha256}"
        d["moved-upstream"] = bed.push(
            "app", images.single_image(f"{namespace} moved unsigned"), "moved"
        )
        d["unsigned"] = bed.push("app", images.single_image(f"{namespace} unsigned"), "unsigned")
        index = images.multi_arch_image(f"{namespace} multi")
        bed.push_and_sign("app", "multi", index)
        d["multi"] = index.digest
        children = {
            arch: child.blobs[0].digest
            for arch, child in zip(("amd64", "arm64"), index.children, strict=True)
        }
        proxy = start_enforcing_proxy(
            workdir / "proxy",
            [upstream("upstream", registry.url)],
            notary_bed,
            {bed.pattern("**"): rule(root_keys=[bed.root_key_id])},
        )
        pair = tls_ca.issue_server(workdir / "tls", "proxy")
        config = proxy_config([upstream("upstream", registry.url)], notary_bed, proxy.policy_file)
        config["server"] = {"tls_cert_file": str(pair.cert), "tls_key_file": str(pair.key)}
        tls_proxy = start_proxy(workdir / "tls", config, name="trustproxy-tls")
        host = ContainersHost(workdir / "client-root")
        try:
            yield World(bed, proxy, tls_proxy, tls_ca, host, d, children)
        finally:
            host.close()
    finally:
        if tls_proxy is not None:
            tls_proxy.stop()
        if proxy is not None:
            proxy.stop()
        bed.close()


# -- the recipes: taken from docs/clients.md, names substituted ------------------------------


def doc_recipe(name: str) -> str:
    """The fenced block after ``<!-- recipe: NAME -->`` in docs/clients.md."""
    text = DOCS.read_text()
    found = re.search(
        rf"<!-- recipe: {re.escape(name)} -->\s*\n```\w*\n(.*?)\n```", text, re.DOTALL
    )
    if found is None:
        raise AssertionError(f"docs/clients.md has no recipe {name!r}")
    return found.group(1) + "\n"


def apply(recipe: str, world: World, *, plain_http: bool, proxy_host: str | None = None) -> str:
    """The doc's names -> the bed's: the proxy, and the upstream for ``docker.io`` (Docker
    Hub's part). The bed's servers speak plain HTTP: with ``plain_http``, every ``location``
    naming them gets ``insecure = true`` (what docs/clients.md says a plain-HTTP proxy
    needs); without it the recipe is applied exactly as written."""
    text = recipe.replace(DOC_PROXY, proxy_host or world.proxy.host)
    text = re.sub(r'"docker\.io"', f'"{world.upstream}"', text)
    if plain_http:
        names = "|".join(re.escape(h) for h in (world.proxy.host, world.upstream))
        text = re.sub(
            rf'^(\s*)(location = "(?:{names})[^"]*")\s*$',
            r"\1\2\n\1insecure = true",
            text,
            flags=re.MULTILINE,
        )
    return text


# -- what a client did -------------------------------------------------------------------------


@dataclass(frozen=True)
class Observed:
    signed: bool  # served at its signed digest
    moved: str  # "signed" (the proxy's answer), "upstream" (the re-push), "failed"
    unsigned: bool  # served (only the upstream serves it)
    errors: tuple[str, ...] = ()

    @property
    def route(self) -> str:
        """What the client did, in the doctor's words."""
        if not self.signed and self.moved == "failed" and not self.unsigned:
            return "fails"
        if self.moved == "upstream":
            return "direct"
        if self.moved == "signed" and self.unsigned:
            return "falls-back"
        if self.moved == "signed" and not self.unsigned:
            return "enforcing"
        raise AssertionError(f"no route explains {self}")


def podman_pulls(
    world: World, *extra: str, short: str | None = None, env: dict[str, str] | None = None
) -> Observed:
    host = world.host
    errors = []

    def pull(tag: str) -> str | None:
        ref = f"{short}:{tag}" if short else world.ref(tag)
        done = host.podman("pull", *extra, ref, env=env)
        if not done.ok:
            errors.append(f"{tag}: {done.error}")
            return None
        return host.pulled_digest(ref)

    signed = pull("signed")
    moved = pull("moved")
    unsigned = pull("unsigned")
    return Observed(
        signed=signed == world.digests["signed"],
        moved={world.digests["moved"]: "signed", world.digests["moved-upstream"]: "upstream"}.get(
            moved or "", "failed"
        ),
        unsigned=unsigned == world.digests["unsigned"],
        errors=tuple(errors),
    )


def skopeo_inspects(world: World, *extra: str) -> Observed:
    def digest(tag: str) -> str | None:
        done = world.host.skopeo("inspect", "--raw", *extra, f"docker://{world.ref(tag)}")
        return images.sha256(done.stdout.encode()) if done.ok else None

    moved = digest("moved")
    return Observed(
        signed=digest("signed") == world.digests["signed"],
        moved={world.digests["moved"]: "signed", world.digests["moved-upstream"]: "upstream"}.get(
            moved or "", "failed"
        ),
        unsigned=digest("unsigned") == world.digests["unsigned"],
    )


def doctor_route(world: World, proxy_url: str | None = None) -> tuple[str, str]:
    """(route, status) of the doctor's check for the upstream's prefix; "direct" when no
    entry covers it."""
    checks = doctor.client_config_checks(world.host.root, proxy_url or world.proxy.url)
    mine = [c for c in checks if c.data.get("prefix") == world.upstream and "route" in c.data]
    if not mine:
        assert not any(c.status == "pass" for c in checks), [c.summary for c in checks]
        return "direct", "none"
    (check,) = mine
    return str(check.data["route"]), check.status


# -- the configurations -------------------------------------------------------------------------

LOCATION = "etc/containers/registries.conf.d/50-trustproxy.conf"
MIRROR_51 = "etc/containers/registries.conf.d/51-mirror.conf"
MIRROR_49 = "etc/containers/registries.conf.d/49-mirror.conf"
USER_DROPIN = "root/.config/containers/registries.conf.d/10-mirror.conf"
USER_MAIN = "root/.config/containers/registries.conf"
USER_LOCATION = "root/.config/containers/registries.conf.d/50-trustproxy.conf"

# name -> (files: path -> "recipe:NAME" (plain-HTTP names made insecure), "verbatim:NAME"
# (exactly as in the docs), HUB or literal text; what the client must do)
HUB = "hub"  # the upstream reachable as Docker Hub is (it speaks plain HTTP here: insecure)
CONFIGS: dict[str, tuple[dict[str, str], str]] = {
    "debian-default": ({"etc/containers/registries.conf.d/00-hub.conf": HUB}, "direct"),
    "location-http": ({LOCATION: "verbatim:registries-location-http"}, "enforcing"),
    "location-without-insecure": ({LOCATION: "verbatim:registries-location"}, "fails"),
    "mirror": ({LOCATION: "recipe:registries-mirror"}, "falls-back"),
    "dropin-51-overrides-50": (
        {LOCATION: "recipe:registries-location", MIRROR_51: "recipe:registries-mirror"},
        "falls-back",
    ),
    "dropin-50-overrides-49": (
        {MIRROR_49: "recipe:registries-mirror", LOCATION: "recipe:registries-location"},
        "enforcing",
    ),
    "per-user-dropin-overrides-system": (
        {LOCATION: "recipe:registries-location", USER_DROPIN: "recipe:registries-mirror"},
        "falls-back",
    ),
    "per-user-main-hides-system": (
        {LOCATION: "recipe:registries-location", USER_MAIN: HUB},
        "direct",
    ),
    "per-user-location": ({USER_LOCATION: "recipe:registries-location"}, "enforcing"),
}


def configure(world: World, files: dict[str, str]) -> None:
    world.host.reset()
    for path, content in files.items():
        kind, _, name = content.partition(":")
        if kind in ("recipe", "verbatim") and name:
            content = apply(doc_recipe(name), world, plain_http=kind == "recipe")
        elif content == HUB:
            content = f'[[registry]]\nlocation = "{world.upstream}"\ninsecure = true\n'
        world.host.write(path, content)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_each_registries_conf_does_what_the_doctor_says(world: World, config: str) -> None:
    files, expected = CONFIGS[config]
    configure(world, files)
    started = time.monotonic()
    pulled = podman_pulls(world)
    inspected = skopeo_inspects(world)
    took = time.monotonic() - started
    assert pulled.route == expected, (pulled, world.proxy.server.log_tail(10))
    # skopeo reads the same files through the same library: the same route.
    assert inspected.route == expected, inspected
    route, status = doctor_route(world)
    assert route == expected, (route, status)
    assert status in ({"pass"} if expected == "enforcing" else {"warn", "info", "none"})
    assert took < 120  # a hang would show here, not a performance claim


def test_enforcing_location_pulls_every_image_class(world: World) -> None:
    configure(world, {LOCATION: "recipe:registries-location"})
    host = world.host
    refused = host.podman("pull", world.ref("unsigned"))
    assert not refused.ok
    assert "manifest unknown" in refused.stderr.lower(), refused.stderr
    # The proxy saw the refusal (the pull reached it, by its own name).
    gun = world.bed.gun("app")
    record = world.proxy.wait_audit(
        lambda r: r.get("repository") == gun and r.get("reference") == "unsigned"
    )
    assert "not signed" in str(record.get("reason", "")).lower(), record
    # Multi-arch: each platform of the signed index, from the proxy.
    for arch, config_digest in world.children.items():
        done = host.podman("pull", "--platform", f"linux/{arch}", world.ref("multi"))
        assert done.ok, done.stderr
        shown = host.podman(
            "image", "inspect", "--format", "{{.Id}} {{.Architecture}} {{.Digest}}",
            world.ref("multi"),
        )  # fmt: skip
        # The platform's image, reached through the signed index.
        assert shown.stdout.split() == [config_digest.split(":")[1], arch, world.digests["multi"]]
        host.podman("rmi", "--force", world.ref("multi"))
    # Blobs: skopeo copies every blob through the proxy; each file hashes to its name.
    out = host.root / "tmp" / "copy"
    done = host.skopeo("copy", f"docker://{world.ref('signed')}", f"dir:{out}")
    assert done.ok, done.stderr
    blobs = [p for p in out.iterdir() if re.fullmatch(r"[0-9a-f]{64}", p.name)]
    assert len(blobs) == 2  # config + layer
    for p in blobs:
        assert images.sha256(p.read_bytes()) == f"sha256:{p.name}"


def test_tls_proxy_recipe_verbatim_with_the_ca_enforces(world: World) -> None:
    """The production recipe, exactly as written (names substituted, no `insecure`), and the
    proxy's CA where the docs put it: /etc/containers/certs.d/<host:port>/ca.crt."""
    host = world.tls_proxy.extra["host"]
    world.host.reset()
    recipe = apply(doc_recipe("registries-location"), world, plain_http=False, proxy_host=host)
    world.host.write(LOCATION, recipe)
    world.host.write(f"etc/containers/certs.d/{host}/ca.crt", world.tls_ca.cert.read_text())
    assert podman_pulls(world).route == "enforcing"
    assert skopeo_inspects(world).route == "enforcing"
    assert doctor_route(world, world.tls_proxy.extra["url"]) == ("enforcing", "pass")
    # Without the CA: TLS fails, every pull fails (closed).
    (world.host.etc / "certs.d" / host / "ca.crt").unlink()
    assert podman_pulls(world).route == "fails"


def test_unsigned_image_by_digest_is_served_under_digests_allow(world: World) -> None:
    """docs/clients.md: under the default `digests: allow` a pull by digest is not checked."""
    configure(world, {LOCATION: "recipe:registries-location"})
    ref = f"{world.upstream}/{world.bed.repo('app')}@{world.digests['unsigned']}"
    done = world.host.podman("pull", ref)
    assert done.ok, done.stderr
    assert world.host.pulled_digest(ref) == world.digests["unsigned"]


def test_plain_http_proxy_works_with_tls_verify_false(world: World) -> None:
    """Without `insecure = true` every pull fails; --tls-verify=false on the command line
    makes the same file enforce (tests only)."""
    configure(world, {LOCATION: "verbatim:registries-location"})
    assert podman_pulls(world).route == "fails"
    assert podman_pulls(world, "--tls-verify=false").route == "enforcing"
    assert skopeo_inspects(world, "--tls-verify=false").route == "enforcing"


def test_list_tags_and_plain_inspect_go_to_the_named_registry(world: World) -> None:
    """containers/image lists tags from the registry the name names, never from a
    registries.conf location or mirror: `skopeo list-tags` and plain `skopeo inspect` (it
    lists tags for RepoTags) go around the proxy. The proxy's own name lists signed tags."""
    configure(world, {LOCATION: "recipe:registries-location"})
    listed = world.host.skopeo("list-tags", f"docker://{world.upstream}/{world.bed.repo('app')}")
    assert listed.ok, listed.stderr
    assert "unsigned" in listed.stdout  # only the upstream shows it: the proxy hides it
    inspected = world.host.skopeo("inspect", f"docker://{world.ref('signed')}")
    assert inspected.ok, inspected.stderr
    assert '"unsigned"' in inspected.stdout  # RepoTags came from the upstream
    through_proxy = world.host.skopeo(
        "list-tags", "--tls-verify=false", f"docker://{world.proxy.host}/{world.bed.repo('app')}"
    )
    assert through_proxy.ok, through_proxy.stderr
    assert '"unsigned"' not in through_proxy.stdout
    assert '"signed"' in through_proxy.stdout
    assert '"multi"' in through_proxy.stdout


def test_with_the_upstream_unreachable_plain_inspect_fails_and_no_tags_works(
    world: World,
) -> None:
    """Egress to the upstream blocked (here: a name whose port nothing listens on): pulls
    through the `location` still work, but plain `skopeo inspect` needs the upstream's tag
    list and fails; `--no-tags` skips it."""
    blocked = f"127.0.0.1:{free_port()}"
    world.host.reset()
    world.host.write(
        LOCATION,
        f'[[registry]]\nprefix = "{blocked}"\nlocation = "{world.proxy.host}"\ninsecure = true\n',
    )
    ref = f"docker://{blocked}/{world.bed.repo('app')}:signed"
    pulled = world.host.podman("pull", ref.removeprefix("docker://"))
    assert pulled.ok, pulled.stderr
    plain = world.host.skopeo("inspect", ref)
    assert not plain.ok
    assert "determining repository tags" in plain.stderr, plain.stderr
    assert blocked in plain.stderr, plain.stderr
    no_tags = world.host.skopeo("inspect", "--no-tags", ref)
    assert no_tags.ok, no_tags.stderr
    assert world.digests["signed"] in no_tags.stdout


def test_containers_registries_conf_env_replaces_only_the_main_file(world: World) -> None:
    """CONTAINERS_REGISTRIES_CONF names another main file; the drop-in folders are still
    read after it, so a later mirror drop-in still overrides the proxy's entry."""
    configure(world, {MIRROR_51: "recipe:registries-mirror"})
    main = world.host.write(
        "tmp/registries.conf", apply(doc_recipe("registries-location"), world, plain_http=True)
    )
    env = {"CONTAINERS_REGISTRIES_CONF": str(main)}
    assert podman_pulls(world, env=env).route == "falls-back"  # 51-mirror.conf won
    (world.host.etc / "registries.conf.d" / "51-mirror.conf").unlink()
    assert podman_pulls(world, env=env).route == "enforcing"


def test_short_names_fail_closed_on_debian_default_and_follow_aliases(world: World) -> None:
    configure(world, {LOCATION: "recipe:registries-location"})
    done = world.host.podman("pull", "app:signed")
    assert not done.ok
    assert "no unqualified-search registries are defined" in done.stderr, done.stderr
    # An alias (as Debian's shortnames.conf has for alpine -> docker.io/library/alpine) lands
    # on the full name, and so on the proxy.
    alias = f'[aliases]\n"podapp" = "{world.upstream}/{world.bed.repo("app")}"\n'
    world.host.write("etc/containers/registries.conf.d/shortnames.conf", alias)
    assert podman_pulls(world, short="podapp").route == "enforcing"


def test_client_versions_are_known(world: World) -> None:
    found = clients.versions()
    assert set(found) == {"podman", "skopeo"}
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", v) for v in found.values()), found
