"""The /v2 handlers against simulated upstream registries (httpx.MockTransport).

The app is the real one (``create_app``); only each upstream client's HTTP transport is
replaced, so routing, auth mode, error mapping, digest checks and pagination all run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from starlette.exceptions import StarletteDeprecationWarning

from proxy.errors import NotSignedError, TrustSourceUnavailableError
from proxy.http.app import create_app
from proxy.manifest_cache import ManifestCache
from proxy.routing import Route
from proxy.settings import LimitSettings, MiB, ServerSettings, Settings, UpstreamSettings
from proxy.trust_gate import ListingKind, PassThrough, RequestContext, ServeDigest, TagDecision

with warnings.catch_warnings():
    # Starlette 1.x prefers the httpx2 package for its TestClient; httpx works the same.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
UPSTREAM_URL = "http://registry.test"
REPO = "team/app"

SIGNED = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode()
UNSIGNED = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "evil": True}).encode()
BLOB = bytes(range(256)) * 4


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


SIGNED_DIGEST = sha256(SIGNED)
BLOB_DIGEST = sha256(BLOB)
Handler = Callable[[httpx.Request], httpx.Response]
_ITEM = re.compile(r"^/v2/(?P<name>.+?)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)$")
_TAGS = re.compile(r"^/v2/(?P<name>.+)/tags/list$")


class Body(httpx.AsyncByteStream):
    """A body the proxy has to stream, as from a real connection (MockTransport would
    otherwise hand back a response already read)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


def respond(
    status: int,
    body: bytes | list[bytes] = b"",
    headers: dict[str, str] | None = None,
    *,
    json_body: Any = None,
) -> httpx.Response:
    """A streaming upstream response; a list of chunks is sent without Content-Length."""
    headers = dict(headers or {})
    if json_body is not None:
        body = json.dumps(json_body).encode()
        headers.setdefault("Content-Type", "application/json")
    if isinstance(body, bytes):
        headers["Content-Length"] = str(len(body))
        body = [body]
    return httpx.Response(status, headers=headers, stream=Body(body))


def oci_error(status: int, code: str) -> httpx.Response:
    body = {"errors": [{"code": code, "message": code.lower(), "detail": {}}]}
    return respond(status, json_body=body)


@dataclass
class FakeRegistry:
    """An in-memory registry for one repository; records every request it gets."""

    manifests: dict[str, bytes] = field(default_factory=dict)  # tag or digest -> bytes
    blobs: dict[str, bytes] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    page_size: int | None = None  # paginate the tag list with absolute Link URLs
    overrides: dict[str, Handler] = field(default_factory=dict)  # path -> handler
    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path in self.overrides:
            return self.overrides[path](request)
        if (m := _TAGS.match(path)) and m["name"] == REPO:
            return self._tags(request)
        m = _ITEM.match(path)
        if m is None or m["name"] != REPO:
            return oci_error(404, "NAME_UNKNOWN")
        if m["kind"] == "manifests":
            body = self.manifests.get(m["ref"])
            if body is None:
                return oci_error(404, "MANIFEST_UNKNOWN")
            headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": sha256(body),
                       "Connection": "keep-alive", "X-Internal": "secret"}  # fmt: skip
            return respond(200, body, headers)
        blob = self.blobs.get(m["ref"])
        if blob is None:
            return oci_error(404, "BLOB_UNKNOWN")
        if request.headers.get("if-none-match") == f'"{m["ref"]}"':
            return respond(304, headers={"ETag": f'"{m["ref"]}"'})
        if (rng := request.headers.get("range")) and (r := re.match(r"bytes=(\d+)-(\d+)", rng)):
            start, end = int(r[1]), int(r[2])
            return respond(
                206, blob[start : end + 1],
                {"Content-Range": f"bytes {start}-{end}/{len(blob)}"},
            )  # fmt: skip
        return respond(200, blob, {"Content-Type": "application/x-tar"})

    def _tags(self, request: httpx.Request) -> httpx.Response:
        ordered = sorted(self.tags)
        if self.page_size is None:
            return respond(200, json_body={"name": REPO, "tags": self.tags})
        last = request.url.params.get("last")
        rest = [t for t in ordered if last is None or t > last]
        page = rest[: self.page_size]
        headers = {}
        if len(rest) > self.page_size:
            headers["Link"] = (f'<{UPSTREAM_URL}/v2/{REPO}/tags/list?n={self.page_size}'
                               f'&last={page[-1]}>; rel="next"')  # fmt: skip
        return respond(200, json_body={"name": REPO, "tags": page}, headers=headers)

    def paths(self) -> list[str]:
        return [r.url.path for r in self.requests]


@dataclass
class Gate:
    """A scripted TrustGate."""

    decision: TagDecision | BaseException = field(
        default_factory=lambda: PassThrough("tests: unchecked")
    )
    visible: Callable[[list[str]], list[str]] = list
    digest_error: BaseException | None = None
    asked: list[str] = field(default_factory=list)
    filtered: list[list[str]] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    contexts: list[RequestContext] = field(default_factory=list)
    mismatches: list[tuple[str, str, str]] = field(default_factory=list)
    admit: bool = True
    listings: list[str] = field(default_factory=list)

    async def decide_tag(self, route: Route, tag: str, ctx: RequestContext) -> TagDecision:
        self.asked.append(f"{route.repository}:{tag}")
        self.contexts.append(ctx)
        if isinstance(self.decision, BaseException):
            raise self.decision
        return self.decision

    async def decide_digest(self, route: Route, digest: str, ctx: RequestContext) -> None:
        self.digests.append(f"{route.repository}@{digest}")
        self.contexts.append(ctx)
        if self.digest_error is not None:
            raise self.digest_error

    async def filter_tags(self, route: Route, tags: list[str], ctx: RequestContext) -> list[str]:
        self.filtered.append(list(tags))
        self.contexts.append(ctx)
        if isinstance(self.decision, BaseException):
            raise self.decision
        return self.visible(tags)

    async def admit_listing(
        self, route: Route, kind: ListingKind, reference: str, ctx: RequestContext
    ) -> bool:
        self.listings.append(f"{kind} {route.repository}")
        return self.admit

    def report_mismatch(
        self, route: Route, tag: str, expected: str, actual: str, ctx: RequestContext
    ) -> None:
        self.mismatches.append((tag, expected, actual))


def make_settings(**limits: Any) -> Settings:
    up = UpstreamSettings(name="internal", url=UPSTREAM_URL, registry="registry.test")
    return Settings(server=ServerSettings(), upstreams=(up,),
                    limits=replace(LimitSettings(), **limits))  # fmt: skip


@contextmanager
def proxy(registry: FakeRegistry, gate: Gate | None = None, **limits: Any) -> Iterator[TestClient]:
    app = create_app(make_settings(**limits), gate=gate or Gate())
    for client in app.state.proxy.clients.values():
        client._http = httpx.AsyncClient(transport=httpx.MockTransport(registry))
    with TestClient(app) as tc:
        yield tc


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry(
        manifests={"v1": UNSIGNED, SIGNED_DIGEST: SIGNED},
        blobs={BLOB_DIGEST: BLOB},
        tags=["v1", "v2", "latest"],
    )


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json")
    errors = response.json()["errors"]
    assert len(errors) == 1
    entry: dict[str, Any] = errors[0]
    assert set(entry) == {"code", "message", "detail"}
    return entry


# --------------------------------------------------------------------------- pass-through


def test_accept_headers_are_joined_and_forwarded(registry: FakeRegistry) -> None:
    with proxy(registry) as tc:
        r = tc.get(f"/v2/{REPO}/manifests/v1",
                   headers=[("Accept", OCI_MANIFEST), ("Accept", DOCKER_MANIFEST)])  # fmt: skip
    assert r.status_code == 200
    assert r.content == UNSIGNED
    (seen,) = registry.requests
    assert seen.headers["accept"] == f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"
    # Hop-by-hop and unknown upstream headers stay behind.
    assert "x-internal" not in r.headers
    assert r.headers.get("connection") != "keep-alive"


def test_upstream_5xx_is_502_naming_the_upstream(registry: FakeRegistry) -> None:
    registry.overrides[f"/v2/{REPO}/manifests/v1"] = lambda _: respond(503, b"down")
    with proxy(registry) as tc:
        r = tc.get(f"/v2/{REPO}/manifests/v1")
    assert r.status_code == 502
    entry = error_of(r)
    assert entry["code"] == "UNAVAILABLE"
    assert entry["detail"] == {"upstream": "internal"}
    assert "upstream internal" in entry["message"]
    assert "503" in entry["message"]


def test_upstream_404_error_body_is_relayed(registry: FakeRegistry) -> None:
    with proxy(registry) as tc:
        r = tc.get(f"/v2/{REPO}/manifests/nope")
    assert r.status_code == 404
    assert error_of(r)["code"] == "MANIFEST_UNKNOWN"  # the upstream's own code


def test_non_json_upstream_error_is_wrapped(registry: FakeRegistry) -> None:
    registry.overrides[f"/v2/{REPO}/manifests/v1"] = lambda _: respond(
        404, b"<h1>gone</h1>", {"Content-Type": "text/html"}
    )
    with proxy(registry) as tc:
        r = tc.get(f"/v2/{REPO}/manifests/v1")
    assert r.status_code == 404
    assert b"<h1>" not in r.content
    assert error_of(r)["code"] == "NOT_FOUND"
    assert error_of(r)["detail"] == {"upstream": "internal"}


def test_401_without_challenge_in_anonymous_mode_is_403_denied(registry: FakeRegistry) -> None:
    registry.overrides[f"/v2/{REPO}/manifests/v1"] = lambda _: oci_error(401, "UNAUTHORIZED")
    with proxy(registry) as tc:
        r = tc.get(f"/v2/{REPO}/manifests/v1")
    assert r.status_code == 403
    assert "www-authenticate" not in r.headers
    entry = error_of(r)
    assert entry["code"] == "DENIED"
    assert entry["detail"] == {"upstream": "internal"}


def test_oversize_manifest_is_502(registry: FakeRegistry) -> None:
    limit = len(UNSIGNED) - 1
    with proxy(registry, manifest_max_bytes=limit) as tc:
        r = tc.get(f"/v2/{REPO}/manifests/v1")
    assert r.status_code == 502
    assert UNSIGNED not in r.content
    assert str(limit) in error_of(r)["message"]


def test_oversize_manifest_without_content_length_is_502(registry: FakeRegistry) -> None:
    def endless(_: httpx.Request) -> httpx.Response:
        return respond(200, [b"x" * 100] * 50)  # chunked, no length

    registry.overrides[f"/v2/{REPO}/manifests/{SIGNED_DIGEST}"] = endless
    with proxy(registry, manifest_max_bytes=1000) as tc:
        r = tc.get(f"/v2/{REPO}/manifests/{SIGNED_DIGEST}")
    assert r.status_code == 502
    assert error_of(r)["code"] == "UNAVAILABLE"


# --------------------------------------------------------------------------- by digest


def test_manifest_by_digest(registry: FakeRegistry) -> None:
    with proxy(registry) as tc:
        r = tc.get(f"/v2/{REPO}/manifests/{SIGNED_DIGEST}")
    assert r.status_code == 200
    assert r.content == SIGNED
    assert r.headers["docker-content-digest"] == SIGNED_DIGEST


def test_manifest_by_digest_with_wrong_bytes_is_502(registry: FakeRegistry) -> None:
    registry.manifests[SIGNED_DIGEST] = UNSIGNED
    with proxy(registry) as tc:
        r = tc.get(f"/v2/{REPO}/manifests/{SIGNED_DIGEST}")
    assert r.status_code == 502
    assert UNSIGNED not in r.content
    assert SIGNED_DIGEST in error_of(r)["message"]


def test_conditional_headers_do_not_reach_a_manifest_the_proxy_must_hash(
    registry: FakeRegistry,
) -> None:
    def conditional(request: httpx.Request) -> httpx.Response:
        if "if-none-match" in request.headers or "range" in request.headers:
            return respond(304 if "if-none-match" in request.headers else 206)
        return respond(200, SIGNED)

    registry.overrides[f"/v2/{REPO}/manifests/{SIGNED_DIGEST}"] = conditional
    with proxy(registry) as tc:
        headers = {"If-None-Match": f'"{SIGNED_DIGEST}"', "Range": "bytes=0-3"}
        r = tc.get(f"/v2/{REPO}/manifests/{SIGNED_DIGEST}", headers=headers)
    assert r.status_code == 200
    assert r.content == SIGNED


# --------------------------------------------------------------------------- signed tags


def test_signed_tag_is_fetched_by_digest_and_verified(registry: FakeRegistry) -> None:
    gate = Gate(ServeDigest(SIGNED_DIGEST, len(SIGNED)))
    with proxy(registry, gate) as tc:
        r = tc.get(f"/v2/{REPO}/manifests/v1")
    assert r.status_code == 200
    assert r.content == SIGNED
    assert sha256(r.content) == r.headers["docker-content-digest"] == SIGNED_DIGEST
    assert r.headers["content-length"] == str(len(SIGNED))
    assert registry.paths() == [f"/v2/{REPO}/manifests/{SIGNED_DIGEST}"]  # never the tag
    assert gate.asked == [f"registry.test/{REPO}:v1"]


def test_signed_tag_head_is_checked_like_get(registry: FakeRegistry) -> None:
    gate = Gate(ServeDigest(SIGNED_DIGEST, len(SIGNED)))
    with proxy(registry, gate) as tc:
        r = tc.head(f"/v2/{REPO}/manifests/v1")
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["docker-content-digest"] == SIGNED_DIGEST
    assert r.headers["content-length"] == str(len(SIGNED))
    assert [(q.method, q.url.path) for q in registry.requests] == [
        ("GET", f"/v2/{REPO}/manifests/{SIGNED_DIGEST}")  # bytes fetched to be hashed
    ]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_signed_digest_with_other_bytes_upstream_is_502(
    registry: FakeRegistry, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    from proxy.metrics import UPSTREAM_ERRORS

    registry.manifests[SIGNED_DIGEST] = UNSIGNED  # the registry lies about the digest
    gate = Gate(ServeDigest(SIGNED_DIGEST))
    before = UPSTREAM_ERRORS.labels("internal", "mismatch")._value.get()
    with (
        caplog.at_level(logging.CRITICAL, logger="trustproxy.handlers"),
        proxy(registry, gate) as tc,
    ):
        r = tc.request(method, f"/v2/{REPO}/manifests/v1")
    assert r.status_code == 502
    assert UNSIGNED not in r.content
    assert r.headers.get("docker-content-digest") is None
    if method == "GET":
        assert error_of(r)["code"] == "UNAVAILABLE"
    # An alert, a counted upstream error, and a decision record through the gate.
    assert gate.mismatches == [("v1", SIGNED_DIGEST, sha256(UNSIGNED))]
    assert UPSTREAM_ERRORS.labels("internal", "mismatch")._value.get() == before + 1
    (alert,) = [rec for rec in caplog.records if rec.levelno == logging.CRITICAL]
    for text in (f"registry.test/{REPO}", "v1", SIGNED_DIGEST, sha256(UNSIGNED), "internal"):
        assert text in alert.getMessage()


def test_signed_fetch_offers_every_manifest_type_and_the_clients_accept(
    registry: FakeRegistry,
) -> None:
    gate = Gate(ServeDigest(SIGNED_DIGEST, len(SIGNED)))
    # Without the manifest cache: the second pull must reach the upstream to be looked at.
    with proxy(registry, gate, manifest_cache_bytes=0) as tc:
        r = tc.get(f"/v2/{REPO}/manifests/v1", headers={"Accept": "application/x-custom"})
        plain = tc.get(f"/v2/{REPO}/manifests/v1")
    assert r.status_code == plain.status_code == 200
    first, second = (q.headers["accept"].split(", ") for q in registry.requests)
    assert first[0] == "application/x-custom"
    for media_type in (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST):
        assert media_type in first
        assert media_type in second
    assert len(first) == len(set(first))


def test_request_context_reaches_the_gate(registry: FakeRegistry) -> None:
    gate = Gate(ServeDigest(SIGNED_DIGEST, len(SIGNED)))
    with proxy(registry, gate) as tc:
        tc.head(f"/v2/{REPO}/manifests/v1", headers={"User-Agent": "containerd/2.0"})
    (ctx,) = gate.contexts
    assert (ctx.client, ctx.user_agent, ctx.user, ctx.method) == (
        "testclient", "containerd/2.0", None, "HEAD"
    )  # fmt: skip
    assert ctx.registry is not None


# --------------------------------------------------------------------------- digest gate


def test_pull_by_digest_asks_the_gate_first(registry: FakeRegistry) -> None:
    gate = Gate(digest_error=NotSignedError(f"digest {SIGNED_DIGEST} is not signed"))
    with proxy(registry, gate) as tc:
        r = tc.get(f"/v2/{REPO}/manifests/{SIGNED_DIGEST}")
        head = tc.head(f"/v2/{REPO}/manifests/{SIGNED_DIGEST}")
    assert r.status_code == head.status_code == 404
    assert error_of(r)["code"] == "MANIFEST_UNKNOWN"
    assert error_of(r)["detail"] == {"reason": f"digest {SIGNED_DIGEST} is not signed"}
    assert registry.requests == []
    assert gate.digests == [f"registry.test/{REPO}@{SIGNED_DIGEST}"] * 2


def test_blobs_are_not_gated(registry: FakeRegistry) -> None:
    gate = Gate(NotSignedError("nothing is signed"), digest_error=NotSignedError("no"))
    with proxy(registry, gate) as tc:
        r = tc.get(f"/v2/{REPO}/blobs/{BLOB_DIGEST}")
    assert r.status_code == 200
    assert gate.asked == gate.digests == []


def test_gate_fetch_verifies_and_offers_every_type(registry: FakeRegistry) -> None:
    """The callback the gate gets: by digest, every manifest type, hash checked."""
    import asyncio

    got: dict[str, object] = {}

    class Fetching(Gate):
        async def decide_digest(self, route: Route, digest: str, ctx: RequestContext) -> None:
            assert ctx.registry is not None
            got["ok"] = await ctx.registry.manifest(SIGNED_DIGEST)
            got["missing"] = await ctx.registry.manifest(sha256(b"nope"))
            registry.manifests[BLOB_DIGEST] = b"other bytes"
            try:
                await ctx.registry.manifest(BLOB_DIGEST)
            except Exception as e:  # the test looks at what was raised
                got["bad"] = type(e).__name__
            await asyncio.sleep(0)

    with proxy(registry, Fetching()) as tc:
        r = tc.get(f"/v2/{REPO}/manifests/{SIGNED_DIGEST}")
    assert r.status_code == 200
    # A DigestMismatchError is an UpstreamContentError (a 502) that says what the bytes were.
    assert got == {"ok": SIGNED, "missing": None, "bad": "DigestMismatchError"}
    assert OCI_INDEX in registry.requests[0].headers["accept"]


def test_signed_length_mismatch_is_502(registry: FakeRegistry) -> None:
    with proxy(registry, Gate(ServeDigest(SIGNED_DIGEST, len(SIGNED) + 1))) as tc:
        r = tc.get(f"/v2/{REPO}/manifests/v1")
    assert r.status_code == 502
    assert SIGNED not in r.content
    assert str(len(SIGNED) + 1) in error_of(r)["message"]


def test_signed_digest_missing_upstream_is_manifest_unknown(registry: FakeRegistry) -> None:
    del registry.manifests[SIGNED_DIGEST]
    with proxy(registry, Gate(ServeDigest(SIGNED_DIGEST))) as tc:
        r = tc.get(f"/v2/{REPO}/manifests/v1")
    assert r.status_code == 404
    entry = error_of(r)
    assert entry["code"] == "MANIFEST_UNKNOWN"
    assert SIGNED_DIGEST in entry["detail"]["reason"]
    assert f"/v2/{REPO}/manifests/v1" not in registry.paths()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_not_signed_is_manifest_unknown_with_reason(registry: FakeRegistry, method: str) -> None:
    reason = "tag v1 has no signature from targets/releases"
    with proxy(registry, Gate(NotSignedError(reason))) as tc:
        r = tc.request(method, f"/v2/{REPO}/manifests/v1")
    assert r.status_code == 404
    assert registry.requests == []  # nothing fetched for an unsigned tag
    if method == "GET":
        entry = error_of(r)
        assert entry["code"] == "MANIFEST_UNKNOWN"
        assert entry["detail"] == {"reason": reason}


def test_trust_source_unavailable_is_503_never_a_pass_through(registry: FakeRegistry) -> None:
    with proxy(registry, Gate(TrustSourceUnavailableError("notary", "connection refused"))) as tc:
        r = tc.get(f"/v2/{REPO}/manifests/v1")
        tags = tc.get(f"/v2/{REPO}/tags/list")
    assert r.status_code == 503
    assert tags.status_code == 503
    assert UNSIGNED not in r.content
    entry = error_of(r)
    assert entry["code"] == "UNAVAILABLE"
    assert entry["detail"] == {"trust_source": "notary"}
    assert not any("/manifests/" in p for p in registry.paths())


# --------------------------------------------------------------------------- tag lists


def test_tags_are_filtered_before_pagination(registry: FakeRegistry) -> None:
    registry.tags = ["a", "b", "c", "d", "e"]
    gate = Gate(visible=lambda tags: [t for t in tags if t in ("b", "d", "e")])
    with proxy(registry, gate) as tc:
        first = tc.get(f"/v2/{REPO}/tags/list", params={"n": "2"})
        link = first.headers["link"]
        url = link[1 : link.index(">")]
        second = tc.get(url)
    assert first.json() == {"name": REPO, "tags": ["b", "d"]}
    assert url.startswith(f"/v2/{REPO}/tags/list?")
    assert parse_qs(url.split("?", 1)[1]) == {"n": ["2"], "last": ["d"]}
    assert second.json() == {"name": REPO, "tags": ["e"]}
    assert "link" not in second.headers
    assert gate.filtered == [registry.tags, registry.tags]
    # The proxy reads the whole upstream list; the client's n/last are its own.
    assert all("n" not in r.url.params for r in registry.requests)


def test_upstream_tag_pagination_is_followed(registry: FakeRegistry) -> None:
    registry.tags = [f"t{i:02d}" for i in range(7)]
    registry.page_size = 3
    with proxy(registry) as tc:
        r = tc.get(f"/v2/{REPO}/tags/list")
    assert r.status_code == 200
    assert r.json() == {"name": REPO, "tags": registry.tags}
    assert "link" not in r.headers
    assert len(registry.requests) == 3
    assert [r.url.params.get("last") for r in registry.requests] == [None, "t02", "t05"]
    assert all(r.url.host == "registry.test" for r in registry.requests)


def test_tag_list_head_has_no_body(registry: FakeRegistry) -> None:
    with proxy(registry) as tc:
        r = tc.head(f"/v2/{REPO}/tags/list")
    assert r.status_code == 200
    assert r.content == b""
    assert int(r.headers["content-length"]) > 0


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[" * 5000, b'{"tags": "v1"}', b'{"tags": [1]}', b"[]"],
    ids=["not-json", "deeply-nested", "tags-string", "tags-ints", "list"],
)
def test_malformed_upstream_tag_list_is_502(registry: FakeRegistry, body: bytes) -> None:
    registry.overrides[f"/v2/{REPO}/tags/list"] = lambda _: respond(200, body)
    with proxy(registry) as tc:
        r = tc.get(f"/v2/{REPO}/tags/list")
    assert r.status_code == 502
    assert error_of(r)["code"] == "UNAVAILABLE"


def test_null_tag_list_is_empty(registry: FakeRegistry) -> None:
    registry.overrides[f"/v2/{REPO}/tags/list"] = lambda _: respond(
        200, json_body={"name": REPO, "tags": None}
    )
    with proxy(registry) as tc:
        assert tc.get(f"/v2/{REPO}/tags/list").json() == {"name": REPO, "tags": []}


@pytest.mark.parametrize("n", ["-1", "x", "²", "9" * 5000], ids=["negative", "word", "sup", "huge"])
def test_bad_n(registry: FakeRegistry, n: str) -> None:
    with proxy(registry) as tc:
        r = tc.get(f"/v2/{REPO}/tags/list", params={"n": n})
    if n == "9" * 5000:  # a huge page size is capped, not an error
        assert r.status_code == 200
    else:
        assert r.status_code == 400
        assert error_of(r)["code"] == "UNSUPPORTED"


# --------------------------------------------------------------------------- blobs


def test_blob_streams_exact_bytes(registry: FakeRegistry) -> None:
    with proxy(registry) as tc:
        r = tc.get(f"/v2/{REPO}/blobs/{BLOB_DIGEST}")
        head = tc.head(f"/v2/{REPO}/blobs/{BLOB_DIGEST}")
    assert r.status_code == 200
    assert r.content == BLOB
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(BLOB))


def test_blob_range_and_if_none_match_are_forwarded(registry: FakeRegistry) -> None:
    with proxy(registry) as tc:
        part = tc.get(f"/v2/{REPO}/blobs/{BLOB_DIGEST}", headers={"Range": "bytes=10-19"})
        cached = tc.get(f"/v2/{REPO}/blobs/{BLOB_DIGEST}",
                        headers={"If-None-Match": f'"{BLOB_DIGEST}"'})  # fmt: skip
    assert part.status_code == 206
    assert part.content == BLOB[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(BLOB)}"
    assert cached.status_code == 304
    assert cached.content == b""


def test_missing_blob_is_relayed_404(registry: FakeRegistry) -> None:
    with proxy(registry) as tc:
        r = tc.get(f"/v2/{REPO}/blobs/{sha256(b'other')}")
    assert r.status_code == 404
    assert error_of(r)["code"] == "BLOB_UNKNOWN"


# --------------------------------------------------------------------------- requests


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("PUT", f"/v2/{REPO}/manifests/v1", "GET, HEAD"),
     ("DELETE", f"/v2/{REPO}/manifests/v1", "GET, HEAD"),
     ("POST", f"/v2/{REPO}/blobs/uploads/", ""), ("PATCH", f"/v2/{REPO}/blobs/uploads/uuid", ""),
     ("GET", f"/v2/{REPO}/blobs/uploads/uuid", ""), ("HEAD", f"/v2/{REPO}/blobs/uploads/uuid", ""),
     ("GET", f"/v2/{REPO}/blobs/uploads", ""),
     ("POST", "/v2/Bad/Name/blobs/uploads/", "GET, HEAD")],
    ids=["put", "delete", "post-upload", "patch-upload", "get-upload", "head-upload",
         "get-upload-no-slash", "post-upload-bad-name"],
)  # fmt: skip
def test_read_only(registry: FakeRegistry, method: str, path: str, allow: str) -> None:
    # Allow lists what the proxy serves there: an upload session serves no method at all
    # (a GET answered 405 with "Allow: GET, HEAD" contradicted itself: issue 17).
    with proxy(registry) as tc:
        r = tc.request(method, path)
    assert r.status_code == 405
    assert r.headers["allow"] == allow
    if method != "HEAD":
        assert error_of(r)["code"] == "UNSUPPORTED"
    assert registry.requests == []


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [("/v2/Team/App/manifests/v1", 400, "NAME_INVALID"),
     (f"/v2/{REPO}/manifests/-v1", 404, "MANIFEST_UNKNOWN"),
     (f"/v2/{REPO}/manifests/.INVALID_MANIFEST_NAME", 404, "MANIFEST_UNKNOWN"),
     (f"/v2/{REPO}/manifests/sha256:abc", 400, "DIGEST_INVALID"),
     (f"/v2/{REPO}/nothing/here", 404, "NOT_FOUND")],
    ids=["bad-name", "bad-tag", "conformance-invalid-manifest-name", "bad-digest", "no-endpoint"],
)  # fmt: skip
def test_bad_requests_never_reach_upstream(
    registry: FakeRegistry, path: str, status: int, code: str
) -> None:
    # A reference that is not a valid tag names no manifest: 404 MANIFEST_UNKNOWN, as the
    # OCI conformance suite requires (it was 400 TAG_INVALID).
    with proxy(registry) as tc:
        r = tc.get(path)
        head = tc.head(path)
    assert r.status_code == head.status_code == status
    assert error_of(r)["code"] == code
    assert registry.requests == []


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", f"/v2/{REPO}/manifests/-v1"), ("GET", f"/v2/{REPO}/nothing/here"),
     ("PUT", f"/v2/{REPO}/manifests/v1"), ("GET", f"/v2/{REPO}/blobs/uploads/uuid"),
     ("GET", "/v2/Team/App/tags/list"), ("GET", f"/v2/{REPO}/manifests/missing"),
     ("GET", "/nowhere")],
    ids=["bad-tag", "no-endpoint", "read-only", "upload", "bad-name", "relayed-404",
         "outside-v2"],
)  # fmt: skip
def test_error_answers_carry_the_api_version_header(
    registry: FakeRegistry, method: str, path: str
) -> None:
    # Docker clients look for Docker-Distribution-API-Version on every answer (issue 17).
    with proxy(registry) as tc:
        r = tc.request(method, path)
    assert r.status_code >= 400
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"
    assert error_of(r)["code"]


def test_upstream_failure_error_carries_the_api_version_header(registry: FakeRegistry) -> None:
    registry.overrides[f"/v2/{REPO}/manifests/v1"] = lambda _: respond(503, b"down")
    with proxy(registry) as tc:
        r = tc.get(f"/v2/{REPO}/manifests/v1")
    assert r.status_code == 502
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_listings_the_gate_does_not_admit_never_reach_upstream(
    registry: FakeRegistry, method: str
) -> None:
    # Issue 17, finding 7: tag lists and referrers of a repository no policy covers were
    # relayed from the upstream before the gate ran.
    gate = Gate(admit=False)
    digest = "sha256:" + "a" * 64
    with proxy(registry, gate) as tc:
        tags = tc.request(method, f"/v2/{REPO}/tags/list")
        refs = tc.request(method, f"/v2/{REPO}/referrers/{digest}")
    assert registry.requests == []
    assert gate.listings == [f"tags registry.test/{REPO}", f"referrers registry.test/{REPO}"]
    assert gate.filtered == []
    assert tags.status_code == refs.status_code == 200
    assert refs.headers["content-type"] == "application/vnd.oci.image.index.v1+json"
    if method == "GET":
        assert tags.json() == {"name": REPO, "tags": []}
        assert refs.json() == {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [],
        }


def test_base_endpoint(registry: FakeRegistry) -> None:
    with proxy(registry) as tc:
        r = tc.get("/v2/")
    assert r.status_code == 200
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"


def test_unusable_upstream_tag_link_is_502_not_a_partial_list(registry: FakeRegistry) -> None:
    registry.tags = [f"t{i:02d}" for i in range(7)]
    registry.page_size = 3
    original = registry.__call__

    def bad_link(request: httpx.Request) -> httpx.Response:
        response = original(request)
        if "link" in response.headers:
            response.headers["link"] = '</v2/other/repo/tags/list?last=t02>; rel="next"'
        return response

    with proxy(registry) as tc:
        app: Any = tc.app
        app.state.proxy.clients["internal"]._http = httpx.AsyncClient(
            transport=httpx.MockTransport(bad_link)
        )
        r = tc.get(f"/v2/{REPO}/tags/list")
    assert r.status_code == 502
    assert "Link" in error_of(r)["message"]


def test_a_bug_in_the_proxy_is_still_an_oci_error(registry: FakeRegistry) -> None:
    gate = Gate(decision=ZeroDivisionError("a bug"))
    with proxy(registry, gate) as tc:
        r = tc.get(f"/v2/{REPO}/manifests/v1")
    assert r.status_code == 500
    entry = error_of(r)
    assert entry["code"] == "UNKNOWN"
    assert "a bug" not in r.text  # no internals leak to clients


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nothing", 404), ("GET", "/v3/", 404), ("POST", "/healthz", 405)],
    ids=["unknown-path", "other-api", "wrong-method"],
)
def test_paths_outside_the_api_get_oci_errors(
    registry: FakeRegistry, method: str, path: str, status: int
) -> None:
    with proxy(registry) as tc:
        r = tc.request(method, path)
    assert r.status_code == status
    error_of(r)


# --------------------------------------------------------------------------- manifest cache


def _manifest_requests(registry: FakeRegistry) -> list[tuple[str, str]]:
    return [(q.method, q.url.path) for q in registry.requests if "/manifests/" in q.url.path]


def _same_response(a: httpx.Response, b: httpx.Response) -> None:
    assert a.status_code == b.status_code
    assert a.content == b.content
    assert dict(a.headers) == dict(b.headers)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_warm_signed_tag_needs_no_upstream_request(registry: FakeRegistry, method: str) -> None:
    gate = Gate(ServeDigest(SIGNED_DIGEST, len(SIGNED)))
    with proxy(registry, gate) as tc:
        cold = tc.request(method, f"/v2/{REPO}/manifests/v1")
        warm = tc.request(method, f"/v2/{REPO}/manifests/v1")
        other = tc.request("HEAD" if method == "GET" else "GET", f"/v2/{REPO}/manifests/v1")
    assert cold.status_code == warm.status_code == other.status_code == 200
    assert registry.paths() == [f"/v2/{REPO}/manifests/{SIGNED_DIGEST}"]  # the cold one only
    assert gate.asked == [f"registry.test/{REPO}:v1"] * 3  # the gate still decides every pull


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(
    "accept", [None, "application/x-custom", OCI_MANIFEST], ids=["no-accept", "other", "oci"]
)
def test_signed_tag_hit_answers_exactly_like_the_miss(
    registry: FakeRegistry, method: str, accept: str | None
) -> None:
    gate = Gate(ServeDigest(SIGNED_DIGEST, len(SIGNED)))
    headers = {"Accept": accept} if accept else {}
    with proxy(registry, gate) as tc:
        miss = tc.request(method, f"/v2/{REPO}/manifests/v1", headers=headers)
        hit = tc.request(method, f"/v2/{REPO}/manifests/v1", headers=headers)
    assert len(registry.requests) == 1
    assert miss.status_code == 200
    _same_response(miss, hit)
    assert hit.headers["content-type"] == OCI_MANIFEST
    assert "x-internal" not in hit.headers


def test_digest_hit_answers_exactly_like_the_miss(registry: FakeRegistry) -> None:
    with proxy(registry) as tc:
        miss = tc.get(f"/v2/{REPO}/manifests/{SIGNED_DIGEST}", headers={"Accept": OCI_MANIFEST})
        hit = tc.get(f"/v2/{REPO}/manifests/{SIGNED_DIGEST}", headers={"Accept": OCI_MANIFEST})
        head = tc.head(f"/v2/{REPO}/manifests/{SIGNED_DIGEST}", headers={"Accept": OCI_MANIFEST})
    assert len(registry.requests) == 1
    assert miss.content == SIGNED
    _same_response(miss, hit)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(SIGNED))


def test_signed_tag_and_digest_pulls_share_entries(registry: FakeRegistry) -> None:
    gate = Gate(ServeDigest(SIGNED_DIGEST, len(SIGNED)))
    with proxy(registry, gate) as tc:
        by_tag = tc.get(f"/v2/{REPO}/manifests/v1")
        by_digest = tc.get(
            f"/v2/{REPO}/manifests/{SIGNED_DIGEST}", headers={"Accept": OCI_MANIFEST}
        )
    assert by_tag.content == by_digest.content == SIGNED
    assert len(registry.requests) == 1


@pytest.mark.parametrize(
    "accept",
    [None, "*/*", DOCKER_MANIFEST, f"{DOCKER_MANIFEST}, {OCI_INDEX}"],
    ids=["none", "wildcard", "other-type", "other-types"],
)
def test_digest_hit_needs_an_accept_naming_the_cached_type(
    registry: FakeRegistry, accept: str | None
) -> None:
    """The registry answers an OCI manifest by digest only to an Accept naming its type;
    where the client's does not, the upstream is asked, as without a cache."""
    headers = {"Accept": accept} if accept is not None else {}
    with proxy(registry) as tc:
        tc.get(f"/v2/{REPO}/manifests/{SIGNED_DIGEST}", headers={"Accept": OCI_MANIFEST})
        tc.get(f"/v2/{REPO}/manifests/{SIGNED_DIGEST}", headers=headers)
        named = tc.get(f"/v2/{REPO}/manifests/{SIGNED_DIGEST}",
                       headers={"Accept": f"{DOCKER_MANIFEST}, {OCI_MANIFEST};q=0.5"})  # fmt: skip
    assert named.status_code == 200
    assert len(registry.requests) == 2  # the warm-up and the one without OCI in Accept


def test_repositories_do_not_share_entries(registry: FakeRegistry) -> None:
    with proxy(registry) as tc:
        warm = tc.get(f"/v2/{REPO}/manifests/{SIGNED_DIGEST}", headers={"Accept": OCI_MANIFEST})
        other = tc.get(
            f"/v2/team/other/manifests/{SIGNED_DIGEST}", headers={"Accept": OCI_MANIFEST}
        )
    assert warm.status_code == 200
    assert other.status_code == 404  # what the registry says about team/other
    assert error_of(other)["code"] == "NAME_UNKNOWN"
    assert registry.paths()[-1] == f"/v2/team/other/manifests/{SIGNED_DIGEST}"


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_bytes_that_do_not_match_are_never_cached(registry: FakeRegistry, method: str) -> None:
    registry.manifests[SIGNED_DIGEST] = UNSIGNED
    gate = Gate(ServeDigest(SIGNED_DIGEST))
    with proxy(registry, gate) as tc:
        lied = tc.request(method, f"/v2/{REPO}/manifests/v1")
        by_digest = tc.get(f"/v2/{REPO}/manifests/{SIGNED_DIGEST}",
                           headers={"Accept": OCI_MANIFEST})  # fmt: skip
        app: Any = tc.app
        assert len(app.state.proxy.manifest_cache) == 0
        registry.manifests[SIGNED_DIGEST] = SIGNED  # the registry is repaired
        repaired = tc.request(method, f"/v2/{REPO}/manifests/v1")
    assert lied.status_code == by_digest.status_code == 502
    assert repaired.status_code == 200
    assert len(registry.requests) == 3  # every one went upstream


def test_signed_length_is_checked_on_a_hit_too(registry: FakeRegistry) -> None:
    gate = Gate(ServeDigest(SIGNED_DIGEST, len(SIGNED)))
    with proxy(registry, gate) as tc:
        assert tc.get(f"/v2/{REPO}/manifests/v1").status_code == 200
        gate.decision = ServeDigest(SIGNED_DIGEST, len(SIGNED) + 1)  # other trust data
        r = tc.get(f"/v2/{REPO}/manifests/v1")
    assert r.status_code == 502
    assert SIGNED not in r.content
    assert len(registry.requests) == 1
    assert gate.mismatches == [("v1", SIGNED_DIGEST, SIGNED_DIGEST)]


def test_disabled_cache_asks_the_upstream_every_time(registry: FakeRegistry) -> None:
    gate = Gate(ServeDigest(SIGNED_DIGEST, len(SIGNED)))
    with proxy(registry, gate, manifest_cache_bytes=0) as tc:
        for _ in range(3):
            assert tc.get(f"/v2/{REPO}/manifests/v1").status_code == 200
    assert len(registry.requests) == 3


def test_gate_fetch_uses_the_cache(registry: FakeRegistry) -> None:
    """The verified-fetch callback (signed indexes under ``digests: signed``) reads and
    fills the same cache as the pulls."""
    got: list[bytes | None] = []

    class Fetching(Gate):
        async def decide_digest(self, route: Route, digest: str, ctx: RequestContext) -> None:
            assert ctx.registry is not None
            got.append(await ctx.registry.manifest(SIGNED_DIGEST))

    gate = Fetching(ServeDigest(SIGNED_DIGEST, len(SIGNED)))
    with proxy(registry, gate) as tc:
        tc.get(f"/v2/{REPO}/manifests/{SIGNED_DIGEST}", headers={"Accept": OCI_MANIFEST})
        assert _manifest_requests(registry) == [("GET", f"/v2/{REPO}/manifests/{SIGNED_DIGEST}")]
        # The callback's fetch filled the cache: the pull itself was a hit.
        tc.get(f"/v2/{REPO}/manifests/{SIGNED_DIGEST}", headers={"Accept": OCI_MANIFEST})
        tc.get(f"/v2/{REPO}/manifests/v1")
    assert got == [SIGNED, SIGNED]
    assert len(registry.requests) == 1


# -- passthrough: the upstream says who may have what, before cached bytes are shared

GOOD = "Bearer good-token"
CHALLENGE = (f'Bearer realm="{UPSTREAM_URL}/token",service="registry.test",'
             f'scope="repository:{REPO}:pull"')  # fmt: skip


@dataclass
class Authorising:
    """Only ``GOOD`` may pull; everyone else gets 401 and the challenge."""

    registry: FakeRegistry
    seen: list[tuple[str, str | None]] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.method, request.headers.get("authorization")))
        if request.headers.get("authorization") != GOOD:
            body = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required",
                                "detail": None}]}  # fmt: skip
            return respond(401, json_body=body, headers={"WWW-Authenticate": CHALLENGE})
        return self.registry(request)


@contextmanager
def passthrough_proxy(
    registry: FakeRegistry, gate: Gate
) -> Iterator[tuple[TestClient, Authorising]]:
    from proxy.settings import UpstreamAuthSettings

    up = UpstreamSettings(name="internal", url=UPSTREAM_URL, registry="registry.test",
                          auth=UpstreamAuthSettings(mode="passthrough"))  # fmt: skip
    app = create_app(Settings(server=ServerSettings(), upstreams=(up,)), gate=gate)
    upstream = Authorising(registry)
    app.state.proxy.clients["internal"]._http = httpx.AsyncClient(
        transport=httpx.MockTransport(upstream)
    )
    with TestClient(app) as tc:
        yield tc, upstream


@pytest.mark.parametrize("path", ["v1", SIGNED_DIGEST], ids=["signed-tag", "digest"])
def test_passthrough_cached_manifest_is_not_served_to_a_client_upstream_refuses(
    registry: FakeRegistry, path: str
) -> None:
    gate = Gate(ServeDigest(SIGNED_DIGEST, len(SIGNED)))
    url = f"/v2/{REPO}/manifests/{path}"
    accept = {"Accept": OCI_MANIFEST}
    with passthrough_proxy(registry, gate) as (tc, upstream):
        warm = tc.get(url, headers={**accept, "Authorization": GOOD})
        upstream.seen.clear()
        for auth in (None, "Bearer stolen"):
            headers = {**accept, "Authorization": auth} if auth else accept
            refused = tc.get(url, headers=headers)
            assert refused.status_code == 401
            assert SIGNED not in refused.content
            assert error_of(refused)["code"] == "UNAUTHORIZED"  # the upstream's own body
            # The challenge is relayed, its realm pointing at the proxy's token relay.
            challenge = refused.headers["www-authenticate"]
            assert challenge.startswith("Bearer ")
            assert "/_trustproxy/token/internal" in challenge
    assert warm.status_code == 200
    # A HEAD with the client's credentials, then, refused, the uncached GET: whose 401 the
    # client gets, exactly as without a cache.
    assert upstream.seen == [("HEAD", None), ("GET", None),
                             ("HEAD", "Bearer stolen"), ("GET", "Bearer stolen")]  # fmt: skip


@pytest.mark.parametrize("path", ["v1", SIGNED_DIGEST], ids=["signed-tag", "digest"])
def test_passthrough_cached_manifest_is_served_after_the_upstream_says_yes(
    registry: FakeRegistry, path: str
) -> None:
    gate = Gate(ServeDigest(SIGNED_DIGEST, len(SIGNED)))
    url = f"/v2/{REPO}/manifests/{path}"
    headers = {"Accept": OCI_MANIFEST, "Authorization": GOOD}
    with passthrough_proxy(registry, gate) as (tc, upstream):
        miss = tc.get(url, headers=headers)
        hit = tc.get(url, headers=headers)
    _same_response(miss, hit)
    assert hit.content == SIGNED
    assert upstream.seen == [("GET", GOOD), ("HEAD", GOOD)]  # HEAD: no bytes fetched again
    assert registry.requests[-1].url.path == f"/v2/{REPO}/manifests/{SIGNED_DIGEST}"


def test_passthrough_head_404_on_a_hit_is_what_the_miss_says(registry: FakeRegistry) -> None:
    """Gone upstream (or never in this repository for this client): the uncached answer."""
    gate = Gate(ServeDigest(SIGNED_DIGEST, len(SIGNED)))
    headers = {"Accept": OCI_MANIFEST, "Authorization": GOOD}
    with passthrough_proxy(registry, gate) as (tc, upstream):
        assert tc.get(f"/v2/{REPO}/manifests/v1", headers=headers).status_code == 200
        del registry.manifests[SIGNED_DIGEST]
        r = tc.get(f"/v2/{REPO}/manifests/v1", headers=headers)
    assert r.status_code == 404
    assert SIGNED_DIGEST in error_of(r)["detail"]["reason"]
    assert upstream.seen == [("GET", GOOD), ("HEAD", GOOD), ("GET", GOOD)]


@pytest.mark.parametrize("outcome", ["ok", "unreachable"])
def test_a_burst_of_cold_requests_for_one_signed_tag_makes_one_upstream_fetch(
    outcome: str,
) -> None:
    """200 concurrent first pulls of a newly signed tag share one upstream fetch (they used
    to queue on the connection pool until they timed out); a failure reaches them all."""
    import asyncio as _asyncio

    fetches: list[str] = []

    async def slow_registry(request: httpx.Request) -> httpx.Response:
        fetches.append(request.url.path)
        await _asyncio.sleep(0.05)
        if outcome == "unreachable":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, stream=Body([SIGNED]), headers={"Content-Type": OCI_MANIFEST})

    app = create_app(make_settings(), gate=Gate(ServeDigest(SIGNED_DIGEST, len(SIGNED))))
    for client in app.state.proxy.clients.values():
        client._http = httpx.AsyncClient(transport=httpx.MockTransport(slow_registry))

    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as c:
            return await _asyncio.gather(*(c.get(f"/v2/{REPO}/manifests/v1") for _ in range(200)))

    responses = _asyncio.run(burst())
    assert fetches == [f"/v2/{REPO}/manifests/{SIGNED_DIGEST}"]
    if outcome == "ok":
        assert {r.status_code for r in responses} == {200}
        assert all(r.content == SIGNED for r in responses)
    else:
        assert {r.status_code for r in responses} == {502}
    assert app.state.proxy.reader_flights == {}


# --------------------------------------------------------------------------- a lying registry


@contextmanager
def proxy_with(registry: Handler, **upstream: Any) -> Iterator[TestClient]:
    """The app with one upstream whose settings ``upstream`` overrides."""
    up = UpstreamSettings(name="internal", url=UPSTREAM_URL, registry="registry.test", **upstream)
    app = create_app(Settings(server=ServerSettings(), upstreams=(up,)), gate=Gate())
    for client in app.state.proxy.clients.values():
        client._http = httpx.AsyncClient(transport=httpx.MockTransport(registry))
    with TestClient(app) as tc:
        yield tc


def test_the_digest_header_of_a_blob_is_the_one_asked_for(registry: FakeRegistry) -> None:
    def lying(request: httpx.Request) -> httpx.Response:
        return respond(200, BLOB, {"Docker-Content-Digest": sha256(b"something else")})

    registry.overrides[f"/v2/{REPO}/blobs/{BLOB_DIGEST}"] = lying
    with proxy(registry) as tc:
        r = tc.get(f"/v2/{REPO}/blobs/{BLOB_DIGEST}")
        head = tc.head(f"/v2/{REPO}/blobs/{BLOB_DIGEST}")
    assert r.content == BLOB
    assert r.headers["docker-content-digest"] == BLOB_DIGEST
    assert head.headers["docker-content-digest"] == BLOB_DIGEST


def test_a_206_nobody_asked_for_is_a_502(registry: FakeRegistry) -> None:
    # Issue 17, finding 5b: a whole-blob 206 to a request without Range went out unhashed.
    def partial(request: httpx.Request) -> httpx.Response:
        return respond(206, BLOB, {"Content-Range": f"bytes 0-{len(BLOB) - 1}/{len(BLOB)}"})

    registry.overrides[f"/v2/{REPO}/blobs/{BLOB_DIGEST}"] = partial
    with proxy(registry) as tc:
        r = tc.get(f"/v2/{REPO}/blobs/{BLOB_DIGEST}")
        ranged = tc.get(f"/v2/{REPO}/blobs/{BLOB_DIGEST}", headers={"Range": "bytes=0-"})
    assert r.status_code == 502
    assert "206 to a request without Range" in r.json()["errors"][0]["message"]
    assert ranged.status_code == 206  # asked for, whole, hashed: the right bytes go out
    assert ranged.content == BLOB


def test_an_unsatisfiable_range_is_a_416(registry: FakeRegistry) -> None:
    def unsatisfiable(request: httpx.Request) -> httpx.Response:
        # distribution 2.8: the blob's Content-Length on a 33-byte body.
        return httpx.Response(416, headers={"Content-Range": f"bytes */{len(BLOB)}",
                                            "Content-Type": "text/plain"},
                              content=b"invalid range: failed to overlap\n")  # fmt: skip

    registry.overrides[f"/v2/{REPO}/blobs/{BLOB_DIGEST}"] = unsatisfiable
    with proxy(registry) as tc:
        r = tc.get(f"/v2/{REPO}/blobs/{BLOB_DIGEST}", headers={"Range": "bytes=500-0"})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{len(BLOB)}"
    assert "not satisfiable" in r.json()["errors"][0]["message"]


def test_the_digest_header_of_an_unchecked_manifest_is_computed(registry: FakeRegistry) -> None:
    def lying(request: httpx.Request) -> httpx.Response:
        return respond(200, UNSIGNED, {"Content-Type": OCI_MANIFEST,
                                       "Docker-Content-Digest": SIGNED_DIGEST})  # fmt: skip

    registry.overrides[f"/v2/{REPO}/manifests/v1"] = lying
    with proxy(registry) as tc:
        r = tc.get(f"/v2/{REPO}/manifests/v1")
    assert r.status_code == 200
    assert r.content == UNSIGNED
    assert r.headers["docker-content-digest"] == sha256(UNSIGNED)  # not the claimed one


@pytest.mark.parametrize(
    ("location", "fragment"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254: not in redirect_hosts"),
        ("http://127.0.0.1:6379/", "127.0.0.1:6379: not in redirect_hosts"),
        ("file:///etc/passwd", "a file: URL: scheme 'file'"),
    ],
    ids=["metadata", "loopback", "file"],
)
def test_a_refused_blob_redirect_is_a_502_naming_upstream_and_host(
    location: str, fragment: str
) -> None:
    asked: list[str] = []

    def redirecting(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        return respond(307, headers={"Location": location})

    with proxy_with(redirecting) as tc:
        r = tc.get(f"/v2/{REPO}/blobs/{BLOB_DIGEST}")
        metrics = tc.get("/metrics").text
    assert r.status_code == 502
    error = error_of(r)
    assert error["code"] == "UNAVAILABLE"
    assert error["detail"] == {"upstream": "internal"}
    assert error["message"] == f"upstream internal: refused to follow a redirect to {fragment}" \
        + error["message"].split(fragment, 1)[1]  # fmt: skip
    assert asked == [f"{UPSTREAM_URL}/v2/{REPO}/blobs/{BLOB_DIGEST}"]  # the target never
    assert 'kind="redirect_refused",upstream="internal"' in metrics


def test_an_allowed_blob_redirect_is_followed_and_checked() -> None:
    def storage(request: httpx.Request) -> httpx.Response:
        if request.url.host == "storage.test":
            return respond(200, BLOB)
        return respond(307, headers={"Location": f"http://storage.test/b/{BLOB_DIGEST}?sig=1"})

    with proxy_with(storage, redirect_hosts=("storage.test",)) as tc:
        r = tc.get(f"/v2/{REPO}/blobs/{BLOB_DIGEST}")
    assert r.status_code == 200
    assert r.content == BLOB


@pytest.mark.parametrize(
    ("location", "status"),
    [("https://storage.test/b?sig=1", 307), ("file:///etc/passwd", 502), ("http://[::1", 502),
     ("javascript:alert(1)", 502)],
    ids=["relayed", "file", "malformed", "javascript"],
)  # fmt: skip
def test_relay_mode_relays_http_locations_only(location: str, status: int) -> None:
    def redirecting(request: httpx.Request) -> httpx.Response:
        return respond(307, headers={"Location": location})

    with proxy_with(redirecting, redirects="relay") as tc:
        r = tc.get(f"/v2/{REPO}/blobs/{BLOB_DIGEST}", follow_redirects=False)
    assert r.status_code == status, r.text
    if status == 307:
        assert r.headers["location"] == location
    else:
        assert error_of(r)["code"] == "UNAVAILABLE"


@pytest.mark.parametrize("verify", [True, False])
def test_a_blob_that_does_not_match_its_digest_is_cut_unless_verification_is_off(
    verify: bool,
) -> None:
    bad = BLOB[:-1] + b"X"  # same length, last byte off

    def lying(request: httpx.Request) -> httpx.Response:
        return respond(200, [bad[:512], bad[512:]], {"Content-Length": str(len(bad))})

    with proxy_with(lying, verify_blobs=verify) as tc:
        r = tc.get(f"/v2/{REPO}/blobs/{BLOB_DIGEST}")
    assert r.headers["content-length"] == str(len(BLOB))
    if verify:
        # The chunk that completes the blob is never sent (uvicorn then closes the
        # connection: see tests/hardening/test_hostile_registry.py for what a client sees).
        assert r.content == BLOB[:512]
    else:
        assert r.content == bad  # relayed as is: the client's own check catches it


@pytest.mark.parametrize(("limits", "deadline"), [({}, 60.0), ({"request_timeout": 7.0}, 7.0)])
def test_token_exchange_has_the_request_deadline(limits: dict[str, Any], deadline: float) -> None:
    import asyncio

    from proxy.upstream.auth import UpstreamAuthenticator
    from proxy.upstream.build import build_upstream_client

    settings = make_settings(**limits)
    client = build_upstream_client(settings, settings.upstreams[0])
    try:
        assert isinstance(client._auth, UpstreamAuthenticator)
        assert client._auth._limits.request_timeout == deadline
    finally:
        asyncio.run(client.aclose())


# --------------------------------------------------------------------------- cache re-check


class Ticks:
    """A monotonic clock for the manifest cache, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextmanager
def rechecking(
    registry: FakeRegistry, gate: Gate | None = None, recheck: float = 30.0, **limits: Any
) -> Iterator[tuple[TestClient, Ticks]]:
    ticks = Ticks()
    with proxy(registry, gate, **limits) as tc:
        app: Any = tc.app
        app.state.proxy.manifest_cache = ManifestCache(1 * MiB, recheck_after=recheck, clock=ticks)
        yield tc, ticks


BY_DIGEST = f"/v2/{REPO}/manifests/{SIGNED_DIGEST}"


def test_cached_manifest_is_rechecked_once_per_interval(registry: FakeRegistry) -> None:
    """The warm path stays free of upstream calls; after the interval, one HEAD."""
    with rechecking(registry) as (tc, ticks):
        assert tc.get(BY_DIGEST, headers={"Accept": OCI_MANIFEST}).status_code == 200
        for _ in range(5):  # within the interval: no upstream call at all
            assert tc.get(BY_DIGEST, headers={"Accept": OCI_MANIFEST}).content == SIGNED
        assert _manifest_requests(registry) == [("GET", BY_DIGEST)]
        ticks.now += 31
        for _ in range(5):  # one re-check, then served from memory again
            assert tc.get(BY_DIGEST, headers={"Accept": OCI_MANIFEST}).content == SIGNED
    assert _manifest_requests(registry) == [("GET", BY_DIGEST), ("HEAD", BY_DIGEST)]
    head = registry.requests[-1]
    # Every type we know is offered: a 404 must mean "deleted", not "Accept mismatch".
    assert OCI_INDEX in head.headers["accept"]
    assert OCI_MANIFEST in head.headers["accept"]


@pytest.mark.parametrize("by", ["digest", "tag"])
def test_manifest_deleted_upstream_stops_being_served_after_the_interval(
    registry: FakeRegistry, by: str
) -> None:
    """Issue 17, finding 3: a manifest deleted upstream was served from the cache forever."""
    gate = Gate(ServeDigest(SIGNED_DIGEST, len(SIGNED)))
    path = BY_DIGEST if by == "digest" else f"/v2/{REPO}/manifests/v1"
    accept = {"Accept": OCI_MANIFEST}
    with rechecking(registry, gate) as (tc, ticks):
        assert tc.get(path, headers=accept).status_code == 200
        del registry.manifests[SIGNED_DIGEST]  # DELETE /v2/<repo>/manifests/<digest>
        ticks.now += 29
        assert tc.get(path, headers=accept).status_code == 200  # within the bound
        ticks.now += 2
        gone = tc.get(path, headers=accept)
        app: Any = tc.app
        assert len(app.state.proxy.manifest_cache) == 0
    assert gone.status_code == 404, gone.text
    assert error_of(gone)["code"] == "MANIFEST_UNKNOWN"
    assert SIGNED not in gone.content


@pytest.mark.parametrize("answer", ["503", "429", "unreachable"])
def test_recheck_with_the_upstream_in_trouble_serves_the_cached_copy(
    registry: FakeRegistry, answer: str
) -> None:
    """Registry down: verified manifests keep being served (README, "Registry down")."""

    def trouble(request: httpx.Request) -> httpx.Response:
        if answer == "unreachable":
            raise httpx.ConnectError("connection refused", request=request)
        return respond(int(answer), b"busy")

    with rechecking(registry) as (tc, ticks):
        assert tc.get(BY_DIGEST, headers={"Accept": OCI_MANIFEST}).status_code == 200
        registry.overrides[BY_DIGEST] = trouble
        ticks.now += 31
        r = tc.get(BY_DIGEST, headers={"Accept": OCI_MANIFEST})
        again = tc.get(BY_DIGEST, headers={"Accept": OCI_MANIFEST})  # next try: an interval on
    assert r.status_code == again.status_code == 200
    assert r.content == SIGNED
    assert _manifest_requests(registry) == [("GET", BY_DIGEST), ("HEAD", BY_DIGEST)]


def test_recheck_against_a_hanging_upstream_is_bounded(registry: FakeRegistry) -> None:
    """A registry that accepts and never answers counts as unreachable after
    connect_timeout: the request that asks is not held for the whole upstream deadline."""

    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(2)
        return oci_error(404, "MANIFEST_UNKNOWN")  # what it says is never waited for

    with rechecking(registry, connect_timeout=0.05) as (tc, ticks):
        assert tc.get(BY_DIGEST, headers={"Accept": OCI_MANIFEST}).status_code == 200
        registry.overrides[BY_DIGEST] = hang  # type: ignore[assignment]
        ticks.now += 31
        r = tc.get(BY_DIGEST, headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200
    assert r.content == SIGNED


def test_recheck_refused_by_the_upstream_drops_the_entry(registry: FakeRegistry) -> None:
    """Any refusal (here 401 to the proxy itself) is not "still there": the request goes on
    as uncached and the client gets the upstream's answer."""
    with rechecking(registry) as (tc, ticks):
        assert tc.get(BY_DIGEST, headers={"Accept": OCI_MANIFEST}).status_code == 200
        registry.overrides[BY_DIGEST] = lambda _: oci_error(403, "DENIED")
        ticks.now += 31
        r = tc.get(BY_DIGEST, headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 403
    assert SIGNED not in r.content


def test_recheck_zero_asks_on_every_hit(registry: FakeRegistry) -> None:
    with rechecking(registry, recheck=0) as (tc, _):
        for _ in range(3):
            assert tc.get(BY_DIGEST, headers={"Accept": OCI_MANIFEST}).status_code == 200
    assert _manifest_requests(registry) == [("GET", BY_DIGEST)] + [("HEAD", BY_DIGEST)] * 2
