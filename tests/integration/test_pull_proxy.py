"""The pull proxy against a real docker-registry, driven by the real skopeo."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from testbed.images import ACCEPT_ALL, OCI_MANIFEST
from testbed.processes import Server, free_port
from testbed.proxy_server import start_proxy, upstream_config
from testbed.redirector import Redirector
from tests.conftest import MANY, MANY_TAGS, REPO, RegistryBed, requires

pytestmark = pytest.mark.integration

KINDS = ["oci", "docker", "index", "list"]


def skopeo(*args: str) -> subprocess.CompletedProcess[bytes]:
    requires("skopeo")
    return subprocess.run(
        ["skopeo", "--insecure-policy", *args], capture_output=True, timeout=120, check=False
    )


def inspect_raw(host: str, ref: str) -> bytes:
    result = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{host}/{ref}")
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def oci_error(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert isinstance(body["errors"], list), body
    assert body["errors"], body
    error: dict[str, object] = body["errors"][0]
    assert {"code", "message", "detail"} <= set(error), error
    return error


@pytest.mark.parametrize("tag", KINDS)
def test_skopeo_sees_identical_manifests(proxy: Server, registry: RegistryBed, tag: str) -> None:
    through_proxy = inspect_raw(proxy.extra["host"], f"{REPO}:{tag}")
    direct = inspect_raw(registry.host, f"{REPO}:{tag}")
    assert through_proxy == direct
    assert "sha256:" + hashlib.sha256(through_proxy).hexdigest() == registry.digests[tag]


def test_prefix_routes_to_upstream(proxy: Server, registry: RegistryBed) -> None:
    raw = inspect_raw(proxy.extra["host"], f"mirror/{REPO}:oci")
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == registry.digests["oci"]


@pytest.mark.parametrize("tag", ["index", "docker"])
def test_skopeo_copy_matches_direct_copy(
    proxy: Server, registry: RegistryBed, tmp_path: Path, tag: str
) -> None:
    via, direct = tmp_path / "via", tmp_path / "direct"
    for host, out in ((proxy.extra["host"], via), (registry.host, direct)):
        result = skopeo("copy", "--all", "--src-tls-verify=false",
                        f"docker://{host}/{REPO}:{tag}", f"dir:{out}")  # fmt: skip
        assert result.returncode == 0, result.stderr.decode()
    via_files = {p.name: p.read_bytes() for p in via.iterdir()}
    direct_files = {p.name: p.read_bytes() for p in direct.iterdir()}
    assert via_files.keys() == direct_files.keys()
    assert via_files == direct_files
    assert len(via_files) >= 3  # manifest(s), config, layer(s) and version


def test_head_manifest_by_tag_relays_headers(proxy: Server, registry: RegistryBed) -> None:
    r = httpx.head(
        f"{proxy.extra['url']}/v2/{REPO}/manifests/oci", headers={"Accept": OCI_MANIFEST}
    )
    assert r.status_code == 200
    assert r.headers["docker-content-digest"] == registry.digests["oci"]
    assert r.headers["content-type"] == OCI_MANIFEST
    assert int(r.headers["content-length"]) > 0
    assert r.content == b""


def test_manifest_by_digest_is_hash_checked_and_served(
    proxy: Server, registry: RegistryBed
) -> None:
    digest = registry.digests["index"]
    r = httpx.get(f"{proxy.extra['url']}/v2/{REPO}/manifests/{digest}",
                  headers={"Accept": ACCEPT_ALL})  # fmt: skip
    assert r.status_code == 200
    assert "sha256:" + hashlib.sha256(r.content).hexdigest() == digest
    assert r.headers["docker-content-digest"] == digest


def test_blob_range_request(proxy: Server, registry: RegistryBed) -> None:
    blob = max(registry.blobs, key=lambda b: len(b.data))
    url = f"{proxy.extra['url']}/v2/{REPO}/blobs/{blob.digest}"
    r = httpx.get(url, headers={"Range": "bytes=10-49"})
    assert r.status_code == 206
    assert r.content == blob.data[10:50]
    assert r.headers["content-range"].startswith("bytes 10-49/")
    full = httpx.get(url)
    assert full.status_code == 200
    assert full.content == blob.data
    assert full.headers["docker-content-digest"] == blob.digest


def test_tag_list_pagination_and_links(proxy: Server) -> None:
    base = proxy.extra["url"]
    seen: list[str] = []
    url: str | None = f"{base}/v2/{MANY}/tags/list?n=10"
    pages = 0
    while url:
        r = httpx.get(url)
        assert r.status_code == 200
        body = r.json()
        assert body["name"] == MANY
        assert len(body["tags"]) <= 10
        seen.extend(body["tags"])
        pages += 1
        link = r.headers.get("link")
        url = None
        if link:
            target = link[link.index("<") + 1 : link.index(">")]
            assert target.startswith(f"/v2/{MANY}/tags/list?"), link  # through the proxy
            assert 'rel="next"' in link
            url = base + target
    assert pages == 3
    assert seen == sorted(MANY_TAGS)


def test_tag_list_under_prefix_names_client_repository(proxy: Server) -> None:
    r = httpx.get(f"{proxy.extra['url']}/v2/mirror/{MANY}/tags/list?n=5")
    assert r.json()["name"] == f"mirror/{MANY}"
    assert r.headers["link"].startswith(f"</v2/mirror/{MANY}/tags/list?")


def test_catalog(proxy: Server) -> None:
    r = httpx.get(f"{proxy.extra['url']}/v2/_catalog")
    assert r.status_code == 200
    assert set(r.json()["repositories"]) >= {REPO, MANY}


def test_base_endpoint(proxy: Server) -> None:
    r = httpx.get(f"{proxy.extra['url']}/v2/")
    assert r.status_code == 200
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"


def test_referrers_relays_upstream_answer(proxy: Server, registry: RegistryBed) -> None:
    # distribution 2.8 has no referrers API: its 404 reaches the client as an OCI error.
    r = httpx.get(f"{proxy.extra['url']}/v2/{REPO}/referrers/{registry.digests['oci']}")
    assert r.status_code == 404
    oci_error(r)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", f"/v2/{REPO}/blobs/uploads/"),
        ("PUT", f"/v2/{REPO}/manifests/new"),
        ("PATCH", f"/v2/{REPO}/blobs/uploads/abc"),
        ("DELETE", f"/v2/{REPO}/manifests/oci"),
        ("GET", f"/v2/{REPO}/blobs/uploads/abc"),
    ],
    ids=["post-upload", "put-manifest", "patch-upload", "delete-manifest", "get-upload"],
)
def test_push_and_delete_are_refused(proxy: Server, method: str, path: str) -> None:
    r = httpx.request(method, proxy.extra["url"] + path, content=b"x")
    assert r.status_code == 405
    error = oci_error(r)
    assert error["code"] == "UNSUPPORTED"
    assert "read-only" in str(error["message"])
    # Allow says what the proxy serves there: nothing on an upload session (a GET on one
    # answered 405 with "Allow: GET, HEAD", found by the OCI conformance suite).
    assert r.headers["allow"] == ("" if "/blobs/uploads" in path else "GET, HEAD")
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        (f"/v2/{REPO}/manifests/nope", 404, "MANIFEST_UNKNOWN"),
        (f"/v2/{REPO}/blobs/sha256:{'0' * 64}", 404, "BLOB_UNKNOWN"),
        (f"/v2/{REPO}/blobs/md5:abc", 400, "DIGEST_INVALID"),
        ("/v2/Bad_Name/manifests/latest", 400, "NAME_INVALID"),
        # The OCI conformance suite: a manifest reference that is not a valid tag is a
        # manifest that does not exist (404), as distribution answers it directly.
        (f"/v2/{REPO}/manifests/-bad-tag", 404, "MANIFEST_UNKNOWN"),
        (f"/v2/{REPO}/manifests/.INVALID_MANIFEST_NAME", 404, "MANIFEST_UNKNOWN"),
        ("/v2/nothing/here/x", 404, "NOT_FOUND"),
    ],
    ids=["unknown-tag", "unknown-blob", "bad-digest", "bad-name", "bad-tag",
         "conformance-invalid-manifest-name", "bad-path"],
)  # fmt: skip
def test_bad_requests_get_oci_errors(proxy: Server, path: str, status: int, code: str) -> None:
    r = httpx.get(proxy.extra["url"] + path, headers={"Accept": ACCEPT_ALL})
    assert r.status_code == status
    assert oci_error(r)["code"] == code
    head = httpx.head(proxy.extra["url"] + path, headers={"Accept": ACCEPT_ALL})
    assert head.status_code == status
    # Docker clients look for the API version on every answer, errors included (our own
    # and the registry's, relayed).
    for answer in (r, head):
        assert answer.headers["docker-distribution-api-version"] == "registry/2.0"


def test_upstream_down_is_502_naming_upstream(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    server = start_proxy(tmp_path, {"upstreams": [upstream_config("gone", dead)]})
    try:
        base = server.extra["url"]
        r = httpx.get(f"{base}/v2/{REPO}/manifests/latest")
        assert r.status_code == 502
        error = oci_error(r)
        assert error["detail"] == {"upstream": "gone"}
        assert "gone" in str(error["message"])
        blob = httpx.get(f"{base}/v2/{REPO}/blobs/sha256:{'1' * 64}")
        assert blob.status_code == 502
        assert httpx.get(f"{base}/healthz").status_code == 200
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 503
        assert ready.json()["ready"] is False
    finally:
        server.stop()


@pytest.mark.parametrize("mode", ["follow", "follow-unlisted", "relay"])
def test_blob_redirects(registry: RegistryBed, tmp_path: Path, mode: str) -> None:
    # The storage here is the registry on loopback: followed only because redirect_hosts
    # names it exactly (loopback is never reached otherwise: that is the SSRF guard).
    redirector = Redirector(registry.url).start()
    blob = registry.blobs[0]
    options: dict[str, Any] = {"redirects": "relay" if mode == "relay" else "follow"}
    if mode == "follow":
        options["redirect_hosts"] = [registry.host]
    server = start_proxy(
        tmp_path, {"upstreams": [upstream_config("storage", redirector.url, **options)]}
    )
    try:
        r = httpx.get(f"{server.extra['url']}/v2/{REPO}/blobs/{blob.digest}")
        if mode == "follow":
            assert r.status_code == 200
            assert r.content == blob.data
        elif mode == "follow-unlisted":
            assert r.status_code == 502, r.text
            error = oci_error(r)
            assert error["code"] == "UNAVAILABLE"
            assert error["detail"] == {"upstream": "storage"}
            assert f"redirect to {registry.host}: not in redirect_hosts" in str(error["message"])
        else:
            assert r.status_code == 307
            assert r.headers["location"] == f"{registry.url}/v2/{REPO}/blobs/{blob.digest}"
    finally:
        server.stop()
        redirector.stop()


def test_blobs_redirect_sends_clients_to_the_upstream(
    registry: RegistryBed, tmp_path: Path
) -> None:
    """``blobs: redirect`` in front of the real registry: a blob GET is a 307 to the
    registry's own URL for it, skopeo (following it) copies the same files as directly,
    HEAD and unknown blobs are answered as when streaming, manifests still by the proxy;
    behind a storage redirect the client gets the storage URL."""
    blob = registry.blobs[0]
    redirector = Redirector(registry.url).start()
    server = start_proxy(
        tmp_path,
        {
            "upstreams": [
                upstream_config("internal", registry.url, blobs="redirect"),
                upstream_config("storage", redirector.url, prefix="storage", blobs="redirect"),
            ]
        },
    )
    base = server.extra["url"]
    try:
        r = httpx.get(f"{base}/v2/{REPO}/blobs/{blob.digest}")
        assert r.status_code == 307, r.text
        assert r.headers["location"] == f"{registry.url}/v2/{REPO}/blobs/{blob.digest}"
        assert r.content == b""
        followed = httpx.get(f"{base}/v2/{REPO}/blobs/{blob.digest}", follow_redirects=True)
        assert followed.status_code == 200
        assert followed.content == blob.data
        assert [h.status_code for h in followed.history] == [307]

        head = httpx.head(f"{base}/v2/{REPO}/blobs/{blob.digest}")
        assert head.status_code == 200
        assert int(head.headers["content-length"]) == len(blob.data)
        missing = httpx.get(f"{base}/v2/{REPO}/blobs/sha256:{'0' * 64}")
        assert missing.status_code == 404
        assert oci_error(missing)["code"] == "BLOB_UNKNOWN"
        manifest = httpx.get(f"{base}/v2/{REPO}/manifests/oci", headers={"Accept": ACCEPT_ALL})
        assert manifest.status_code == 200
        assert "sha256:" + hashlib.sha256(manifest.content).hexdigest() == registry.digests["oci"]

        # Behind a storage redirect: the storage URL, not the upstream's.
        stored = httpx.get(f"{base}/v2/storage/{REPO}/blobs/{blob.digest}")
        assert stored.status_code == 307
        assert stored.headers["location"] == f"{registry.url}/v2/{REPO}/blobs/{blob.digest}"

        via, direct = tmp_path / "via", tmp_path / "direct"
        for host, out in ((server.extra["host"], via), (registry.host, direct)):
            result = skopeo("copy", "--src-tls-verify=false",
                            f"docker://{host}/{REPO}:docker", f"dir:{out}")  # fmt: skip
            assert result.returncode == 0, result.stderr.decode()
        assert {f.name: f.read_bytes() for f in via.iterdir()} == {
            f.name: f.read_bytes() for f in direct.iterdir()
        }
        log = server.log_path.read_text()
        assert '"status": 307' in log or '"status":307' in log, log[-2000:]
    finally:
        server.stop()
        redirector.stop()


def test_access_log_is_json_with_upstream_status_bytes(
    proxy: Server, registry: RegistryBed
) -> None:
    blob = registry.blobs[0]
    httpx.get(f"{proxy.extra['url']}/v2/{REPO}/blobs/{blob.digest}?marker=accesslog")
    mine: list[dict[str, Any]] = []
    deadline = time.monotonic() + 5
    while not mine and time.monotonic() < deadline:  # the line is written after the body
        lines = [json.loads(line) for line in proxy.log_path.read_text().splitlines()
                 if line.startswith("{")]  # fmt: skip
        mine = [entry for entry in lines if entry.get("query") == "marker=accesslog"]
        time.sleep(0.05)
    assert mine, "no access line for the request"
    entry = mine[-1]
    assert entry["upstream"] == "internal"
    assert entry["status"] == 200
    assert entry["bytes"] == len(blob.data)
    assert entry["duration_ms"] >= 0
