"""GET Notary v1 metadata files from a notary-server: bounded, authenticated, translated.

``GET {url}/v2/<gun>/_trust/tuf/<name>`` where ``name`` is ``timestamp.json``,
``root.json``, ``<N>.root.json`` or a consistent ``<role>.<sha256hex>.json``. Only GET:
notary-server answers every HEAD with 404 (``shared/notes/notary-v1-format.md``).

Outcomes, translated here once so the source sees only our exception tree:

* 200 → the bytes, at most ``max_bytes`` (checked while streaming; an endless body is cut);
* 404 → None (the caller decides: end of the root walk, no trust data, missing file);
* 401 with a challenge → one retry with a registry-style Bearer token
  (:class:`~proxy.upstream.auth.UpstreamAuthenticator`, scope ``repository:<gun>:pull``);
* network error, TLS error, timeout, any other status, auth failure →
  :class:`~proxy.errors.TrustSourceUnavailableError`;
* more than ``max_bytes`` → :class:`~proxy.sources.notary.tuf.OversizeMetadataError` (bad data);
* a ``Content-Encoding`` other than identity (we ask for identity: hashes are over the
  bytes as served, and decoding would inflate before counting) →
  :class:`~proxy.sources.notary.tuf.MetadataFormatError` (bad data), the body unread.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import quote

import httpx

from proxy.errors import (
    BadDataError,
    TrustSourceUnavailableError,
    UnauthorizedError,
    UpstreamUnavailableError,
)
from proxy.sources.notary.tuf import MetadataFormatError, OversizeMetadataError
from proxy.upstream.auth import UpstreamAuthenticator

__all__ = ["NotaryFetcher", "role_of"]

log = logging.getLogger(__name__)

#: a 404's body is read up to this much, so that its connection can serve the next file
DRAIN_MAX_BYTES = 64 * 1024
#: ... and for at most this long (a normal one arrives with its headers)
DRAIN_SECONDS = 0.25


def role_of(name: str) -> str:
    """The role a served file name belongs to (for error messages and limits).

    ``timestamp.json`` → timestamp, ``3.root.json`` → root,
    ``targets/releases.<hex>.json`` → targets/releases.
    """
    stem = name.removesuffix(".json")
    head, _, tail = stem.rpartition(".")
    if head and len(tail) == 64 and all(c in "0123456789abcdef" for c in tail):
        return head  # <role>.<sha256hex>
    if head.isdigit():
        return tail  # <N>.<role>
    return stem


class NotaryFetcher:
    """Fetches one notary-server's files. ``http`` and ``auth`` belong to the fetcher once
    given (``aclose`` closes the client).

    ``deadline`` bounds one whole fetch (request + body) in seconds: the client's read
    timeout is per chunk, so without it a server dripping a byte at a time could hold a
    request for ``max_bytes * read_timeout``.
    """

    def __init__(
        self,
        name: str,
        url: str,
        http: httpx.AsyncClient,
        *,
        auth: UpstreamAuthenticator | None = None,
        deadline: float = 60.0,
    ) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self._http = http
        self._auth = auth
        self._deadline = deadline

    def file_url(self, gun: str, name: str) -> str:
        # Keep ':' (host:port in the GUN) and '/' (path segments, delegation names) as is:
        # that is the path notary and docker request.
        return f"{self.url}/v2/{quote(gun, safe='/:')}/_trust/tuf/{quote(name, safe='/')}"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def fetch(self, gun: str, name: str, *, max_bytes: int) -> bytes | None:
        """The bytes of ``name`` for ``gun``, or None when the server answers 404.

        Raises:
            TrustSourceUnavailableError: unreachable, TLS failure, timeout, HTTP status other
                than 200/404, or the server's auth refused us.
            OversizeMetadataError: the body is longer than ``max_bytes``.
            MetadataFormatError: the body is content-encoded (gzip, ...).
        """
        try:
            async with asyncio.timeout(self._deadline):
                return await self._fetch(gun, name, max_bytes)
        except TimeoutError as e:
            raise self._unavailable(f"{name} for {gun}: timed out") from e

    async def _fetch(self, gun: str, name: str, max_bytes: int) -> bytes | None:
        url = self.file_url(gun, name)
        scope = f"repository:{gun}:pull"
        # Hashes are over the bytes as served: never let a hop re-encode them.
        headers = {"accept-encoding": "identity", "accept": "application/json"}
        if self._auth is not None and (cached := self._auth.cached_authorization(scope)):
            headers["authorization"] = cached
        response = await self._send(url, headers, name)
        try:
            if response.status_code == 401 and self._auth is not None:
                challenge = response.headers.get("www-authenticate")
                if challenge:
                    await self._drain(response)  # the retry can use the same connection
                    await response.aclose()
                    headers["authorization"] = await self._authorize(
                        challenge, scope, headers.get("authorization")
                    )
                    response = await self._send(url, headers, name)
            status = response.status_code
            if status == 404:
                # Read the (small) answer to its end: a response closed unread takes its
                # connection with it, and every refresh probes for a root that is not there
                # yet, so the next file would pay a new TCP and TLS handshake.
                await self._drain(response)
                return None
            if status != 200:
                raise self._unavailable(f"{name} for {gun}: HTTP {status}")
            return await self._read_bounded(response, name, max_bytes)
        except httpx.TimeoutException as e:
            raise self._unavailable(f"{name} for {gun}: timed out while reading") from e
        except httpx.HTTPError as e:
            raise self._unavailable(
                f"{name} for {gun}: failed while reading ({type(e).__name__})"
            ) from e
        finally:
            await response.aclose()

    async def _send(self, url: str, headers: dict[str, str], name: str) -> httpx.Response:
        request = self._http.build_request("GET", url, headers=headers)
        try:
            return await self._http.send(request, stream=True)
        except httpx.TimeoutException as e:
            raise self._unavailable(f"{name}: timed out") from e
        except httpx.HTTPError as e:
            # ConnectError covers refused connections and TLS verification failures.
            raise self._unavailable(f"{name}: unreachable ({type(e).__name__}: {e})") from e
        except httpx.InvalidURL as e:
            # httpx parses a 3xx's Location even though redirects are not followed, and a
            # Location like "javascript:x" raises InvalidURL, which is not an HTTPError.
            raise self._unavailable(f"{name}: redirect to an invalid URL") from e

    async def _authorize(self, challenge: str, scope: str, rejected: str | None) -> str:
        if self._auth is None:  # pragma: no cover - checked by the caller
            raise RuntimeError("no authenticator")
        try:
            return await self._auth.authorize(challenge, scope, rejected=rejected)
        except (UnauthorizedError, UpstreamUnavailableError, BadDataError) as e:
            # The proxy cannot read the trust data: the same outcome as an outage (503).
            raise self._unavailable(f"authentication failed: {e}") from e

    async def _read_bounded(self, response: httpx.Response, name: str, max_bytes: int) -> bytes:
        role = role_of(name)
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            # We asked for identity. httpx would inflate gzip/deflate a network chunk at a
            # time with no bound of its own: one 64 KiB chunk of a deflate bomb becomes
            # ~64 MiB in memory before the limit below can count it. Refused unread.
            raise MetadataFormatError(
                f"{name} is served with Content-Encoding {encoding[:32]!r}; "
                "only identity was accepted",
                role=role,
            )
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise OversizeMetadataError(
                f"{name} announces {declared} bytes, limit {max_bytes}", role=role
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:  # counted as it arrives: an endless body is cut here
                raise OversizeMetadataError(f"{name} exceeds {max_bytes} bytes", role=role)
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    async def _drain(response: httpx.Response) -> None:
        """Read and drop at most :data:`DRAIN_MAX_BYTES` of a body we do not use, within
        :data:`DRAIN_SECONDS`; a longer or slower one is left (closing it then drops the
        connection, as before)."""
        declared = response.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > DRAIN_MAX_BYTES):
            return
        if response.is_stream_consumed or response.is_closed:
            return  # nothing left to read (a body given whole, as test transports do)
        size = 0
        try:
            # A server that trickles it is not waited for: the answer is already known.
            async with asyncio.timeout(DRAIN_SECONDS):
                async for chunk in response.aiter_raw():
                    size += len(chunk)
                    if size > DRAIN_MAX_BYTES:
                        return
        except (TimeoutError, httpx.HTTPError):
            return  # closing it drops the connection

    def _unavailable(self, message: str) -> TrustSourceUnavailableError:
        return TrustSourceUnavailableError(self.name, message)
