"""A notary-server over httpx.MockTransport, serving :class:`NotaryRepository` files.

Records every request; scripted faults per file name (status, exception, endless body,
a gate to hold responses) and an optional Bearer token requirement.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import httpx

from proxy.sources.notary.fetcher import NotaryFetcher
from proxy.sources.notary.source import NotarySource, NotarySourceOptions
from proxy.sources.store import MemoryTrustStateStore, TrustStateStore
from tests.simulators.notary_repo import DEFAULT_NOW, NotaryRepository

URL = "https://notary.example:4443"
REALM = "https://auth.example/token"
GUN = "registry.example:5000/team/app"
SIM_TIME = DEFAULT_NOW + timedelta(days=1)

_PATH = re.compile(r"^/v2/(?P<gun>.+?)/_trust/tuf/(?P<name>.+)$")


class Clock:
    def __init__(self, now: datetime = SIM_TIME) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


async def endless() -> AsyncIterator[bytes]:
    while True:
        yield b"x" * 65536
        await asyncio.sleep(0)


@dataclass
class SimServer:
    repos: dict[str, NotaryRepository] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    #: file name -> status / exception factory / "endless"
    faults: dict[str, int | str | Callable[[httpx.Request], Exception]] = field(
        default_factory=dict
    )
    #: every request: status, exception factory, or None
    down: Callable[[httpx.Request], Exception] | int | None = None
    gate: asyncio.Event | None = None
    token: str | None = None  # require "Bearer <token>"
    token_requests: list[httpx.Request] = field(default_factory=list)

    def add(self, repo: NotaryRepository) -> NotaryRepository:
        self.repos[repo.gun] = repo
        return repo

    @property
    def names(self) -> list[str]:
        """File names requested from notary (not the token server), in order."""
        out = []
        for r in self.requests:
            m = _PATH.match(r.url.path)
            if m:
                out.append(m.group("name"))
        return out

    def reset(self) -> None:
        self.requests.clear()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            self.token_requests.append(request)
            return httpx.Response(200, json={"token": self.token, "expires_in": 300})
        self.requests.append(request)
        if self.gate is not None:
            await self.gate.wait()
        if callable(self.down):
            raise self.down(request)
        if isinstance(self.down, int):
            return httpx.Response(self.down, text="down")
        if self.token is not None and request.headers.get("authorization") != (
            f"Bearer {self.token}"
        ):
            return httpx.Response(
                401,
                headers={
                    "www-authenticate": f'Bearer realm="{REALM}",service="notary-server",'
                    'scope="repository:x:pull"'
                },
            )
        m = _PATH.match(request.url.path)
        if request.method != "GET" or m is None:
            return httpx.Response(404)
        gun, name = m.group("gun"), m.group("name")
        fault = self.faults.get(name)
        if fault == "endless":
            return httpx.Response(200, content=endless())
        if isinstance(fault, int):
            return httpx.Response(fault, text="fault")
        if callable(fault) and not isinstance(fault, str):
            raise fault(request)
        repo = self.repos.get(gun)
        data = repo.fetch(name) if repo is not None else None
        if data is None:
            return httpx.Response(
                404, json={"errors": [{"code": "METADATA_NOT_FOUND", "message": "not found"}]}
            )
        return httpx.Response(200, content=data)


def make_source(
    server: SimServer,
    *,
    clock: Clock | None = None,
    store: TrustStateStore | None = None,
    options: NotarySourceOptions | None = None,
    deadline: float = 5.0,
) -> NotarySource:
    from proxy.upstream.auth import UpstreamAuthenticator

    http = httpx.AsyncClient(transport=httpx.MockTransport(server))
    auth = UpstreamAuthenticator(http, "notary")
    fetcher = NotaryFetcher("notary", URL, http, auth=auth, deadline=deadline)
    return NotarySource(
        fetcher,
        store if store is not None else MemoryTrustStateStore(),
        clock=clock or Clock(),
        options=options,
    )
