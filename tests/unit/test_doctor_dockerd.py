"""``trustproxy doctor``, dockerd's egress proxy: where dockerd's HTTPS_PROXY is read from,
which upstreams it applies to (Go's rules), and the probe when the proxy does not answer.
The probe through a proxy that answers or refuses is in
tests/integration/test_client_dockerd.py (a real dockerd, a real CONNECT proxy)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from proxy import doctor
from proxy.doctor import EgressProxy, Options, dockerd_egress_checks, dockerd_egress_proxy
from testbed.processes import free_port

DROPINS = doctor.DOCKERD_DROPINS


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, None),
        ({f"{DROPINS}/http-proxy.conf":
          '[Service]\nEnvironment="HTTPS_PROXY=http://proxy.corp:3128" '
          '"NO_PROXY=localhost,.corp"\n'},
         ("http://proxy.corp:3128", None, ("localhost", ".corp"))),
        ({f"{DROPINS}/p.conf": "[Service]\nEnvironment=https_proxy=http://lower:3128\n"},
         ("http://lower:3128", None, ())),
        ({f"{DROPINS}/10-a.conf": 'Environment="HTTPS_PROXY=http://first:1"\n',
          f"{DROPINS}/20-b.conf": 'Environment="HTTPS_PROXY=http://second:2"\n'},
         ("http://second:2", None, ())),
        ({f"{DROPINS}/p.conf": 'Environment="HTTP_PROXY=http://plain:80"\n'},
         (None, "http://plain:80", ())),
        ({f"{DROPINS}/p.conf": 'Environment="HTTPS_PROXY=http://broken\n'}, None),
        ({f"{DROPINS}/p.conf": "# Environment=HTTPS_PROXY=http://commented:1\n"}, None),
        ({f"{DROPINS}/p.txt": 'Environment="HTTPS_PROXY=http://not-a-dropin:1"\n'}, None),
        ({"etc/docker/daemon.json": json.dumps(
            {"proxies": {"https-proxy": "http://json:3128", "no-proxy": "a.example,b.example"}}),
          f"{DROPINS}/p.conf": 'Environment="HTTPS_PROXY=http://env:1"\n'},
         ("http://json:3128", None, ("a.example", "b.example"))),
        ({"etc/docker/daemon.json": json.dumps({"registry-mirrors": []})}, None),
    ],
    ids=["nothing", "dropin", "lower-case", "later-file-wins", "http-only", "bad-quoting",
         "comment", "not-conf", "daemon-json-wins", "no-proxies"],
)  # fmt: skip
def test_where_dockerds_proxy_is_read_from(
    files: dict[str, str], expected: tuple[str | None, str | None, tuple[str, ...]] | None,
    tmp_path: Path,
) -> None:  # fmt: skip
    found = dockerd_egress_proxy(_tree(tmp_path, files))
    if expected is None:
        assert found is None
        return
    assert found is not None
    assert (found.https_proxy, found.http_proxy, found.no_proxy) == expected
    assert str(tmp_path) not in found.source  # shown as on the host
    assert found.source.startswith("/etc/")


@pytest.mark.parametrize(
    ("url", "no_proxy", "expected"),
    [
        ("https://registry-1.docker.io", (), "http://p:3128"),
        ("http://registry.corp:5000", (), None),  # no HTTP_PROXY: direct
        ("https://127.0.0.1:5000", (), None),  # Go never proxies loopback
        ("https://localhost:5000", (), None),
        ("https://[::1]:5000", (), None),
        ("https://registry-1.docker.io", ("*",), None),
        ("https://registry-1.docker.io", ("docker.io",), None),
        ("https://registry-1.docker.io", (".docker.io",), None),
        ("https://registry-1.docker.io", ("registry-1.docker.io:443",), None),
        ("https://registry-1.docker.io", ("other.example",), "http://p:3128"),
        ("https://notdocker.io", ("docker.io",), "http://p:3128"),
    ],
)
def test_which_upstreams_go_through_it(
    url: str, no_proxy: tuple[str, ...], expected: str | None
) -> None:
    proxy = EgressProxy("http://p:3128", None, no_proxy, "/etc/x")
    assert proxy.for_url(url) == expected


def test_a_proxy_that_does_not_answer_is_a_warning(tmp_path: Path) -> None:
    port = free_port()  # nothing listens
    root = _tree(
        tmp_path, {f"{DROPINS}/p.conf": f'Environment="HTTPS_PROXY=http://127.0.0.1:{port}"\n'}
    )
    options = Options(proxy="https://proxy.example.com", host_root=root, timeout=2)
    (check,) = asyncio.run(dockerd_egress_checks(root, options))
    assert check.group == "upstream"
    assert check.status == "warn"
    assert "did not answer" in check.summary
    assert "/etc/systemd/system/docker.service.d/p.conf" in check.summary


def test_no_proxy_no_checks(tmp_path: Path) -> None:
    options = Options(proxy="https://proxy.example.com", host_root=tmp_path, timeout=2)
    assert asyncio.run(dockerd_egress_checks(tmp_path, options)) == []


def test_credentials_of_the_proxy_are_never_shown(tmp_path: Path) -> None:
    port = free_port()
    root = _tree(tmp_path, {
        f"{DROPINS}/p.conf": f'Environment="HTTPS_PROXY=http://user:s3cret@127.0.0.1:{port}"\n'
    })  # fmt: skip
    options = Options(proxy="https://proxy.example.com", host_root=root, timeout=2)
    (check,) = asyncio.run(dockerd_egress_checks(root, options))
    shown = json.dumps([check.summary, check.details, check.data])
    assert "s3cret" not in shown
    assert f"http://127.0.0.1:{port}" in shown
