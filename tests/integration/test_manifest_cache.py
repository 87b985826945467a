"""The manifest cache against a real docker-registry and trustproxy as a real process.

Pulls by digest go through the cache without trust data: a warm manifest is still served
when the registry is gone, a cold one is not; one the registry deletes stops being served
after ``manifest_cache_recheck``. In passthrough mode a real token-auth registry decides,
per client and repository, whether cached bytes may be shared.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testbed import images
from testbed.processes import Server
from testbed.proxy_server import start_proxy, upstream_config
from testbed.registry import start_registry
from testbed.token_server import TokenServer, start_token_registry
from tests.conftest import requires

pytestmark = pytest.mark.integration

REPO = "team/app"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = {"Accept": OCI_MANIFEST}


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _manifest(base: str, digest: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{base}/v2/{REPO}/manifests/{digest}", headers={**ACCEPT, **headers})


def test_warm_manifest_is_served_without_the_registry(tmp_path: Path) -> None:
    requires("docker-registry")
    registry = start_registry(tmp_path / "registry")
    proxy: Server | None = None
    try:
        with httpx.Client(base_url=registry.extra["url"], timeout=30) as c:
            warm = images.single_image("cache-warm")
            cold = images.single_image("cache-cold")
            images.push_image(c, REPO, warm, "warm")
            images.push_image(c, REPO, cold, "cold")
        config = {"upstreams": [upstream_config("internal", registry.extra["url"])],
                  "limits": {"manifest_cache_bytes": "1MiB"}}  # fmt: skip
        proxy = start_proxy(tmp_path / "proxy", config)
        base = proxy.extra["url"]

        first = _manifest(base, warm.digest)
        assert first.status_code == 200, first.text
        assert first.content == warm.manifest

        registry.stop()  # from here on, only the cache can answer

        again = _manifest(base, warm.digest)
        assert again.status_code == 200
        assert again.content == warm.manifest
        assert again.headers["docker-content-digest"] == warm.digest == sha256(again.content)
        for name in ("content-type", "content-length", "docker-content-digest", "etag"):
            assert again.headers[name] == first.headers[name]
        head = httpx.head(f"{base}/v2/{REPO}/manifests/{warm.digest}", headers=ACCEPT)
        assert head.status_code == 200
        assert head.headers["content-length"] == str(len(warm.manifest))

        # Never pulled: the registry would have to answer, and it cannot.
        assert _manifest(base, cold.digest).status_code == 502
        # Tags are not content-addressed: without enforcement they always go upstream.
        assert httpx.get(f"{base}/v2/{REPO}/manifests/warm", headers=ACCEPT).status_code == 502
        # Another repository does not get team/app's copy.
        other = httpx.get(f"{base}/v2/team/other/manifests/{warm.digest}", headers=ACCEPT)
        assert other.status_code == 502
    finally:
        if proxy is not None:
            proxy.stop()
        registry.stop()


def test_manifest_deleted_in_the_registry_stops_being_served(tmp_path: Path) -> None:
    """Issue 17, finding 3: after ``DELETE /v2/<repo>/manifests/<digest>`` (202) the proxy
    kept answering 200 for the digest from its cache, forever. Now the cached copy is served
    without asking for ``manifest_cache_recheck`` after the registry last said it has it,
    then one HEAD asks again and the deleted digest is a 404."""
    requires("docker-registry")
    registry = start_registry(tmp_path / "registry", delete=True)
    proxy: Server | None = None
    recheck = 1.0
    try:
        url = registry.extra["url"]
        with httpx.Client(base_url=url, timeout=30) as c:
            doomed = images.single_image("cache-doomed")
            kept = images.single_image("cache-kept")
            images.push_image(c, REPO, doomed, "doomed")
            images.push_image(c, REPO, kept, "kept")
        config = {"upstreams": [upstream_config("internal", url)],
                  "limits": {"manifest_cache_recheck": f"{recheck}s"}}  # fmt: skip
        proxy = start_proxy(tmp_path / "proxy", config)
        base = proxy.extra["url"]
        for image in (doomed, kept):
            warm = _manifest(base, image.digest)
            assert warm.status_code == 200, warm.text
            assert warm.content == image.manifest

        deleted = httpx.delete(f"{url}/v2/{REPO}/manifests/{doomed.digest}")
        assert deleted.status_code == 202, deleted.text
        assert _manifest(registry.extra["url"], doomed.digest).status_code == 404

        time.sleep(recheck + 0.5)  # past the interval (no timing is asserted)
        gone = _manifest(base, doomed.digest)
        assert gone.status_code == 404, gone.text
        assert gone.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
        assert doomed.manifest not in gone.content
        head = httpx.head(f"{base}/v2/{REPO}/manifests/{doomed.digest}", headers=ACCEPT)
        assert head.status_code == 404
        # What the registry still has is still served (re-checked with a HEAD, not refetched).
        still = _manifest(base, kept.digest)
        assert still.status_code == 200
        assert still.content == kept.manifest

        # Registry down: a cached manifest keeps being served (the documented behaviour),
        # even past the interval, because nothing says it was deleted.
        registry.stop()
        time.sleep(recheck + 0.5)
        down = _manifest(base, kept.digest)
        assert down.status_code == 200
        assert down.content == kept.manifest
    finally:
        if proxy is not None:
            proxy.stop()
        registry.stop()


@pytest.fixture
def token_registry(tmp_path: Path) -> Iterator[tuple[Server, TokenServer, str]]:
    requires("docker-registry")
    tokens = TokenServer(users={"bob": "bob-secret"}, cert_dir=tmp_path / "certs")
    try:
        registry = start_token_registry(tokens, work_dir=tmp_path / "registry", log_dir=tmp_path)
        try:
            push = {"Authorization": f"Bearer {tokens.token([f'repository:{REPO}:pull,push'])}"}
            with httpx.Client(base_url=registry.extra["url"], headers=push, timeout=30) as c:
                digest = images.push_image(c, REPO, images.single_image("cache-auth"), "v1")
            yield registry, tokens, digest
        finally:
            registry.stop()
    finally:
        tokens.stop()


def test_passthrough_cached_manifest_needs_the_registrys_yes(
    token_registry: tuple[Server, TokenServer, str], tmp_path: Path
) -> None:
    registry, tokens, digest = token_registry
    config = {"upstreams": [upstream_config("private", registry.extra["url"],
                                            auth={"mode": "passthrough"})]}  # fmt: skip
    proxy = start_proxy(tmp_path / "proxy", config)
    try:
        base = proxy.extra["url"]
        allowed = f"Bearer {tokens.token([f'repository:{REPO}:pull'], user='bob')}"
        elsewhere = f"Bearer {tokens.token(['repository:team/other:pull'], user='eve')}"

        warm = _manifest(base, digest, Authorization=allowed)
        assert warm.status_code == 200, warm.text
        assert sha256(warm.content) == digest

        # Cached now, but neither an anonymous client nor one whose token is for another
        # repository gets it: the registry's 401 and challenge reach them, as uncached.
        for who in ({}, {"Authorization": elsewhere}):
            refused = _manifest(base, digest, **who)
            assert refused.status_code == 401, refused.text
            assert warm.content not in refused.content
            assert refused.json()["errors"][0]["code"] == "UNAUTHORIZED"
            assert "/_trustproxy/token/private" in refused.headers["www-authenticate"]

        # The registry says yes to this one (a real HEAD, with the OCI Accept it needs).
        again = _manifest(base, digest, Authorization=allowed)
        assert again.status_code == 200
        assert again.content == warm.content
    finally:
        proxy.stop()
