"""A real nginx as a plain reverse proxy in front of one upstream: the benchmark's "do
nothing" baseline (every byte relayed, nothing checked).

    client --> nginx (loopback, free port) --> upstream (e.g. docker-registry)

Tuned the way one would front a registry: upstream keep-alive (HTTP/1.1, a pool of idle
connections), no response buffering to disk (``proxy_buffering off``) with a 1 MiB relay
buffer (``proxy_buffer_size 1m``: blobs move in large reads), request bodies streamed, no
access log. Everything nginx writes (pid, error log, temp directories) stays under the
working directory; the process runs in the foreground (``daemon off``) so the bed can stop
it by PID like every other server (SIGTERM to the master: fast shutdown of the workers too).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from testbed.processes import Server, free_port, start_server

__all__ = ["nginx_binary", "nginx_config", "nginx_version", "start_nginx"]


def nginx_binary() -> str | None:
    """``nginx`` on PATH, else Debian's ``/usr/sbin/nginx`` (not on every user's PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    sbin = Path("/usr/sbin/nginx")
    return str(sbin) if sbin.exists() else None


def nginx_version() -> str:
    """``nginx/1.22.1`` or "" when nginx is missing (``nginx -v`` prints to stderr)."""
    import subprocess

    binary = nginx_binary()
    if binary is None:
        return ""
    done = subprocess.run([binary, "-v"], capture_output=True, timeout=10, check=False)
    text = (done.stderr or done.stdout).decode(errors="replace").strip()
    return text.rsplit(":", 1)[-1].strip() if ":" in text else text


def nginx_config(
    workdir: Path,
    port: int,
    upstream: str,
    *,
    workers: int | str = "auto",
    keepalive: int = 128,
) -> str:
    """The whole ``nginx.conf``: listen on ``127.0.0.1:port``, relay everything to
    ``upstream`` (``host:port``)."""
    temp = workdir / "temp"
    return f"""\
daemon off;
master_process on;
worker_processes {workers};
pid {workdir / "nginx.pid"};
error_log {workdir / "nginx-error.log"} warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path {temp / "client_body"};
    proxy_temp_path {temp / "proxy"};
    fastcgi_temp_path {temp / "fastcgi"};
    uwsgi_temp_path {temp / "uwsgi"};
    scgi_temp_path {temp / "scgi"};

    upstream backend {{
        server {upstream};
        keepalive {keepalive};
    }}

    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;

        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_buffer_size 1m;
            proxy_buffers 4 1m;  # unused without buffering; keeps the size checks happy
            proxy_busy_buffers_size 2m;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
        }}
    }}
}}
"""


def start_nginx(
    workdir: Path,
    upstream_url: str,
    *,
    name: str = "nginx",
    workers: int | str = "auto",
) -> Server:
    """Start nginx in front of ``upstream_url`` (``http://host:port``); ``extra["url"]`` is
    its own base URL. Stop it with ``Server.stop()`` (by PID)."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed (bash scripts/install-bench-deps.sh)")
    if not upstream_url.startswith("http://"):
        raise ValueError(f"plain http upstreams only, got {upstream_url!r}")
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "temp").mkdir(exist_ok=True)
    port = free_port()
    conf = workdir / f"{name}.conf"
    upstream = upstream_url.removeprefix("http://").rstrip("/")
    conf.write_text(nginx_config(workdir, port, upstream, workers=workers))
    argv = [binary, "-e", str(workdir / "nginx-error.log"), "-p", str(workdir), "-c", str(conf)]
    server = start_server(name, argv, log_dir=workdir, port=port)
    server.extra["url"] = f"http://127.0.0.1:{port}"
    server.extra["host"] = f"127.0.0.1:{port}"
    server.extra["config"] = str(conf)
    return server
