"""What the request handlers share: built once at startup from the settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.gate import TrustGate
from proxy.http.client_auth import Htpasswd
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

    def rewrite_challenge(self, client: UpstreamClient, challenge: str) -> str:
        """The upstream's challenge as a passthrough client should see it.

        The realm stays the upstream's token service (the client fetches its own token
        there) and the scope keeps the upstream's repository name, which is the name the
        token service knows.
        """
        return challenge

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()
