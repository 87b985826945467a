"""proxy.upstream.reader: the registry as a trust source or the gate reads it, for one
request. Against httpx.MockTransport: what is asked, with whose credentials, how often."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from proxy.errors import (
    DigestMismatchError,
    OversizeError,
    UpstreamContentError,
    UpstreamUnavailableError,
)
from proxy.manifest_cache import ManifestCache
from proxy.routing import Route
from proxy.settings import LimitSettings, UpstreamAuthSettings, UpstreamSettings
from proxy.upstream.client import UpstreamClient
from proxy.upstream.reader import Flights, RegistryReader, ServedManifest

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


MANIFEST = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
SIG = b'{"schemaVersion":2,"artifactType":"application/vnd.dev.cosign.artifact.sig.v1+json"}'
BLOB = b"a small signature blob"
REFERRERS = {"schemaVersion": 2, "manifests": [{"digest": sha256(SIG), "artifactType": "x"}]}


class Body(httpx.AsyncByteStream):
    """A streamed body, as the network gives one (read_bounded reads raw chunks)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data


def answer(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, headers=headers, stream=Body(body))


class Upstream:
    """A registry behind httpx.MockTransport that records requests."""

    def __init__(self, *, referrers_api: bool = True) -> None:
        self.referrers_api = referrers_api
        self.seen: list[tuple[str, str, str | None]] = []
        self.manifests = {sha256(MANIFEST): MANIFEST, "v1": MANIFEST}
        self.gate = asyncio.Event()
        self.gate.set()
        #: answers by status for a manifest reference, e.g. a 429 for a digest
        self.refuse: dict[str, int] = {}

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.method, request.url.path, request.headers.get("authorization")))
        await self.gate.wait()
        path = request.url.path.removeprefix("/v2/team/app/")
        kind, _, ref = path.partition("/")
        if kind == "manifests" and ref in self.refuse:
            return answer(self.refuse[ref], b'{"errors":[]}', {"retry-after": "7"})
        if kind == "manifests" and ref in self.manifests:
            body = self.manifests[ref]
            headers = {"docker-content-digest": sha256(body)}
            return answer(200, b"" if request.method == "HEAD" else body, headers)
        if kind == "manifests" and ref == sha256(MANIFEST).replace(":", "-"):
            return answer(200, json.dumps(REFERRERS).encode())
        if kind == "referrers" and self.referrers_api:
            return answer(200, json.dumps(REFERRERS).encode())
        if kind == "blobs" and ref == sha256(BLOB):
            return answer(200, BLOB)
        if kind == "manifests" and ref == "broken":
            return answer(500)
        return answer(404)


def reader(
    up: Upstream,
    *,
    mode: str = "anonymous",
    authorization: str | None = None,
    flights: Flights | None = None,
    cache: ManifestCache | None = None,
    max_bytes: int = 4096,
) -> RegistryReader:
    settings = UpstreamSettings(
        name="up",
        url="http://registry.test",
        registry="registry.test",
        auth=UpstreamAuthSettings(mode=mode),  # type: ignore[arg-type]
    )
    http = httpx.AsyncClient(transport=httpx.MockTransport(up))
    client = UpstreamClient(settings, LimitSettings(), http, None)
    return RegistryReader(
        client,
        Route(settings, "team/app", "team/app"),
        accept={"accept": "application/vnd.oci.image.manifest.v1+json"},
        authorization=authorization,
        manifest_max_bytes=max_bytes,
        cache=cache,
        flights={} if flights is None else flights,
    )


async def test_manifest_by_digest_is_verified_and_cached() -> None:
    up = Upstream()
    cache = ManifestCache(1 << 20)
    r = reader(up, cache=cache)
    assert await r.manifest(sha256(MANIFEST)) == MANIFEST
    assert await r.manifest(sha256(MANIFEST)) == MANIFEST  # from the cache
    assert [s[:2] for s in up.seen] == [("GET", f"/v2/team/app/manifests/{sha256(MANIFEST)}")]
    assert await r.manifest(sha256(b"absent")) is None


async def test_bytes_that_are_not_the_digest_are_refused_and_not_cached() -> None:
    up = Upstream()
    wrong = sha256(b"what was asked for")
    up.manifests[wrong] = MANIFEST
    cache = ManifestCache(1 << 20)
    with pytest.raises(UpstreamContentError):
        await reader(up, cache=cache).manifest(wrong)
    assert cache.get("up", "team/app", wrong) is None


async def test_every_read_is_bounded() -> None:
    with pytest.raises(OversizeError):
        await reader(Upstream(), max_bytes=10).manifest(sha256(MANIFEST))
    with pytest.raises(OversizeError):
        await reader(Upstream()).blob(sha256(BLOB), max_bytes=5)


async def test_an_error_answer_is_unavailable_never_absent() -> None:
    with pytest.raises(UpstreamUnavailableError):
        await reader(Upstream()).manifest_by_tag("broken")


async def test_concurrent_cold_reads_make_one_request_except_under_passthrough() -> None:
    up = Upstream()
    up.gate.clear()
    flights: Flights = {}
    readers = [reader(up, flights=flights) for _ in range(20)]
    tasks = [asyncio.create_task(r.manifest(sha256(MANIFEST))) for r in readers]
    await asyncio.sleep(0.05)
    up.gate.set()
    assert await asyncio.gather(*tasks) == [MANIFEST] * 20
    assert len(up.seen) == 1
    assert flights == {}

    up = Upstream()
    up.gate.clear()
    flights = {}
    clients = [reader(up, mode="passthrough", authorization=f"Bearer c{i}", flights=flights)
               for i in range(3)]  # fmt: skip
    tasks = [asyncio.create_task(r.manifest(sha256(MANIFEST))) for r in clients]
    await asyncio.sleep(0.05)
    up.gate.set()
    await asyncio.gather(*tasks)
    # Each client asked with its own credentials: nothing read for one is handed to another.
    assert sorted(s[2] or "" for s in up.seen) == ["Bearer c0", "Bearer c1", "Bearer c2"]


async def test_tag_reads_compute_the_digest_and_head_says_it() -> None:
    up = Upstream()
    r = reader(up)
    tagged = await r.manifest_by_tag("v1")
    assert tagged is not None
    assert (tagged.digest, tagged.body) == (sha256(MANIFEST), MANIFEST)
    assert await r.head_tag("v1") == sha256(MANIFEST)
    assert await r.head_tag("v9") is None
    assert await r.manifest_by_tag("v9") is None


@pytest.mark.parametrize("api", [True, False], ids=["referrers-api", "tag-schema-fallback"])
async def test_referrers_from_the_api_or_the_tag_schema(api: bool) -> None:
    up = Upstream(referrers_api=api)
    found = await reader(up).referrers(sha256(MANIFEST))
    assert [d["digest"] for d in found] == [sha256(SIG)]
    paths = [s[1] for s in up.seen]
    assert paths[0] == f"/v2/team/app/referrers/{sha256(MANIFEST)}"
    assert len(paths) == (1 if api else 2)


async def test_a_small_blob_is_verified() -> None:
    up = Upstream()
    assert await reader(up).blob(sha256(BLOB), max_bytes=1024) == BLOB
    assert await reader(up).blob(sha256(b"none"), max_bytes=1024) is None


async def test_another_repository_of_the_same_upstream_as_the_same_client() -> None:
    """``for_repository`` (a cosign signature repository): same upstream client and
    credentials, another path; another registry is not reachable through it."""
    up = Upstream()
    r = reader(up, mode="passthrough", authorization="Bearer client")
    other = r.for_repository("registry.test/team/sigs")
    assert other is not None
    assert other.route.repository == "registry.test/team/sigs"
    assert await other.manifest_by_tag("v1") is None  # the fake registry serves team/app only
    assert up.seen[-1] == ("GET", "/v2/team/sigs/manifests/v1", "Bearer client")
    assert r.route.upstream_name == "team/app"  # the original reader is unchanged
    assert r.for_repository("ghcr.io/team/sigs") is None
    assert r.for_repository("registry.test") is None


# --- serving a signed digest through the reader (what the manifest handler does) ---------


async def test_the_gate_and_the_handler_share_one_read_and_the_cache() -> None:
    up = Upstream()
    up.gate.clear()
    flights: Flights = {}
    cache = ManifestCache(1 << 20)
    digest = sha256(MANIFEST)
    gate_read = asyncio.create_task(reader(up, flights=flights, cache=cache).manifest(digest))
    serves = [
        asyncio.create_task(
            reader(up, flights=flights, cache=cache).manifest_to_serve(
                digest, length=len(MANIFEST), what="manifest team/app:v1"
            )
        )
        for _ in range(5)
    ]
    await asyncio.sleep(0.05)
    up.gate.set()
    assert await gate_read == MANIFEST
    for served in await asyncio.gather(*serves):
        assert isinstance(served, ServedManifest)
        assert (served.body, served.cached) == (MANIFEST, False)
        assert served.headers["docker-content-digest"] == digest  # the upstream's, to relay
    assert [s[:2] for s in up.seen] == [("GET", f"/v2/team/app/manifests/{digest}")]
    assert flights == {}
    hit = await reader(up, cache=cache).manifest_to_serve(digest, length=None, what="m")
    assert isinstance(hit, ServedManifest)
    assert hit.cached
    assert hit.body == MANIFEST
    assert len(up.seen) == 1  # a hit within the re-check interval asks nothing


@pytest.mark.parametrize("cached", [False, True], ids=["fresh", "hit"])
async def test_serving_checks_the_signed_length_and_says_what_the_bytes_were(
    cached: bool,
) -> None:
    up = Upstream()
    cache = ManifestCache(1 << 20)
    digest = sha256(MANIFEST)
    if cached:
        cache.put("up", "team/app", digest, MANIFEST)
    with pytest.raises(DigestMismatchError) as raised:
        await reader(up, cache=cache).manifest_to_serve(
            digest, length=len(MANIFEST) + 1, what="manifest team/app:v1"
        )
    assert (raised.value.actual, raised.value.size) == (digest, len(MANIFEST))
    assert "team/app:v1" in str(raised.value)
    wrong = sha256(b"what was signed")
    up.manifests[wrong] = MANIFEST
    with pytest.raises(DigestMismatchError) as raised:
        await reader(up, cache=cache).manifest_to_serve(wrong, length=None, what="m")
    assert raised.value.actual == digest
    assert cache.get("up", "team/app", wrong) is None


async def test_serving_hands_other_answers_back_open_and_the_gate_fails_closed() -> None:
    up = Upstream()
    digest = sha256(MANIFEST)
    up.refuse[digest] = 429
    served = await reader(up).manifest_to_serve(digest, length=None, what="m")
    assert isinstance(served, httpx.Response)
    assert served.status_code == 429
    assert served.headers["retry-after"] == "7"
    assert await served.aread() == b'{"errors":[]}'  # open: the handler relays it
    await served.aclose()
    with pytest.raises(UpstreamUnavailableError):
        await reader(up).manifest(digest)
    assert await reader(up).manifest_to_serve(sha256(b"gone"), length=None, what="m") is None


async def test_followers_of_a_refused_read_ask_for_themselves_when_serving() -> None:
    up = Upstream()
    digest = sha256(MANIFEST)
    up.refuse[digest] = 503
    up.gate.clear()
    flights: Flights = {}
    tasks = [
        asyncio.create_task(
            reader(up, flights=flights).manifest_to_serve(digest, length=None, what="m")
        )
        for _ in range(3)
    ]
    gate_follower = asyncio.create_task(reader(up, flights=flights).manifest(digest))
    await asyncio.sleep(0.05)
    up.gate.set()
    answers = await asyncio.gather(*tasks)
    assert [a.status_code for a in answers if isinstance(a, httpx.Response)] == [503] * 3
    for a in answers:
        assert isinstance(a, httpx.Response)
        await a.aclose()
    with pytest.raises(UpstreamUnavailableError):
        await gate_follower
    assert len(up.seen) == 3  # the leader's read, then one of its own per serving follower
    assert flights == {}


async def test_passthrough_hits_need_the_upstreams_yes_for_this_client() -> None:
    up = Upstream()
    cache = ManifestCache(1 << 20)
    digest = sha256(MANIFEST)
    cache.put("up", "team/app", digest, MANIFEST)
    r = reader(up, mode="passthrough", authorization="Bearer c1", cache=cache)
    served = await r.manifest_to_serve(digest, length=None, what="m")
    assert isinstance(served, ServedManifest)
    assert served.cached
    assert up.seen == [("HEAD", f"/v2/team/app/manifests/{digest}", "Bearer c1")]
    up.refuse[digest] = 401
    r = reader(up, mode="passthrough", authorization="Bearer stolen", cache=cache)
    refused = await r.manifest_to_serve(digest, length=None, what="m")
    assert isinstance(refused, httpx.Response)
    assert refused.status_code == 401
    await refused.aclose()
    assert [(m, a) for m, _, a in up.seen[1:]] == [
        ("HEAD", "Bearer stolen"),
        ("GET", "Bearer stolen"),
    ]
