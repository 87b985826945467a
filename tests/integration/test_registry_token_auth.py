"""UpstreamAuthenticator against a real docker-registry: token auth and htpasswd Basic."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from proxy.errors import UnauthorizedError
from proxy.upstream.auth import UpstreamAuthenticator, UpstreamUnauthorizedError, basic_header
from testbed.processes import Server
from testbed.token_server import (
    REGISTRY_BIN,
    TokenServer,
    start_htpasswd_registry,
    start_token_registry,
    write_htpasswd,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not Path(REGISTRY_BIN).exists(),
        reason=f"docker-registry not installed at {REGISTRY_BIN} (Debian package docker-registry)",
    ),
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REPO = "team/app"
PULL = f"repository:{REPO}:pull"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Bed:
    tokens: TokenServer | None
    registry: Server

    @property
    def url(self) -> str:
        return self.registry.extra["url"]


@contextmanager
def _bed(tmp_path: Path, users: dict[str, str] | None, expires_in: int = 300) -> Iterator[Bed]:
    tokens = TokenServer(users=users, expires_in=expires_in, cert_dir=tmp_path / "certs")
    try:
        registry = start_token_registry(
            tokens, work_dir=tmp_path / "registry", log_dir=tmp_path / "logs"
        )
        try:
            yield Bed(tokens, registry)
        finally:
            registry.stop()
    finally:
        tokens.stop()


@pytest.fixture
def anonymous_bed(tmp_path: Path) -> Iterator[Bed]:
    with _bed(tmp_path, users=None) as bed:
        yield bed


@pytest.fixture
def credentials_bed(tmp_path: Path) -> Iterator[Bed]:
    with _bed(tmp_path, users={"bob": PASSWORD}) as bed:
        yield bed


@pytest.fixture
def htpasswd_bed(tmp_path: Path) -> Iterator[Bed]:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"bob": PASSWORD})
    registry = start_htpasswd_registry(
        htpasswd, work_dir=tmp_path / "registry", log_dir=tmp_path / "logs"
    )
    try:
        yield Bed(None, registry)
    finally:
        registry.stop()


async def push_image(
    client: httpx.AsyncClient, base: str, name: str, tag: str, authorization: str
) -> tuple[str, bytes]:
    """Push a tiny OCI image (monolithic blob uploads); returns (manifest digest, bytes)."""
    headers = {"Authorization": authorization}
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    ).encode()
    layer = b"not really a tarball, the registry does not look inside"
    descriptors = []
    for blob, media_type in (
        (config, "application/vnd.oci.image.config.v1+json"),
        (layer, "application/vnd.oci.image.layer.v1.tar+gzip"),
    ):
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        started = await client.post(f"{base}/v2/{name}/blobs/uploads/", headers=headers)
        assert started.status_code == 202, started.text
        location = httpx.URL(base).join(started.headers["location"])
        done = await client.put(
            location.copy_merge_params({"digest": digest}),
            content=blob,
            headers={**headers, "Content-Type": "application/octet-stream"},
        )
        assert done.status_code == 201, done.text
        descriptors.append({"mediaType": media_type, "digest": digest, "size": len(blob)})
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptors[0],
            "layers": descriptors[1:],
        }
    ).encode()
    put = await client.put(
        f"{base}/v2/{name}/manifests/{tag}",
        content=manifest,
        headers={**headers, "Content-Type": OCI_MANIFEST},
    )
    assert put.status_code == 201, put.text
    return "sha256:" + hashlib.sha256(manifest).hexdigest(), manifest


async def request(
    client: httpx.AsyncClient,
    auth: UpstreamAuthenticator,
    method: str,
    url: str,
    scope: str,
) -> httpx.Response:
    """What the proxy's upstream client does: cached credentials, one retry on 401."""
    headers = {"Accept": OCI_MANIFEST}
    sent = auth.cached_authorization(scope)
    if sent is not None:
        headers["Authorization"] = sent
    response = await client.request(method, url, headers=headers)
    if response.status_code != 401:
        return response
    value = await auth.authorize(response.headers["www-authenticate"], scope, rejected=sent)
    headers["Authorization"] = value
    return await client.request(method, url, headers=headers)


async def _push_with_token(client: httpx.AsyncClient, bed: Bed) -> tuple[str, bytes]:
    assert bed.tokens is not None
    token = bed.tokens.token([f"repository:{REPO}:pull,push"], user="fixture")
    return await push_image(client, bed.url, REPO, "1.0", f"Bearer {token}")


@pytest.mark.anyio
async def test_anonymous_bearer_flow_and_token_reuse(anonymous_bed: Bed) -> None:
    tokens = anonymous_bed.tokens
    assert tokens is not None
    async with httpx.AsyncClient(timeout=10) as client:
        digest, manifest = await _push_with_token(client, anonymous_bed)
        auth = UpstreamAuthenticator(client, "testbed")

        base = await request(client, auth, "GET", f"{anonymous_bed.url}/v2/", "")
        assert base.status_code == 200
        assert tokens.count == 1
        first = tokens.requests[-1]
        assert first.scopes == ()

        url = f"{anonymous_bed.url}/v2/{REPO}/manifests/1.0"
        got = await request(client, auth, "GET", url, PULL)
        assert got.status_code == 200, got.text
        assert got.content == manifest
        assert hashlib.sha256(got.content).hexdigest() == digest.removeprefix("sha256:")
        assert tokens.count == 2
        second = tokens.requests[-1]
        assert (second.scopes, second.user) == ((PULL,), None)

        # Reuse: the cached token goes up front, the token server is not asked again.
        assert auth.cached_authorization(PULL) is not None
        for method in ("HEAD", "GET"):
            again = await request(client, auth, method, url, PULL)
            assert again.status_code == 200
            assert again.headers["docker-content-digest"] == digest
        assert tokens.count == 2


@pytest.mark.anyio
async def test_concurrent_requests_fetch_one_token(anonymous_bed: Bed) -> None:
    tokens = anonymous_bed.tokens
    assert tokens is not None
    async with httpx.AsyncClient(timeout=10) as client:
        await _push_with_token(client, anonymous_bed)
        auth = UpstreamAuthenticator(client, "testbed")
        url = f"{anonymous_bed.url}/v2/{REPO}/manifests/1.0"
        responses = await asyncio.gather(
            *(request(client, auth, "GET", url, PULL) for _ in range(10))
        )
        assert [r.status_code for r in responses] == [200] * 10
        assert tokens.count == 1


@pytest.mark.anyio
async def test_bearer_with_basic_credentials(credentials_bed: Bed) -> None:
    tokens = credentials_bed.tokens
    assert tokens is not None
    url = f"{credentials_bed.url}/v2/{REPO}/manifests/1.0"
    async with httpx.AsyncClient(timeout=10) as client:
        _, manifest = await _push_with_token(client, credentials_bed)

        auth = UpstreamAuthenticator(client, "testbed", username="bob", password=PASSWORD)
        assert (
            await request(client, auth, "GET", f"{credentials_bed.url}/v2/", "")
        ).status_code == 200
        got = await request(client, auth, "GET", url, PULL)
        assert got.status_code == 200
        assert got.content == manifest
        last = tokens.requests[-1]
        assert (last.user, last.account, last.status) == ("bob", "bob", 200)

        wrong = UpstreamAuthenticator(client, "testbed", username="bob", password="nope")
        with pytest.raises(UpstreamUnauthorizedError, match=r"testbed.*refused the configured"):
            await request(client, wrong, "GET", url, PULL)
        anonymous = UpstreamAuthenticator(client, "testbed")
        with pytest.raises(UnauthorizedError, match="refused anonymous access"):
            await request(client, anonymous, "GET", url, PULL)
        assert tokens.requests[-1].status == 401


@pytest.mark.anyio
async def test_short_lived_token_is_refetched(tmp_path: Path) -> None:
    # expires_in=1 is raised to the 60 s floor; distribution allows 60 s of leeway on exp,
    # so the floored token still works. An injected clock crosses the expiry.
    now = [0.0]
    with _bed(tmp_path, users=None, expires_in=1) as bed:
        tokens = bed.tokens
        assert tokens is not None
        async with httpx.AsyncClient(timeout=10) as client:
            await _push_with_token(client, bed)
            auth = UpstreamAuthenticator(client, "testbed", clock=lambda: now[0])
            url = f"{bed.url}/v2/{REPO}/manifests/1.0"
            assert (await request(client, auth, "GET", url, PULL)).status_code == 200
            now[0] = 49.0
            assert (await request(client, auth, "GET", url, PULL)).status_code == 200
            assert tokens.count == 1
            now[0] = 51.0
            assert auth.cached_authorization(PULL) is None
            assert (await request(client, auth, "GET", url, PULL)).status_code == 200
            assert tokens.count == 2


@pytest.mark.anyio
async def test_htpasswd_registry_basic_challenge(htpasswd_bed: Bed) -> None:
    url = f"{htpasswd_bed.url}/v2/{REPO}/manifests/1.0"
    async with httpx.AsyncClient(timeout=10) as client:
        digest, manifest = await push_image(
            client, htpasswd_bed.url, REPO, "1.0", basic_header("bob", PASSWORD)
        )
        auth = UpstreamAuthenticator(client, "testbed", username="bob", password=PASSWORD)
        unauthenticated = await client.get(f"{htpasswd_bed.url}/v2/")
        assert unauthenticated.status_code == 401
        assert unauthenticated.headers["www-authenticate"].startswith("Basic ")

        assert (
            await request(client, auth, "GET", f"{htpasswd_bed.url}/v2/", "")
        ).status_code == 200
        # Known Basic upstream: credentials go up front for every scope.
        assert auth.cached_authorization(PULL) == basic_header("bob", PASSWORD)
        got = await request(client, auth, "GET", url, PULL)
        assert got.status_code == 200
        assert got.content == manifest
        assert got.headers["docker-content-digest"] == digest

        wrong = UpstreamAuthenticator(client, "testbed", username="bob", password="nope")
        # No cache: 401, authorize gives Basic, the retry is 401 again. The caller reports
        # what it sent, and the authenticator stops the loop.
        response = await request(client, wrong, "GET", url, PULL)
        assert response.status_code == 401
        with pytest.raises(UpstreamUnauthorizedError, match="rejected the credentials"):
            await wrong.authorize(
                response.headers["www-authenticate"], PULL, rejected=basic_header("bob", "nope")
            )
        anonymous = UpstreamAuthenticator(client, "testbed")
        with pytest.raises(UnauthorizedError, match="none are configured"):
            await request(client, anonymous, "GET", url, PULL)
