"""What trust sources, the gate and the manifest handler read from the registry, for one
request.

A :class:`RegistryReader` is bound to one upstream client, one repository and one client's
credentials (passthrough ``Authorization`` included): what it reads for a request is read
as that client, never with another's credentials and never shared with another client
under passthrough. Every read is size-bounded; what is named by digest is hashed and
refused (``DigestMismatchError``, an ``UpstreamContentError``: a 502) when it is not those
bytes; verified manifests by digest go into the manifest cache (content-addressed, so
immutable) and concurrent reads of one digest make one upstream request, whoever reads it
(the gate deciding, the handler serving a signed digest), except under passthrough: the
upstream decides per client. What comes back is untrusted input for the caller: a digest
computed here is a fact about the bytes, never evidence that anything signed them.

Errors: ``UpstreamUnavailableError`` (unreachable, or an answer other than 200/404: the
caller fails closed), ``UpstreamContentError`` (bytes not the digest), ``OversizeError``.
The one exception is :meth:`RegistryReader.manifest_to_serve`, which hands an upstream's
other answers back open, for the handler to relay to the client as the upstream gave them
(a passthrough 401 and its challenge, a 429 and its Retry-After).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from proxy.digests import digest_of, verify_digest
from proxy.errors import DigestMismatchError, InvalidDigestError, UpstreamUnavailableError
from proxy.manifest_cache import CachedManifest, ManifestCache
from proxy.reference import validate_digest
from proxy.routing import Route
from proxy.sources.base import TaggedManifest
from proxy.upstream.client import UpstreamClient

__all__ = [
    "MANIFEST_MEDIA_TYPES",
    "FetchedManifest",
    "Flights",
    "RegistryReader",
    "Remember",
    "ServedManifest",
]

log = logging.getLogger("trustproxy.upstream.reader")

#: prefetches in flight (a task the loop holds only weakly could be collected mid-read)
_PREFETCHES: set[asyncio.Task[None]] = set()

# Every manifest media type the proxy knows. Asked for by digest, CNCF distribution 2.8.2
# (Debian docker-registry, tried with testbed/registry.py) answers:
# - OCI manifest / OCI index: 404 MANIFEST_UNKNOWN ("OCI manifest found, but accept header
#   does not support OCI manifests") unless Accept names that exact type: by digest just as
#   by tag, and an OCI-manifest Accept does not cover an OCI index;
# - Docker schema2 manifest / manifest list: the stored bytes whatever the Accept (no
#   schema1 conversion by digest; by tag without Accept schema2 is a 400 MANIFEST_INVALID,
#   and a list asked for with only schema2 in Accept comes back as its amd64 child).
# So a read of a digest offers all of them on top of the client's Accept: the registry
# then returns the stored bytes, which are hashed here whatever it sends.
MANIFEST_MEDIA_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)


@dataclass(frozen=True)
class FetchedManifest:
    """A manifest just read by digest: bytes that hash to it, and the upstream's headers."""

    body: bytes
    headers: Mapping[str, str]


#: What one read by digest came to, as its concurrent readers see it: the manifest, None
#: (the upstream has none), or the status of another answer (each reader deals with that
#: itself: the one who read it has the answer, the others do not).
FlightResult = FetchedManifest | int | None

#: Reads by digest in flight, by (upstream, repository, digest): shared across requests.
Flights = dict[tuple[str, str, str], "asyncio.Future[FlightResult]"]


@dataclass(frozen=True)
class ServedManifest:
    """A manifest to serve under a signed digest: its bytes (checked against the digest and
    the length the trust data gives) and the upstream headers to relay with them."""

    body: bytes
    headers: Mapping[str, str]
    #: from the manifest cache (True) or just read from the upstream
    cached: bool


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
    #: how long the periodic re-check of a cached manifest may wait for the upstream
    #: before the cached copy is served anyway (``limits.connect_timeout``)
    recheck_timeout: float = 5.0

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

    # --- manifests by digest ---------------------------------------------------------

    async def manifest(self, digest: str) -> bytes | None:
        """The manifest whose bytes hash to ``digest``, or None when the upstream does not
        have it. A cached copy is used without asking (these bytes inform a decision and
        are not served from here: serving asks the upstream on the client's behalf)."""
        validate_digest(digest)
        key = (self.client.name, self.route.upstream_name, digest)
        if self.cache is not None and (cached := self.cache.get(*key)) is not None:
            return cached.body
        result = await self._shared_read(digest, own_answers=False)
        if isinstance(result, httpx.Response):
            await result.aclose()
            raise self._unavailable(result.status_code, f"manifest {digest}")
        return None if result is None else result.body

    def prefetch_manifest(self, digest: str, *, tag: str) -> None:
        """See :class:`~proxy.sources.base.ManifestPrefetch`: the shared read of ``digest``
        (:meth:`_shared_read`), started now in its own task. Only where reads are shared
        (not under passthrough: each client's read is its own there) and when the digest
        is neither cached nor being read already. What it reads is verified and cached
        like any shared read; a failure is the request's own read's to meet again (it
        joins this one, or reads afresh once this one is over)."""
        if not self._shared:
            return
        try:
            validate_digest(digest)
        except InvalidDigestError:
            return  # the request's own read refuses it with its error
        key = (self.client.name, self.route.upstream_name, digest)
        if key in self.flights or (self.cache is not None and key in self.cache):
            return
        what = f"manifest {self.route.client_name}:{tag}"
        task = asyncio.ensure_future(self._prefetch(digest, what))
        _PREFETCHES.add(task)
        task.add_done_callback(_PREFETCHES.discard)

    async def _prefetch(self, digest: str, what: str) -> None:
        try:
            result = await self._shared_read(digest, own_answers=False, what=what)
        except Exception as e:  # the request's own read meets it (shared, or afresh)
            log.debug("prefetch of %s: %s", what, e)
            return
        if isinstance(result, httpx.Response):
            await result.aclose()

    async def manifest_to_serve(
        self, digest: str, *, length: int | None, what: str
    ) -> ServedManifest | httpx.Response | None:
        """The manifest under the signed ``digest``, for this client: the cached copy if
        this client may have it (see :meth:`cached_for_client`), else one read shared with
        concurrent readers of the digest. Either way its bytes are checked against
        ``digest`` and ``length`` (the signed length: it comes from each request's own
        trust data, so a hit is checked like fresh bytes); ``DigestMismatchError`` when
        they are not (``what`` names the request in its message).

        None: the upstream does not have it. An ``httpx.Response``: the upstream's other
        answer to this client's own request, open, for the caller to relay and close
        (readers that shared another's read and saw it fail ask for themselves)."""
        validate_digest(digest)
        cached = await self.cached_for_client(digest, accept=self._accept())
        if cached is not None:
            verify_digest(cached.body, digest, what=what, length=length)
            return ServedManifest(cached.body, cached.header_map, cached=True)
        result = await self._shared_read(digest, own_answers=True, what=what)
        if result is None or isinstance(result, httpx.Response):
            return result
        # The digest was checked by whoever read it; the length is this request's to check.
        if length is not None and len(result.body) != length:
            raise DigestMismatchError(
                f"{what}: upstream sent {len(result.body)} bytes, expected {length}",
                expected=digest, actual=digest, size=len(result.body),
            )  # fmt: skip
        return ServedManifest(result.body, result.headers, cached=False)

    async def _shared_read(
        self, digest: str, *, own_answers: bool, what: str = ""
    ) -> FetchedManifest | httpx.Response | None:
        """One upstream read of ``digest`` for concurrent readers (alone under passthrough).

        Followers get the leader's verified bytes or its exception. When the leader got
        another answer (a 401, a 429, a 5xx), that answer is the leader's to relay; a
        follower that relays too (``own_answers``) asks for itself, a follower of the
        gate's reads fails as unavailable."""
        if not self._shared:
            return await self._read(digest, what)
        key = (self.client.name, self.route.upstream_name, digest)
        pending = self.flights.get(key)
        if pending is not None:
            result = await asyncio.shield(pending)
            if not isinstance(result, int):
                return result
            if not own_answers:
                raise self._unavailable(result, f"manifest {digest}")
            if key in self.flights:  # another follower leads again: ask alone, as before
                return await self._read(digest, what)
        leader: asyncio.Future[FlightResult] = asyncio.get_running_loop().create_future()
        self.flights[key] = leader
        try:
            read = await self._read(digest, what)
            leader.set_result(read.status_code if isinstance(read, httpx.Response) else read)
            return read
        except BaseException as e:
            # Followers fail the same way; retrieved here so an unawaited future is quiet.
            leader.set_exception(e if isinstance(e, Exception) else RuntimeError("cancelled"))
            leader.exception()
            raise
        finally:
            if self.flights.get(key) is leader:
                del self.flights[key]

    async def _read(self, digest: str, what: str = "") -> FetchedManifest | httpx.Response | None:
        """GET the manifest by digest: verified bytes, None (404), or another answer, open."""
        resp = await self._open("GET", self._path("manifests", digest), self._accept())
        if resp.status_code == 404:
            await resp.aclose()
            return None
        if resp.status_code != 200:
            return resp
        body = await self.client.read_bounded(resp, self.manifest_max_bytes, "manifest")
        what = what or f"manifest {self.route.client_name}@{digest}"
        verify_digest(body, digest, what=what)
        if self.remember is not None:
            self.remember(digest, body, resp.headers)
        elif self.cache is not None:
            self.cache.put(self.client.name, self.route.upstream_name, digest, body, {})
        return FetchedManifest(body, dict(resp.headers))

    async def cached_for_client(
        self,
        digest: str,
        *,
        accept: Mapping[str, str],
        accepted: frozenset[str] | None = None,
    ) -> CachedManifest | None:
        """The cached manifest under ``digest`` if this client may be served it; None means
        a miss, and the caller reads as if there were no cache.

        ``accepted``: the media types the client named, when the entry's type must be one
        of them; ``accept``: the Accept header of the upstream request the caller would
        send. Under passthrough the upstream must say yes to this client (a HEAD with its
        credentials) before cached bytes are shared with it; otherwise the entry is
        re-checked upstream once per ``recheck_after`` (proxy/manifest_cache.py).
        """
        cache = self.cache
        if cache is None:
            return None
        key = (self.client.name, self.route.upstream_name, digest)
        cached = cache.get(*key)
        if cached is None:
            return None
        if accepted is not None and _media_type_name(cached.media_type or "") not in accepted:
            return None
        if not self._shared:
            # The upstream decides who may pull what, per client: it must say yes to this
            # client, for this repository and digest, before cached bytes are shared with
            # it. HEAD proves that without the body. Anything but 200 is a miss, so the
            # client gets exactly what it gets without a cache (the 401 and its
            # challenge, a 404...).
            resp = await self._open("HEAD", self._path("manifests", digest), accept)
            await resp.aclose()
            if resp.status_code == 404:
                cache.discard(*key)  # deleted upstream (or never there for anyone)
            if resp.status_code != 200:
                log.debug("manifest cache: upstream %s answered HEAD %s@%s with %d, fetching",
                          self.client.name, self.route.upstream_name, digest,
                          resp.status_code)  # fmt: skip
                return None
            cache.confirm(*key)
        elif cache.claim_recheck(*key):
            try:
                present = await self._still_upstream(digest, cached)
            except BaseException:
                # Cancelled (the client went away) or failed otherwise: nothing was learnt,
                # so the next hit asks again.
                cache.release(*key)
                raise
            if not present:
                cache.discard(*key)
                return None
        log.debug("manifest cache hit: %s %s@%s", self.client.name, self.route.upstream_name,
                  digest)  # fmt: skip
        return cached

    async def _still_upstream(self, digest: str, cached: CachedManifest) -> bool:
        """The periodic re-check of a cached manifest (see proxy/manifest_cache.py): whether
        the upstream still has ``digest``, asked with a HEAD (no body, no pull counted on
        Docker Hub). False when it answers that it does not (404, or any other refusal: the
        entry is dropped and the request reads as if uncached, so the client gets the
        upstream's own answer). An upstream that cannot answer (unreachable, timeout, 5xx,
        429) keeps the cached copy served: the documented registry-down behaviour; the
        next re-check is one interval later. ``recheck_timeout``: a registry that hangs
        counts as unreachable after that long, so the one request that asks is not held
        for the whole upstream deadline while the cached copy could answer it.
        """
        # Every manifest type we know, and the entry's own: distribution answers an OCI
        # manifest by digest with 404 unless Accept names its type, and that 404 must not
        # be taken for a deletion.
        types = [*MANIFEST_MEDIA_TYPES]
        if cached.media_type and _media_type_name(cached.media_type) not in types:
            types.append(cached.media_type)
        upstream, name = self.client.name, self.route.upstream_name
        try:
            async with asyncio.timeout(self.recheck_timeout):
                resp = await self._open(
                    "HEAD", self._path("manifests", digest), {"accept": ", ".join(types)}
                )
        except (UpstreamUnavailableError, TimeoutError) as e:
            log.warning("manifest cache: re-check of %s@%s failed (%s): serving the cached copy",
                        name, digest, str(e) or "timed out")  # fmt: skip
            return True
        await resp.aclose()
        status = resp.status_code
        if status == 200:
            return True
        if status >= 500 or status == 429:
            log.warning("manifest cache: re-check of %s@%s: upstream %s answered %d: serving the "
                        "cached copy", name, digest, upstream, status)  # fmt: skip
            return True
        log.info("manifest cache: upstream %s answered HEAD %s@%s with %d: dropped from the cache",
                 upstream, name, digest, status)  # fmt: skip
        return False

    # --- manifests by tag -----------------------------------------------------------------

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


def _media_type_name(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


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
