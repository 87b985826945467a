"""The example configs in config/ stay valid, and the minimal one runs as is."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from proxy.settings import load_settings
from testbed.processes import free_port

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
# Main configs; the policy examples (policy*.yaml) are checked by tests/unit/policy.
EXAMPLES = sorted(p for p in CONFIG_DIR.glob("*.yaml") if not p.name.startswith("policy"))


def test_there_are_examples_for_each_use() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"trustproxy.yaml", "docker-hub.yaml", "internal-registry.yaml",
            "local-demo.yaml"} <= names  # fmt: skip


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_valid(path: Path) -> None:
    settings = load_settings(path, {}, check_files=False)
    assert settings.upstreams


def test_minimal_example_loads_with_relative_paths_resolved() -> None:
    settings = load_settings(CONFIG_DIR / "trustproxy.yaml", {})
    (source,) = settings.trust.sources
    assert source.ca_file == CONFIG_DIR / "notary-ca.crt"
    assert settings.policy_file == CONFIG_DIR / "policy.yaml"
    assert settings.cache.redis_url is None


def test_minimal_example_runs_as_is() -> None:
    port = free_port()
    env = dict(os.environ, TRUSTPROXY_SERVER__LISTEN=f"127.0.0.1:{port}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--config", str(CONFIG_DIR / "trustproxy.yaml")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.communicate()[0].decode()
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "proxy did not start"
                time.sleep(0.1)
        assert r.status_code == 200
    finally:
        proc.terminate()
        output = proc.communicate(timeout=10)[0].decode()
    assert "trustproxy listening" in output
