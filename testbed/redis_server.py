"""A real ``redis-server`` on a free loopback port, for the shared-trust-state tests.

No persistence (``--save ''``, no AOF): every start is an empty Redis unless the caller keeps
the same process. The server can be stopped (SIGTERM), killed (SIGKILL, like a crashed node),
frozen (SIGSTOP: a "slow" Redis that accepts connections but never answers) and restarted on
the **same port**, so clients configured with its URL see an outage and a recovery::

    with RedisServer(tmp_path) as redis:
        url = redis.url            # redis://127.0.0.1:<port>/0
        redis.kill()               # outage
        redis.start()              # back, same port, empty
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import time
from pathlib import Path
from types import TracebackType

from testbed.processes import Server, free_port, start_server

__all__ = ["RedisServer", "redis_binary"]


def redis_binary() -> str | None:
    return shutil.which("redis-server")


class RedisServer:
    """One ``redis-server`` process (re)startable on a fixed loopback port.

    ``start()`` is idempotent while running; after ``stop()``/``kill()`` it starts a fresh,
    empty server on the same port. Cleanup is by PID (the ``Server`` it wraps), never by name.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        name: str = "redis",
        port: int = 0,
        unix_socket: bool = False,
        start_timeout: float = 10.0,
    ) -> None:
        binary = redis_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self._binary = binary
        self.workdir = workdir
        self.name = name
        self.port = port or free_port()
        self.host = "127.0.0.1"
        # Unix sockets have a ~107 byte path limit: callers with deep tmp dirs keep it off.
        self.socket_path: Path | None = workdir / f"{name}.sock" if unix_socket else None
        self.start_timeout = start_timeout
        self._server: Server | None = None

    # -- addresses ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def unix_url(self) -> str:
        if self.socket_path is None:
            raise RuntimeError("started without unix_socket=True")
        return f"unix://{self.socket_path}?db=0"

    @property
    def pid(self) -> int | None:
        return self._server.pid if self._server is not None else None

    def alive(self) -> bool:
        return self._server is not None and self._server.alive()

    def log_tail(self, lines: int = 40) -> str:
        return self._server.log_tail(lines) if self._server is not None else ""

    # -- lifecycle ---------------------------------------------------------------------------

    def argv(self) -> list[str]:
        argv = [
            self._binary,
            "--bind", self.host,
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--loglevel", "warning",
        ]  # fmt: skip
        if self.socket_path is not None:
            argv += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        return argv

    def start(self) -> RedisServer:
        """Start (or restart after stop/kill) on the same port; waits until it answers PING."""
        if self.alive():
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._wait_port_free()
        self._server = start_server(
            self.name, self.argv(), log_dir=self.workdir, port=self.port,
            wait_timeout=self.start_timeout,
        )  # fmt: skip
        self._wait_ping()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful SIGTERM (then SIGKILL after ``timeout``); no-op when not running."""
        if self._server is not None:
            self.thaw()  # a stopped (SIGSTOP) process would not act on SIGTERM
            self._server.stop(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL, like a crashed Redis node: clients see reset/refused connections."""
        if self._server is not None and self._server.alive():
            self._server.process.send_signal(signal.SIGKILL)
            self._server.process.wait(timeout=10.0)

    def restart(self) -> RedisServer:
        """``stop()`` then ``start()`` on the same port (the data is gone: no persistence)."""
        self.stop()
        return self.start()

    def freeze(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but never answered (a slow Redis)."""
        if self._server is not None and self._server.alive():
            self._server.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after ``freeze()``."""
        if self._server is not None and self._server.alive():
            self._server.process.send_signal(signal.SIGCONT)

    # -- helpers -----------------------------------------------------------------------------

    def command(self, *args: str | bytes | int) -> object:
        """Run one command with a short-lived synchronous client (tests: FLUSHALL, GET, ...)."""
        import redis  # the testbed needs it only here

        client = redis.Redis(host=self.host, port=self.port, socket_timeout=5.0)
        try:
            return client.execute_command(*args)  # type: ignore[no-untyped-call]
        finally:
            client.close()

    def flushall(self) -> None:
        self.command("FLUSHALL")

    def _wait_ping(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                if self.command("PING"):
                    return
            except Exception:  # loading or not yet accepting: retry until the deadline
                if time.monotonic() > deadline:
                    self.stop()
                    tail = self.log_tail()
                    raise RuntimeError(f"{self.name} never answered PING:\n{tail}") from None
            time.sleep(0.05)

    def _wait_port_free(self) -> None:
        # After a kill the old listener is gone at once (Redis sets SO_REUSEADDR), but be sure
        # nothing else took the port meanwhile rather than failing with a confusing log.
        deadline = time.monotonic() + self.start_timeout
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((self.host, self.port))
                    return
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"port {self.port} stays in use") from None
            time.sleep(0.05)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(Exception):
            self.stop()


def start_redis(workdir: Path, *, name: str = "redis", unix_socket: bool = False) -> RedisServer:
    """A started ``RedisServer`` (call ``stop()`` when done, or use it as a context manager)."""
    return RedisServer(workdir, name=name, unix_socket=unix_socket).start()


__all__ += ["start_redis"]
