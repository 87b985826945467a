"""A malicious registry against the running proxy (issue 8, "Malicious registry").

    httpx --> trustproxy (python -m proxy serve) --> HostileRegistry --> docker-registry
                   |                                     |  3xx
                   +--HTTPS--> notary                    +--> Canary (must never be reached)

One proxy, one hostile registry and one signed image for the module. The registry relays
the honest bytes except where an attack scripts a lie on a path. Every attempt goes through
the proxy (by tag under an enforcing policy, by digest, blob GET/HEAD, Range) and every
answer must be:

* never content that is not what was asked for: a manifest 200 hashes to the signed
  digest, a blob body that arrives *complete* hashes to its digest (hashed here, always);
* a clear OCI error (status and code per attack), never a 500;
* within a bound: a few times ``limits.read_timeout``, slowloris included;
* a blob cut short is seen *as* cut short: fewer bytes than Content-Length and a closed
  connection (httpx raises), never a clean short answer a client could take as whole;
* named in the proxy's access log line, and counted where it is a refusal.

At the end the proxy holds no connection to the hostile registry (it answers every request
with ``Connection: close``, so any left is a leak). Each attempt is recorded for
``docs/hardening.md`` before it is asserted.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import itertools
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
import pytest

from testbed import images
from testbed.attempts import AttemptLog
from testbed.enforcement_bed import (
    EnforcementBed,
    EnforcingProxy,
    proxy_config,
    rule,
    upstream,
    write_policy,
)
from testbed.hostile_registry import (
    Behaviour,
    Canary,
    HostileRegistry,
    bearer_challenge,
    corrupted,
    corrupted_as,
    endless,
    framed_twice,
    hang,
    hang_after_headers,
    loopback_name,
    other_bytes,
    oversize,
    redirect,
    trickle_body,
    trickle_headers,
    truncated,
    wrong_digest_header,
)
from testbed.notary_server import NotaryBed
from testbed.proxy_server import start_proxy
from tests.conftest import RegistryBed, requires

pytestmark = [pytest.mark.integration, pytest.mark.hardening]

READ_TIMEOUT = 2.0  # limits.read_timeout (per socket read)
DEADLINE = 2 * READ_TIMEOUT  # limits.request_timeout's default: the whole exchange
BOUND = 3 * READ_TIMEOUT + 1.0  # every answer, slowloris included, comes within this
MANIFEST_LIMIT = 64 * 1024  # limits.manifest_max_bytes
BIG = 3 * 1024 * 1024 + 17  # a blob the proxy reads in several chunks
TRICKLE = 0.25  # seconds between bytes: far below the read timeout
SURFACE = "registry"


@dataclass
class Answer:
    """What a client got: ``complete`` is False when the body ended before its framing said
    (httpx raised RemoteProtocolError), ``error`` when the request failed outright."""

    method: str
    status: int
    headers: httpx.Headers
    body: bytes
    complete: bool
    seconds: float
    marker: str
    error: str | None = None
    request_range: str | None = None  # the Range the client sent, if any

    @property
    def code(self) -> str | None:
        try:
            parsed = json.loads(self.body)
            return str(parsed["errors"][0]["code"])
        except (ValueError, KeyError, IndexError, TypeError):
            return None

    @property
    def message(self) -> str:
        try:
            return str(json.loads(self.body)["errors"][0]["message"])
        except (ValueError, KeyError, IndexError, TypeError):
            return ""


@dataclass
class Bed:
    proxy: EnforcingProxy
    hostile: HostileRegistry
    canary: Canary
    registry: RegistryBed
    repo: str  # the repository on the registry (and through the proxy's default route)
    image: images.Image
    big: images.Blob
    seen: list[Answer] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return self.image.digest

    @property
    def manifest_path(self) -> str:
        """The path the proxy fetches the signed manifest from (by digest, always)."""
        return f"/v2/{self.repo}/manifests/{self.digest}"

    @property
    def layer(self) -> images.Blob:
        return self.image.blobs[-1]

    def blob_path(self, digest: str) -> str:
        return f"/v2/{self.repo}/blobs/{digest}"

    def request(self, method: str, path: str, *, headers: dict[str, str] | None = None) -> Answer:
        marker = uuid.uuid4().hex[:12]
        hdrs = {"Accept": images.ACCEPT_ALL, **(headers or {})}
        started = time.monotonic()
        body = b""
        complete = True
        error = None
        status = 0
        got = httpx.Headers()
        try:
            with (
                httpx.Client(timeout=BOUND + 5) as http,
                http.stream(method, f"{self.proxy.url}{path}?attempt={marker}", headers=hdrs) as r,
            ):
                status, got = r.status_code, r.headers
                try:
                    for chunk in r.iter_raw():
                        body += chunk
                except httpx.RemoteProtocolError as e:
                    complete, error = False, f"cut: {e}"
        except httpx.HTTPError as e:
            complete, error = False, f"{type(e).__name__}: {e}"
        answer = Answer(method, status, got, body, complete, time.monotonic() - started, marker,
                        error, (headers or {}).get("Range"))  # fmt: skip
        self.seen.append(answer)
        return answer

    def access_line(self, answer: Answer) -> dict[str, Any]:
        """The proxy's access log line for ``answer`` (written after the body)."""
        deadline = time.monotonic() + 5
        while True:
            for line in self.proxy.server.log_path.read_text(errors="replace").splitlines():
                if answer.marker in line and line.startswith("{"):
                    entry: dict[str, Any] = json.loads(line)
                    if entry.get("query") == f"attempt={answer.marker}":
                        return entry
            if time.monotonic() > deadline:
                raise AssertionError(f"no access line for {answer.marker}")
            time.sleep(0.05)

    def upstream_errors(self, kind: str) -> float:
        total = 0.0
        for line in self.proxy.metrics().splitlines():
            if line.startswith("trustproxy_upstream_errors_total{") and f'kind="{kind}"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total


# -- judging answers ----------------------------------------------------------------------------


def manifest_unsigned(bed: Bed, a: Answer) -> bool:
    """A manifest answer that carried anything but the signed digest."""
    if a.status != 200:
        return False
    if a.method == "HEAD":
        return bool(a.headers.get("docker-content-digest") != bed.digest)
    return images.sha256(a.body) != bed.digest


def blob_unsigned(a: Answer, digest: str) -> bool:
    """A blob answer that arrived whole (by its framing) with bytes that are not ``digest``."""
    if a.method == "HEAD" or a.status != 200 or not a.complete:
        return False
    return images.sha256(a.body) != digest


def refused(a: Answer, status: int | tuple[int, ...], code: str = "UNAVAILABLE") -> bool:
    statuses = (status,) if isinstance(status, int) else status
    if a.method == "HEAD":  # no body to carry the code
        return a.status in statuses
    return a.status in statuses and a.code == code


def timely(answers: list[Answer]) -> bool:
    return all(a.seconds < BOUND for a in answers)


def summary(answers: list[Answer]) -> str:
    return "; ".join(
        f"{a.method} {a.status} {a.code or ''} {a.seconds:.1f}s"
        + (f" {len(a.body)}B" if a.status in (200, 206) else "")
        + ("" if a.complete else " cut")
        + (f" '{a.message[:90]}'" if a.message else "")
        for a in answers
    )


def record(
    log: AttemptLog,
    attack: str,
    *,
    expected: str,
    answers: list[Answer],
    unsigned: int,
    ok: bool,
    detail: str = "",
) -> None:
    log.record(
        SURFACE,
        attack,
        expected=expected,
        statuses=[a.status if a.status else "error" for a in answers],
        unsigned_served=unsigned,
        ok=ok,
        detail=(detail + " | " if detail else "") + summary(answers),
        extra={"max_seconds": round(max((a.seconds for a in answers), default=0.0), 2)},
    )


# -- the module's bed ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bed(
    registry: RegistryBed, notary_bed: NotaryBed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Bed]:
    requires("notary")
    workdir = tmp_path_factory.mktemp("hostile-registry")
    namespace = f"hreg{uuid.uuid4().hex[:8]}"
    enf = EnforcementBed.create(workdir / "bed", registry.url, notary_bed, namespace=namespace)
    hostile = HostileRegistry(registry.url).start()
    canary = Canary()
    proxy: EnforcingProxy | None = None
    try:
        image = images.single_image(f"{namespace} hostile v1")
        enf.push_and_sign("hostile/app", "v1", image)
        repo = enf.repo("hostile/app")
        big = images.Blob(b"".join(images.random_chunks(BIG, seed=namespace.encode())),
                          "application/octet-stream")  # fmt: skip
        images.push_blob(enf.registry_client, repo, big)
        policy_file = write_policy(
            workdir / "policy.yaml", {enf.pattern("hostile/*"): rule(root_keys=[enf.root_key_id])}
        )
        same = {"registry": registry.host}
        config = proxy_config(
            [
                # Redirects followed: to the real registry (named exactly: the allowlist at
                # work), and to any host on the canary's port (a wildcard: never enough for
                # loopback, a loopback name or a legacy IP spelling).
                upstream(
                    "hostile",
                    hostile.url,
                    **same,
                    redirects="follow",
                    redirect_hosts=[registry.host, f"*:{canary.port}"],
                ),
                upstream("relayer", hostile.url, **same, prefix="relay", redirects="relay"),
                *(
                    upstream(
                        f"pt{n}", hostile.url, **same, prefix=f"pt{n}", auth={"mode": "passthrough"}
                    )
                    for n in range(3)
                ),
            ],
            notary_bed,
            policy_file,
        )
        config["limits"] = {
            "read_timeout": READ_TIMEOUT,
            "connect_timeout": 1.0,
            "manifest_max_bytes": MANIFEST_LIMIT,
            "manifest_cache_bytes": 0,  # every request reaches the hostile registry
        }
        server = start_proxy(workdir / "proxy", config, name="trustproxy-hostile-registry")
        proxy = EnforcingProxy(server=server, policy_file=policy_file, audit_file=None)
        the_bed = Bed(proxy, hostile, canary, registry, repo, image, big)
        honest = the_bed.request("GET", f"/v2/{repo}/manifests/v1")
        assert honest.status == 200, (honest.status, honest.body[:300], server.log_tail())
        assert images.sha256(honest.body) == image.digest
        yield the_bed
    finally:
        if proxy is not None:
            proxy.stop()
        hostile.stop()
        canary.stop()
        enf.close()


@pytest.fixture
def script(bed: Bed) -> Iterator[Any]:
    """Script lies on paths for one test; the honest relay comes back afterwards."""
    scripted: list[str] = []

    def put(path: str, behaviour: Behaviour) -> None:
        scripted.append(path)
        bed.hostile.script(path, behaviour)

    yield put
    for path in scripted:
        bed.hostile.behaviours.pop(path, None)


def fake_digest(label: str) -> str:
    return "sha256:" + hashlib.sha256(label.encode()).hexdigest()


# -- manifests ----------------------------------------------------------------------------------


def _manifest_attempts(bed: Bed) -> list[Answer]:
    by_tag = f"/v2/{bed.repo}/manifests/v1"
    by_digest = f"/v2/{bed.repo}/manifests/{bed.digest}"
    return [bed.request(m, p) for p in (by_tag, by_digest) for m in ("GET", "HEAD")]


MANIFEST_LIES: list[tuple[str, Behaviour, str]] = [
    ("other bytes for the signed digest (the digest in Docker-Content-Digest)",
     other_bytes(images.single_image("an unsigned impostor").manifest), "digest"),
    ("manifest over the size limit, Content-Length declared",
     oversize(MANIFEST_LIMIT + 1, declare_length=True), "limit"),
    ("manifest over the size limit, no Content-Length (ends at close)",
     oversize(4 * MANIFEST_LIMIT, declare_length=False), "limit"),
    ("endless manifest (chunked, never ends)", endless, "limit"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("attack", "behaviour", "needle"), MANIFEST_LIES, ids=["other-bytes", "oversize-declared",
                                                          "oversize-undeclared", "endless"]
)  # fmt: skip
def test_manifest_lies_are_502(
    bed: Bed,
    script: Any,
    attempt_log: AttemptLog,
    attack: str,
    behaviour: Behaviour,
    needle: str,
) -> None:
    script(bed.manifest_path, behaviour)
    answers = _manifest_attempts(bed)
    unsigned = sum(manifest_unsigned(bed, a) for a in answers)
    ok = (
        unsigned == 0
        and all(refused(a, 502) for a in answers)
        and all(needle in a.message for a in answers if a.method == "GET")
        and timely(answers)
    )
    record(attempt_log, attack, expected="502 UNAVAILABLE, nothing served", answers=answers,
           unsigned=unsigned, ok=ok)  # fmt: skip
    assert ok, summary(answers)
    line = bed.access_line(answers[0])
    assert line["status"] == 502, line
    assert needle in line["error"], line


def test_wrong_docker_content_digest_on_the_right_bytes(
    bed: Bed, script: Any, attempt_log: AttemptLog
) -> None:
    # The header is never evidence: the proxy says what it hashed (manifests) or what was
    # asked for and is checked on the way (blobs).
    script(bed.manifest_path, wrong_digest_header)
    script(bed.blob_path(bed.layer.digest), wrong_digest_header)
    answers = _manifest_attempts(bed)
    blob = [bed.request(m, bed.blob_path(bed.layer.digest)) for m in ("GET", "HEAD")]
    unsigned = sum(manifest_unsigned(bed, a) for a in answers)
    unsigned += sum(blob_unsigned(a, bed.layer.digest) for a in blob)
    ok = (
        unsigned == 0
        and all(a.status == 200 for a in answers + blob)
        and all(a.headers.get("docker-content-digest") == bed.digest for a in answers)
        and all(a.headers.get("docker-content-digest") == bed.layer.digest for a in blob)
        and blob[0].body == bed.layer.data
        and timely(answers + blob)
    )
    record(attempt_log, "wrong Docker-Content-Digest on the right bytes",
           expected="200 with the right bytes and the proxy's own digest header",
           answers=answers + blob, unsigned=unsigned, ok=ok)  # fmt: skip
    assert ok, summary(answers + blob)


def test_manifest_redirect_is_never_followed(
    bed: Bed, script: Any, attempt_log: AttemptLog
) -> None:
    script(bed.manifest_path, redirect(bed.canary.url() + "/manifest"))
    answers = _manifest_attempts(bed)
    unsigned = sum(manifest_unsigned(bed, a) for a in answers)
    ok = unsigned == 0 and all(refused(a, 502) for a in answers) and not bed.canary.requests
    record(attempt_log, "manifest answered with a redirect to loopback",
           expected="502 (manifests are never followed), canary untouched", answers=answers,
           unsigned=unsigned, ok=ok)  # fmt: skip
    assert ok, (summary(answers), bed.canary.requests)


# -- redirects (SSRF) ---------------------------------------------------------------------------


def _redirect_cases(bed: Bed) -> list[tuple[str, str, str]]:
    """(attack, Location, what the refusal names)."""
    c = bed.canary.port
    cases = [
        ("redirect to a host not in redirect_hosts", "http://evil.example/x", "evil.example"),
        ("redirect to loopback (127.0.0.1, allowed port via a wildcard)",
         f"http://127.0.0.1:{c}/steal", f"127.0.0.1:{c}"),
        ("redirect to localhost", f"http://localhost:{c}/steal", f"localhost:{c}"),
        ("redirect to IPv6 loopback", f"http://[::1]:{c}/steal", f"[::1]:{c}"),
        ("redirect to loopback spelled as a decimal IPv4 (2130706433)",
         f"http://2130706433:{c}/steal", f"2130706433:{c}"),
        ("redirect to the cloud metadata address",
         "http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("redirect to the cloud metadata address on an allowed port",
         f"http://169.254.169.254:{c}/latest/meta-data/", f"169.254.169.254:{c}"),
        ("redirect to a private address", f"http://10.0.0.1:{c}/admin", f"10.0.0.1:{c}"),
        ("redirect to file:", "file:///etc/passwd", "file"),
        ("redirect to another scheme (gopher:)", "gopher://127.0.0.1:6379/_INFO", "gopher"),
        ("redirect with credentials in the URL", "http://user:pw@evil.example/", "credentials"),
    ]  # fmt: skip
    name = loopback_name()
    if name is not None:
        cases.append(("redirect to a DNS name that resolves to loopback",
                      f"http://{name}:{c}/steal", f"{name}:{c}"))  # fmt: skip
    return cases


def test_blob_redirects_outside_the_allowlist_are_502(
    bed: Bed, script: Any, attempt_log: AttemptLog
) -> None:
    refusals_before = bed.upstream_errors("redirect_refused")
    failures = []
    for n, (attack, location, needle) in enumerate(_redirect_cases(bed)):
        digest = fake_digest(f"redirect {n}")
        script(bed.blob_path(digest), redirect(location))
        answers = [bed.request(m, bed.blob_path(digest)) for m in ("GET", "HEAD")]
        get = answers[0]
        ok = (
            all(refused(a, 502) for a in answers)
            and "refused to follow a redirect" in get.message
            and needle in get.message
            and "upstream hostile" in get.message
            and timely(answers)
            and not bed.canary.requests
        )
        record(attempt_log, attack, expected="502 naming the upstream and the refused host",
               answers=answers, unsigned=0, ok=ok,
               detail=f"Location {location}")  # fmt: skip
        if not ok:
            failures.append((attack, summary(answers)))
        line = bed.access_line(get)
        assert line["status"] == 502, line
        assert "refused to follow a redirect" in line["error"], line
    assert not failures, failures
    assert not bed.canary.requests, bed.canary.requests
    assert bed.upstream_errors("redirect_refused") >= refusals_before + 2 * len(
        _redirect_cases(bed)
    )
    # The proxy's log says why, once per refusal.
    assert "refused to follow a redirect to 169.254.169.254" in bed.proxy.server.log_tail(400)


def test_redirect_loops_and_long_chains_are_502(
    bed: Bed, script: Any, attempt_log: AttemptLog
) -> None:
    loop = fake_digest("loop")
    script(bed.blob_path(loop), redirect("{path}"))  # to itself
    chain = [fake_digest(f"chain {n}") for n in range(8)]
    for here, there in itertools.pairwise(chain):
        script(bed.blob_path(here), redirect(bed.blob_path(there)))
    for attack, digest, needle in (
        ("redirect loop (a blob redirecting to itself)", loop, "a redirect loop"),
        ("redirect chain longer than max_redirects", chain[0], "more than 5 redirects"),
    ):
        answers = [bed.request(m, bed.blob_path(digest)) for m in ("GET", "HEAD")]
        ok = all(refused(a, 502) for a in answers) and needle in answers[0].message
        ok = ok and timely(answers)
        record(attempt_log, attack, expected="502 after at most max_redirects hops",
               answers=answers, unsigned=0, ok=ok)  # fmt: skip
        assert ok, summary(answers)
    assert len(bed.hostile.hits_for(bed.blob_path(chain[-1]))) == 0  # stopped at 5 hops


def test_locations_that_are_not_urls_are_502_not_500(
    bed: Bed, script: Any, attempt_log: AttemptLog
) -> None:
    # httpx parses the Location of every 3xx, followed or not; "javascript:" made it raise
    # an exception that is no HTTPError, and every request it touched was a 500.
    blob = fake_digest("javascript")
    script(bed.blob_path(blob), redirect("javascript:alert(document.domain)"))
    script(bed.manifest_path, redirect("mailto:root@example.com", status=302))
    answers = [
        bed.request("GET", bed.blob_path(blob)),
        bed.request("HEAD", bed.blob_path(blob)),
        bed.request("GET", f"/v2/relay/{bed.repo}/blobs/{blob}"),
        bed.request("GET", f"/v2/{bed.repo}/manifests/v1"),
        bed.request("HEAD", f"/v2/{bed.repo}/manifests/v1"),
    ]
    unsigned = sum(manifest_unsigned(bed, a) for a in answers[3:])
    ok = unsigned == 0 and all(refused(a, 502) for a in answers) and timely(answers)
    ok = ok and all("not a URL" in a.message for a in answers if a.method == "GET")
    record(attempt_log, "3xx whose Location is no URL (javascript:, mailto:)",
           expected="502 UNAVAILABLE, never a 500", answers=answers, unsigned=unsigned,
           ok=ok)  # fmt: skip
    assert ok, summary(answers)


def test_redirect_to_an_allowed_host_is_followed(
    bed: Bed, script: Any, attempt_log: AttemptLog
) -> None:
    # The control: the allowlist lets the real registry through, and the bytes are checked.
    path = bed.blob_path(bed.layer.digest)
    script(path, redirect(f"{bed.registry.url}{path}"))
    answers = [bed.request(m, path) for m in ("GET", "HEAD")]
    ok = (
        answers[0].status == 200
        and answers[0].complete
        and answers[0].body == bed.layer.data
        and answers[1].status == 200
        and timely(answers)
    )
    record(attempt_log, "redirect to a host redirect_hosts names (control)",
           expected="followed: 200 with the blob's bytes", answers=answers, unsigned=0,
           ok=ok)  # fmt: skip
    assert ok, summary(answers)


def test_relay_mode_hands_the_location_over_but_never_a_bad_one(
    bed: Bed, script: Any, attempt_log: AttemptLog
) -> None:
    # relay: the client follows, so where it leads is the client's business (and SSRF is
    # not the proxy's); a Location that is no http(s) URL is still a 502, never a 500.
    good, bad_scheme, malformed = (fake_digest(f"relay {n}") for n in range(3))
    script(bed.blob_path(good), redirect(bed.canary.url() + "/relayed"))
    script(bed.blob_path(bad_scheme), redirect("file:///etc/passwd"))
    script(bed.blob_path(malformed), redirect("http://[::1"))
    relayed = bed.request("GET", f"/v2/relay/{bed.repo}/blobs/{good}")
    ok = relayed.status == 307 and relayed.headers.get("location") == bed.canary.url() + "/relayed"
    ok = ok and not bed.canary.requests
    record(attempt_log, "redirect in relay mode (the client follows)",
           expected="307 relayed as is; the proxy fetches nothing", answers=[relayed],
           unsigned=0, ok=ok)  # fmt: skip
    assert ok, summary([relayed])
    answers = [
        bed.request("GET", f"/v2/relay/{bed.repo}/blobs/{d}") for d in (bad_scheme, malformed)
    ]
    ok = all(refused(a, 502) for a in answers) and timely(answers)
    record(attempt_log, "relay mode: Location that is file: or not a URL",
           expected="502, never a 500", answers=answers, unsigned=0, ok=ok)  # fmt: skip
    assert ok, summary(answers)


def test_token_realm_pointing_inside_is_refused(
    bed: Bed, script: Any, attempt_log: AttemptLog
) -> None:
    # Passthrough: the client's token comes from the realm the *registry* names, fetched by
    # the proxy and handed back. A realm at the metadata service or at localhost would make
    # the proxy a window into the inside.
    realms = [
        ("token realm at the cloud metadata address",
         "http://169.254.169.254/latest/meta-data/iam/", "169.254.169.254"),
        ("token realm at localhost", f"http://localhost:{bed.canary.port}/token",
         f"localhost:{bed.canary.port}"),
        ("token realm on a private address", "https://10.1.2.3/token", "10.1.2.3"),
    ]  # fmt: skip
    for n, (attack, realm, needle) in enumerate(realms):
        script("/v2/", bearer_challenge(realm))
        scope = f"repository:pt{n}/{bed.repo}:pull"
        answer = bed.request("GET", f"/_trustproxy/token/pt{n}?scope={scope}")
        answer_ok = refused(answer, 502) and needle in answer.message
        ok = answer_ok and not bed.canary.requests and b"canary-secret" not in answer.body
        record(attempt_log, attack, expected="502 naming the realm host; nothing fetched",
               answers=[answer], unsigned=0, ok=ok, detail=f"realm {realm}")  # fmt: skip
        assert ok, (summary([answer]), bed.canary.requests)


# -- blobs ----------------------------------------------------------------------------------


def test_truncated_blob_is_seen_truncated(bed: Bed, script: Any, attempt_log: AttemptLog) -> None:
    path = bed.blob_path(bed.big.digest)
    script(path, truncated(0.5))
    whole = bed.request("GET", path)
    ranged = bed.request("GET", path, headers={"Range": "bytes=0-65535"})
    answers = [whole, ranged]
    ok = (
        whole.status == 200
        and not whole.complete
        and len(whole.body) < BIG
        and int(whole.headers["content-length"]) == BIG
        and ranged.status == 206
        and not ranged.complete
        and len(ranged.body) < 65536
        and timely(answers)
    )
    unsigned = sum(blob_unsigned(a, bed.big.digest) for a in answers)
    record(attempt_log, "blob cut short after promising its Content-Length (GET, Range)",
           expected="the client sees a cut connection, never a clean short body",
           answers=answers, unsigned=unsigned, ok=ok and unsigned == 0)  # fmt: skip
    assert ok, summary(answers)
    assert unsigned == 0, summary(answers)
    line = bed.access_line(whole)
    assert line.get("outcome") == "upstream_broke", line
    assert line["complete"] is False, line


@pytest.mark.parametrize("which", ["big", "small"])
def test_blob_bytes_not_matching_the_digest_are_cut(
    bed: Bed, script: Any, attempt_log: AttemptLog, which: str
) -> None:
    blob = bed.big if which == "big" else bed.layer
    path = bed.blob_path(blob.digest)
    script(path, corrupted)
    answers = [bed.request("GET", path), bed.request("HEAD", path)]
    get = answers[0]
    unsigned = sum(blob_unsigned(a, blob.digest) for a in answers)
    ok = (
        unsigned == 0
        and get.status == 200
        and not get.complete
        and len(get.body) < len(blob.data)
        and get.body == blob.data[: len(get.body)]  # what was sent was the true prefix
        and answers[1].status == 200
        and answers[1].headers.get("docker-content-digest") in (None, blob.digest)
        and timely(answers)
    )
    record(attempt_log, f"blob bytes that do not hash to its digest ({which}: "
           f"{len(blob.data)} bytes)",
           expected="cut before the last chunk: never a complete bad blob",
           answers=answers, unsigned=unsigned, ok=ok,
           detail=f"{len(get.body)} of {len(blob.data)} bytes sent")  # fmt: skip
    assert ok, summary(answers)
    line = bed.access_line(get)
    assert line["complete"] is False, line
    assert "upstream_digest_mismatch" in line["error"], line


def bad_blob_whole(a: Answer, digest: str, size: int) -> bool:
    """A 2xx answer that arrived whole (by its framing) and is, or claims to be, the whole
    blob (a 200, a 206 whose Content-Range covers every byte, or any 2xx to a request
    without Range), with bytes that do not hash to ``digest``."""
    if a.method == "HEAD" or not a.complete or a.status not in (200, 206):
        return False
    whole_range = a.headers.get("content-range", "").startswith(f"bytes 0-{size - 1}/")
    if a.status == 206 and not whole_range and a.request_range:
        return False  # a part the client asked for: checked where it is assembled
    return images.sha256(a.body) != digest


def test_blob_framings_never_deliver_a_complete_bad_blob(
    bed: Bed, script: Any, attempt_log: AttemptLog
) -> None:
    """Issue 17, finding 5: verification follows what the upstream sent, not what was asked.
    Before, a Content-Length relayed beside chunked framing made 28 bad bytes a complete 200,
    and a 206 to a request without Range went out unhashed."""
    big, small = bed.big, bed.layer
    size = len(big.data)
    # (attack, blob, behaviour, Range asked, expected shape: 502 refusal or a cut 2xx)
    cases: list[tuple[str, images.Blob, Behaviour, str | None, str]] = [
        ("blob framed by both Content-Length (28) and chunked, 28 bad bytes first", small,
         framed_twice, None, "502"),
        ("blob answered 206 with a whole-blob Content-Range to a request without Range",
         big, corrupted_as(206), None, "502"),
        ("blob answered 206 with a partial Content-Range to a request without Range",
         big, corrupted_as(206, 0, 65535), None, "502"),
        ("blob answered 206 with a whole-blob Content-Range to Range: bytes=0-", big,
         corrupted_as(206), "bytes=0-", "cut"),
        ("blob answered 200 (bad bytes) to Range: bytes=0-99", big, corrupted_as(200),
         "bytes=0-99", "cut"),
    ]  # fmt: skip
    failures = []
    for attack, blob, behaviour, asked, shape in cases:
        path = bed.blob_path(blob.digest)
        script(path, behaviour)
        headers = {"Range": asked} if asked else None
        a = bed.request("GET", path, headers=headers)
        unsigned = int(bad_blob_whole(a, blob.digest, len(blob.data)))
        if shape == "502":
            good = refused(a, 502)
        else:  # the right status, a true prefix, and never complete
            good = a.status in (200, 206) and not a.complete and a.body == blob.data[: len(a.body)]
        ok = good and unsigned == 0 and timely([a])
        record(attempt_log, attack, answers=[a], unsigned=unsigned, ok=ok,
               expected="refused (502)" if shape == "502" else "cut before the last chunk",
               detail=f"Range {asked or 'none'}")  # fmt: skip
        if not ok:
            failures.append((attack, summary([a])))
        elif shape == "cut":
            line = bed.access_line(a)
            assert "upstream_digest_mismatch" in line["error"], line
    # An honest part still goes through, unchecked and whole: the client asked for it.
    bed.hostile.behaviours.pop(bed.blob_path(big.digest))
    part = bed.request("GET", bed.blob_path(big.digest), headers={"Range": "bytes=100-199"})
    assert (part.status, part.complete) == (206, True), summary([part])
    assert part.body == big.data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{size}"
    assert not failures, failures


# -- slowloris ----------------------------------------------------------------------------------


def test_slowloris_never_holds_a_request(bed: Bed, script: Any, attempt_log: AttemptLog) -> None:
    # Every case at once (each on its own path), so the module pays for the slowest only.
    signed = bed.image.manifest
    by_tag = f"/v2/{bed.repo}/manifests/v1"  # fetched upstream at bed.manifest_path

    def by_digest(label: str) -> str:
        return f"/v2/{bed.repo}/manifests/{fake_digest(label)}"

    # (attack, client path, scripted path, behaviour, expected, 504 or None for a cut blob)
    cases: list[tuple[str, str, str, Behaviour, str, int | None]] = [
        ("slowloris: manifest body a byte every 0.25 s (by tag)", by_tag, bed.manifest_path,
         trickle_body(TRICKLE, signed), "504 at the request deadline", 504),
        ("slowloris: manifest headers a byte every 0.25 s (by digest)", by_digest("th"),
         by_digest("th"), trickle_headers(TRICKLE, signed), "504 at the request deadline",
         504),
        ("slowloris: manifest headers, then silence (by digest)", by_digest("hah"),
         by_digest("hah"), hang_after_headers(60, signed), "504 at the read timeout", 504),
        ("slowloris: no answer at all (by digest)", by_digest("h"), by_digest("h"),
         hang(60), "504 at the read timeout", 504),
        ("slowloris: blob headers a byte every 0.25 s", bed.blob_path(bed.image.blobs[0].digest),
         bed.blob_path(bed.image.blobs[0].digest), trickle_headers(TRICKLE),
         "504 at the request deadline", 504),
        ("slowloris: blob body a byte every 0.25 s", bed.blob_path(bed.big.digest),
         bed.blob_path(bed.big.digest), trickle_body(TRICKLE),
         "cut under min_upstream_rate: the client sees a cut body", None),
        ("slowloris: blob headers, then silence", bed.blob_path(bed.layer.digest),
         bed.blob_path(bed.layer.digest), hang_after_headers(60),
         "cut at the read timeout: the client sees a cut body", None),
    ]  # fmt: skip
    for _, _, scripted, behaviour, _, _ in cases:
        script(scripted, behaviour)
    with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:
        futures = [pool.submit(bed.request, "GET", case[1]) for case in cases]
        answers = [f.result() for f in futures]
    failures = []
    for (attack, path, _, _, expected, status), a in zip(cases, answers, strict=True):
        if "/manifests/" in path:
            unsigned = int(manifest_unsigned(bed, a))
        else:
            unsigned = int(blob_unsigned(a, path.rsplit("/", 1)[1]))
        shape = refused(a, status) if status is not None else a.status == 200 and not a.complete
        ok = shape and unsigned == 0 and a.seconds < BOUND
        record(attempt_log, attack, expected=expected, answers=[a], unsigned=unsigned, ok=ok)
        if not ok:
            failures.append((attack, summary([a])))
    assert not failures, failures
    trickled = bed.access_line(answers[5])
    assert "upstream_too_slow" in trickled["error"], trickled
    assert trickled["complete"] is False, trickled
    deadline = bed.access_line(answers[0])
    assert deadline["status"] == 504, deadline
    assert "timed out" in deadline["error"], deadline


# -- afterwards -----------------------------------------------------------------------------


def _upstream_connections(bed: Bed) -> list[Any]:
    conns = psutil.Process(bed.proxy.server.pid).net_connections(kind="tcp")
    return [c for c in conns if c.raddr and c.raddr.port == bed.hostile.port]


def test_no_connection_to_the_hostile_registry_is_left_open(
    bed: Bed, attempt_log: AttemptLog
) -> None:
    # After every attack above (pytest runs a module's tests in the order written). The
    # hostile registry closes after every answer, so the proxy must hold nothing to it: a
    # response the proxy forgot to close would sit here in CLOSE_WAIT.
    if len(bed.seen) < 20:
        pytest.skip("run with the attacks of this module: nothing to check alone")
    deadline = time.monotonic() + 3 * READ_TIMEOUT
    left = _upstream_connections(bed)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _upstream_connections(bed)
    answers = bed.seen
    five_hundreds = [a for a in answers if a.status >= 500 and a.status not in (502, 503, 504)]
    ok = not left and not five_hundreds and bed.proxy.server.alive()
    attempt_log.record(
        SURFACE,
        "connections to the hostile registry after every attack",
        expected="none left open (no leak), no 500 in the whole module",
        statuses=[a.status if a.status else "error" for a in answers],  # the whole module
        unsigned_served=0,
        ok=ok,
        detail=f"{len(left)} left open: {[c.status for c in left]}; "
        f"{len(five_hundreds)} answers 5xx other than 502/503/504",
        extra={"requests": len(answers)},
    )
    assert not left, left
    assert not five_hundreds, summary(five_hundreds)
    assert "Traceback" not in bed.proxy.server.log_path.read_text(errors="replace")


def test_honest_answers_come_back_after_the_attacks(bed: Bed) -> None:
    # Nothing above left the proxy broken for an honest registry.
    manifest = bed.request("GET", f"/v2/{bed.repo}/manifests/v1")
    assert manifest.status == 200
    assert images.sha256(manifest.body) == bed.digest
    blob = bed.request("GET", bed.blob_path(bed.big.digest))
    assert blob.status == 200
    assert blob.complete
    assert blob.body == bed.big.data
