"""Run trustproxy itself as a real uvicorn process (streaming and memory need a real server)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from testbed.processes import Server, free_port, start_server

REPO_ROOT = Path(__file__).resolve().parents[1]


def start_proxy(
    workdir: Path, config: dict[str, Any], *, name: str = "trustproxy", port: int = 0
) -> Server:
    """Write ``config`` (listen filled in) and start ``python -m proxy serve`` on it."""
    port = port or free_port()
    config = dict(config)
    server_cfg = dict(config.get("server") or {})
    server_cfg["listen"] = f"127.0.0.1:{port}"
    # One process unless a test asks for more: the default (every CPU) would multiply the
    # suite's processes, and most tests count what one process does.
    server_cfg.setdefault("workers", 1)
    config["server"] = server_cfg
    # The host's state file: per proxy (a restart on the same name keeps it), never the
    # machine's default directory.
    cache_cfg = dict(config.get("cache") or {})
    cache_cfg.setdefault("state_dir", str(workdir / f"{name}-state"))
    config["cache"] = cache_cfg
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    server = start_server(
        name,
        [sys.executable, "-m", "proxy", "serve", "--config", str(config_path)],
        log_dir=workdir,
        port=port,
        cwd=REPO_ROOT,
    )
    scheme = "https" if server_cfg.get("tls_cert_file") else "http"
    server.extra["url"] = f"{scheme}://127.0.0.1:{port}"
    server.extra["host"] = f"127.0.0.1:{port}"
    server.extra["config"] = str(config_path)
    return server


def upstream_config(name: str, url: str, **extra: Any) -> dict[str, Any]:
    host = url.split("://", 1)[1]
    return {"name": name, "url": url, "registry": host, **extra}
