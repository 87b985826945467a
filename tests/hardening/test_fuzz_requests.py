"""Bad client input, in-process: the request surface fuzzed with hypothesis (issue 8).

The real app (``create_app``) with an enforcing policy, the real policy matcher, a fake trust
source and a fake upstream that records every request it gets. Requests are ASGI scopes
built the way uvicorn builds them from a raw request target (``path`` is the target's path,
percent-decoded; ``raw_path`` and ``query_string`` as sent), so encodings, ``..``, NUL and
odd bytes reach the app exactly as they would from a socket. What uvicorn's own parser
refuses before the app sees anything is covered by ``test_fuzz_wire.py``.

Properties checked on every example:

* never a 5xx (the fake upstream and trust source are healthy: a 5xx can only be the proxy
  mishandling the request), never an unhandled exception, never an "internal error" log,
  never a hang;
* every 4xx is a well-formed OCI error (JSON, ``errors`` with a spec code and a message);
* a successful HEAD has no body;
* the upstream is only ever asked about the repository the client named (through the
  routing of the upstream it reached), and only about names in the spec's grammar;
* no by-tag manifest request of an enforced repository reaches the upstream (enforcement
  fetches by digest), and no enforced repository is answered with the unsigned manifest
  the fake upstream serves under every tag, or a tag list with an unsigned tag;
* every recorded policy decision is about the repository and reference the client asked.

``HARDENING_FUZZ_EXAMPLES`` sets the number of examples per test (``make hardening``);
without it each test runs a bounded, derandomized campaign that fits in ``make test``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.types import Message

from proxy.decisions import Decision
from proxy.enforcement.enforcing_gate import EnforcingGate
from proxy.http.app import create_app
from proxy.http.client_auth import Htpasswd
from proxy.observability import ACCESS_LOGGER, JsonFormatter
from proxy.policy.model import Policy
from proxy.settings import (
    LimitSettings,
    ServerSettings,
    Settings,
    UpstreamAuthSettings,
    UpstreamSettings,
)
from testbed.attempts import AttemptLog
from tests.unit.enforcement.helpers import NOW, FakeSource, rule, target
from tests.unit.test_handlers import respond

pytestmark = pytest.mark.hardening

EXAMPLES_ENV = "HARDENING_FUZZ_EXAMPLES"


def examples(default: int) -> int:
    """Examples per campaign: ``$HARDENING_FUZZ_EXAMPLES`` when set, else ``default``."""
    value = os.environ.get(EXAMPLES_ENV, "")
    return int(value) if value.strip() else default


def fuzz_settings(default: int) -> settings:
    # Derandomized and without a database: the same examples on every machine and every
    # run, so `make test` is deterministic. No deadline: two busy CI cores make per-example
    # time noisy, and a hang is caught by the per-request timeout instead.
    return settings(
        max_examples=examples(default),
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --------------------------------------------------------------------------- the bed

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
SIGNED = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "signed": True}).encode()
#: What the fake upstream serves under *every* tag: a tag moved to unsigned content.
UNSIGNED = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "evil": True}).encode()
BLOB = bytes(range(256)) * 8


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


SIGNED_DIGEST = sha256(SIGNED)
UNSIGNED_DIGEST = sha256(UNSIGNED)
BLOB_DIGEST = sha256(BLOB)
SIGNED_TAGS = ("v1", "1.0")
UPSTREAM_TAGS = ["v1", "1.0", "v2", "latest", "unsigned"]

UPSTREAMS = (
    UpstreamSettings(name="internal", url="http://registry.test", registry="registry.test"),
    UpstreamSettings(name="mirror", url="http://mirror.test", registry="mirror.test",
                     prefix="mirror"),
    # Docker Hub: one-segment names get library/ (routing.py).
    UpstreamSettings(name="hub", url="http://hub.test", registry="docker.io", prefix="hub"),
    # Passthrough: the client's Authorization goes upstream, and the token relay is live.
    UpstreamSettings(name="pass", url="http://pass.test", registry="pass.test", prefix="pass",
                     auth=UpstreamAuthSettings(mode="passthrough")),
)  # fmt: skip
HOST_OF = {"registry.test": UPSTREAMS[0], "mirror.test": UPSTREAMS[1], "hub.test": UPSTREAMS[2],
           "pass.test": UPSTREAMS[3]}  # fmt: skip
#: The passthrough upstream's token service, on its own origin (always a fetchable realm).
TOKEN_URL = "http://pass.test/token"

#: Everything enforced except registry.test/open/* (off) and registry.test/audit/* (audit);
#: docker.io has a rule for library/* only, so hub/<org>/<repo> matches no rule (refused).
POLICY = Policy(
    rules=(
        rule(pattern="registry.test/**"),
        rule("off", pattern="registry.test/open/*"),
        rule("audit", pattern="registry.test/audit/*"),
        rule(pattern="registry.test/team/*", tag_patterns=("v*", "1.*")),
        rule(pattern="mirror.test/**", digests="signed"),
        rule(pattern="docker.io/library/*"),
        rule(pattern="pass.test/**"),
    )
)

# The oracle, written out independently of proxy/reference.py, proxy/routing.py and the
# policy matcher: which repositories a by-tag manifest may be fetched for unchecked.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
SPEC_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
UNCHECKED_GUN = re.compile(rf"registry\.test/(?:open|audit)/{_COMPONENT}")
AUDIT_GUN = re.compile(rf"registry\.test/audit/{_COMPONENT}")

#: OCI Distribution Spec "Error Codes" (code-1 .. code-14), plus the codes the proxy uses
#: outside that list (proxy/http/errors.py): TAG_INVALID (as distribution), UNAVAILABLE,
#: UNKNOWN, and NOT_FOUND for paths that are no endpoint.
SPEC_CODES = frozenset(
    {"BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID",
     "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "NAME_INVALID",
     "NAME_UNKNOWN", "SIZE_INVALID", "UNAUTHORIZED", "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS"}
)  # fmt: skip
PROXY_CODES = frozenset({"TAG_INVALID", "UNAVAILABLE", "UNKNOWN", "NOT_FOUND"})


#: RFC 9110 field-value as h11 enforces it: no leading or trailing whitespace, no controls.
H11_FIELD_VALUE = re.compile(rb"(?:[\x21-\x7e\x80-\xff](?:[\x20\x09\x21-\x7e\x80-\xff]*"
                             rb"[\x21-\x7e\x80-\xff])?)?")  # fmt: skip


@dataclass(frozen=True)
class Seen:
    """One request the fake upstream (or token service) got."""

    host: str
    method: str
    path: str  # decoded
    query: str
    authorization: str | None


@dataclass
class FakeUpstream:
    """Every upstream at once (by host): serves any repository, records every request.

    Manifests by tag are always UNSIGNED (the tag moved); by digest only the exact bytes.
    """

    seen: list[Seen] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        for _, value in request.headers.raw:
            # What h11 (httpx's real transport) refuses to send: MockTransport would not.
            if not H11_FIELD_VALUE.fullmatch(value):
                raise httpx.LocalProtocolError(f"Illegal header value {value[:50]!r}")
        url = request.url
        self.seen.append(Seen(url.host, request.method, url.path, url.query.decode("latin-1"),
                              request.headers.get("authorization")))  # fmt: skip
        if str(url.copy_with(query=None)) == TOKEN_URL:
            return respond(200, json_body={"token": "t", "access_token": "t"})
        path = url.path
        if path == "/v2/":
            if url.host == "pass.test":
                challenge = f'Bearer realm="{TOKEN_URL}",service="pass.test"'
                return respond(401, json_body=_oci("UNAUTHORIZED"),
                               headers={"WWW-Authenticate": challenge})  # fmt: skip
            return respond(200, json_body={})
        if path == "/v2/_catalog":
            return respond(200, json_body={"repositories": ["team/app"]})
        if m := re.fullmatch(r"/v2/(.+)/tags/list", path):
            return respond(200, json_body={"name": m[1], "tags": UPSTREAM_TAGS})
        m = re.fullmatch(r"/v2/(.+)/(manifests|blobs|referrers)/([^/]+)", path)
        if m is None:
            return respond(404, json_body=_oci("NAME_UNKNOWN"))
        kind, ref = m[2], m[3]
        if kind == "referrers":
            return respond(200, json_body={"schemaVersion": 2, "mediaType": OCI_INDEX,
                                           "manifests": []})  # fmt: skip
        if kind == "blobs":
            if ref != BLOB_DIGEST:
                return respond(404, json_body=_oci("BLOB_UNKNOWN"))
            return respond(200, BLOB, {"Content-Type": "application/octet-stream"})
        body = {SIGNED_DIGEST: SIGNED, UNSIGNED_DIGEST: UNSIGNED}.get(ref)
        if body is None and ":" not in ref:
            body = UNSIGNED
        if body is None:
            return respond(404, json_body=_oci("MANIFEST_UNKNOWN"))
        headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": sha256(body)}
        return respond(200, body if request.method == "GET" else b"", headers)


def _oci(code: str) -> dict[str, Any]:
    return {"errors": [{"code": code, "message": code.lower(), "detail": {}}]}


@dataclass
class Recorder:
    decisions: list[Decision] = field(default_factory=list)

    def record(self, decision: Decision) -> None:
        self.decisions.append(decision)


class ErrorLogs(logging.Handler):
    """Counts ERROR records of the proxy's loggers ("internal error" is one)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class AccessLines(logging.Handler):
    """The access log as the process writes it (JSON lines)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.decode("latin-1").lower() == name:
                return v.decode("latin-1")
        return None


@dataclass
class Request:
    method: str
    target: str  # the request target as on the wire (ASCII): path[?query]
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def scope(self) -> dict[str, Any]:
        """The ASGI scope uvicorn builds for this request line and headers."""
        raw_path, _, query = self.target.partition("?")
        # uvicorn (httptools and h11 alike): path = unquote(raw path), raw_path as sent.
        path = unquote(raw_path) if "%" in raw_path else raw_path
        headers = self.headers
        if not any(k == b"host" for k, _ in headers):
            headers = [(b"host", b"proxy.test"), *headers]
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "server": ("127.0.0.1", 8443),
            "client": ("127.0.0.1", 40000),
            "scheme": "http",
            "method": self.method,
            "root_path": "",
            "path": path,
            "raw_path": raw_path.encode("ascii"),
            "query_string": query.encode("ascii"),
            "headers": headers,
        }


class Bed:
    """The app, its fakes, and a loop that outlives the examples."""

    timeout = 10.0  # seconds for one request: past that it is a hang

    def __init__(self, *, htpasswd: Htpasswd | None = None) -> None:
        self.upstream = FakeUpstream()
        self.recorder = Recorder()
        source = FakeSource(targets={t: target(t, SIGNED) for t in SIGNED_TAGS})
        gate = EnforcingGate(POLICY, {"notary": source}, self.recorder, clock=lambda: NOW)
        settings_ = Settings(server=ServerSettings(), upstreams=UPSTREAMS, limits=LimitSettings())
        self.app: Starlette = create_app(settings_, gate=gate)
        state = self.app.state.proxy
        if htpasswd is not None:
            state.client_auth = htpasswd
            state.basic_realm = "trustproxy"
        for client in state.clients.values():
            client._http = httpx.AsyncClient(transport=httpx.MockTransport(self.upstream))
        self.runner = asyncio.Runner()
        self.errors = ErrorLogs()
        logging.getLogger("trustproxy").addHandler(self.errors)
        # The access line of every request, formatted as in production (and kept out of
        # pytest's log capture: thousands of them).
        self.access = AccessLines()
        access = logging.getLogger(ACCESS_LOGGER)
        self._access_was = (access.level, access.propagate)
        access.setLevel(logging.INFO)
        access.propagate = False
        access.addHandler(self.access)

    def close(self) -> None:
        logging.getLogger("trustproxy").removeHandler(self.errors)
        access = logging.getLogger(ACCESS_LOGGER)
        access.removeHandler(self.access)
        access.setLevel(self._access_was[0])
        access.propagate = self._access_was[1]
        self.runner.run(self.app.state.proxy.aclose())
        self.runner.close()

    def send(self, request: Request) -> Answer:
        """One request through the ASGI app. Raises what the app lets escape, or
        TimeoutError for a hang."""
        return self.runner.run(asyncio.wait_for(self._send(request), self.timeout))

    async def _send(self, request: Request) -> Answer:
        messages: list[Message] = []
        delivered = False
        never = asyncio.Event()

        async def receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await never.wait()  # the client stays connected
            raise AssertionError("unreachable")

        async def send(message: Message) -> None:
            messages.append(message)

        await self.app(request.scope(), receive, send)
        start = next(m for m in messages if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
        return Answer(start["status"], list(start.get("headers", [])), body)


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    b = Bed()
    try:
        yield b
    finally:
        b.close()


# --------------------------------------------------------------------------- the checks


@dataclass
class Campaign:
    """What one test saw, for the attempt log and the final assertions."""

    statuses: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    unsigned_served: int = 0
    upstream_requests: int = 0
    by_tag_upstream: int = 0
    examples: int = 0

    def record(self, log: AttemptLog, attack: str, ok: bool, **extra: Any) -> None:
        log.record(
            "client input",
            attack,
            expected="OCI error, never 500/hang; nothing unsigned served",
            statuses=dict(self.statuses),
            unsigned_served=self.unsigned_served,
            ok=ok,
            detail="codes: " + ", ".join(f"{c} {n}" for c, n in sorted(self.codes.items())),
            extra={"examples": self.examples, "upstream_requests": self.upstream_requests,
                   "unchecked_by_tag_upstream": self.by_tag_upstream, **extra},
        )  # fmt: skip


def client_route(name: str) -> tuple[UpstreamSettings, str]:
    """The oracle's routing: which upstream, under which name, serves client ``name``."""
    for up in UPSTREAMS[1:]:
        if name.startswith(f"{up.prefix}/"):
            rest = name[len(up.prefix or "") + 1 :]
            if up.registry == "docker.io" and "/" not in rest:
                rest = f"library/{rest}"
            return up, rest
    return UPSTREAMS[0], name


def client_names(up: UpstreamSettings, upstream_name: str) -> set[str]:
    """Every client name that the oracle routes to ``upstream_name`` on ``up``."""
    if up.prefix is None:
        return {upstream_name}
    names = {f"{up.prefix}/{upstream_name}"}
    if up.registry == "docker.io" and re.fullmatch(r"library/[^/]+", upstream_name):
        names.add(f"{up.prefix}/{upstream_name.removeprefix('library/')}")
    return names


_ENDPOINT = re.compile(r"(manifests|blobs|referrers)/([^/]+)|tags/list")


def client_endpoint(path: str) -> tuple[str, str, str] | None:
    """(name, kind, reference) of a client path whose name is in the spec grammar."""
    if not path.startswith("/v2/"):
        return None
    # Every endpoint is the last two segments: <kind>/<reference> or tags/list.
    name, _, kind = path[4:].rpartition("/")
    name, _, kind_ = name.rpartition("/")
    m = _ENDPOINT.fullmatch(f"{kind_}/{kind}")
    if m is None or len(name) > 255 or not SPEC_NAME.fullmatch(name):
        return None
    return name, (m[1] or "tags"), (m[2] or "")


def enforced(gun: str) -> bool:
    """The oracle's policy: every gun is enforced except the unchecked ones."""
    return UNCHECKED_GUN.fullmatch(gun) is None


def check(bed: Bed, request: Request, campaign: Campaign) -> Answer:
    """Send ``request`` and check every property; raise AssertionError on a violation."""
    seen_before = len(bed.upstream.seen)
    decisions_before = len(bed.recorder.decisions)
    errors_before = len(bed.errors.records)
    access_before = len(bed.access.lines)
    answer = bed.send(request)
    seen = bed.upstream.seen[seen_before:]
    decisions = bed.recorder.decisions[decisions_before:]
    campaign.examples += 1
    campaign.statuses[str(answer.status)] += 1
    campaign.upstream_requests += len(seen)
    path = request.scope()["path"]

    assert answer.status < 500, f"{answer.status} for {request}: {answer.body[:300]!r}"
    logged = bed.errors.records[errors_before:]
    assert not logged, f"error logged for {request}: {logged[0].getMessage()}"
    # One access line, valid JSON, naming the path and status the client saw.
    (line,) = bed.access.lines[access_before:]
    logged_line = json.loads(line)
    assert (logged_line["path"], logged_line["status"]) == (path, answer.status), line[:300]
    if answer.status >= 400:
        check_oci_error(answer, campaign)
    repository_endpoint = path.startswith("/v2/") and path != "/v2/"
    if request.method == "HEAD" and answer.status < 300 and repository_endpoint:
        # The repository endpoints relay or build content and send none for HEAD. (Small
        # fixed answers, the "{}" of /v2/ or a token, are dropped by the server: uvicorn
        # never writes a body for HEAD; test_fuzz_wire.py checks that on the wire.)
        assert answer.body == b"", f"HEAD with a body: {request}"

    asked = client_endpoint(path)
    for s in seen:
        check_upstream_request(s, path, asked, campaign)
    for d in decisions:
        assert asked is not None, f"a decision for a path outside the grammar: {request}"
        up, upstream_name = client_route(asked[0])
        assert d.repository == f"{up.registry}/{upstream_name}", (d, request)
        if d.kind != "tags":
            assert d.reference == asked[2], (d, request)

    if asked is None or answer.status != 200:
        return answer
    name, kind, ref = asked
    up, upstream_name = client_route(name)
    gun = f"{up.registry}/{upstream_name}"
    if not enforced(gun):
        return answer
    if request.method == "HEAD":
        if kind == "manifests" and ":" not in ref:
            digest = answer.header("docker-content-digest")
            assert digest == SIGNED_DIGEST, f"HEAD {gun}:{ref} answered {digest} ({request})"
        return answer
    if kind == "manifests" and ":" not in ref and answer.body != SIGNED:
        campaign.unsigned_served += 1
        raise AssertionError(f"unsigned manifest served for {gun}:{ref} ({request})")
    if kind == "manifests" and up.name == "mirror" and answer.body != SIGNED:
        # digests: signed — only signed content by digest too.
        campaign.unsigned_served += 1
        raise AssertionError(f"unsigned digest served for {gun}@{ref} ({request})")
    if kind == "tags":
        tags = json.loads(answer.body)["tags"]
        unsigned = [t for t in tags if t not in SIGNED_TAGS]
        campaign.unsigned_served += bool(unsigned)
        assert not unsigned, f"unsigned tags listed for {gun}: {unsigned} ({request})"
    return answer


def check_oci_error(answer: Answer, campaign: Campaign) -> None:
    content_type = answer.header("content-type") or ""
    assert content_type.split(";")[0].strip() == "application/json", (answer.status, content_type)
    body = json.loads(answer.body)
    assert isinstance(body, dict), body
    errors = body.get("errors")
    assert isinstance(errors, list), body
    assert errors, body
    for entry in errors:
        assert isinstance(entry, dict), body
        code, message = entry.get("code"), entry.get("message")
        assert code in SPEC_CODES | PROXY_CODES, body
        assert isinstance(message, str), body
        campaign.codes[str(code)] += 1


def check_upstream_request(
    s: Seen, client_path: str, asked: tuple[str, str, str] | None, campaign: Campaign
) -> None:
    if f"http://{s.host}{s.path}" == TOKEN_URL:
        # The token relay: every repository scope asked for names a repository in the
        # grammar that the client could pull through this upstream.
        for key, value in parse_qsl(s.query, keep_blank_values=True):
            if key == "scope":
                for item in value.split():
                    _, _, rest = item.partition(":")
                    repo = rest.rpartition(":")[0]
                    assert SPEC_NAME.fullmatch(repo), f"token scope {item!r} ({client_path!r})"
        return
    up = HOST_OF[s.host]
    if s.path in ("/v2/", "/v2/_catalog"):
        return
    m = re.fullmatch(r"/v2/(.+?)/(?:(manifests|blobs|referrers)/([^/]+)|tags/list)", s.path)
    assert m is not None, f"upstream asked {s.path!r} for {client_path!r}"
    upstream_name, kind, ref = m[1], m[2] or "tags", m[3] or ""
    assert SPEC_NAME.fullmatch(upstream_name), f"upstream asked about {upstream_name!r}"
    # Same repository: the client named exactly what the upstream was asked about.
    assert asked is not None, f"upstream asked {s.path!r} for {client_path!r}"
    assert asked[0] in client_names(up, upstream_name), (s.path, client_path)
    if kind == "manifests" and ":" not in ref:
        gun = f"{up.registry}/{upstream_name}"
        # Enforcement fetches by digest: a by-tag fetch is only for an unchecked repository.
        assert not enforced(gun), f"by-tag fetch {s.path!r} of enforced {gun} ({client_path!r})"
        campaign.by_tag_upstream += 1
        assert ref == asked[2], (s.path, client_path)


# --------------------------------------------------------------------------- strategies

LOWER = "abcdefghijklmnopqrstuvwxyz0123456789"
component = st.builds(
    lambda first, rest: first + "".join(rest),
    st.text(LOWER, min_size=1, max_size=6),
    st.lists(st.tuples(st.sampled_from([".", "_", "__", "-", "--"]),
                       st.text(LOWER, min_size=1, max_size=4)).map("".join), max_size=2),
)  # fmt: skip
known_segment = st.sampled_from(
    ["team", "app", "open", "audit", "mirror", "hub", "pass", "library", "alpine", "x"]
)
NAMESPACES = [
    "open",
    "audit",
    "team",
    "mirror",
    "hub",
    "pass",
    "mirror/team",
    "pass/open",
    "hub/library",
    "open/x",
    "x",
]
#: Segments around the grammar, as they appear raw in the request target.
odd_segment = st.sampled_from([
    "..", ".", "", "%2e%2e", "%2E%2E", ".%2e", "%2e", "Team", "APP", "%74eam", "t%C3%ABam",
    "%ff", "%c0%ae%c0%ae",
    "%00", "team%00", "%09", "te%09am", "team%0a", "%0d%0a", "%20", "team%20", "%252F",
    "%252e%252e", "team%2Fapp", "open%2fx", "%2F", "a" * 256, "b" * 300, "%", "%g1", "a;b",
    "a%3Fb", "a%23b", "a%5Cb", "a:b", "a@b", "_a", "a_", "a___b", "-a", "a-", "a.", ".a",
    "~", "%7E", "*", "**", "a%E2%80%8Bb", "%EF%BC%8E%EF%BC%8E",
])  # fmt: skip
separator = st.sampled_from(["/"] * 8 + ["%2F", "%2f", "//", "/./", "/../", "%5C", "\\"])


@st.composite
def raw_names(draw: st.DrawFn) -> str:
    """A repository name as it appears in the request target: valid, near-valid or hostile."""
    kind = draw(st.integers(0, 9))
    if kind <= 1:  # valid, in a namespace the policy or the routing treats specially
        namespace = draw(st.sampled_from(NAMESPACES))
        return f"{namespace}/{draw(st.one_of(known_segment, component))}"
    if kind <= 3:  # valid
        segments = draw(st.lists(st.one_of(known_segment, component), min_size=1, max_size=4))
        return "/".join(segments)
    if kind == 4:  # long
        length = draw(st.sampled_from([254, 255, 256, 300, 1000, 5000, 70_000]))
        return ("ab/" * length)[:length].strip("/")
    segments = draw(
        st.lists(st.one_of(known_segment, component, odd_segment), min_size=1, max_size=5)
    )
    out = segments[0]
    for seg in segments[1:]:
        out += draw(separator) + seg
    return out


hex_digits = "0123456789abcdef"
digests = st.one_of(
    st.sampled_from([SIGNED_DIGEST, UNSIGNED_DIGEST, BLOB_DIGEST]),
    st.builds(
        "{}:{}".format,
        st.sampled_from(["sha256", "sha512", "sha384", "md5", "sha1", "sha256+b64u", "SHA256",
                         "Sha256", "sha256 ", "", "blake3", "sha256%3A", "multihash+base58"]),
        st.one_of(
            st.integers(0, 130).map(lambda n: ("0123456789abcdef" * 9)[:n]),
            st.sampled_from(["A" * 64, "g" * 64, "0" * 63, "0" * 65, "0" * 128, "0" * 129,
                             "-_" * 32, "0" * 64 + "%00", "0" * 64 + "%0a", "", ":"]),
            st.text(hex_digits + "ABCDEF:+=%", max_size=70),
        ),
    ),
)  # fmt: skip
tags = st.one_of(
    st.sampled_from(["v1", "1.0", "v2", "latest", "unsigned"]),
    st.sampled_from(["V1", "v1.", "a" * 128,
                     "a" * 129, ".hidden", "-x", "_x", "..", ".", "%2e%2e", "v1%00", "v1%0a",
                     "v1%09", "v1%3F", "v1%23", "v1%20", "v%31", "v1;x", "%ff", "t%C3%A9g",
                     "v1:", "@sha256", "*", "v1~"]),
    st.from_regex(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,20}", fullmatch=True),
)  # fmt: skip
references = st.one_of(tags, digests)

n_values = st.sampled_from(
    ["-1", "0", "1", "2", "4", "10000", "10001", "9" * 30, "9" * 5000, "", "x", "1.5", "1e3",
     " 1", "+1", "0x10", "%C2%B2", "%D9%A1", "%00", "1%00", "%ff", "00000000000000000001"]
)  # fmt: skip
last_values = st.one_of(
    st.sampled_from(["v1", "1.0", "", "%ff", "%C3%A9", "..", "%2F", "~", "%00", "v1%0a",
                     "z" * 10_000, "unsigned"]),
    st.text("abcv01.-_%~", max_size=12),
)  # fmt: skip


@st.composite
def queries(draw: st.DrawFn) -> str:
    pairs: list[str] = []
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(["n", "n", "last", "last", "artifactType", "x", "", "n[]"]))
        value = draw(n_values if key.startswith("n") else last_values)
        pairs.append(f"{key}={value}" if draw(st.booleans()) or key != "n" else key)
    return "&".join(pairs)


@st.composite
def targets(draw: st.DrawFn) -> str:
    """A request target: mostly /v2/<name>/<endpoint>, around it, and outside /v2."""
    name = draw(raw_names())
    kind = draw(st.integers(0, 13))
    if kind <= 4:
        return f"/v2/{name}/manifests/{draw(references)}"
    if kind == 5:
        return f"/v2/{name}/blobs/{draw(digests)}"
    if kind == 6:
        return f"/v2/{name}/referrers/{draw(digests)}?{draw(queries())}"
    if kind <= 8:
        return f"/v2/{name}/tags/list?{draw(queries())}"
    if kind == 9:
        return draw(st.sampled_from([
            "/v2", "/v2/", "/v2/_catalog", f"/v2/_catalog?{draw(queries())}", "/v2//",
            f"/v2/{name}/blobs/uploads", f"/v2/{name}/blobs/uploads/x", "/healthz", "/healthz/",
            "/metrics", "/metrics/", "/readyz/", "/", "", "*", "/v2/%2e%2e/", "/V2/team/app",
            "/v2/team/app/manifests/", "/v2/team/app/manifests", "/v2/team/app/tags/list/",
            "/v2/team/app/manifests/v1/", "//v2/team/app/manifests/v1",
            "/v2/team/app/manifests/v1/../../../open/x/manifests/v1",
            "/v2/open/x/../../team/app/manifests/v1",
            "/v2/open/x%2F..%2F..%2Fteam/app/manifests/v1",
            "http://evil.test/v2/team/app/manifests/v1", "/_trustproxy/token/internal/",
            "/v2/team/app/manifests/v1#frag", "/v2/team/app/manifests/v1%23frag",
        ]))  # fmt: skip
    if kind == 10:
        scope = draw(st.sampled_from([
            f"repository:pass/{name}:pull", f"repository:{name}:pull",
            f"repository:pass/{name}:pull,push", "registry:catalog:*", "repository::pull",
            "bad", "repository:pass/team/app", "repository(plugin):pass/x:pull", "",
            "repository:pass/../../x:pull", "repository:pass/a b:pull",
        ]))  # fmt: skip
        upstream = draw(st.sampled_from(["pass", "internal", "nope", "..", "%2e%2e", ""]))
        return f"/_trustproxy/token/{upstream}?scope={scope}&service=x&account={name}"
    segments = draw(
        st.lists(
            st.one_of(
                known_segment,
                odd_segment,
                st.sampled_from(
                    ["manifests", "blobs", "tags", "list", "referrers", "uploads", "v2"]
                ),
            ),
            max_size=7,
        )
    )
    return "/v2/" + "/".join(segments)  # fmt: skip


methods = st.sampled_from(
    ["GET"] * 24 + ["HEAD"] * 8
    + ["POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "PROPFIND", "get", "X" * 64]
)  # fmt: skip

# Header values as servers deliver them: visible ASCII, SP/HTAB and obs-text (0x80-0xff,
# RFC 9110 5.5); a few control characters too, which the app must survive even if the
# server in front would have refused them.
_VALUE_CHARS = "".join(chr(c) for c in [9, *range(0x20, 0x7F), *range(0x80, 0x100)])
header_text = st.text(_VALUE_CHARS, max_size=40).map(lambda s: s.encode("latin-1"))
control_text = st.text("".join(map(chr, range(0x20))) + "ab", max_size=8).map(
    lambda s: s.encode("latin-1")
)
big = st.sampled_from([4096, 65_536, 1_048_576])
small_accepts = st.sampled_from(
    [OCI_MANIFEST, OCI_INDEX, "*/*", "", "application/vnd.docker.distribution.manifest.v2+json"]
).map(str.encode)
accepts = st.one_of(
    st.sampled_from([OCI_MANIFEST, OCI_INDEX, "*/*", "application/vnd.docker.distribution."
                     "manifest.v2+json", "application/json; q=0.5", "", ",,,", ";;",
                     OCI_MANIFEST.upper()]).map(str.encode),
    header_text,
    big.map(lambda n: b"application/x," * (n // 14)),
)  # fmt: skip
authorizations = st.one_of(
    st.sampled_from([b"Basic", b"Basic ", b"Basic ====", b"Basic \xff\xfe", b"Bearer",
                     b"Bearer t", b"Digest x", b"basic dXNlcjpwdw==", b"Basic dXNlcg==",
                     b"Basic OnB3", b"Basic " + base64.b64encode(b"user:pw\x00"),
                     b"Basic " + base64.b64encode(b"\xff:\xfe"),
                     b"Basic " + base64.b64encode(b"user:" + b"p" * 100),
                     b"Basic " + base64.b64encode(b"user:pw"), b"Basic dXNlcjpwdw==\x00"]),
    header_text,
    big.map(lambda n: b"Basic " + b"A" * n),
)  # fmt: skip
ranges = st.one_of(
    st.sampled_from([b"bytes=0-10", b"bytes=-1", b"bytes=10-1", b"bytes=0-", b"bytes=",
                     b"bytes=99999999999999999999999-", b"items=0-1", b"bytes=0-1,2-3" * 100]),
    header_text,
)  # fmt: skip
hosts = st.sampled_from([b"proxy.test", b"[", b"[::1]:8443", b"a:b:c", b"x:99999999", b"",
                         b"\xe9vil.test", b"evil.test/x?y#z", b"evil.test:80@other",
                         b"proxy.test:8443"])  # fmt: skip


@st.composite
def header_lists(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    for _ in range(draw(st.integers(0, 5))):
        choice = draw(st.integers(0, 11))
        if choice <= 2:
            out.append((b"accept", draw(accepts)))
        elif choice == 3:  # many Accept lines
            count = draw(st.sampled_from([2, 10, 100, 1000]))
            out.extend([(b"accept", draw(small_accepts))] * count)
        elif choice == 4:
            out.append((b"authorization", draw(authorizations)))
        elif choice == 5:
            out.append((b"range", draw(ranges)))
        elif choice == 6:
            name = draw(st.sampled_from([b"if-none-match", b"if-modified-since", b"if-range"]))
            out.append((name, draw(st.one_of(header_text, st.just(b'"' + b"x" * 70_000 + b'"')))))
        elif choice == 7:
            out.append((b"host", draw(hosts)))
        elif choice == 8:
            out.append((draw(st.sampled_from([b"accept", b"authorization", b"range",
                                              b"if-none-match", b"user-agent"])),
                        draw(control_text)))  # fmt: skip
        elif choice == 9:
            out.append((b"user-agent", draw(st.one_of(header_text, big.map(lambda n: b"u" * n)))))
        elif choice == 10:
            out.append((draw(st.sampled_from([b"content-length", b"transfer-encoding",
                                              b"expect", b"x-forwarded-for", b"connection"])),
                        draw(header_text)))  # fmt: skip
        else:  # many distinct headers
            out.extend((f"x-h{i}".encode(), b"v") for i in range(draw(st.sampled_from([50, 500]))))
    return out


requests = st.builds(Request, methods, targets(), header_lists())


# --------------------------------------------------------------------------- tests

#: Regressions: each broke the proxy (a 500, or a name served that the client did not ask
#: for) before the fix named beside it.
REGRESSIONS = [
    # obs-text in a forwarded header: httpx refuses non-ASCII header values (500).
    Request("GET", "/v2/open/x/manifests/v1", [(b"accept", b"application/\xe9")]),
    Request("GET", f"/v2/team/app/blobs/{BLOB_DIGEST}", [(b"range", b"bytes=\xff")]),
    Request("GET", f"/v2/team/app/referrers/{BLOB_DIGEST}", [(b"accept", b"\xe9")]),
    Request("GET", "/v2/pass/team/app/manifests/v1", [(b"authorization", b"Bearer \xff")]),
    # A tab in the name: Starlette's request.url drops it (urlsplit strips \t\r\n), so
    # /v2/team/ap%09p/... was served as team/app.
    Request("GET", "/v2/team/ap%09p/manifests/v1"),
    Request("GET", "/v2/op%09en/x/manifests/v1"),
    # A malformed scope at the token relay was a 502 (BadDataError), not a 400.
    Request("GET", "/_trustproxy/token/pass?scope=bad"),
    # An invalid repository name in a token scope went to the token service as is.
    Request("GET", "/_trustproxy/token/pass?scope=repository:pass/../../x:pull"),
    # Empty Accept lines joined into ", ": a value h11 refuses to send upstream (502).
    Request("GET", "/v2/open/team/manifests/v1", [(b"accept", b""), (b"accept", b"")]),
    Request(
        "GET", f"/v2/team/app/blobs/{BLOB_DIGEST}", [(b"range", b"bytes=0-1"), (b"range", b"")]
    ),
    # Starlette's redirect_slashes answered /healthz/ with a 307 to the client's Host.
    Request("GET", "/healthz/", [(b"host", b"evil.test")]),
]


@pytest.mark.parametrize("request_", REGRESSIONS, ids=lambda r: f"{r.method} {r.target[:60]}")
def test_regressions(bed: Bed, request_: Request) -> None:
    check(bed, request_, Campaign())


def test_regression_trailing_slash_is_an_oci_404_not_a_redirect(bed: Bed) -> None:
    answer = bed.send(Request("GET", "/healthz/", [(b"host", b"evil.test")]))
    assert answer.status == 404
    assert answer.header("location") is None


def test_regression_tab_in_name_is_name_invalid(bed: Bed) -> None:
    before = len(bed.upstream.seen)
    answer = bed.send(Request("GET", "/v2/team/ap%09p/manifests/v1"))
    assert answer.status == 400
    assert json.loads(answer.body)["errors"][0]["code"] == "NAME_INVALID"
    assert bed.upstream.seen[before:] == []


@pytest.mark.parametrize(
    ("header", "value"),
    [(b"accept", b"application/\xe9"), (b"range", b"bytes=\xff-"), (b"if-none-match", b"\x80"),
     (b"authorization", b"Bearer \xff"), (b"accept", b"a\x00b"), (b"range", b"bytes=0-1\x7f")],
    ids=["accept-obs-text", "range-obs-text", "if-none-match-obs-text", "authorization-obs-text",
         "accept-nul", "range-del"],
)  # fmt: skip
def test_forwarded_header_outside_visible_ascii_is_400(
    bed: Bed, header: bytes, value: bytes
) -> None:
    before = len(bed.upstream.seen)
    answer = bed.send(Request("GET", "/v2/pass/open/app/manifests/v1", [(header, value)]))
    assert answer.status == 400
    entry = json.loads(answer.body)["errors"][0]
    assert entry["code"] == "UNSUPPORTED"
    assert header.decode() in entry["message"].lower()
    assert bed.upstream.seen[before:] == []


def test_campaign_requests(bed: Bed, attempt_log: AttemptLog) -> None:
    """Methods, targets and headers together, against the enforcing app."""
    campaign = Campaign()
    failure: list[str] = []

    @fuzz_settings(800)
    @given(requests)
    @example(Request("GET", "/v2/team/app/manifests/v1"))
    @example(Request("HEAD", "/v2/team/app/manifests/v1"))
    @example(Request("GET", "/v2/open/x/manifests/v1"))
    @example(Request("GET", "/v2/team/app/tags/list?n=-1"))
    @example(Request("GET", "/v2/team/app/tags/list?n=1&last=%ff"))
    @example(Request("GET", "/v2/team%2Fapp/manifests/v1"))
    @example(Request("GET", "/v2/open%2F..%2Fteam/app/manifests/v1"))
    def run(request: Request) -> None:
        try:
            check(bed, request, campaign)
        except BaseException as e:
            failure.append(f"{type(e).__name__}: {e}"[:500])
            raise

    try:
        run()
    finally:
        ok = not failure and campaign.unsigned_served == 0
        campaign.record(attempt_log, "fuzzed requests (method, path, query, headers)", ok,
                        failure=failure[-1] if failure else "")  # fmt: skip
    assert campaign.statuses, "no request was sent"
    # The campaign reached the interesting places, not only 400s.
    assert campaign.statuses["200"] > 0
    assert campaign.statuses["400"] > 0
    assert campaign.by_tag_upstream > 0, "no unchecked repository was fetched by tag"


def test_campaign_repository_paths(bed: Bed, attempt_log: AttemptLog) -> None:
    """Names and references only (GET/HEAD, no odd headers): the routing and policy core."""
    campaign = Campaign()
    failure: list[str] = []
    paths = st.builds(
        Request,
        st.sampled_from(["GET", "HEAD"]),
        st.one_of(
            st.builds("/v2/{}/manifests/{}".format, raw_names(), references),
            st.builds("/v2/{}/tags/list?{}".format, raw_names(), queries()),
            st.builds("/v2/{}/blobs/{}".format, raw_names(), digests),
        ),
    )

    @fuzz_settings(800)
    @given(paths)
    def run(request: Request) -> None:
        try:
            check(bed, request, campaign)
        except BaseException as e:
            failure.append(f"{type(e).__name__}: {e}"[:500])
            raise

    try:
        run()
    finally:
        ok = not failure and campaign.unsigned_served == 0
        campaign.record(attempt_log, "fuzzed repository names and references", ok,
                        failure=failure[-1] if failure else "")  # fmt: skip
    assert campaign.statuses["200"] > 0
    assert campaign.statuses["400"] > 0


def test_campaign_client_auth(attempt_log: AttemptLog) -> None:
    """Authorization headers against the proxy's own htpasswd auth: 401 with a Basic
    challenge unless the credentials are right, never a 500."""
    import bcrypt

    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4))
    b = Bed(htpasswd=Htpasswd({"user": hashed}))
    campaign = Campaign()
    failure: list[str] = []
    good = b"Basic " + base64.b64encode(b"user:pw")

    def is_good(value: bytes) -> bool:
        # RFC 9110 11.1: the scheme is case-insensitive; one or more SP before token68.
        scheme, _, credentials = value.strip(b" \t").partition(b" ")
        try:
            decoded = base64.b64decode(credentials.strip(b" "), validate=True)
        except ValueError:
            return False
        return scheme.lower() == b"basic" and decoded == b"user:pw"

    @fuzz_settings(200)
    @given(
        st.one_of(authorizations, header_text, control_text),
        st.sampled_from(
            ["/v2/", "/v2/team/app/manifests/v1", "/v2/open/x/tags/list", "/v2/_catalog"]
        ),
    )
    @example(good, "/v2/team/app/manifests/v1")
    def run(authorization: bytes, target_: str) -> None:
        request = Request("GET", target_, [(b"authorization", authorization)])
        try:
            answer = check(b, request, campaign)
            if is_good(authorization):
                assert answer.status == 200, answer
            else:
                assert answer.status in (400, 401), answer
                if answer.status == 401:
                    assert (answer.header("www-authenticate") or "").startswith("Basic ")
        except BaseException as e:
            failure.append(f"{type(e).__name__}: {e}"[:500])
            raise

    try:
        run()
    finally:
        b.close()
        ok = not failure
        campaign.record(attempt_log, "fuzzed Authorization against htpasswd client auth", ok,
                        failure=failure[-1] if failure else "")  # fmt: skip
    assert campaign.statuses["401"] > 0
