"""A real dockerd for the tests: its own data root, exec root, pidfile, socket and daemon.json.

    docker CLI --unix socket--> dockerd --mirror / direct--> trustproxy --> registry
                                   |
                                   +--HTTPS_PROXY (CONNECT)--> EgressRelay --> "Docker Hub"

dockerd runs with ``--iptables=false --ip6tables=false --bridge=none --storage-driver=vfs``
(nothing of the host's network or storage is touched) and starts its own containerd under
its exec root. It is installed by ``scripts/install-client-deps.sh docker`` only when missing.

Docker Hub cannot be reached from the test machines, yet dockerd's registry-mirrors fallback
goes to ``registry-1.docker.io`` and nowhere else. :class:`EgressRelay` is the egress proxy
dockerd is given (``HTTPS_PROXY``, as on a corporate network): it records every CONNECT and,
when Hub is "reachable", terminates TLS for the Hub host names with a certificate from the
test CA (dockerd trusts it through ``SSL_CERT_FILE``) and relays the requests to a real
registry that stands in for Hub. When Hub is "blocked" it refuses the CONNECT, as an egress
firewall would. dockerd's own behaviour (which hosts it asks, in which order, after which
errors) is untouched; only where the name ``registry-1.docker.io`` leads is modelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.clients import CommandResult
from testbed.processes import Server, free_port, start_server
from testbed.tls import CA

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-client-deps.sh"

# What dockerd runs with in every test (see the brief): no iptables, no bridge, vfs.
DAEMON_FLAGS = (
    "--iptables=false",
    "--ip6tables=false",
    "--bridge=none",
    "--storage-driver=vfs",
)
HUB_HOSTS = frozenset({"registry-1.docker.io", "index.docker.io", "auth.docker.io"})


def ensure_installed() -> str | None:
    """Install dockerd through the project's script when missing; None when it is there,
    else why it cannot be had (the reason a test skips with)."""
    if shutil.which("dockerd") is None:
        if os.geteuid() != 0:
            return "dockerd is not installed and installing needs root (Debian package docker.io)"
        done = subprocess.run(
            ["bash", str(INSTALL_SCRIPT), "docker"],
            capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        if done.returncode != 0 or shutil.which("dockerd") is None:
            tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
            return "installing docker.io failed: " + " | ".join(tail)
    if docker_cli() is None:
        return "dockerd is installed but its docker CLI is not beside it"
    return None


def docker_cli() -> str | None:
    """The docker CLI of the same package as dockerd (``/usr/bin/docker`` next to
    ``/usr/sbin/dockerd`` on Debian), so that client and engine versions match; another
    ``docker`` earlier on PATH is not used."""
    daemon = shutil.which("dockerd")
    if daemon is None:
        return None
    real = Path(daemon).resolve()
    for folder in (real.parent, real.parent.parent / "bin", Path("/usr/bin")):
        candidate = folder / "docker"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


class DockerResult(CommandResult):
    @property
    def output(self) -> str:
        return (self.stdout + self.stderr).strip()


@dataclass
class Dockerd:
    """A running dockerd. ``docker(...)`` runs the matching CLI against its socket."""

    server: Server
    workdir: Path  # data root, daemon.json, log
    runtime_dir: Path  # exec root, socket, pidfile (short path: unix sockets are <108 bytes)
    config_file: Path
    cli: str
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def socket(self) -> Path:
        return self.runtime_dir / "docker.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["DOCKER_HOST"] = self.host
        env["DOCKER_CONFIG"] = str(self.workdir / "client-config")  # no ~/.docker
        return env

    def docker(
        self, *args: str, timeout: float = 180, env: Mapping[str, str] | None = None
    ) -> DockerResult:
        full = self.env()
        full.update(env or {})
        argv = [self.cli, *args]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False, env=full
        )
        return DockerResult.of(argv, done)

    def version(self) -> str:
        r = self.docker("version", "--format", "{{.Server.Version}}")
        return r.stdout.strip() if r.ok else "unknown"

    def registry_config(self) -> dict[str, Any]:
        r = self.docker("info", "--format", "{{json .RegistryConfig}}")
        if not r.ok:
            raise RuntimeError(f"docker info failed: {r.output}")
        value: dict[str, Any] = json.loads(r.stdout)
        return value

    def reload(self, config: Mapping[str, Any], *, timeout: float = 20) -> None:
        """Write ``config`` as daemon.json and SIGHUP dockerd; wait for its "Reloaded
        configuration" log line. Raises RuntimeError when none comes."""
        self.config = dict(config)
        before = self._log_count("Reloaded configuration")
        self.config_file.write_text(json.dumps(self.config, indent=2))
        self.server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self._log_count("Reloaded configuration") <= before:
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not reload in {timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def mirrors(self) -> list[str]:
        return sorted(self.registry_config().get("Mirrors") or [])

    def reconfigure(self, config: Mapping[str, Any]) -> None:
        """Apply ``config`` by SIGHUP (registry-mirrors and insecure-registries are
        reloadable, as docs/clients.md says) and check that ``docker info`` shows its
        mirrors. Raises RuntimeError when it does not."""
        self.reload(config)
        want = sorted(_mirror_url(m) for m in self.config.get("registry-mirrors", []))
        if self.mirrors() != want:
            raise RuntimeError(f"after reloading {self.config}, dockerd's mirrors are "
                               f"{self.mirrors()}")  # fmt: skip

    def restart(self, config: Mapping[str, Any], *, timeout: float = 60) -> None:
        """Stop dockerd, write ``config``, start it again with the same roots and socket."""
        self.config = dict(config)
        self.server.stop(timeout=30)
        self.config_file.write_text(json.dumps(self.config, indent=2))
        self.server.restart()
        _wait_answering(self, timeout)

    def _log_count(self, text: str) -> int:
        try:
            return self.server.log_path.read_text(errors="replace").count(text)
        except OSError:
            return 0

    def remove_all_images(self) -> None:
        ids = self.docker("images", "-aq").stdout.split()
        if ids:
            self.docker("rmi", "-f", *sorted(set(ids)))

    def stop(self) -> None:
        self.server.stop(timeout=30)
        _unmount_below(self.runtime_dir)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        return self.server.log_tail(lines)


def _unmount_below(folder: Path) -> None:
    """Unmount what dockerd left mounted under ``folder`` (it bind-mounts the host's network
    namespace at <exec-root>/netns/default and does not undo that at exit), deepest first."""
    prefix = str(folder.resolve()) + "/"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    # mountinfo field 5 is the mount point, with spaces etc. escaped as octal.
    points = [
        ln.split()[4].encode().decode("unicode_escape") for ln in lines if len(ln.split()) > 4
    ]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30, check=False)


def _mirror_url(url: str) -> str:
    # dockerd normalises a mirror to end with "/".
    return url if url.endswith("/") else url + "/"


class DockerdUnavailable(RuntimeError):
    """dockerd cannot run on this machine (the message says why)."""


def start_dockerd(
    workdir: Path,
    config: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> Dockerd:
    """Start dockerd with its own roots, socket and ``config`` as daemon.json.

    Raises DockerdUnavailable (with the reason) when it is not installed or exits at start.
    """
    reason = ensure_installed()
    if reason is not None:
        raise DockerdUnavailable(reason)
    cli = docker_cli()
    daemon = shutil.which("dockerd")
    if cli is None or daemon is None:
        raise DockerdUnavailable("dockerd or its docker CLI is missing")
    workdir.mkdir(parents=True, exist_ok=True)
    runtime_dir = Path(tempfile.mkdtemp(prefix="tp-dockerd-"))
    namespace = f"tp{uuid.uuid4().hex[:12]}"
    config_file = workdir / "daemon.json"
    config_file.write_text(json.dumps(dict(config or {}), indent=2))
    argv = [
        daemon,
        *DAEMON_FLAGS,
        f"--data-root={workdir / 'data'}",
        f"--exec-root={runtime_dir / 'exec'}",
        f"--pidfile={runtime_dir / 'dockerd.pid'}",
        f"--host=unix://{runtime_dir / 'docker.sock'}",
        f"--config-file={config_file}",
        # dockerd starts a containerd of its own under the exec root, unless a system one
        # listens on /run/containerd/containerd.sock; then it uses that one, and namespaces
        # of its own keep its containers apart from a system dockerd's ("moby").
        f"--containerd-namespace={namespace}",
        f"--containerd-plugins-namespace={namespace}-plugins",
    ]
    server = start_server("dockerd", argv, log_dir=workdir, env=env)
    engine = Dockerd(server, workdir, runtime_dir, config_file, cli, dict(config or {}))
    try:
        _wait_answering(engine, timeout)
    except DockerdUnavailable:
        engine.stop()
        raise
    return engine


def _wait_answering(engine: Dockerd, timeout: float) -> None:
    server = engine.server
    deadline = time.monotonic() + timeout
    while True:
        if not server.alive():
            raise DockerdUnavailable(
                f"dockerd exited at start (code {server.process.returncode}): "
                + " | ".join(engine.log_tail(8).splitlines())
            )
        if engine.socket.exists() and engine.docker("version", timeout=10).ok:
            return
        if time.monotonic() > deadline:
            raise DockerdUnavailable(
                f"dockerd did not answer on its socket in {timeout}s: "
                + " | ".join(engine.log_tail(8).splitlines())
            )
        time.sleep(0.2)


# -- the way out to "Docker Hub" -----------------------------------------------------------------


class EgressRelay:
    """An HTTP CONNECT proxy (dockerd's ``HTTPS_PROXY``) that records where dockerd goes.

    ``hub_reachable`` True: a CONNECT to a Hub host is accepted, TLS is terminated with a
    certificate for that host (issued by ``ca``) and the plain requests go to
    ``hub_url`` (a real registry standing in for Docker Hub). False: refused with 403, as
    an egress firewall would. Any other host is always refused. Every CONNECT is recorded.
    """

    def __init__(self, ca: CA, workdir: Path, hub_url: str) -> None:
        pair = ca.issue_server(workdir, "hub-standin", hosts=sorted(HUB_HOSTS))
        self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._tls.load_cert_chain(str(pair.cert), str(pair.key))
        target = hub_url.split("://", 1)[1]
        host, _, port = target.partition(":")
        self._target = (host, int(port or 80))
        self.hub_reachable = True
        self.connects: list[tuple[str, bool]] = []  # (host:port, accepted)
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hub_connects(self) -> list[tuple[str, bool]]:
        return [c for c in self.connects if c[0].rsplit(":", 1)[0] in HUB_HOSTS]

    def start(self) -> EgressRelay:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("egress relay did not start")
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._server.wait_closed(), 2)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def serve() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            self._ready.set()

        self._loop.run_until_complete(serve())
        self._loop.run_forever()
        # Cancel what is left (connections dockerd keeps open) so that nothing warns.
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        if pending:
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, target, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            host = target.rsplit(":", 1)[0].lower()
            accept = method == "CONNECT" and host in HUB_HOSTS and self.hub_reachable
            self.connects.append((target.lower(), accept))
            if not accept:
                writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                return
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await writer.start_tls(self._tls)
            up_reader, up_writer = await asyncio.open_connection(*self._target)
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ssl.SSLError, ValueError):  # fmt: skip
            pass  # a client that went away or spoke nonsense: nothing to relay
        finally:
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


def relay_env(relay: EgressRelay, ca: CA) -> dict[str, str]:
    """dockerd's environment for the relay: every registry connection outside loopback goes
    through it (Go never proxies loopback), and the test CA is the only trusted root."""
    return {
        "HTTPS_PROXY": relay.url,
        "HTTP_PROXY": relay.url,
        "NO_PROXY": "",
        "SSL_CERT_FILE": str(ca.cert),
        "SSL_CERT_DIR": "/nonexistent",
    }
