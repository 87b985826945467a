"""``trustproxy doctor``: containerd's hosts.toml read the way each containerd version reads it.

The behaviour modelled here was observed on a real containerd 1.6.20 by
tests/integration/test_client_containerd.py (which also checks that doctor's verdict equals
what containerd did); the version boundaries come from containerd's source
(``remotes/docker/config/hosts.go``: 1.7.32 accepts a file without a [host] table).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from proxy import doctor
from proxy.doctor import (
    ContainerdVersion,
    client_config_checks,
    containerd_default_host,
    containerd_hosts,
    containerd_namespace,
    parse_containerd_version,
)

PROXY = "https://proxy.example.com:8443"
HUB = "https://registry-1.docker.io"
V1_6: ContainerdVersion = (1, 6, 20)
V1_7_OLD: ContainerdVersion = (1, 7, 31)
V1_7_FIXED: ContainerdVersion = (1, 7, 32)
V2: ContainerdVersion = (2, 1, 4)

SERVER_AND_HOST = f"""\
server = "{PROXY}"
capabilities = ["pull", "resolve"]

[host."{PROXY}"]
  capabilities = ["pull", "resolve"]
"""
SERVER_ONLY = f'server = "{PROXY}"\ncapabilities = ["pull", "resolve"]\n'
HOST_ONLY = f'[host."{PROXY}"]\n  capabilities = ["pull", "resolve"]\n'
MIRROR = f'server = "{HUB}"\n\n[host."{PROXY}"]\n  capabilities = ["pull", "resolve"]\n'
UPSTREAM_FIRST = f"""\
server = "{PROXY}"

[host."{HUB}"]
  capabilities = ["pull", "resolve"]

[host."{PROXY}"]
  capabilities = ["pull", "resolve"]
"""
PUSH_ONLY_UPSTREAM = f"""\
server = "{PROXY}"

[host."{HUB}"]
  capabilities = ["push"]
"""
BAD_CAPABILITY = f'server = "{PROXY}"\n\n[host."{PROXY}"]\n  capabilities = ["pul"]\n'
NO_SCHEME = 'server = "proxy.example.com:8443"\n\n[host."proxy.example.com:8443"]\n'


def _doc(text: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        return tomllib.loads(text), None
    except tomllib.TOMLDecodeError as e:
        return None, f"not valid TOML ({e})"


@pytest.mark.parametrize(
    ("text", "version", "hosts", "appended", "ignored"),
    [
        (SERVER_AND_HOST, V1_6, (PROXY, PROXY), False, None),
        (SERVER_AND_HOST, V2, (PROXY, PROXY), False, None),
        (SERVER_ONLY, V1_6, (HUB,), True, "invalid `host` tree"),
        (SERVER_ONLY, V1_7_OLD, (HUB,), True, "invalid `host` tree"),
        (SERVER_ONLY, V1_7_FIXED, (PROXY,), False, None),
        (SERVER_ONLY, V2, (PROXY,), False, None),
        (HOST_ONLY, V1_6, (PROXY, HUB), True, None),
        (HOST_ONLY, V2, (PROXY, HUB), True, None),
        (MIRROR, V1_6, (PROXY, HUB), False, None),
        (UPSTREAM_FIRST, V1_6, (HUB, PROXY, PROXY), False, None),
        (PUSH_ONLY_UPSTREAM, V1_6, (PROXY,), False, None),
        (BAD_CAPABILITY, V2, (HUB,), True, "unknown capability"),
        (f'server = "{PROXY}"\ncapabilities = "pull"\n[host]\n', V2, (HUB,), True, "not a list"),
        (NO_SCHEME, V1_6, (PROXY, PROXY), False, None),
        ("server = ", V2, (HUB,), True, "not valid TOML"),
        ("", V1_6, (HUB,), True, "invalid `host` tree"),
        ("", V2, (HUB,), True, None),
    ],
    ids=["server-and-host-1.6", "server-and-host-2", "server-only-1.6", "server-only-1.7.31",
         "server-only-1.7.32", "server-only-2", "host-only-1.6", "host-only-2", "mirror",
         "upstream-first", "push-only-upstream", "bad-capability", "capabilities-string",
         "no-scheme", "bad-toml",
         "empty-1.6", "empty-2"],
)  # fmt: skip
def test_hosts_containerd_tries(
    text: str,
    version: ContainerdVersion,
    hosts: tuple[str, ...],
    appended: bool,
    ignored: str | None,
) -> None:
    doc, error = _doc(text)
    seen = containerd_hosts("docker.io", doc, error, version)
    assert seen.hosts == hosts
    assert seen.default_appended is appended
    if ignored is None:
        assert seen.ignored is None
    else:
        assert seen.ignored is not None
        assert ignored in seen.ignored


@pytest.mark.parametrize(
    ("namespace", "default"),
    [
        ("docker.io", HUB),
        ("quay.io", "https://quay.io"),
        ("proxy.example.com:8443", PROXY),
        ("127.0.0.1:5000", "http://127.0.0.1:5000"),  # loopback: plain HTTP (containerd 1.6+)
        ("localhost:5000", "http://localhost:5000"),
    ],
)
def test_default_host(namespace: str, default: str) -> None:
    assert containerd_default_host(namespace) == default


@pytest.mark.parametrize(
    ("folder", "namespace"),
    [
        ("docker.io", "docker.io"),
        ("proxy.example.com:8443", "proxy.example.com:8443"),
        ("proxy.example.com_8443_", "proxy.example.com:8443"),
        ("_default", "_default"),
        ("my_registry_", "my_registry_"),
    ],
)
def test_folder_names(folder: str, namespace: str) -> None:
    assert containerd_namespace(folder) == namespace


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3", V1_6),
        ("containerd containerd.io 1.7.31 abcdef", V1_7_OLD),
        ("containerd github.com/containerd/containerd/v2 v2.1.4 75cb2b7", V2),
        ("no version here", None),
    ],
)
def test_parse_version(text: str, version: ContainerdVersion | None) -> None:
    assert parse_containerd_version(text) == version


def _node(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


HOSTS = "etc/containerd/certs.d/docker.io/hosts.toml"


@pytest.mark.parametrize(
    ("text", "version", "status", "words"),
    [
        (SERVER_AND_HOST, V1_6, "pass", "server is the proxy, and the only [host]: enforcing"),
        (SERVER_ONLY, V1_6, "warn", "NOT enforcing: containerd cannot use this file (invalid"),
        (SERVER_ONLY, V2, "pass", "server is the proxy: enforcing"),
        (HOST_ONLY, V2, "warn", f"appends the default host {HUB} after the proxy"),
        (MIRROR, V1_6, "warn", f"containerd falls back to {HUB} (server)"),
        (UPSTREAM_FIRST, V1_6, "warn", f"but {HUB} are tried too"),
        (f'server = "{HUB}"\n', V1_6, "info", "containerd cannot use this file"),
        (f'server = "{HUB}"\n[host."{HUB}"]\n', V1_6, "info", "does not use the proxy"),
        (SERVER_ONLY, None, "warn", "on 1.7.32+ and 2.x: server is the proxy: enforcing"),
        (SERVER_AND_HOST, None, "pass", "enforcing (no fallback)"),
    ],
    ids=["enforcing", "server-only-1.6", "server-only-2", "host-only", "mirror",
         "upstream-first", "not-proxy-unparsable", "not-proxy", "unknown-version-differs",
         "unknown-version-agrees"],
)  # fmt: skip
def test_verdicts(
    text: str,
    version: ContainerdVersion | None,
    status: str,
    words: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(doctor, "detect_containerd_version", lambda root: ("containerd x", version))
    (check,) = client_config_checks(_node(tmp_path, {HOSTS: text}), PROXY)
    assert check.status == status, check
    assert words in check.summary, check.summary
    assert check.data["enforcing"] is (status == "pass")


def test_namespace_of_the_proxy_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Images that name the proxy: no fallback anywhere, but on 1.6 a file without a [host]
    table is ignored, and with it the proxy's CA."""
    monkeypatch.setattr(doctor, "detect_containerd_version", lambda root: (None, V1_6))
    folder = "etc/containerd/certs.d/proxy.example.com:8443/hosts.toml"
    (check,) = client_config_checks(_node(tmp_path, {folder: SERVER_ONLY}), PROXY)
    assert check.status == "warn"
    assert check.data["enforcing"] is True
    assert "ca/client settings are not applied" in check.summary


def test_config_path_is_where_the_folders_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(doctor, "detect_containerd_version", lambda root: (None, V1_6))
    root = _node(
        tmp_path,
        {
            "etc/containerd/config.toml": 'version = 2\n[plugins."io.containerd.grpc.v1.cri"'
            '.registry]\n  config_path = "/srv/registries:/etc/containerd/certs.d"\n',
            "srv/registries/docker.io/hosts.toml": HOST_ONLY,
            "etc/containerd/certs.d/proxy.example.com_8443_/hosts.toml": SERVER_AND_HOST,
        },
    )
    config, hub, own = client_config_checks(root, PROXY)
    assert config.status == "info"
    assert hub.name == "/srv/registries/docker.io/hosts.toml"
    assert hub.status == "warn"
    assert own.data["namespace"] == "proxy.example.com:8443"
    assert own.status == "pass"


def test_version_is_read_from_the_node_root(tmp_path: Path) -> None:
    binary = tmp_path / "usr/bin/containerd"
    binary.parent.mkdir(parents=True)
    binary.write_text(
        "#!/bin/sh\necho 'containerd github.com/containerd/containerd 1.6.20~ds1 deb12u3'\n"
    )
    binary.chmod(0o755)
    assert doctor.detect_containerd_version(tmp_path) == (
        "containerd github.com/containerd/containerd 1.6.20~ds1 deb12u3",
        V1_6,
    )
    assert doctor.detect_containerd_version(tmp_path / "nothing") == (None, None)
