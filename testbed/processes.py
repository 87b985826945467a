"""Start and stop the real servers of the test bed: by PID, never by name."""

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


def start_server(
    name: str,
    argv: Sequence[str],
    *,
    log_dir: Path,
    port: int = 0,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    wait_timeout: float = 20.0,
) -> Server:
    """Start ``argv`` with output to ``log_dir/<name>.log``; wait for ``port`` if given.

    Raises RuntimeError with the log tail when the process dies or never listens.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,  # Ctrl-C in a demo reaches us, not the servers directly
        )
    server = Server(name=name, process=process, log_path=log_path, port=port)
    if port:
        deadline = time.monotonic() + wait_timeout
        while True:
            if not server.alive():
                raise RuntimeError(f"{name} exited at start:\n{server.log_tail()}")
            try:
                wait_for_port(port, timeout=0.2)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    server.stop()
                    raise RuntimeError(
                        f"{name} did not listen on port {port} in {wait_timeout}s:\n"
                        f"{server.log_tail()}"
                    ) from None
    return server
