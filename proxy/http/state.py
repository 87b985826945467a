"""What the request handlers share: built once at startup from the settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.gate import TrustGate
from proxy.http.client_auth import Htpasswd
from proxy.http.token_relay import TokenRelay
from proxy.manifest_cache import ManifestCache
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
    # Per generation: a SIGHUP reload starts with an empty cache (proxy/reload.py builds
    # a new state). Entries are content-addressed and verified, so a reload could hand the
    # cache on to the next generation, but only where an upstream name still means the same
    # registry: the key holds the upstream's name, not its URL or auth mode.
    manifest_cache: ManifestCache = field(init=False)

    def __post_init__(self) -> None:
        self.token_relay = TokenRelay(self.router)
        self.manifest_cache = ManifestCache(self.settings.limits.manifest_cache_bytes)

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()
