"""trustproxy in front of registries that require auth, and clients authenticating to it.

Real docker-registry with token auth (the test bed's token server) or htpasswd Basic; real
skopeo as the client; the proxy as a real uvicorn process.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from proxy.upstream.challenge import parse_www_authenticate
from testbed import images
from testbed.processes import Server
from testbed.proxy_server import start_proxy, upstream_config
from testbed.tls import make_ca
from testbed.token_server import (
    TokenServer,
    start_htpasswd_registry,
    start_token_registry,
    write_htpasswd,
)
from tests.conftest import requires

pytestmark = pytest.mark.integration

REPO = "team/app"
PASSWORD = "correct horse battery staple"


@dataclass
class AuthBed:
    registry: Server
    tokens: TokenServer | None
    digest: str

    @property
    def url(self) -> str:
        return self.registry.extra["url"]


def _push(url: str, authorization: str) -> str:
    with httpx.Client(base_url=url, headers={"Authorization": authorization}, timeout=30) as c:
        return images.push_image(c, REPO, images.single_image("auth"), "v1")


@pytest.fixture(scope="module")
def token_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthBed]:
    """Token auth; the token service wants Basic credentials (like a private Hub repo)."""
    requires("docker-registry")
    tmp = tmp_path_factory.mktemp("token-bed")
    tokens = TokenServer(users={"bob": PASSWORD}, cert_dir=tmp / "certs")
    registry = start_token_registry(tokens, work_dir=tmp / "registry", log_dir=tmp)
    try:
        token = tokens.token([f"repository:{REPO}:pull,push"], user="bob")
        digest = _push(registry.extra["url"], f"Bearer {token}")
        yield AuthBed(registry, tokens, digest)
    finally:
        registry.stop()
        tokens.stop()


@pytest.fixture(scope="module")
def anonymous_token_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthBed]:
    """Token auth with anonymous tokens (like public Docker Hub repositories)."""
    requires("docker-registry")
    tmp = tmp_path_factory.mktemp("anon-bed")
    tokens = TokenServer(users=None, cert_dir=tmp / "certs")
    registry = start_token_registry(tokens, work_dir=tmp / "registry", log_dir=tmp)
    try:
        token = tokens.token([f"repository:{REPO}:pull,push"])
        digest = _push(registry.extra["url"], f"Bearer {token}")
        yield AuthBed(registry, tokens, digest)
    finally:
        registry.stop()
        tokens.stop()


def skopeo_inspect(host: str, *extra: str) -> subprocess.CompletedProcess[bytes]:
    requires("skopeo")
    return subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", *extra,
         f"docker://{host}/{REPO}:v1"],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip


def digest_of(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def test_anonymous_bearer_flow_and_token_reuse(
    anonymous_token_bed: AuthBed, tmp_path: Path
) -> None:
    bed = anonymous_token_bed
    assert bed.tokens is not None
    proxy = start_proxy(tmp_path, {"upstreams": [upstream_config("anon", bed.url)]})
    try:
        before = bed.tokens.count
        for _ in range(3):
            result = skopeo_inspect(proxy.extra["host"])
            assert result.returncode == 0, result.stderr.decode()
            assert digest_of(result.stdout) == bed.digest
        # One token for the repository's pull scope, reused for every later request.
        assert bed.tokens.count - before == 1
    finally:
        proxy.stop()


def test_basic_mode_uses_proxy_credentials(token_bed: AuthBed, tmp_path: Path) -> None:
    config = {"upstreams": [upstream_config(
        "private", token_bed.url,
        auth={"mode": "basic", "username": "bob", "password": PASSWORD},
    )]}  # fmt: skip
    proxy = start_proxy(tmp_path, config)
    try:
        result = skopeo_inspect(proxy.extra["host"])
        assert result.returncode == 0, result.stderr.decode()
        assert digest_of(result.stdout) == token_bed.digest
    finally:
        proxy.stop()


def test_refused_proxy_credentials_are_403_without_challenge(
    token_bed: AuthBed, tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text("wrong password\n")
    config = {"upstreams": [upstream_config(
        "private", token_bed.url,
        auth={"mode": "basic", "username": "bob", "password_file": "pw"},
    )]}  # fmt: skip
    proxy = start_proxy(tmp_path, config)
    try:
        r = httpx.get(f"{proxy.extra['url']}/v2/{REPO}/manifests/v1")
        assert r.status_code == 403
        assert r.json()["errors"][0]["code"] == "DENIED"
        assert "www-authenticate" not in r.headers
        assert PASSWORD not in r.text
        assert "wrong password" not in r.text
    finally:
        proxy.stop()


def test_basic_mode_against_htpasswd_registry(tmp_path: Path) -> None:
    requires("docker-registry")
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"bob": PASSWORD})
    registry = start_htpasswd_registry(htpasswd, work_dir=tmp_path / "reg", log_dir=tmp_path)
    try:
        from proxy.upstream.auth import basic_header

        digest = _push(registry.extra["url"], basic_header("bob", PASSWORD))
        config = {"upstreams": [upstream_config(
            "basic", registry.extra["url"],
            auth={"mode": "basic", "username": "bob", "password": PASSWORD},
        )]}  # fmt: skip
        proxy = start_proxy(tmp_path / "proxy", config)
        try:
            result = skopeo_inspect(proxy.extra["host"])
            assert result.returncode == 0, result.stderr.decode()
            assert digest_of(result.stdout) == digest
        finally:
            proxy.stop()
    finally:
        registry.stop()


def test_passthrough_client_gets_token_through_proxy(token_bed: AuthBed, tmp_path: Path) -> None:
    assert token_bed.tokens is not None
    config = {"upstreams": [upstream_config(
        "private", token_bed.url, prefix="priv", auth={"mode": "passthrough"},
    )]}  # fmt: skip
    proxy = start_proxy(tmp_path, config)
    try:
        base = proxy.extra["url"]
        # The challenge points at the proxy's token relay, with the client-visible name.
        r = httpx.get(f"{base}/v2/priv/{REPO}/manifests/v1")
        assert r.status_code == 401
        (bearer,) = parse_www_authenticate(r.headers["www-authenticate"])
        assert bearer.realm == f"{base}/_trustproxy/token/private"
        assert bearer.get("scope") == f"repository:priv/{REPO}:pull"
        # skopeo with the user's own credentials logs in via the proxy and pulls.
        result = subprocess.run(
            ["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", f"bob:{PASSWORD}",
             f"docker://{proxy.extra['host']}/priv/{REPO}:v1"],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr.decode()
        assert digest_of(result.stdout) == token_bed.digest
        # Without credentials nothing is served: the client's identity decides.
        denied = subprocess.run(
            ["skopeo", "inspect", "--raw", "--tls-verify=false",
             f"docker://{proxy.extra['host']}/priv/{REPO}:v1"],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        assert denied.returncode != 0
        # A push scope asked of the relay is dropped: the proxy is read-only.
        t = httpx.get(
            f"{base}/_trustproxy/token/private",
            params={"scope": f"repository:priv/{REPO}:pull,push"},
            auth=("bob", PASSWORD),
        )
        assert t.status_code == 200
        last = token_bed.tokens.requests[-1]
        assert last.scopes == (f"repository:{REPO}:pull",)
    finally:
        proxy.stop()


def test_htpasswd_client_auth_on_the_proxy(anonymous_token_bed: AuthBed, tmp_path: Path) -> None:
    htpasswd = write_htpasswd(tmp_path / "clients.htpasswd", {"alice": "alice-secret"})
    config = {
        "server": {"client_auth": {"htpasswd_file": str(htpasswd)}},
        "upstreams": [upstream_config("anon", anonymous_token_bed.url)],
    }
    proxy = start_proxy(tmp_path, config)
    try:
        r = httpx.get(f"{proxy.extra['url']}/v2/{REPO}/manifests/v1")
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Basic ")
        assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
        wrong = skopeo_inspect(proxy.extra["host"], "--creds", "alice:nope")
        assert wrong.returncode != 0
        ok = skopeo_inspect(proxy.extra["host"], "--creds", "alice:alice-secret")
        assert ok.returncode == 0, ok.stderr.decode()
        assert digest_of(ok.stdout) == anonymous_token_bed.digest
    finally:
        proxy.stop()


def test_tls_listener_with_mtls(anonymous_token_bed: AuthBed, tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    server_pair = ca.issue_server(tmp_path / "ca", "proxy")
    client_pair = ca.issue_client(tmp_path / "ca", "client", "node-1")
    config = {
        "server": {
            "tls_cert_file": str(server_pair.cert),
            "tls_key_file": str(server_pair.key),
            "client_auth": {"client_ca_file": str(ca.cert)},
        },
        "upstreams": [upstream_config("anon", anonymous_token_bed.url)],
    }
    proxy = start_proxy(tmp_path, config)
    try:
        url = f"{proxy.extra['url']}/v2/{REPO}/manifests/v1"
        with httpx.Client(verify=ca.client_context(client_pair)) as c:
            r = c.get(url, headers={"Accept": images.OCI_MANIFEST})
            assert r.status_code == 200
            assert digest_of(r.content) == anonymous_token_bed.digest
        with (
            httpx.Client(verify=ca.client_context()) as c,
            pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)),
        ):
            c.get(url)  # no client certificate: the handshake is refused
    finally:
        proxy.stop()
