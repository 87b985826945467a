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
from testbed.tls import CA
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
