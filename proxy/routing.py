"""Which upstream serves a repository name, under which name, and its fully qualified name
(``<registry>/<repo>``, what policies and trust sources know it by). Pure."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.errors import UnknownRepositoryError
from proxy.settings import UpstreamSettings

DOCKER_HUB = "docker.io"


@dataclass(frozen=True)
class Route:
    """A client-visible repository name resolved to its upstream."""

    upstream: UpstreamSettings
    client_name: str  # what the client asked for: <prefix>/<repo> or <repo>
    upstream_name: str  # what the upstream registry calls it

    @property
    def repository(self) -> str:
        """The fully qualified repository name policies and trust sources know it by:
        ``<registry>/<repo>`` (``docker.io/library/alpine`` for Hub)."""
        return f"{self.upstream.registry}/{self.upstream_name}"

    @property
    def scope(self) -> str:
        """The registry token scope for pulling this repository."""
        return f"repository:{self.upstream_name}:pull"


class Router:
    """Maps ``/v2/<name>`` names to upstreams: longest matching prefix, else the default."""

    def __init__(self, upstreams: tuple[UpstreamSettings, ...]) -> None:
        self._prefixed = sorted(
            (u for u in upstreams if u.prefix), key=lambda u: -len(u.prefix or "")
        )
        self._default = next((u for u in upstreams if not u.prefix), None)

    @property
    def default(self) -> UpstreamSettings | None:
        return self._default

    def route(self, name: str) -> Route:
        """Raises UnknownRepositoryError when no upstream serves ``name``."""
        for up in self._prefixed:
            prefix = f"{up.prefix}/"
            if name.startswith(prefix) and len(name) > len(prefix):
                return Route(up, name, _upstream_name(up, name[len(prefix) :]))
        if self._default is None:
            raise UnknownRepositoryError(f"no upstream is configured for repository {name!r}")
        return Route(self._default, name, _upstream_name(self._default, name))

    def client_name(self, upstream: UpstreamSettings, upstream_name: str) -> str:
        """The inverse of route(): the name a client uses for an upstream repository."""
        return f"{upstream.prefix}/{upstream_name}" if upstream.prefix else upstream_name


def _upstream_name(up: UpstreamSettings, repo: str) -> str:
    # Docker Hub: official images live under library/; `docker pull alpine` means
    # library/alpine, and their repository name is docker.io/library/alpine.
    if up.registry == DOCKER_HUB and "/" not in repo:
        return f"library/{repo}"
    return repo
