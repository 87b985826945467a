"""An upstream client from the config: the one place its HTTP client and authenticator are
made (the server, and commands that read or write a registry: inspect, snapshot, migrate)."""

from __future__ import annotations

import time

from proxy.settings import Settings, UpstreamSettings
from proxy.upstream.auth import AuthLimits, UpstreamAuthenticator
from proxy.upstream.client import UpstreamClient, make_http_client

__all__ = ["build_upstream_client"]


def build_upstream_client(settings: Settings, up: UpstreamSettings) -> UpstreamClient:
    ca = str(up.ca_file) if up.ca_file else None
    http = make_http_client(settings.limits, ca)
    auth = None
    if up.auth.mode != "passthrough":
        creds = up.auth.credentials
        auth = UpstreamAuthenticator(
            http,
            up.name,
            username=creds.username,
            password=creds.password,
            clock=time.monotonic,
            limits=AuthLimits(
                max_token_response_bytes=settings.limits.token_max_bytes,
                request_timeout=settings.limits.request_deadline,
            ),
            # An operator who configured a plain-http registry has accepted cleartext for
            # it; its token service on plain http is no worse.
            insecure_http_realm=up.url.startswith("http://"),
        )
    return UpstreamClient(up, settings.limits, http, auth)
