"""SIGHUP reload against a real ``python -m proxy serve`` and a real registry.

A download that is running when the signal arrives finishes intact on the old generation;
requests after the swap use the new config; a broken config keeps the running one.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from testbed import images
from testbed.processes import Server
from testbed.proxy_server import start_proxy, upstream_config
from tests.conftest import REPO, RegistryBed

pytestmark = [pytest.mark.integration]

SIZE = 32 * 1024 * 1024
BLOB_REPO = "team/reload"


@pytest.fixture(scope="module")
def blob(registry: RegistryBed) -> str:
    digest = images.random_blob_digest(SIZE, seed=b"reload")
    with httpx.Client(base_url=registry.url, timeout=120) as client:
        images.push_blob_stream(
            client, BLOB_REPO, images.random_chunks(SIZE, seed=b"reload"), digest
        )
    return digest


def base_config(registry: RegistryBed) -> dict[str, Any]:
    return {
        "upstreams": [upstream_config("internal", registry.url)],
        "logging": {"format": "json"},
    }


@pytest.fixture
def proxy(registry: RegistryBed, tmp_path: Path) -> Iterator[Server]:
    server = start_proxy(tmp_path, base_config(registry))
    try:
        yield server
    finally:
        server.stop()


def log_lines(server: Server) -> list[dict[str, Any]]:
    out = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def wait_for_log(
    server: Server, msg: str, *, after: int = 0, timeout: float = 10
) -> dict[str, Any]:
    """The first log record at index >= ``after`` whose message starts with ``msg``."""
    deadline = time.monotonic() + timeout
    while True:
        for record in log_lines(server)[after:]:
            if str(record.get("msg", "")).startswith(msg):
                return record
        assert server.alive(), server.log_tail()
        assert time.monotonic() < deadline, f"no {msg!r} in the log:\n{server.log_tail()}"
        time.sleep(0.05)


def write_config(server: Server, config: dict[str, Any] | str) -> None:
    path = Path(server.extra["config"])
    if isinstance(config, dict):
        config = dict(config)
        config["server"] = {"listen": server.extra["host"]}
        config = yaml.safe_dump(config, sort_keys=False)
    path.write_text(config)


def test_sighup_mid_download_keeps_the_stream_and_applies_the_new_config(
    proxy: Server, registry: RegistryBed, blob: str
) -> None:
    url = proxy.extra["url"]
    mirror_tags = f"{url}/v2/mirror/{REPO}/tags/list"
    assert httpx.get(mirror_tags).status_code == 404  # no /mirror route yet

    digest = hashlib.sha256()
    received = 0
    with httpx.stream("GET", f"{url}/v2/{BLOB_REPO}/blobs/{blob}", timeout=60) as r:
        assert r.status_code == 200
        chunks = r.iter_raw(65536)
        while received < 1024 * 1024:  # well into the body, far from its end
            chunk = next(chunks)
            digest.update(chunk)
            received += len(chunk)

        config = base_config(registry)
        config["upstreams"].append(upstream_config("mirror", registry.url, prefix="mirror"))
        write_config(proxy, config)
        mark = len(log_lines(proxy))
        os.kill(proxy.pid, signal.SIGHUP)
        reloaded = wait_for_log(proxy, "reloaded", after=mark)
        assert reloaded["draining"] == 1  # our download, still on the old generation

        # The new route works while the old download is still running.
        assert httpx.get(mirror_tags).status_code == 200

        for chunk in chunks:
            digest.update(chunk)
            received += len(chunk)
    assert received == SIZE
    assert "sha256:" + digest.hexdigest() == blob
    # Only now is the old generation (its upstream clients) closed.
    wait_for_log(proxy, "previous generation closed", after=mark)
    access = [x for x in log_lines(proxy) if x.get("path", "").endswith(blob)]
    assert access[-1]["complete"] is True
    assert access[-1]["status"] == 200


def test_a_broken_config_on_sighup_keeps_serving_the_old_one(
    proxy: Server, registry: RegistryBed
) -> None:
    url = proxy.extra["url"]
    tags = f"{url}/v2/{REPO}/tags/list"
    assert httpx.get(tags).status_code == 200

    write_config(proxy, "upstreams: []\n")
    mark = len(log_lines(proxy))
    os.kill(proxy.pid, signal.SIGHUP)
    failed = wait_for_log(proxy, "reload failed", after=mark)
    assert failed["level"] == "error"
    assert "upstreams: at least one upstream is required" in failed["msg"]
    assert proxy.alive()
    assert httpx.get(tags).status_code == 200
    assert httpx.get(f"{url}/healthz").status_code == 200

    # A good file afterwards is applied by the next SIGHUP.
    config = base_config(registry)
    config["upstreams"].append(upstream_config("mirror", registry.url, prefix="mirror"))
    write_config(proxy, config)
    mark = len(log_lines(proxy))
    os.kill(proxy.pid, signal.SIGHUP)
    wait_for_log(proxy, "reloaded", after=mark)
    assert httpx.get(f"{url}/v2/mirror/{REPO}/tags/list").status_code == 200


def test_metrics_count_what_the_proxy_served(proxy: Server) -> None:
    url = proxy.extra["url"]
    assert httpx.get(f"{url}/v2/{REPO}/tags/list").status_code == 200
    text = httpx.get(f"{url}/metrics").text
    assert 'trustproxy_requests_total{endpoint="tags",method="GET",status="2xx"} 1.0' in text


def test_a_policy_that_cannot_be_loaded_fails_closed_until_sighup_fixes_it(
    registry: RegistryBed, tmp_path: Path
) -> None:
    config = base_config(registry)
    config["policy_file"] = "policy.yaml"  # not there yet: the proxy starts, refusing
    server = start_proxy(tmp_path, config)
    try:
        url = server.extra["url"]
        manifest = f"{url}/v2/{REPO}/manifests/oci"
        r = httpx.get(manifest)
        assert r.status_code == 503
        assert "policy" in r.text
        assert httpx.get(f"{url}/healthz").status_code == 200
        error = wait_for_log(server, "policy not loaded")
        assert error["level"] == "error"

        # An "off" policy for every repository: served unchecked once it is loaded.
        policy = {"version": "2.0", "trust": {"repositories": {"*": {"mode": "off"}}}}
        (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
        mark = len(log_lines(server))
        os.kill(server.pid, signal.SIGHUP)
        wait_for_log(server, "reloaded", after=mark)
        assert httpx.get(manifest, headers={"Accept": images.OCI_MANIFEST}).status_code == 200
    finally:
        server.stop()
