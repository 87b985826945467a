"""Writing to a registry: blobs and manifests, for ``trustproxy trust migrate`` only.

The proxy never writes to a registry on a client's behalf (pushes are refused); this is an
operator's command, run with the upstream credentials of the config (a token scope with
``push``). Uploads are monolithic (``POST`` then one ``PUT ?digest=``: the artifacts are a
few kilobytes), a blob already there is not uploaded again, and every answer is bounded
and checked: the registry's ``Docker-Content-Digest`` for a manifest must be the digest of
the bytes sent.
"""

from __future__ import annotations

import httpx

from proxy.digests import digest_of
from proxy.errors import UpstreamContentError, UpstreamUnavailableError
from proxy.routing import Route
from proxy.upstream.client import UpstreamClient

__all__ = ["RegistryWriter"]


class RegistryWriter:
    """Pushes to one repository of one upstream, as the proxy's configured identity."""

    def __init__(self, client: UpstreamClient, route: Route) -> None:
        self.client = client
        self.route = route

    @property
    def _scope(self) -> str:
        return f"repository:{self.route.upstream_name}:pull,push"

    def _path(self, kind: str, reference: str = "") -> str:
        return f"/v2/{self.route.upstream_name}/{kind}/{reference}"

    async def _call(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        resp = await self.client.open(
            method,
            path,
            scope=self._scope,
            query=query,
            content=content,
            client_headers=headers,
        )
        await self.client.read_bounded(resp, 64 * 1024, "registry answer")
        return resp

    def _failed(self, resp: httpx.Response, what: str) -> UpstreamUnavailableError:
        return UpstreamUnavailableError(
            self.client.name, f"answered HTTP {resp.status_code} to {what}"
        )

    async def has_blob(self, digest: str) -> bool:
        resp = await self._call("HEAD", self._path("blobs", digest))
        if resp.status_code in (200, 404):
            return resp.status_code == 200
        raise self._failed(resp, f"HEAD blob {digest}")

    async def push_blob(self, digest: str, data: bytes) -> bool:
        """Upload ``data`` (whose digest is ``digest``) unless the registry has it; whether
        it was uploaded."""
        if digest_of(data) != digest:
            raise ValueError(f"blob bytes are not {digest}")  # a caller bug
        if await self.has_blob(digest):
            return False
        started = await self._call("POST", self._path("blobs", "uploads/"))
        if started.status_code != 202:
            raise self._failed(started, "starting a blob upload")
        path, query = self._upload_location(started.headers.get("location", ""))
        query = f"{query}&digest={digest}" if query else f"digest={digest}"
        done = await self._call(
            "PUT",
            path,
            query=query,
            content=data,
            headers={"content-type": "application/octet-stream"},
        )
        if done.status_code != 201:
            raise self._failed(done, f"uploading blob {digest}")
        return True

    def _upload_location(self, location: str) -> tuple[str, str]:
        """The upload URL the registry named, as a path and query on this upstream (an
        upload elsewhere would take the credentials along: refused)."""
        base = httpx.URL(self.client.settings.url)
        try:
            target = base.join(location)
        except httpx.InvalidURL as e:
            raise UpstreamContentError(f"upload location is not a URL: {location[:200]!r}") from e
        if (target.scheme, target.host, target.port) != (base.scheme, base.host, base.port):
            raise UpstreamContentError(
                f"the registry asked to upload to another origin ({target.host}); refused"
            )
        prefix = base.path.rstrip("/")
        path = target.path
        if prefix and path.startswith(prefix):
            path = path[len(prefix) :]
        return path, target.query.decode("ascii", "replace")

    async def push_manifest(self, tag: str, manifest: bytes, media_type: str) -> str:
        """Put ``manifest`` under ``tag``; its digest (checked against the registry's)."""
        digest = digest_of(manifest)
        resp = await self._call(
            "PUT",
            self._path("manifests", tag),
            content=manifest,
            headers={"content-type": media_type},
        )
        if resp.status_code != 201:
            raise self._failed(resp, f"putting manifest {tag}")
        said = resp.headers.get("docker-content-digest")
        if said is not None and said != digest:
            raise UpstreamContentError(
                f"the registry stored {said} for a manifest whose digest is {digest}"
            )
        return digest
