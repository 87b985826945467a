"""Start and stop the real servers of the test bed: by PID, never by name.

A :class:`Server` remembers how it was started, so a test can crash it (:meth:`Server.kill`,
SIGKILL) and bring it back on the **same port** (:meth:`Server.restart`): clients configured
with its address then see an outage and a recovery. The restarted process replaces the old
one in the same object, so cleanup registered as ``server.stop`` stops whichever runs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, *, host: str = "127.0.0.1", timeout: float = 20.0) -> None:
    """Wait until something accepts TCP connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


@dataclass
class Server:
    """A process started by the test bed, with its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0
    extra: dict[str, str] = field(default_factory=dict)
    # How it was started (set by start_server), for restart() on the same port.
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None
    cwd: Path | None = None
    wait_timeout: float = 20.0
    user: str | None = None  # run as this user (a server that refuses to run as root)
    #: PIDs of earlier processes of this server (one per restart), oldest first
    previous_pids: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL; waits so that no zombie or port is left behind."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout)

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL (``kill -9``: a crash, no shutdown handler runs); waits for the exit."""
        if self.process.poll() is not None:
            return
        self.process.kill()
        self.process.wait(timeout=timeout)

    def restart(self, *, wait_timeout: float | None = None) -> None:
        """Start the same command again on the same port (stopping it first if it runs).

        The new process replaces :attr:`process` (the old PID goes to
        :attr:`previous_pids`); its output is appended to the same log. Raises
        RuntimeError (with the log tail) when it dies or does not listen in time.
        """
        if not self.argv:
            raise RuntimeError(f"{self.name}: not started by start_server, cannot restart")
        self.stop()
        if self.port:
            wait_port_free(self.port, timeout=wait_timeout or self.wait_timeout)
        self.previous_pids.append(self.process.pid)
        self.process = _spawn(self.argv, self.log_path, self.env, self.cwd, self.user)
        _wait_listening(self, wait_timeout or self.wait_timeout)


def wait_port_free(port: int, *, host: str = "127.0.0.1", timeout: float = 20.0) -> None:
    """Wait until ``host:port`` can be bound again (nothing listens there any more)."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # As the servers themselves bind: connections in TIME_WAIT do not count.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"port {host}:{port} stays in use") from None
        time.sleep(0.05)


def _spawn(
    argv: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None,
    cwd: Path | None,
    user: str | None = None,
) -> subprocess.Popen[bytes]:
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,  # Ctrl-C in a demo reaches us, not the servers directly
            user=user,
        )


def _wait_listening(server: Server, wait_timeout: float) -> None:
    if not server.port:
        return
    deadline = time.monotonic() + wait_timeout
    while True:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited at start:\n{server.log_tail()}")
        try:
            wait_for_port(server.port, timeout=0.2)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(
                    f"{server.name} did not listen on port {server.port} in {wait_timeout}s:\n"
                    f"{server.log_tail()}"
                ) from None


def start_server(
    name: str,
    argv: Sequence[str],
    *,
    log_dir: Path,
    port: int = 0,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    wait_timeout: float = 20.0,
    user: str | None = None,
) -> Server:
    """Start ``argv`` with output to ``log_dir/<name>.log``; wait for ``port`` if given.
    ``user``: run as that user (needs root; e.g. PostgreSQL refuses to run as root).

    Raises RuntimeError with the log tail when the process dies or never listens.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    process = _spawn(argv, log_path, env, cwd, user)
    server = Server(
        name=name,
        process=process,
        log_path=log_path,
        port=port,
        argv=list(argv),
        env=dict(env) if env else None,
        cwd=cwd,
        wait_timeout=wait_timeout,
        user=user,
    )
    _wait_listening(server, wait_timeout)
    return server
