"""trustproxy's real app under a real uvicorn, in this process, with a clock the test moves.

Time-dependent behaviour (trust data expiring weeks from now) cannot wait for the wall
clock, and a separate ``python -m proxy serve`` has no clock to move. This runs what
``serve`` runs (``proxy.reload.Builder`` / ``Runtime``, ``proxy.http.app.create_app``) on a
loopback socket in a thread, with every trust source built on :attr:`ClockedProxy.now`;
real clients (skopeo) talk to it over TCP like to any proxy. ``reload()`` is what SIGHUP
does (signals only reach the main thread).
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from proxy.decisions import DecisionRecorder
from proxy.enforcement.build import GateOwner, build_enforcement
from proxy.http.app import create_app
from proxy.policy.model import Policy
from proxy.reload import Builder, Runtime
from proxy.settings import Settings, load_settings
from proxy.sources.store_factory import StoreFactory

__all__ = ["ClockedProxy"]


@dataclass
class ClockedProxy:
    config_path: Path
    offset: timedelta = timedelta(0)
    host: str = ""
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _server: uvicorn.Server | None = field(default=None, repr=False)
    _runtime: Runtime | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def _build(
        self,
        settings: Settings,
        policy: Policy | None,
        *,
        recorder: DecisionRecorder,
        store_factory: StoreFactory | None = None,
    ) -> GateOwner:
        return build_enforcement(
            settings, policy, recorder=recorder, store_factory=store_factory, clock=self.now
        )

    def start(self, timeout: float = 20.0) -> ClockedProxy:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{sock.getsockname()[1]}"
        settings = load_settings(self.config_path, {})
        builder = Builder(stdout=sys.stdout, build_enforcement=self._build)
        started: Future[None] = Future()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                runtime = Runtime(
                    builder.first(settings), builder, config_path=self.config_path, environ={}
                )
                self._runtime = runtime
                config = uvicorn.Config(
                    create_app(settings, runtime=runtime),
                    log_config=None,
                    access_log=False,
                    timeout_graceful_shutdown=5,
                )
                self._server = uvicorn.Server(config)
                started.set_result(None)
                loop.run_until_complete(self._server.serve(sockets=[sock]))
            except BaseException as e:
                if not started.done():
                    started.set_exception(e)
                raise
            finally:
                sock.close()
                loop.close()

        self._thread = threading.Thread(target=run, name="clocked-proxy", daemon=True)
        self._thread.start()
        started.result(timeout)
        for _ in range(int(timeout / 0.05)):
            if self._server is not None and self._server.started:
                return self
            threading.Event().wait(0.05)
        raise RuntimeError("the in-process trustproxy did not start")

    def call(self, make: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Run the coroutine ``make()`` returns on the server's loop; its result."""
        if self._loop is None:
            raise RuntimeError("not started")
        return asyncio.run_coroutine_threadsafe(make(), self._loop).result(timeout)

    def reload(self) -> bool:
        """What SIGHUP does: re-read config, policy and snapshots; swap when they load."""
        runtime = self._runtime
        if runtime is None:
            raise RuntimeError("not started")
        return bool(self.call(runtime.reload))

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(30)
