"""proxy.upstream.redirects: where a followed redirect (and a token realm) may lead (pure)."""

from __future__ import annotations

import httpx
import pytest

from proxy.errors import UpstreamContentError, UpstreamUnavailableError
from proxy.upstream.redirects import (
    DOCKER_HUB_STORAGE,
    HostPattern,
    RedirectPolicy,
    RedirectRefusedError,
    address_kind,
    default_redirect_hosts,
    display_host,
    host_kind,
    resolve_location,
)

UPSTREAM = "https://registry.example"
SOURCE = httpx.URL(f"{UPSTREAM}/v2/team/app/blobs/sha256:abc")
POLICY = RedirectPolicy.build(
    UPSTREAM,
    ["cdn.example", "*.storage.example", "*:9999", "10.0.0.5:9000", "[fd00::7]", "minio.corp"],
)

# (id, target, allowed, reason fragment or "" / "vet" when allowed only after a DNS check)
CASES: list[tuple[str, str, bool, str]] = [
    ("same-origin-path", f"{UPSTREAM}/other/path?x=1", True, ""),
    ("same-origin-explicit-port", "https://registry.example:443/x", True, ""),
    ("same-host-other-port", "https://registry.example:8443/x", False, "not in redirect_hosts"),
    ("same-host-other-scheme", "http://registry.example/x", False, "downgrade"),
    ("listed-exact", "https://cdn.example/blob?sig=1", True, ""),
    ("listed-exact-case", "https://CDN.Example./blob", True, ""),
    ("listed-exact-wrong-port", "https://cdn.example:8443/blob", False, "not in redirect_hosts"),
    ("listed-wildcard", "https://eu.storage.example/b", True, "vet"),
    ("listed-wildcard-deep", "https://a.b.storage.example/b", True, "vet"),
    ("wildcard-not-apex", "https://storage.example/b", False, "not in redirect_hosts"),
    ("wildcard-suffix-trick", "https://evilstorage.example/b", False, "not in redirect_hosts"),
    ("wildcard-as-subdomain-trick", "https://storage.example.evil.test/b", False,
     "not in redirect_hosts"),
    ("unlisted", "https://evil.example/x", False, "not in redirect_hosts"),
    ("star-port-public-name", "https://anything.example:9999/x", True, "vet"),
    ("star-port-public-ip", "https://93.184.216.34:9999/x", True, ""),
    ("star-port-loopback", "https://127.0.0.1:9999/x", False, "loopback"),
    ("star-port-loopback-decimal", "https://2130706433:9999/x", False, "loopback"),
    ("star-port-loopback-short", "https://127.1:9999/x", False, "loopback"),
    ("star-port-loopback-hex", "https://0x7f.0.0.1:9999/x", False, "loopback"),
    ("star-port-loopback-octal", "https://0177.0.1:9999/x", False, "loopback"),
    ("star-port-localhost", "https://localhost:9999/x", False, "localhost"),
    ("star-port-localhost-dot", "https://LOCALHOST.:9999/x", False, "localhost"),
    ("star-port-sub-localhost", "https://evil.localhost:9999/x", False, "localhost"),
    ("star-port-v6-loopback", "https://[::1]:9999/x", False, "loopback"),
    ("star-port-v4-mapped", "https://[::ffff:127.0.0.1]:9999/x", False, "loopback"),
    ("star-port-nat64-private", "https://[64:ff9b::a00:1]:9999/x", False, "private"),
    ("star-port-metadata", "https://169.254.169.254:9999/x", False, "link-local"),
    ("star-port-metadata-v6", "https://[fd00:ec2::254]:9999/x", False, "cloud metadata"),
    ("star-port-alibaba-metadata", "https://100.100.100.200:9999/x", False, "cloud metadata"),
    ("star-port-private", "https://192.168.1.1:9999/x", False, "private"),
    ("star-port-cgnat", "https://100.64.0.1:9999/x", False, "not globally routable"),
    ("star-port-unspecified", "https://0.0.0.0:9999/x", False, "unspecified"),
    ("star-port-multicast", "https://224.0.0.1:9999/x", False, "multicast"),
    ("star-port-link-local-v6", "https://[fe80::1%25eth0]:9999/x", False, "link-local"),
    ("exact-private-ip", "https://10.0.0.5:9000/x", True, ""),
    ("exact-private-ip-other-port", "https://10.0.0.5:9001/x", False, "not in redirect_hosts"),
    ("exact-v6", "https://[fd00::7]/x", True, ""),
    ("exact-name-no-dns-check", "https://minio.corp/x", True, ""),
    ("metadata-default-port", "http://169.254.169.254/latest/meta-data/", False, "downgrade"),
    ("file", "file:///etc/passwd", False, "scheme 'file'"),
    ("gopher", "gopher://127.0.0.1:6379/_INFO", False, "scheme 'gopher'"),
    ("ftp", "ftp://cdn.example/x", False, "scheme 'ftp'"),
    ("userinfo", "https://user:pw@cdn.example/x", False, "credentials"),
    ("downgrade-to-listed", "http://cdn.example/x", False, "downgrade"),
]  # fmt: skip


@pytest.mark.parametrize(("target", "allowed", "fragment"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_redirect_policy(target: str, allowed: bool, fragment: str) -> None:
    verdict = POLICY.check(SOURCE, httpx.URL(target))
    assert verdict.allowed is allowed, verdict
    if allowed:
        assert verdict.vet_addresses is (fragment == "vet")
    else:
        assert fragment in verdict.reason


def test_dotted_quads_httpx_cannot_read_never_get_here() -> None:
    # httpx refuses "0177.0.0.1" (a dotted quad with an octal part) as a URL host, so such
    # a Location fails in httpx (a 502) before any policy runs; shorter forms reach us.
    with pytest.raises(httpx.InvalidURL):
        httpx.URL("https://0177.0.0.1/x")


def test_downgrade_only_when_configured_and_only_from_https() -> None:
    insecure = RedirectPolicy.build(UPSTREAM, ["cdn.example"], allow_http_downgrade=True)
    assert insecure.check(SOURCE, httpx.URL("http://cdn.example/x")).allowed
    plain = RedirectPolicy.build("http://127.0.0.1:5000", ["cdn.example"])
    http_source = httpx.URL("http://127.0.0.1:5000/v2/a/blobs/x")
    # A plain http registry redirecting to plain http storage downgrades nothing.
    assert plain.check(http_source, httpx.URL("http://cdn.example/x")).allowed
    # Its own origin (loopback) is always allowed: the operator configured it.
    assert plain.check(http_source, httpx.URL("http://127.0.0.1:5000/v2/other")).allowed
    assert not plain.check(http_source, httpx.URL("http://127.0.0.1:5001/v2/other")).allowed


def test_no_patterns_means_same_origin_only() -> None:
    closed = RedirectPolicy.build(UPSTREAM, [])
    assert closed.check(SOURCE, httpx.URL(f"{UPSTREAM}/elsewhere")).allowed
    assert not closed.check(SOURCE, httpx.URL("https://cdn.example/x")).allowed


def test_star_allows_public_hosts_on_default_ports_only() -> None:
    anywhere = RedirectPolicy.build(UPSTREAM, ["*"])
    verdict = anywhere.check(SOURCE, httpx.URL("https://s3.eu-west-1.amazonaws.com/b"))
    assert verdict.allowed
    assert verdict.vet_addresses
    assert not anywhere.check(SOURCE, httpx.URL("https://s3.amazonaws.com:8443/b")).allowed
    assert not anywhere.check(SOURCE, httpx.URL("https://127.0.0.1/b")).allowed
    assert not anywhere.check(SOURCE, httpx.URL("https://localhost/b")).allowed


# (id, realm, allowed, fragment or "vet")
REALMS: list[tuple[str, str, bool, str]] = [
    ("same-host-other-port", "https://registry.example:5001/token", True, ""),
    ("public-name", "https://auth.docker.io/token", True, "vet"),
    ("exact-listed-private", "https://10.0.0.5:9000/token", True, ""),
    ("exact-listed-name", "https://minio.corp/token", True, ""),
    ("metadata", "https://169.254.169.254/latest/meta-data/", False, "link-local"),
    ("localhost", "https://localhost:8080/token", False, "localhost"),
    ("loopback", "https://127.0.0.1:8080/token", False, "loopback"),
    ("private-literal", "https://10.9.9.9/token", False, "private"),
    ("http-for-https-registry", "http://auth.example/token", False, "plain http"),
    ("file", "file:///etc/passwd", False, "scheme"),
    ("userinfo", "https://u:p@auth.example/token", False, "credentials"),
]  # fmt: skip


@pytest.mark.parametrize(("realm", "allowed", "fragment"), [c[1:] for c in REALMS],
                         ids=[c[0] for c in REALMS])  # fmt: skip
def test_realm_policy(realm: str, allowed: bool, fragment: str) -> None:
    verdict = POLICY.check_realm(httpx.URL(realm))
    assert verdict.allowed is allowed, verdict
    if allowed:
        assert verdict.vet_addresses is (fragment == "vet")
    else:
        assert fragment in verdict.reason


def test_realm_on_the_loopback_registrys_own_host() -> None:
    # The test bed's registry and token server both live on 127.0.0.1 (other ports).
    local = RedirectPolicy.build("http://127.0.0.1:5000", [])
    assert local.check_realm(httpx.URL("http://127.0.0.1:5001/token")).allowed
    assert not local.check_realm(httpx.URL("http://localhost:5001/token")).allowed


@pytest.mark.parametrize(
    ("text", "host", "port", "kind"),
    [
        ("cdn.example", "cdn.example", None, "exact"),
        (" CDN.Example.:8443 ", "cdn.example", 8443, "exact"),
        ("*.example.com", "example.com", None, "subdomains"),
        ("*.example.com:9000", "example.com", 9000, "subdomains"),
        ("*", "", None, "any"),
        ("*:9999", "", 9999, "any"),
        ("10.0.0.5", "10.0.0.5", None, "exact"),
        ("127.1", "127.0.0.1", None, "exact"),
        ("[FD00::1]:9000", "fd00::1", 9000, "exact"),
    ],
)
def test_host_pattern_parse(text: str, host: str, port: int | None, kind: str) -> None:
    assert HostPattern.parse(text) == HostPattern(host, port, kind)


@pytest.mark.parametrize(
    "text",
    ["", "https://cdn.example", "cdn.example/path", "u@cdn.example", "a b", "cdn.*.example",
     "*.", "**.example", "*.exa*mple", "host:0", "host:port", "fd00::1", "[fd00::1",
     "[fd00::1]x", "[nope]", "-bad-.example", "a..b"],
)  # fmt: skip
def test_host_pattern_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        HostPattern.parse(text)


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("93.184.216.34", None),
        ("2606:4700::1", None),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("fd00:ec2::254", "cloud metadata"),
        ("10.1.2.3", "private"),
        ("fc00::1", "private"),
        ("::ffff:10.0.0.1", "private"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("ff02::1", "multicast"),
        ("100.64.1.1", "not globally routable"),
        ("not an address", "not an IP address"),
    ],
)
def test_address_kind(address: str, kind: str | None) -> None:
    assert address_kind(address) == kind


def test_host_kind_needs_no_resolver() -> None:
    assert host_kind("registry.example") is None  # a name: only DNS can tell
    assert host_kind("localhost") == "loopback (localhost)"
    assert host_kind("017700000001") == "loopback address"  # octal, as inet_aton reads it


def test_default_redirect_hosts() -> None:
    assert default_redirect_hosts("https://registry-1.docker.io") == DOCKER_HUB_STORAGE
    assert default_redirect_hosts("https://Index.Docker.io") == DOCKER_HUB_STORAGE
    assert default_redirect_hosts("https://registry.example") == ()
    assert "production.cloudflare.docker.com" in DOCKER_HUB_STORAGE
    hub = RedirectPolicy.build("https://registry-1.docker.io", DOCKER_HUB_STORAGE)
    cdn = "https://production.cloudflare.docker.com/registry-v2/docker/registry/v2/blobs/x"
    assert hub.check(httpx.URL("https://registry-1.docker.io/v2/x"), httpx.URL(cdn)).allowed


def test_display_host_and_refusal_message() -> None:
    assert display_host(httpx.URL("https://cdn.example/x?sig=secret")) == "cdn.example"
    assert display_host(httpx.URL("http://[::1]:8080/x")) == "[::1]:8080"
    assert display_host(httpx.URL("file:///etc/passwd")) == "a file: URL"
    assert display_host(httpx.URL("gopher://h:70/x")) == "gopher://h:70"
    error = RedirectRefusedError("hub", "10.0.0.1", "private address")
    assert isinstance(error, UpstreamUnavailableError)  # a 502 naming the upstream
    assert error.upstream == "hub"
    assert str(error) == "upstream hub: refused to follow a redirect to 10.0.0.1: private address"
    assert "sig=" not in str(RedirectRefusedError("hub", display_host(
        httpx.URL("https://cdn.example/x?sig=secret")), "not in redirect_hosts"))  # fmt: skip


def test_resolve_location() -> None:
    assert str(resolve_location(SOURCE, "/v2/x")) == f"{UPSTREAM}/v2/x"
    assert str(resolve_location(SOURCE, "//cdn.example/x")) == "https://cdn.example/x"
    with pytest.raises(UpstreamContentError):
        resolve_location(SOURCE, "http://[::1")
