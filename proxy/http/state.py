"""What the request handlers share: built once at startup from the settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.http.client_auth import Htpasswd
from proxy.http.token_relay import TokenRelay
from proxy.manifest_cache import ManifestCache
from proxy.routing import Router
from proxy.settings import Settings
from proxy.trust_gate import TrustGate
from proxy.upstream.client import UpstreamClient
from proxy.upstream.reader import Flights

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
    # Handed on to the next generation by a SIGHUP reload when the upstreams are unchanged
    # (proxy/reload.py): entries are content-addressed and verified, keyed by upstream name.
    manifest_cache: ManifestCache = field(init=False)
    # Reads of manifests by digest in flight (proxy/upstream/reader.py), by (upstream,
    # repository, digest), shared by every request of this generation: the gate's reads and
    # the signed-manifest fetches alike. A burst of cold requests for one new tag makes one
    # upstream fetch, not one per request (which queued a thousand requests on the
    # connection pool until they timed out).
    reader_flights: Flights = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.token_relay = TokenRelay(self.router)
        limits = self.settings.limits
        self.manifest_cache = ManifestCache(
            limits.manifest_cache_bytes, recheck_after=limits.manifest_cache_recheck
        )

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()
