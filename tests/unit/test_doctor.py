"""``trustproxy doctor``: checks against httpx.MockTransport and fake TCP connects, client
config files from fake file trees, output and exit codes."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy import doctor
from proxy.cli import main
from proxy.doctor import Check, Options, Report, client_config_checks, run_checks

PROXY = "https://proxy.example.com:8443"
HUB = "https://registry-1.docker.io"
DIGEST = "sha256:" + "ab" * 32

Handler = Callable[[httpx.Request], httpx.Response]


def proxy_ok(request: httpx.Request) -> httpx.Response:
    """A healthy proxy; anything else (the upstream) answers like Docker Hub."""
    if request.url.host != "proxy.example.com":
        return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="https://auth"'})
    path = request.url.path
    if path == "/v2/":
        return httpx.Response(200, json={})
    if path == "/healthz":
        return httpx.Response(200, json={"status": "ok"})
    if path == "/readyz":
        return httpx.Response(
            200, json={"ready": True, "upstreams": {"hub": "ok"}, "trust_store": "memory"}
        )
    if path == "/v2/library/alpine/manifests/3.20":
        return httpx.Response(
            200, headers={"Docker-Content-Digest": DIGEST, "Content-Type": "application/json"}
        )
    return httpx.Response(
        404, json={"errors": [{"code": "MANIFEST_UNKNOWN", "message": "tag is not signed"}]}
    )


async def refused(host: str, port: int, seconds: float) -> None:
    raise ConnectionRefusedError(111, "Connection refused")


async def connects(host: str, port: int, seconds: float) -> None:
    return None


async def no_dns(host: str, port: int, seconds: float) -> None:
    raise socket.gaierror(-2, "Name or service not known")


async def filtered(host: str, port: int, seconds: float) -> None:
    raise TimeoutError


def run(
    handler: Handler = proxy_ok,
    tcp: doctor.TcpConnect = refused,
    **options: Any,
) -> Report:
    opts = Options(proxy=options.pop("proxy", PROXY), host_root=None, timeout=1.0, **options)
    return asyncio.run(run_checks(opts, transport=httpx.MockTransport(handler), tcp_connect=tcp))


def by_group(report: Report, group: str) -> list[Check]:
    return [c for c in report.checks if c.group == group]


# ------------------------------------------------------------------ proxy and upstream


@pytest.mark.parametrize(
    ("tcp", "status", "exit_code", "words"),
    [
        (refused, "pass", 0, ["not reachable", "Connection refused"]),
        (filtered, "pass", 0, ["not reachable", "timed out (filtered)"]),
        (no_dns, "pass", 0, ["does not resolve here"]),
        (connects, "fail", 1, ["REACHABLE", "GET /v2/ → 401", "bypassed"]),
    ],
    ids=["refused", "filtered", "no-dns", "reachable"],
)
def test_upstream_reachability_decides_the_exit_code(
    tcp: doctor.TcpConnect, status: str, exit_code: int, words: list[str]
) -> None:
    report = run(tcp=tcp)
    (upstream,) = by_group(report, "upstream")
    assert upstream.status == status
    for word in words:
        assert word in upstream.summary
    assert report.exit_code == exit_code
    assert by_group(report, "proxy")[0].status == "pass"


def test_reachable_upstream_explains_the_bypass_and_how_to_block_it() -> None:
    report = run(tcp=connects)
    (upstream,) = by_group(report, "upstream")
    text = " ".join(upstream.details)
    assert "fall back to it on ANY error" in text
    assert "block egress from this host to registry-1.docker.io:443" in text
    assert "production.cloudflare.docker.com" in text  # Hub's other names
    assert upstream.data == {"host": "registry-1.docker.io", "port": 443, "reachable": True,
                             "status": 401}  # fmt: skip
    assert "FAIL: https://registry-1.docker.io reachable directly" in doctor.format_report(report)


def test_dns_only_block_is_flagged_as_weak() -> None:
    (upstream,) = by_group(run(tcp=no_dns), "upstream")
    assert "block the egress too" in upstream.details[0]


def test_open_port_without_a_registry_answer_is_a_warning_not_a_failure() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "registry-1.docker.io":
            raise httpx.ConnectError("TLS handshake reset", request=request)
        return proxy_ok(request)

    report = run(handler, tcp=connects)
    (upstream,) = by_group(report, "upstream")
    assert upstream.status == "warn"
    assert "TCP port 443 is open, but no registry answer" in upstream.summary
    assert report.exit_code == 0


def test_several_upstreams_each_checked() -> None:
    async def tcp(host: str, port: int, seconds: float) -> None:
        if host == "registry.corp.example":
            return
        raise ConnectionRefusedError(111, "Connection refused")

    report = run(tcp=tcp, upstreams=(HUB, "https://registry.corp.example"))
    statuses = {c.name: c.status for c in by_group(report, "upstream")}
    assert statuses == {HUB: "pass", "https://registry.corp.example": "fail"}
    assert report.exit_code == 1


def _raise(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "proxy.example.com":
            raise exc
        return proxy_ok(request)

    return handler


def _tls_error() -> httpx.ConnectError:
    err = httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED]")
    cause = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cause.verify_message = "unable to get local issuer certificate"
    err.__cause__ = cause
    return err


@pytest.mark.parametrize(
    ("handler", "words"),
    [
        (_raise(httpx.ConnectError("All connection attempts failed")),
         ["ConnectError: All connection attempts failed"]),
        (_raise(httpx.ReadTimeout("slow")), ["no answer within 1s"]),
        (_raise(_tls_error()), ["TLS: unable to get local issuer certificate"]),
        (lambda r: httpx.Response(503) if r.url.host == "proxy.example.com" else proxy_ok(r),
         ["→ 503", "server error"]),
    ],
    ids=["down", "timeout", "tls", "5xx"],
)  # fmt: skip
def test_proxy_not_answering_fails_even_with_upstream_blocked(
    handler: Handler, words: list[str]
) -> None:
    report = run(handler)
    v2 = report.checks[0]
    assert v2.name == "proxy /v2/"
    assert v2.status == "fail"
    for word in words:
        assert word in v2.summary
    assert report.exit_code == 1
    assert "FAIL: the proxy does not answer" in doctor.format_report(report)


def test_tls_failure_points_at_the_ca() -> None:
    v2 = run(_raise(_tls_error())).checks[0]
    assert v2.data["tls_error"] is True
    assert "--ca-file" in v2.details[0]


def test_healthy_proxy_report() -> None:
    report = run()
    proxy = {c.name: c for c in by_group(report, "proxy")}
    assert proxy["proxy /v2/"].summary == f"GET {PROXY}/v2/ → 200 (TLS verified)"
    assert proxy["proxy /healthz"].status == "pass"
    assert proxy["proxy /readyz"].summary == "GET /readyz → 200 (trust store: memory)"
    assert report.exit_code == 0
    text = doctor.format_report(report)
    assert "  ✓ GET https://proxy.example.com:8443/v2/ → 200 (TLS verified)" in text
    assert text.endswith("OK: the proxy answers and no upstream is directly reachable from here.\n")


def test_plain_http_proxy_and_unready_upstreams_are_warnings() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/readyz":
            body = {"ready": False, "upstreams": {"hub": "connect failed"}, "trust_store": "down"}
            return httpx.Response(503, json=body)
        return proxy_ok(request)

    report = run(handler, proxy="http://proxy.example.com:8080")
    proxy = {c.name: c for c in by_group(report, "proxy")}
    assert proxy["proxy TLS"].status == "warn"
    assert "insecure" in proxy["proxy TLS"].summary
    assert proxy["proxy /readyz"].status == "warn"
    assert proxy["proxy /readyz"].details == ["the proxy cannot reach: hub: connect failed"]
    assert report.exit_code == 0  # warnings do not fail


def test_proxy_with_client_auth_answers_401() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "proxy.example.com" and request.url.path == "/v2/":
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="trustproxy"'})
        return proxy_ok(request)

    v2 = run(handler).checks[0]
    assert v2.status == "pass"
    assert v2.data["auth"] == ["Basic"]
    assert "requires authentication (Basic)" in v2.details[0]
    assert "--creds-file" in v2.details[0]


# ------------------------------------------------------------------ --image


def test_image_served_reports_the_digest() -> None:
    seen: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.headers.get("accept")))
        return proxy_ok(request)

    report = run(handler, image=("library/alpine", "3.20"))
    (image,) = [c for c in report.checks if c.name == "image"]
    assert image.status == "pass"
    assert image.summary == f"HEAD /v2/library/alpine/manifests/3.20 → 200, " \
        f"Docker-Content-Digest: {DIGEST}"  # fmt: skip
    assert image.data["digest"] == DIGEST
    head_accept = [a for m, a in seen if m == "HEAD"]
    assert head_accept
    assert "application/vnd.oci.image.index.v1+json" in (head_accept[0] or "")
    assert report.exit_code == 0


def test_image_refused_shows_the_proxy_reason_and_fails() -> None:
    report = run(image=("team/app", "unsigned"))
    (image,) = [c for c in report.checks if c.name == "image"]
    assert image.status == "fail"
    assert image.summary == "HEAD /v2/team/app/manifests/unsigned → 404"
    assert "the proxy says: MANIFEST_UNKNOWN: tag is not signed" in image.details
    assert report.exit_code == 1
    assert "the image is not served" in doctor.format_report(report)


@pytest.mark.parametrize("realm_host", ["proxy.example.com:8443", "auth.elsewhere.example"])
def test_image_bearer_flow_sends_credentials_only_to_the_proxy(realm_host: str) -> None:
    token_requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            token_requests.append(request)
            return httpx.Response(200, json={"token": "T0KEN"})
        authorised = request.headers.get("authorization") == "Bearer T0KEN"
        if request.url.path.startswith("/v2/library/") and not authorised:
            challenge = (f'Bearer realm="https://{realm_host}/token",service="trustproxy",'
                         'scope="repository:library/alpine:pull"')  # fmt: skip
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        return proxy_ok(request)

    report = run(handler, image=("library/alpine", "3.20"), creds=("alice", "s3cret"))
    (image,) = [c for c in report.checks if c.name == "image"]
    assert image.status == "pass"
    (token_request,) = token_requests
    assert token_request.url.params["scope"] == "repository:library/alpine:pull"
    assert token_request.url.params["service"] == "trustproxy"
    same_origin = realm_host.startswith("proxy.example.com")
    assert ("authorization" in token_request.headers) is same_origin
    assert "s3cret" not in json.dumps(report.to_json())


# ------------------------------------------------------------------ arguments


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("library/alpine:3.20", ("library/alpine", "3.20")),
        ("team/app", ("team/app", "latest")),
        ("proxy.example.com:8443/team/app:v1", ("team/app", "v1")),
        (f"team/app@{DIGEST}", ("team/app", DIGEST)),
    ],
)
def test_parse_image(ref: str, expected: tuple[str, str]) -> None:
    assert doctor.parse_image(ref, PROXY) == expected


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("registry-1.docker.io/library/alpine:3", "is not the proxy"),
        ("team/app@sha256:abc", "not a sha256/sha512 digest"),
        ("Team/App:v1", "not a repository name"),
        ("team/app:-bad", "not a tag"),
    ],
)
def test_parse_image_errors(ref: str, message: str) -> None:
    with pytest.raises(doctor.UsageError, match=message):
        doctor.parse_image(ref, PROXY)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://Proxy.Example.com:8443/", "https://proxy.example.com:8443"),
        ("http://[::1]:5000", "http://[::1]:5000"),
        ("https://registry-1.docker.io", "https://registry-1.docker.io"),
    ],
)
def test_normalise_url(url: str, expected: str) -> None:
    assert doctor.normalise_url(url, "--proxy") == expected


@pytest.mark.parametrize(
    "url", ["proxy.example.com", "ftp://x", "https://u:p@proxy.example.com", "https://h/v2/"]
)
def test_normalise_url_errors(url: str) -> None:
    with pytest.raises(doctor.UsageError):
        doctor.normalise_url(url, "--proxy")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://proxy.example.com", "proxy.example.com:443"),
        ("proxy.example.com:8443/hub", "proxy.example.com:8443"),
        ("http://Proxy.example.com", "proxy.example.com:80"),
        ("https://user:pw@proxy.example.com:8443", "proxy.example.com:8443"),
    ],
)
def test_hostport(text: str, expected: str) -> None:
    assert doctor.hostport(text) == expected


def test_safe_url_drops_credentials() -> None:
    assert doctor.safe_url("https://user:pw@mirror.example.com/x") == "https://mirror.example.com/x"
    assert doctor.safe_url("user:pw@mirror.example.com") == "mirror.example.com"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--proxy", "proxy.example.com"], "--proxy: expected http(s)://host[:port]"),
        (["--proxy", PROXY, "--upstream", "https://x/path"], "--upstream: expected"),
        (["--proxy", PROXY, "--client-cert", "c.pem"], "--client-cert and --client-key go"),
        (["--proxy", PROXY, "--timeout", "0"], "--timeout must be greater than zero"),
        (["--proxy", PROXY, "--image", "docker.io/library/alpine"], "is not the proxy"),
        (["--proxy", PROXY, "--creds-file", "/nonexistent/creds"], "cannot read"),
    ],
)  # fmt: skip
def test_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["doctor", *argv]) == 2
    assert message in capsys.readouterr().err


def test_creds_file_format(tmp_path: Path) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("alice:pa:ss\n")
    bad.write_text("no-colon\n")
    assert doctor.read_creds(good) == ("alice", "pa:ss")
    with pytest.raises(doctor.UsageError, match="USER:PASSWORD"):
        doctor.read_creds(bad)


def test_help_names_the_contract(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["doctor", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for word in ["--proxy", "--upstream", "--ca-file", "--image", "--timeout", "--json",
                 "Exit 0 only if the proxy answers and no upstream is reachable"]:  # fmt: skip
        assert word in text


def test_cli_json_output(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = doctor.run_checks

    async def fake(options: Options, **kw: Any) -> Report:
        return await real(options, transport=httpx.MockTransport(proxy_ok), tcp_connect=refused)

    monkeypatch.setattr(doctor, "run_checks", fake)
    assert main(["doctor", "--proxy", PROXY, "--no-client-config", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True
    assert out["exit_code"] == 0
    assert out["upstreams"] == [HUB]
    assert [c["name"] for c in out["checks"]] == [
        "proxy /v2/",
        "proxy /healthz",
        "proxy /readyz",
        HUB,
    ]
    assert all(set(c) == {"group", "name", "status", "summary", "details", "data"}
               for c in out["checks"])  # fmt: skip


# ------------------------------------------------------------------ client config files

PROXY_HOSTS_TOML = 'server = "https://proxy.example.com:8443"\n'
MIRROR_HOSTS_TOML = """\
server = "https://registry-1.docker.io"

[host."https://proxy.example.com:8443"]
  capabilities = ["pull", "resolve"]
  [host."https://proxy.example.com:8443".header]
    authorization = "Basic c2VjcmV0OnNlY3JldA=="
"""
ONLY_PROXY_HOST_TOML = """\
[host."https://proxy.example.com:8443"]
  capabilities = ["pull", "resolve"]
"""
PROXY_FIRST_OTHERS_TOML = """\
server = "https://proxy.example.com:8443"

[host."https://other-mirror.example.com"]
  capabilities = ["pull", "resolve"]
"""


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, [("info", "no dockerd, containerd or podman/CRI-O config files found")]),
        ({"etc/docker/daemon.json": json.dumps({"registry-mirrors": [PROXY]})},
         [("warn", "registry-mirrors has the proxy")]),
        ({"etc/docker/daemon.json": json.dumps(
            {"registry-mirrors": ["https://u:pw@mirror.example.com"]})},
         [("warn", "registry-mirrors has https://mirror.example.com, not the proxy")]),
        ({"etc/docker/daemon.json": json.dumps({"insecure-registries": [PROXY[8:]]})},
         [("info", "no registry-mirrors"), ("warn", "the proxy is in insecure-registries")]),
        ({"etc/docker/daemon.json": "{not json"}, [("warn", "not valid JSON")]),
        ({"etc/docker/daemon.json": "{}", "etc/docker/certs.d/proxy.example.com:8443/ca.crt": "x"},
         [("info", "no registry-mirrors"), ("info", "the proxy's CA for dockerd is installed")]),
        ({"etc/containerd/certs.d/docker.io/hosts.toml": PROXY_HOSTS_TOML},
         [("warn", "(docker.io): NOT enforcing: containerd cannot use this file")]),
        ({"etc/containerd/certs.d/docker.io/hosts.toml": MIRROR_HOSTS_TOML},
         [("warn", "the proxy is a mirror host; containerd falls back to "
                   "https://registry-1.docker.io")]),
        ({"etc/containerd/certs.d/docker.io/hosts.toml": PROXY_FIRST_OTHERS_TOML},
         [("warn", "https://other-mirror.example.com are tried too")]),
        ({"etc/containerd/certs.d/docker.io/hosts.toml": ONLY_PROXY_HOST_TOML},
         [("warn", "NOT enforcing: no `server`, so containerd appends the default host")]),
        ({"etc/containerd/certs.d/quay.io/hosts.toml": 'server = "https://quay.io"\n'},
         [("info", "(quay.io): does not use the proxy")]),
        ({"etc/containerd/certs.d/docker.io/hosts.toml": "server = "},
         [("warn", "not valid TOML")]),
        ({"etc/containerd/config.toml":
          'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n'
          '  config_path = "/etc/containerd/certs.d"\n'},
         [("info", "registry config_path = /etc/containerd/certs.d")]),
        ({"etc/containerd/config.toml": "version = 2\n"}, [("info", "no registry config_path")]),
        ({"etc/containers/registries.conf":
          '[[registry]]\nprefix = "docker.io"\nlocation = "proxy.example.com:8443"\n'},
         [("pass", "location is the proxy (replaces the registry, no fallback): enforcing")]),
        ({"etc/containers/registries.conf":
          '[[registry]]\nprefix = "docker.io"\nlocation = "registry-1.docker.io"\n'
          '[[registry.mirror]]\nlocation = "proxy.example.com:8443"\n'},
         [("warn", "the proxy is a mirror; podman/CRI-O fall back to registry-1.docker.io")]),
        ({"etc/containers/registries.conf":
          '[[registry]]\nprefix = "docker.io"\nlocation = "proxy.example.com:8443"\n'
          '[[registry.mirror]]\nlocation = "other.example.com"\n'},
         [("warn", "mirrors other.example.com are tried first")]),
        ({"etc/containers/registries.conf.d/50-block.conf":
          '[[registry]]\nlocation = "registry-1.docker.io"\nblocked = true\n'},
         [("info", "blocked: pulls of registry-1.docker.io are refused")]),
        ({"etc/containers/registries.conf": '[registries.search]\nregistries = ["docker.io"]\n'},
         [("info", "v1 format")]),
        ({"etc/containers/registries.conf": 'unqualified-search-registries = ["docker.io"]\n'},
         [("info", "no [[registry]] entry uses the proxy")]),
    ],
    ids=["nothing", "docker-mirror-proxy", "docker-mirror-other", "docker-insecure",
         "docker-bad-json", "docker-ca", "containerd-server-proxy", "containerd-mirror",
         "containerd-others-first", "containerd-only-proxy-host", "containerd-other-ns",
         "containerd-bad-toml",
         "containerd-config-path", "containerd-no-config-path", "podman-location",
         "podman-mirror", "podman-mirrors-first", "podman-blocked", "podman-v1",
         "podman-none"],
)  # fmt: skip
def test_client_config_files(
    files: dict[str, str], expected: list[tuple[str, str]], tmp_path: Path
) -> None:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    checks = client_config_checks(tmp_path, PROXY)
    assert len(checks) == len(expected), [c.summary for c in checks]
    for check, (status, words) in zip(checks, expected, strict=True):
        assert check.group == "client-config"
        assert (check.status, words in check.summary) == (status, True), check.summary
        assert str(tmp_path) not in check.summary  # shown as on the host: /etc/...
    shown = json.dumps([c.summary for c in checks] + [c.data for c in checks]
                       + [d for c in checks for d in c.details])  # fmt: skip
    assert "c2VjcmV0" not in shown  # hosts.toml headers are never printed
    assert "pw@" not in shown


def test_client_config_files_are_read_bounded(tmp_path: Path) -> None:
    path = tmp_path / "etc/docker/daemon.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(b" " * (doctor.MAX_FILE_BYTES + 1))
    (check,) = client_config_checks(tmp_path, PROXY)
    assert check.status == "warn"
    assert "larger than" in check.summary


def test_client_config_is_part_of_the_report_but_never_fails_it(tmp_path: Path) -> None:
    path = tmp_path / "etc/docker/daemon.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"registry-mirrors": [PROXY]}))
    opts = Options(proxy=PROXY, host_root=tmp_path, timeout=1.0)
    report = asyncio.run(
        run_checks(opts, transport=httpx.MockTransport(proxy_ok), tcp_connect=refused)
    )
    assert [c.status for c in by_group(report, "client-config")] == ["warn"]
    assert report.exit_code == 0
    assert "Client configuration on this host" in doctor.format_report(report)


def test_readyz_change_feed_that_does_not_work_is_a_detail() -> None:
    """/readyz names each trust source's change feed; one the trust server refused leaves
    revocation at the refresh interval: the doctor says so (a detail, not a failure)."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/readyz":
            body = {
                "ready": True,
                "upstreams": {"hub": "ok"},
                "trust_store": "up",
                "changefeeds": {
                    "notary": {"state": "unsupported", "detail": "change feed: HTTP 404"},
                    "other": {"state": "active", "polling": True},
                },
            }
            return httpx.Response(200, json=body)
        return proxy_ok(request)

    report = run(handler)
    readyz = {c.name: c for c in by_group(report, "proxy")}["proxy /readyz"]
    assert readyz.status == "pass"
    assert readyz.data["changefeeds"] == {"notary": "unsupported", "other": "active"}
    assert readyz.details == [
        "change feed of trust source notary: unsupported (change feed: HTTP 404); "
        "revocations take up to the refresh interval"
    ]
