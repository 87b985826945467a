"""Blobs stream in constant memory, and a client that leaves closes the upstream stream."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from testbed import images
from testbed.processes import Server
from testbed.proxy_server import start_proxy, upstream_config
from tests.conftest import RegistryBed

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIG = 256 * 1024 * 1024
RSS_BUDGET = 64 * 1024 * 1024  # the bound for proxy RSS growth
REPO = "team/big"


@pytest.fixture(scope="module")
def big_blob(registry: RegistryBed) -> str:
    digest = images.random_blob_digest(BIG, seed=b"big")
    with httpx.Client(base_url=registry.url, timeout=120) as client:
        images.push_blob_stream(client, REPO, images.random_chunks(BIG, seed=b"big"), digest)
    return digest


@pytest.fixture
def fresh_proxy(registry: RegistryBed, tmp_path: Path) -> Iterator[Server]:
    server = start_proxy(tmp_path, {"upstreams": [upstream_config("internal", registry.url)]})
    try:
        yield server
    finally:
        server.stop()


class RssSampler:
    """Samples a process's RSS every few milliseconds in a thread; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def upstream_connections(pid: int, port: int) -> int:
    conns = psutil.Process(pid).net_connections(kind="tcp")
    return sum(1 for c in conns if c.raddr and c.raddr.port == port and c.status == "ESTABLISHED")


def test_256mib_blob_streams_with_bounded_memory(
    fresh_proxy: Server, big_blob: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"{fresh_proxy.extra['url']}/v2/{REPO}/blobs/{big_blob}"
    # Warm up (imports, pools, first-request allocations) before taking the baseline.
    httpx.get(url, headers={"Range": "bytes=0-1023"}).raise_for_status()
    baseline = psutil.Process(fresh_proxy.pid).memory_info().rss
    digest = hashlib.sha256()
    received = 0
    with RssSampler(fresh_proxy.pid) as sampler, httpx.stream("GET", url, timeout=120) as r:
        assert r.status_code == 200
        assert int(r.headers["content-length"]) == BIG
        for chunk in r.iter_raw():
            digest.update(chunk)
            received += len(chunk)
    assert received == BIG
    assert "sha256:" + digest.hexdigest() == big_blob
    growth = sampler.peak - baseline
    with capsys.disabled():
        print(f"\n256 MiB blob: proxy RSS baseline {baseline / 2**20:.1f} MiB, "
              f"peak {sampler.peak / 2**20:.1f} MiB, growth {growth / 2**20:.1f} MiB")  # fmt: skip
    assert growth < RSS_BUDGET


def test_client_disconnect_closes_upstream_stream(
    fresh_proxy: Server, big_blob: str, registry: RegistryBed
) -> None:
    registry_port = registry.server.port
    host, port = "127.0.0.1", int(fresh_proxy.extra["host"].rsplit(":", 1)[1])
    with socket.create_connection((host, port)) as sock:
        sock.sendall(f"GET /v2/{REPO}/blobs/{big_blob} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        got = 0
        while got < 4 * 1024 * 1024:  # well into the body, far from its end
            data = sock.recv(65536)
            assert data, "proxy closed the connection early"
            got += len(data)
        assert upstream_connections(fresh_proxy.pid, registry_port) >= 1
    # The client is gone: the proxy must drop its upstream connection too (not drain
    # 252 MiB for nobody, not keep the socket).
    deadline = time.monotonic() + 10
    while upstream_connections(fresh_proxy.pid, registry_port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream_connections(fresh_proxy.pid, registry_port) == 0
    # The access line records the outcome.
    deadline = time.monotonic() + 5
    while "client_disconnected" not in fresh_proxy.log_path.read_text():
        assert time.monotonic() < deadline, fresh_proxy.log_tail()
        time.sleep(0.05)
