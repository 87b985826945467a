"""``trustproxy doctor`` against a real trustproxy and a real docker-registry as "upstream"."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.processes import Server, free_port
from testbed.proxy_server import REPO_ROOT, start_proxy, upstream_config
from testbed.tls import CA, make_ca
from tests.conftest import REPO, RegistryBed

pytestmark = pytest.mark.integration


def doctor(*argv: str) -> tuple[int, dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "doctor", "--no-client-config", "--json",
         "--timeout", "3", *argv],
        capture_output=True, timeout=60, check=False, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr.decode()
    return result.returncode, json.loads(result.stdout)


def checks(report: dict[str, Any], group: str) -> list[dict[str, Any]]:
    return [c for c in report["checks"] if c["group"] == group]


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused


def test_reachable_upstream_means_bypass_exit_1(proxy: Server, registry: RegistryBed) -> None:
    code, report = doctor("--proxy", proxy.extra["url"], "--upstream", registry.url)
    assert code == 1
    assert report["ok"] is False
    (upstream,) = checks(report, "upstream")
    assert upstream["status"] == "fail"
    assert upstream["data"]["reachable"] is True
    assert upstream["data"]["status"] == 200  # docker-registry's /v2/ without auth
    v2 = checks(report, "proxy")[0]
    assert (v2["name"], v2["status"], v2["data"]["status"]) == ("proxy /v2/", "pass", 200)


def test_unreachable_upstream_and_answering_proxy_exit_0(
    proxy: Server, registry: RegistryBed
) -> None:
    code, report = doctor(
        "--proxy", proxy.extra["url"], "--upstream", closed_port_url(),
        "--image", f"{REPO}:oci",
    )  # fmt: skip
    assert code == 0, report
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert statuses["proxy /v2/"] == "pass"
    assert statuses["proxy /healthz"] == "pass"
    assert statuses["proxy /readyz"] == "pass"
    (upstream,) = checks(report, "upstream")
    assert upstream["status"] == "pass"
    assert upstream["data"]["reachable"] is False
    (image,) = [c for c in report["checks"] if c["name"] == "image"]
    assert image["status"] == "pass"
    assert image["data"]["digest"] == registry.digests["oci"]


def test_proxy_down_exit_1(registry: RegistryBed) -> None:
    code, report = doctor("--proxy", closed_port_url(), "--upstream", closed_port_url())
    assert code == 1
    v2 = checks(report, "proxy")[0]
    assert v2["status"] == "fail"
    assert checks(report, "upstream")[0]["status"] == "pass"


def test_missing_image_exit_1_with_the_reason(proxy: Server) -> None:
    code, report = doctor(
        "--proxy", proxy.extra["url"], "--upstream", closed_port_url(),
        "--image", f"{REPO}:no-such-tag",
    )  # fmt: skip
    assert code == 1
    (image,) = [c for c in report["checks"] if c["name"] == "image"]
    assert image["data"]["status"] == 404
    assert image["data"]["error"].startswith("MANIFEST_UNKNOWN")


@pytest.fixture(scope="module")
def tls_proxy(
    registry: RegistryBed, tls_ca: CA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("doctor-tls-proxy")
    pair = tls_ca.issue_server(workdir, "proxy")
    config = {
        "server": {"tls_cert_file": str(pair.cert), "tls_key_file": str(pair.key)},
        "upstreams": [upstream_config("internal", registry.url)],
    }
    server = start_proxy(workdir, config, name="doctor-tls")
    try:
        yield server
    finally:
        server.stop()


def test_tls_proxy_needs_its_ca(tls_proxy: Server, tls_ca: CA) -> None:
    url = tls_proxy.extra["url"]
    assert url.startswith("https://")
    code, report = doctor("--proxy", url, "--upstream", closed_port_url())
    assert code == 1
    v2 = checks(report, "proxy")[0]
    assert v2["data"]["tls_error"] is True
    assert v2["summary"].startswith(f"GET {url}/v2/: TLS: ")

    code, report = doctor("--proxy", url, "--upstream", closed_port_url(),
                          "--ca-file", str(tls_ca.cert))  # fmt: skip
    assert code == 0, report
    assert checks(report, "proxy")[0]["summary"] == f"GET {url}/v2/ → 200 (TLS verified)"


def test_text_output_is_a_checklist(proxy: Server, registry: RegistryBed, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "doctor", "--proxy", proxy.extra["url"],
         "--upstream", registry.url, "--host-root", str(tmp_path)],
        capture_output=True, timeout=60, check=False, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 1
    out = result.stdout.decode()
    assert f"  ✓ GET {proxy.extra['url']}/v2/ → 200 (plain HTTP)" in out
    assert f"  ✗ {registry.url}: REACHABLE (GET /v2/ → 200): the proxy can be bypassed" in out
    assert "  · no dockerd, containerd or podman/CRI-O config files found" in out
    assert out.rstrip().endswith("the proxy can be bypassed.")


@pytest.fixture(scope="module")
def mtls_proxy(
    registry: RegistryBed, tls_ca: CA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("doctor-mtls-proxy")
    pair = tls_ca.issue_server(workdir, "proxy")
    config = {
        "server": {
            "tls_cert_file": str(pair.cert),
            "tls_key_file": str(pair.key),
            "client_auth": {"client_ca_file": str(tls_ca.cert)},
        },
        "upstreams": [upstream_config("internal", registry.url)],
    }
    server = start_proxy(workdir, config, name="doctor-mtls")
    try:
        yield server
    finally:
        server.stop()


def test_mtls_proxy_failures_are_named(mtls_proxy: Server, tls_ca: CA, tmp_path: Path) -> None:
    """Without a client certificate a TLS 1.3 proxy just closes the connection: the doctor
    says that a client certificate is required (not "check DNS and firewall"); with one the
    proxy's client CA did not issue, that it was refused; with the right one, it passes."""
    url = mtls_proxy.extra["url"]
    ca = ["--ca-file", str(tls_ca.cert), "--upstream", closed_port_url()]
    code, report = doctor("--proxy", url, *ca)
    v2 = checks(report, "proxy")[0]
    assert code == 1
    assert v2["data"]["client_certificate"] == "required", v2
    assert "requires a client certificate" in v2["summary"]
    assert not any("firewall" in d for d in v2["details"]), v2

    stranger = make_ca(tmp_path / "other", "another CA").issue_client(tmp_path, "c", "node-x")
    code, report = doctor("--proxy", url, *ca, "--client-cert", str(stranger.cert),
                          "--client-key", str(stranger.key))  # fmt: skip
    v2 = checks(report, "proxy")[0]
    assert code == 1
    assert v2["data"]["client_certificate"] == "rejected", v2
    assert "refused this client certificate" in v2["summary"]

    good = tls_ca.issue_client(tmp_path, "node", "node-1")
    code, report = doctor("--proxy", url, *ca, "--client-cert", str(good.cert),
                          "--client-key", str(good.key))  # fmt: skip
    assert code == 0, report
    assert checks(report, "proxy")[0]["summary"] == f"GET {url}/v2/ → 200 (TLS verified)"


def test_unknown_ca_is_named(tls_proxy: Server) -> None:
    code, report = doctor("--proxy", tls_proxy.extra["url"], "--upstream", closed_port_url())
    v2 = checks(report, "proxy")[0]
    assert code == 1
    assert v2["details"][0].startswith("unknown CA: the proxy's certificate is issued by a CA")
