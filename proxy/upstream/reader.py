"""What trust sources and the gate may read from the registry, for one request.

A :class:`RegistryReader` is bound to one upstream client, one repository and one client's
credentials (passthrough ``Authorization`` included): what it reads for a request is read
as that client, never with another's credentials and never shared with another client
under passthrough. Every read is size-bounded; what is named by digest is hashed and
refused (``UpstreamContentError``, a 502) when it is not those bytes; verified manifests by
digest go into the manifest cache (content-addressed, so immutable) and concurrent reads of
one digest make one upstream request (except under passthrough: the upstream decides per
client). What comes back is untrusted input for the caller: a digest computed here is a
fact about the bytes, never evidence that anything signed them.

Errors: ``UpstreamUnavailableError`` (unreachable, or an answer other than 200/404: the
caller fails closed), ``UpstreamContentError`` (bytes not the digest), ``OversizeError``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from proxy.digests import digest_of, verify_digest
from proxy.errors import UpstreamUnavailableError
from proxy.manifest_cache import ManifestCache
from proxy.reference import validate_digest
from proxy.routing import Route
from proxy.sources.base import TaggedManifest
from proxy.upstream.client import UpstreamClient

__all__ = ["Flights", "RegistryReader", "Remember"]

#: Reads by digest in flight, by (upstream, repository, digest): shared across requests.
Flights = dict[tuple[str, str, str], "asyncio.Future[bytes | None]"]


#: ``remember(digest, body, upstream_headers)``: keep a manifest just verified by digest
Remember = Callable[[str, bytes, Mapping[str, str]], None]


@dataclass
class RegistryReader:
    """:class:`~proxy.sources.base.RegistryReads` over one upstream client, for one
    repository and one client's credentials."""

    client: UpstreamClient
    route: Route
    #: the Accept sent for manifests (the client's plus every manifest type known), or how
    #: to make it: most requests never read through the reader, so it is made on first use
    accept: Mapping[str, str] | Callable[[], Mapping[str, str]]
    #: the requesting client's Authorization header (used by passthrough upstreams only)
    authorization: str | None
    manifest_max_bytes: int
    cache: ManifestCache | None = None
    flights: Flights = field(default_factory=dict)
    #: keeps a verified manifest (default: the manifest cache, without headers)
    remember: Remember | None = None

    def _accept(self) -> Mapping[str, str]:
        if callable(self.accept):  # made on first use
            self.accept = self.accept()
        return self.accept

    @property
    def _shared(self) -> bool:
        return self.client.settings.auth.mode != "passthrough"

    def _path(self, kind: str, reference: str) -> str:
        return f"/v2/{self.route.upstream_name}/{kind}/{reference}"

    async def _open(self, method: str, path: str, headers: Mapping[str, str]) -> httpx.Response:
        return await self.client.open(
            method,
            path,
            scope=self.route.scope,
            client_headers=headers,
            client_authorization=self.authorization,
        )

    def _unavailable(self, status: int, what: str) -> UpstreamUnavailableError:
        return UpstreamUnavailableError(self.client.name, f"answered HTTP {status} for {what}")

    def for_repository(self, repository: str) -> RegistryReader | None:
        """A reader for another repository of the same upstream, as the same client (a
        trust source whose signatures live elsewhere: cosign's ``COSIGN_REPOSITORY``).
        ``repository`` is ``<registry>/<path>``; None when it is not on this upstream."""
        upstream = self.route.upstream
        registry, _, path = repository.partition("/")
        if registry != upstream.registry or not path:
            return None
        client_name = f"{upstream.prefix}/{path}" if upstream.prefix else path
        return dataclasses.replace(self, route=Route(upstream, client_name, path), remember=None)

    # --- manifests -----------------------------------------------------------------------

    async def manifest(self, digest: str) -> bytes | None:
        """The manifest whose bytes hash to ``digest``, or None when the upstream does not
        have it. A cached copy is used without asking (these bytes inform a decision and
        are not served from here: serving asks the upstream on the client's behalf)."""
        validate_digest(digest)
        key = (self.client.name, self.route.upstream_name, digest)
        if self.cache is not None and (cached := self.cache.get(*key)) is not None:
            return cached.body
        if not self._shared:
            return await self._fetch_manifest(digest)
        pending = self.flights.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        leader: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self.flights[key] = leader
        try:
            body = await self._fetch_manifest(digest)
            leader.set_result(body)
            return body
        except BaseException as e:
            # Followers fail the same way; retrieved here so an unawaited future is quiet.
            leader.set_exception(e if isinstance(e, Exception) else RuntimeError("cancelled"))
            leader.exception()
            raise
        finally:
            if self.flights.get(key) is leader:
                del self.flights[key]

    async def _fetch_manifest(self, digest: str) -> bytes | None:
        what = f"manifest {self.route.client_name}@{digest}"
        resp = await self._open("GET", self._path("manifests", digest), self._accept())
        if resp.status_code == 404:
            await resp.aclose()
            return None
        if resp.status_code != 200:
            await resp.aclose()
            raise self._unavailable(resp.status_code, f"manifest {digest}")
        body = await self.client.read_bounded(resp, self.manifest_max_bytes, "manifest")
        verify_digest(body, digest, what=what)
        if self.remember is not None:
            self.remember(digest, body, resp.headers)
        elif self.cache is not None:
            self.cache.put(self.client.name, self.route.upstream_name, digest, body, {})
        return body

    async def manifest_by_tag(self, tag: str) -> TaggedManifest | None:
        """What the upstream has under ``tag`` now (None: not there). Tags move: nothing
        read by tag is cached."""
        resp = await self._open("GET", self._path("manifests", tag), self._accept())
        if resp.status_code == 404:
            await resp.aclose()
            return None
        if resp.status_code != 200:
            await resp.aclose()
            raise self._unavailable(resp.status_code, f"manifest {tag}")
        body = await self.client.read_bounded(resp, self.manifest_max_bytes, "manifest")
        return TaggedManifest(digest_of(body), body)

    async def head_tag(self, tag: str) -> str | None:
        """The digest the upstream says ``tag`` names (its Docker-Content-Digest: a hint to
        fetch by, never evidence), or None when the tag is not there."""
        resp = await self._open("HEAD", self._path("manifests", tag), self._accept())
        await resp.aclose()
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise self._unavailable(resp.status_code, f"HEAD manifest {tag}")
        said: str | None = resp.headers.get("docker-content-digest")
        if said is None:
            return None
        validate_digest(said)
        return said

    # --- referrers and blobs -------------------------------------------------------------

    async def referrers(self, digest: str) -> list[Mapping[str, Any]]:
        """The descriptors of manifests that refer to ``digest``: the referrers API, or,
        where the registry does not have it (404), the referrers tag schema
        (``sha256-<hex>``, OCI distribution-spec 1.1). Bounded like a manifest."""
        validate_digest(digest)
        resp = await self._open(
            "GET",
            self._path("referrers", digest),
            {"accept": "application/vnd.oci.image.index.v1+json"},
        )
        if resp.status_code == 404:
            await resp.aclose()
            tagged = await self.manifest_by_tag(digest.replace(":", "-", 1))
            return _index_manifests(tagged.body) if tagged is not None else []
        if resp.status_code != 200:
            await resp.aclose()
            raise self._unavailable(resp.status_code, f"referrers of {digest}")
        body = await self.client.read_bounded(resp, self.manifest_max_bytes, "referrers")
        return _index_manifests(body)

    async def blob(self, digest: str, max_bytes: int) -> bytes | None:
        """A small blob (a signature, a config) whose bytes hash to ``digest``, read whole
        up to ``max_bytes``; None when the upstream does not have it."""
        validate_digest(digest)
        resp = await self.client.open(
            "GET",
            self._path("blobs", digest),
            scope=self.route.scope,
            client_authorization=self.authorization,
            follow_redirects=True,
        )
        if resp.status_code == 404:
            await resp.aclose()
            return None
        if resp.status_code != 200:
            await resp.aclose()
            raise self._unavailable(resp.status_code, f"blob {digest}")
        body = await self.client.read_bounded(resp, max_bytes, "blob")
        verify_digest(body, digest, what=f"blob {self.route.client_name}@{digest}")
        return body


def _index_manifests(body: bytes) -> list[Mapping[str, Any]]:
    """The ``manifests`` of an OCI image index; anything else is an empty list (untrusted
    input: a malformed listing is a listing of nothing, never an error that allows)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return []
    items = doc.get("manifests") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        return []
    return [m for m in items if isinstance(m, dict) and isinstance(m.get("digest"), str)]
