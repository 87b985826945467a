"""What the request handlers share: built once at startup from the settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.gate import TrustGate
from proxy.http.client_auth import Htpasswd
from proxy.http.token_relay import TokenRelay
from proxy.routing import Router
from proxy.settings import Settings
from proxy.upstream.client import UpstreamClient

BASIC_REALM = "trustproxy"


@dataclass
class ProxyState:
    settings: Settings
    router: Router
    clients: dict[str, UpstreamClient]
    gate: TrustGate
    client_auth: Htpasswd | None = None
    basic_realm: str | None = field(default=None)

    token_relay: TokenRelay = field(init=False)

    def __post_init__(self) -> None:
        self.token_relay = TokenRelay(self.router)

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()
