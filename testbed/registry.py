"""A real CNCF distribution registry (Debian's docker-registry) on a free loopback port."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from testbed.processes import Server, free_port, start_server


def registry_binary() -> str | None:
    return shutil.which("docker-registry") or shutil.which("registry")


def registry_config(
    root: Path, port: int, *, auth: dict[str, Any] | None = None, delete: bool = False
) -> dict[str, Any]:
    """``delete``: allow ``DELETE /v2/<repo>/manifests/<digest>`` (off, as distribution's
    default, unless a test deletes on purpose)."""
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "storage")},
            "delete": {"enabled": delete},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": "testbed-not-secret"},
    }
    if auth:
        config["auth"] = auth
    return config


def start_registry(
    workdir: Path,
    *,
    name: str = "registry",
    auth: dict[str, Any] | None = None,
    delete: bool = False,
) -> Server:
    """Start ``docker-registry serve`` with filesystem storage under ``workdir``."""
    binary = registry_binary()
    if binary is None:
        raise RuntimeError("docker-registry is not installed (apt-get install docker-registry)")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / f"{name}.yml"
    config_path.write_text(yaml.safe_dump(registry_config(workdir, port, auth=auth, delete=delete)))
    server = start_server(name, [binary, "serve", str(config_path)], log_dir=workdir, port=port)
    server.extra["url"] = f"http://127.0.0.1:{port}"
    server.extra["host"] = f"127.0.0.1:{port}"
    return server
