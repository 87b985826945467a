"""Passthrough auth: the client gets its upstream token *through the proxy*.

In passthrough mode the client's own credentials decide what it may pull, so the upstream's
Bearer challenge is shown to the client with the realm pointing at the proxy
(``/_trustproxy/token/<upstream>``) and repository names as the client sees them
(``<prefix>/<repo>``). The relay maps the scope back, asks the upstream's real token
service (learned from the upstream's own challenge, never from the client: no SSRF), and
returns its answer unchanged. Clients that can reach only the proxy can still log in, and
nothing is cached, so no client is ever served with another client's token.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from proxy.errors import (
    BadDataError,
    ClientRequestError,
    TrustproxyError,
    UnknownRepositoryError,
    UnsupportedError,
)
from proxy.http.client_input import check_forwarded_headers
from proxy.http.errors import response_for_exception
from proxy.reference import validate_name
from proxy.routing import Router
from proxy.settings import UpstreamSettings
from proxy.upstream.challenge import (
    parse_www_authenticate,
    rewrite_bearer_challenge,
    rewrite_client_scope,
)
from proxy.upstream.client import UpstreamClient

TOKEN_PATH = "/_trustproxy/token/"  # noqa: S105 - a path, not a secret


@dataclass(frozen=True)
class TokenService:
    realm: str
    service: str | None


class TokenRelay:
    """Remembers each passthrough upstream's token service; rewrites and relays."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self._services: dict[str, TokenService] = {}

    def rewrite_challenge(self, upstream: UpstreamSettings, challenge: str, base_url: str) -> str:
        """The upstream's challenge as the client sees it. Raises BadDataError."""
        bearer = next((c for c in parse_www_authenticate(challenge) if c.is_scheme("bearer")), None)
        if bearer is None or not bearer.realm:
            return challenge  # Basic: the client's credentials are relayed as they are
        self._services[upstream.name] = TokenService(bearer.realm, bearer.service)
        return rewrite_bearer_challenge(
            challenge,
            realm=f"{base_url.rstrip('/')}{TOKEN_PATH}{upstream.name}",
            repo_map=lambda name: self._router.client_name(upstream, name),
        )

    async def relay(self, request: Request, client: UpstreamClient) -> Response:
        """``GET /_trustproxy/token/<upstream>``: fetch the client's token upstream."""
        try:
            up = client.settings
            check_forwarded_headers(request.scope["headers"])  # Authorization goes upstream
            if up.auth.mode != "passthrough":
                raise UnsupportedError(f"upstream {up.name} does not use passthrough auth")
            service = self._services.get(up.name) or await self._discover(client)

            def to_upstream(name: str) -> str:
                # A token for a name no /v2 request can use is not worth asking for, and the
                # token service must not see names outside the grammar (``..``, spaces).
                validate_name(name)
                route = self._router.route(name)
                if route.upstream.name != up.name:
                    raise UnknownRepositoryError(f"{name!r} is not served by {up.name}")
                return route.upstream_name

            params: list[tuple[str, str]] = []
            if service.service:
                params.append(("service", service.service))
            for scope in request.query_params.getlist("scope"):
                try:
                    mapped = rewrite_client_scope(scope, repo_map=to_upstream)
                except BadDataError as e:
                    # The client's scope, not the upstream's data: a 400, not a 502.
                    raise ClientRequestError(str(e)) from e
                if mapped:
                    params.append(("scope", mapped))
            for key in ("account", "client_id", "offline_token"):
                if value := request.query_params.get(key):
                    params.append((key, value))
            sep = "&" if "?" in service.realm else "?"
            url = f"{service.realm}{sep}{urlencode(params)}" if params else service.realm
            resp = await client.open_url(url, authorization=request.headers.get("authorization"))
            body = await client.read_bounded(resp, client.limits.token_max_bytes, "token response")
            return Response(
                body,
                status_code=resp.status_code,
                media_type=resp.headers.get("content-type", "application/json"),
                headers={"Cache-Control": "no-store"},
            )
        except TrustproxyError as exc:
            return response_for_exception(exc)

    async def _discover(self, client: UpstreamClient) -> TokenService:
        resp = await client.open("GET", "/v2/", scope=None)
        await resp.aclose()
        challenge = resp.headers.get("www-authenticate", "")
        for c in parse_www_authenticate(challenge) if challenge else ():
            if c.is_scheme("bearer") and c.realm:
                self._services[client.name] = TokenService(c.realm, c.service)
                return self._services[client.name]
        raise BadDataError(f"upstream {client.name} does not use Bearer tokens")
