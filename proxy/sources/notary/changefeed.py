"""notary-server's change feed: which repositories' trust data changed, for fast revocation.

notary-server (0.6 and later, every storage backend) records a change whenever a
repository gets a new timestamp (every publish) or is deleted, and serves them::

    GET /v2/_trust/changefeed?change_id=<id>&records=<n>
    200 {"count": 2, "records": [{"ID": "41", "CreatedAt": "...", "GUN": "reg/ns/app",
         "Version": 7, "SHA256": "<hex>", "Category": "update"}, ...]}

``change_id`` is exclusive (``0``: from the start); ``records`` is required (a missing
one is a 400); ``change_id=-1&records=-1`` is the newest change alone (``"records":
null`` when there is none). IDs are decimal in the SQL and memory stores. With token auth
the server asks for a catalog-wide scope (``registry:catalog:*``): credentials that may
only pull some repositories are refused, and revocation then takes the refresh interval.

:func:`parse_changefeed` is the pure core (bytes in, changes out, bounded, bad input
refused); :class:`NotaryChangefeed` the thin HTTP shell the
:class:`~proxy.sources.invalidation.ChangeWatcher` polls. What the feed says is untrusted:
a change only makes the proxy fetch and verify that repository's trust data again.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from proxy.errors import (
    BadDataError,
    TrustDataError,
    TrustSourceUnavailableError,
    UnauthorizedError,
    UpstreamUnavailableError,
)
from proxy.settings import LimitSettings, TrustSourceSettings
from proxy.sources.base import Invalidatable, TrustSource
from proxy.sources.invalidation import (
    ChangeWatcher,
    FeedPage,
    FeedUnsupportedError,
    Invalidation,
    invalidation_log_for,
)
from proxy.sources.store import TrustStateStore
from proxy.upstream.auth import UpstreamAuthenticator
from proxy.upstream.client import make_http_client

__all__ = [
    "Change",
    "ChangefeedFormatError",
    "NotaryChangefeed",
    "build_watcher",
    "max_body_bytes",
    "parse_changefeed",
]

#: records asked for per poll (more waiting: the next page is read at once)
PAGE_RECORDS = 100
#: a repository name in the feed (notary GUNs are registry host + path, far shorter)
MAX_GUN_CHARS = 1024
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}\Z")
_CATEGORY = re.compile(r"^[a-z]{1,32}\Z")
# The scope notary-server's token auth asks for on the global feed; the challenge's own
# scope wins when it names one (UpstreamAuthenticator).
_SCOPE = "registry:catalog:*"


class ChangefeedFormatError(TrustDataError):
    """The change feed's answer is not one (bad JSON, wrong shape, too large)."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message, role="changefeed", field=field)


@dataclass(frozen=True)
class Change:
    """One entry of the feed."""

    id: str
    gun: str
    #: ``update`` (a new timestamp was published) or ``deletion`` (notary delete --remote);
    #: either way the repository's cached state is dropped
    category: str
    #: the timestamp version the update published (None: a deletion, or not given)
    version: int | None = None


def max_body_bytes(records: int) -> int:
    """The largest answer accepted for a page of ``records`` (one record is ~250 bytes
    with a short GUN; a GUN may take MAX_GUN_CHARS, escaped up to 6 bytes a character)."""
    return 1024 + abs(records) * (512 + 6 * MAX_GUN_CHARS)


def _decimal(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 19 else None


def parse_changefeed(body: bytes, *, after: str, max_records: int) -> list[Change]:
    """The changes in one changefeed answer, oldest first.

    ``after``: the cursor asked from (``-1``: the newest change); decimal IDs must then be
    above it and increasing, so a feed cannot send the reader backwards.

    Raises:
        ChangefeedFormatError: larger than :func:`max_body_bytes`, not JSON, not the shape
            above, more records than ``max_records``, a count that does not match, an ID,
            GUN or category that is not one, IDs out of order.
    """
    if len(body) > max_body_bytes(max_records):
        raise ChangefeedFormatError(f"answer of {len(body)} bytes for {max_records} records")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:  # RecursionError: deeply nested input
        raise ChangefeedFormatError(f"not JSON ({type(e).__name__})") from e
    if not isinstance(doc, dict):
        raise ChangefeedFormatError("not a JSON object")
    count = doc.get("count")
    records = doc.get("records")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ChangefeedFormatError("missing or not a count", field="count")
    if records is None:
        records = []
    if not isinstance(records, list):
        raise ChangefeedFormatError("not a list", field="records")
    if len(records) != count:
        raise ChangefeedFormatError(f"{len(records)} records, count says {count}", field="count")
    if len(records) > max_records:
        raise ChangefeedFormatError(f"{len(records)} records, asked for {max_records}")
    last = _decimal(after)
    out: list[Change] = []
    for i, record in enumerate(records):
        out.append(_record(record, i))
        number = _decimal(out[-1].id)
        if number is not None and last is not None and number <= last:
            raise ChangefeedFormatError(
                f"ID {out[-1].id} does not follow {last}", field=f"records[{i}].ID"
            )
        if number is not None:
            last = number
    return out


def _record(record: Any, i: int) -> Change:
    where = f"records[{i}]"
    if not isinstance(record, dict):
        raise ChangefeedFormatError("not an object", field=where)
    change_id = record.get("ID")
    gun = record.get("GUN")
    category = record.get("Category")
    if not isinstance(change_id, str) or not _ID.match(change_id):
        raise ChangefeedFormatError("not a change ID", field=f"{where}.ID")
    if (
        not isinstance(gun, str)
        or not 0 < len(gun) <= MAX_GUN_CHARS
        or not gun.isprintable()
        or " " in gun
    ):
        raise ChangefeedFormatError("not a repository name", field=f"{where}.GUN")
    if not isinstance(category, str) or not _CATEGORY.match(category):
        raise ChangefeedFormatError("not a category", field=f"{where}.Category")
    version = record.get("Version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version < 2**62:
        raise ChangefeedFormatError("not a version", field=f"{where}.Version")
    # A deletion has version 0; anything but an update invalidates whatever is held.
    known = version if category == "update" and version > 0 else None
    return Change(change_id, gun, category, known)


class NotaryChangefeed:
    """:class:`~proxy.sources.invalidation.ChangeFeed` of one notary-server. ``http`` and
    ``auth`` belong to it (``aclose`` closes the client); ``deadline`` bounds one read."""

    def __init__(
        self,
        name: str,
        url: str,
        http: httpx.AsyncClient,
        *,
        auth: UpstreamAuthenticator | None = None,
        records: int = PAGE_RECORDS,
        deadline: float = 10.0,
    ) -> None:
        if records < 1:
            raise ValueError("records must be >= 1")
        self.name = name
        self.url = url.rstrip("/")
        self.records = records
        self._http = http
        self._auth = auth
        self._deadline = deadline

    async def aclose(self) -> None:
        await self._http.aclose()

    async def latest(self) -> str:
        changes = await self._get("-1", -1)
        return changes[-1].id if changes else "0"

    async def changes(self, cursor: str) -> FeedPage:
        changes = await self._get(cursor, self.records)
        return FeedPage(
            cursor=changes[-1].id if changes else cursor,
            changes=tuple(Invalidation(c.gun, c.version) for c in changes),
            full=len(changes) >= self.records,
        )

    def ahead_of(self, cursor: str, latest: str) -> bool:
        # A server that lost its history (memory storage restarted) counts from 1 again.
        if _ID.match(cursor) is None:
            return True  # not a cursor at all (the shared state is untrusted)
        mine, theirs = _decimal(cursor), _decimal(latest)
        return mine is not None and theirs is not None and mine > theirs

    async def _get(self, cursor: str, records: int) -> list[Change]:
        try:
            async with asyncio.timeout(self._deadline):
                body = await self._fetch(cursor, records)
        except TimeoutError as e:
            raise self._unavailable("timed out") from e
        return parse_changefeed(body, after=cursor, max_records=abs(records))

    async def _fetch(self, cursor: str, records: int) -> bytes:
        url = f"{self.url}/v2/_trust/changefeed"
        params = {"change_id": cursor, "records": str(records)}
        headers = {"accept-encoding": "identity", "accept": "application/json"}
        if self._auth is not None and (cached := self._auth.cached_authorization(_SCOPE)):
            headers["authorization"] = cached
        response = await self._send(url, params, headers)
        try:
            if response.status_code == 401 and self._auth is not None:
                challenge = response.headers.get("www-authenticate")
                if challenge:
                    await response.aclose()
                    headers["authorization"] = await self._authorize(
                        challenge, headers.get("authorization")
                    )
                    response = await self._send(url, params, headers)
            status = response.status_code
            if status in (400, 401, 403, 404, 405):
                raise FeedUnsupportedError(self.name, f"change feed: HTTP {status}")
            if status != 200:
                raise self._unavailable(f"HTTP {status}")
            return await self._read_bounded(response, max_body_bytes(records))
        except httpx.HTTPError as e:
            raise self._unavailable(f"failed while reading ({type(e).__name__})") from e
        finally:
            await response.aclose()

    async def _send(
        self, url: str, params: dict[str, str], headers: dict[str, str]
    ) -> httpx.Response:
        request = self._http.build_request("GET", url, params=params, headers=headers)
        try:
            return await self._http.send(request, stream=True)
        except httpx.HTTPError as e:
            raise self._unavailable(f"unreachable ({type(e).__name__}: {e})") from e
        except httpx.InvalidURL as e:  # a redirect's Location that is not a URL
            raise self._unavailable("redirect to an invalid URL") from e

    async def _authorize(self, challenge: str, rejected: str | None) -> str:
        if self._auth is None:  # pragma: no cover - checked by the caller
            raise RuntimeError("no authenticator")
        try:
            return await self._auth.authorize(challenge, _SCOPE, rejected=rejected)
        except (UnauthorizedError, UpstreamUnavailableError, BadDataError) as e:
            raise FeedUnsupportedError(self.name, f"change feed: authentication: {e}") from e

    @staticmethod
    async def _read_bounded(response: httpx.Response, max_bytes: int) -> bytes:
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity"):  # we asked for identity; no inflating
            raise ChangefeedFormatError(f"served with Content-Encoding {encoding[:32]!r}")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise ChangefeedFormatError(f"answer exceeds {max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _unavailable(self, message: str) -> TrustSourceUnavailableError:
        return TrustSourceUnavailableError(self.name, f"change feed: {message}")


def build_watcher(
    settings: TrustSourceSettings,
    limits: LimitSettings,
    store: TrustStateStore,
    source: TrustSource,
    *,
    make_client: Callable[[LimitSettings, str | None], httpx.AsyncClient] = make_http_client,
) -> ChangeWatcher | None:
    """The change watcher of a Notary source (None: ``changefeed.enabled`` is false, or
    the source cannot be invalidated). Its HTTP client is its own, with the source's CA
    and credentials. Raises OSError / ValueError when the CA file cannot be read."""
    feed_settings = settings.changefeed
    if not feed_settings.enabled or not isinstance(source, Invalidatable):
        return None
    http = make_client(limits, str(settings.ca_file) if settings.ca_file else None)
    creds = settings.credentials
    auth = UpstreamAuthenticator(
        http,
        settings.name,
        username=creds.username if creds.present else None,
        password=creds.password if creds.present else None,
    )
    feed = NotaryChangefeed(
        settings.name,
        settings.url,
        http,
        auth=auth,
        # A poll is due every interval: one that hangs must not hold the lease for long.
        deadline=min(limits.request_deadline, max(5.0, 5 * feed_settings.interval)),
    )
    return ChangeWatcher(
        settings.name,
        feed,
        invalidation_log_for(store),
        source,
        interval=feed_settings.interval,
    )
