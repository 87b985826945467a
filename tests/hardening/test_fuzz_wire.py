"""Bad client input on the wire: a real ``python -m proxy serve`` in front of a real registry,
fed raw bytes that no HTTP client library would send (issue 8).

Who answers what (uvicorn 0.54 with httptools, the proxy's default where installed):

* uvicorn's own parser refuses a malformed request before the app sees it, always the same
  way: ``400`` ``text/plain`` "Invalid HTTP request received.", then it closes the
  connection. That covers raw spaces, tabs, NUL and non-ASCII bytes in the request target,
  control characters in header values, malformed header names, bare LF line ends, obs-fold,
  unknown or lower-case methods, HTTP versions other than 1.0/1.1, invalid chunked bodies,
  Transfer-Encoding with Content-Length, negative or repeated Content-Length, unknown
  transfer codings, and TLS and HTTP/2 prefaces. That answer is not an OCI error body: it is
  not ours to shape (the app never ran), and the tests below only hold it to "400, closed,
  no hang".
* the request-head guard (proxy/http/server_protocol.py) answers 431 to a head longer than
  ``server.max_header_bytes`` (exactly, whatever the connection is doing: a request target
  of 64 KiB is one) and 408 to one not complete within ``server.header_timeout``, with OCI
  bodies, then closes lingeringly; a 431 may still reach a client that goes on sending for
  longer than that as a reset.
* everything else reaches the app, and every 4xx is an OCI error.
"""

from __future__ import annotations

import hashlib
import json
import re
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from testbed import images
from testbed.attempts import AttemptLog
from testbed.processes import Server
from testbed.proxy_server import start_proxy, upstream_config
from tests.conftest import REPO, RegistryBed
from tests.hardening.test_fuzz_requests import (
    PROXY_CODES,
    SPEC_CODES,
    fuzz_settings,
    header_text,
    targets,
)

pytestmark = [pytest.mark.hardening, pytest.mark.integration]

HEADER_TIMEOUT = 2.0  # server.header_timeout of the proxy under test
MAX_HEADER_BYTES = 64 * 1024  # the default
UVICORN_400 = b"Invalid HTTP request received."
SLOW_BLOB = b"0123456789"
SLOW_BYTE_SECONDS = 0.35  # the slow upstream sends SLOW_BLOB over ~3.5 s > HEADER_TIMEOUT


# --------------------------------------------------------------------------- raw HTTP


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def by_uvicorn(self) -> bool:
        """uvicorn's own parser refused the request (the app never saw it)."""
        return (self.status == 400 and self.body == UVICORN_400
                and self.headers.get("content-type", "").startswith("text/plain"))  # fmt: skip


@dataclass
class Exchange:
    replies: list[Reply] = field(default_factory=list)
    closed: bool = False  # the server closed (EOF) or reset the connection
    reset: bool = False
    hang: bool = False  # neither all replies nor a close within the timeout
    seconds: float = 0.0


def _parse(buf: bytes, head_only: bool) -> tuple[Reply, bytes] | None:
    """One response off the front of ``buf``, or None if it is not complete yet."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buf[:end].decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    rest = buf[end + 4 :]
    # uvicorn's parser refusal carries its body even for HEAD (it writes it raw, then closes).
    refusal = status == 400 and headers.get("content-type", "").startswith("text/plain")
    if (head_only and not refusal) or status in (204, 304):
        return Reply(status, headers, b""), rest
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            line_end = rest.find(b"\r\n")
            if line_end < 0:
                return None
            size = int(rest[:line_end].split(b";")[0], 16)
            if len(rest) < line_end + 2 + size + 2:
                return None
            body += rest[line_end + 2 : line_end + 2 + size]
            rest = rest[line_end + 2 + size + 2 :]
            if size == 0:
                return Reply(status, headers, body), rest
    length = int(headers.get("content-length", "0"))
    if len(rest) < length:
        return None
    return Reply(status, headers, rest[:length]), rest[length:]


def exchange(
    port: int, data: bytes, methods: list[str], *, timeout: float = 10.0, chunk: int = 0
) -> Exchange:
    """Send ``data`` (in pieces of ``chunk`` bytes if given) and read the answers to
    ``methods`` (one per request sent, for HEAD framing) until all came, or EOF, or
    ``timeout`` (a hang)."""
    out = Exchange()
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            if chunk:
                for i in range(0, len(data), chunk):
                    s.sendall(data[i : i + chunk])
            else:
                s.sendall(data)
        except OSError:
            out.reset = True  # refused mid-send (431): what was answered is still readable
        buf = b""
        s.settimeout(0.2)
        while len(out.replies) < len(methods):
            parsed = _parse(buf, methods[len(out.replies)] == "HEAD")
            if parsed is not None:
                out.replies.append(parsed[0])
                buf = parsed[1]
                continue
            if out.closed:
                break
            if time.monotonic() - start > timeout:
                out.hang = True
                break
            try:
                data_in = s.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                out.closed = out.reset = True
                continue
            if not data_in:
                out.closed = True
            buf += data_in
        if out.replies and out.replies[-1].headers.get("connection") == "close":
            # The server said it closes: see that it does (a refused request must not leave
            # the connection open for more).
            s.settimeout(5)
            try:
                out.closed = out.closed or s.recv(1) == b""
            except ConnectionResetError:
                out.closed = out.reset = True
            except TimeoutError:
                pass
    out.seconds = time.monotonic() - start
    return out


def request(target: bytes, *, method: bytes = b"GET", headers: bytes = b"", close: bool = True,
            version: bytes = b"HTTP/1.1") -> bytes:  # fmt: skip
    return (method + b" " + target + b" " + version + b"\r\nHost: proxy.test\r\n" + headers
            + (b"Connection: close\r\n" if close else b"") + b"\r\n")  # fmt: skip


@dataclass
class Tally:
    """Statuses and who answered, for the attempt log."""

    statuses: Counter[str] = field(default_factory=Counter)
    by: Counter[str] = field(default_factory=Counter)
    cases: int = 0

    def add(self, ex: Exchange) -> None:
        self.cases += 1
        if ex.hang:
            self.statuses["hang"] += 1
        if not ex.replies:
            self.statuses["reset" if ex.reset else "closed"] += 1
            self.by["no answer"] += 1
        for r in ex.replies:
            self.statuses[str(r.status)] += 1
            if r.by_uvicorn:
                self.by["uvicorn parser"] += 1
            elif r.status in (408, 431) and "date" not in r.headers:
                self.by["head guard"] += 1
            else:
                self.by["app"] += 1


def assert_sane(ex: Exchange, what: str) -> None:
    """No hang, no 5xx, and every 4xx the app made is an OCI error."""
    assert not ex.hang, f"{what}: no answer and no close in time"
    for r in ex.replies:
        assert r.status < 500, f"{what}: {r.status} {r.body[:200]!r}"
        if r.status >= 400 and not r.by_uvicorn:
            assert_oci_error(r, what)


def assert_oci_error(r: Reply, what: str) -> None:
    assert r.headers.get("content-type", "").startswith("application/json"), (what, r)
    if not r.body:  # a HEAD answer
        return
    errors = json.loads(r.body)["errors"]
    assert errors, (what, r)
    for e in errors:
        assert e["code"] in SPEC_CODES | PROXY_CODES, (what, e)
        assert isinstance(e["message"], str), (what, e)


# --------------------------------------------------------------------------- the bed


class SlowUpstream(BaseHTTPRequestHandler):
    """A registry whose blobs trickle in: the proxy's answer is in progress for longer than
    the header timeout and must not be cut."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/v2/":
            self._send(200, b"{}")
            return
        if not re.fullmatch(r"/v2/[a-z/]+/blobs/sha256:[0-9a-f]{64}", self.path):
            self._send(404, b'{"errors":[{"code":"BLOB_UNKNOWN","message":"x"}]}')
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(SLOW_BLOB)))
        self.end_headers()
        for byte in SLOW_BLOB:
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            time.sleep(SLOW_BYTE_SECONDS)

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Wire:
    proxy: Server
    port: int
    registry: RegistryBed


@pytest.fixture(scope="module")
def wire(registry: RegistryBed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wire]:
    slow = ThreadingHTTPServer(("127.0.0.1", 0), SlowUpstream)
    slow.daemon_threads = True
    thread = threading.Thread(target=slow.serve_forever, daemon=True)
    thread.start()
    slow_url = f"http://127.0.0.1:{slow.server_address[1]}"
    config = {
        "upstreams": [
            upstream_config("internal", registry.url),
            upstream_config("slow", slow_url, prefix="slow"),
        ],
        "server": {"header_timeout": f"{HEADER_TIMEOUT}s"},
        "logging": {"format": "json"},
    }
    # (testbed.processes keeps the harness's own TRUSTPROXY_* variables from the proxy.)
    proxy = start_proxy(tmp_path_factory.mktemp("wire"), config)
    try:
        yield Wire(proxy, proxy.port, registry)
    finally:
        proxy.stop()
        slow.shutdown()
        slow.server_close()
        thread.join(5)
    # After everything this module sent: no traceback, no internal error in the log.
    log = Path(proxy.log_path).read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    assert "internal error" not in log, log[-3000:]


def alive(w: Wire) -> None:
    assert w.proxy.alive(), w.proxy.log_tail()
    ex = exchange(w.port, request(b"/healthz"), ["GET"])
    assert [r.status for r in ex.replies] == [200], ex


# --------------------------------------------------------------------------- the cases

OCI = "app: OCI error"
REFUSED = "uvicorn: plain 400, closed"


@dataclass(frozen=True)
class Case:
    id: str
    data: bytes
    expect: str | tuple[int, ...]  # OCI / REFUSED, or the statuses the app may answer
    methods: tuple[str, ...] = ("GET",)


OCI_ACCEPT = b"Accept: application/vnd.oci.image.manifest.v1+json\r\n"


def _cases() -> list[Case]:
    m = f"/v2/{REPO}/manifests/oci".encode()
    big = b"a" * 65_536
    return [
        # request targets
        Case("raw-dotdot", request(b"/v2/team/../app/manifests/oci"), OCI),
        Case("dotdot-into-other-repo", request(b"/v2/other/x/../../team/app/manifests/oci"), OCI),
        Case("encoded-dotdot", request(b"/v2/team/%2e%2e/app/manifests/oci"), OCI),
        Case("encoded-slash", request(b"/v2/team%2Fapp/manifests/oci", headers=OCI_ACCEPT),
             (200,)),
        Case("double-encoded-slash", request(b"/v2/team%252Fapp/manifests/oci"), OCI),
        Case("encoded-nul", request(b"/v2/team/app%00/manifests/oci"), OCI),
        Case("encoded-newline-tag", request(b"/v2/team/app/manifests/oci%0a"), OCI),
        Case("encoded-tab-name", request(b"/v2/team/ap%09p/manifests/oci"), OCI),
        Case("absolute-form", request(b"http://evil.test/v2/team/app/manifests/oci",
                                      headers=OCI_ACCEPT), (200,)),
        Case("absolute-form-https", request(b"https://evil.test:1/v2/"), (200,)),
        Case("asterisk-form", request(b"*", method=b"OPTIONS"), OCI),
        Case("fragment", request(m + b"#frag", headers=OCI_ACCEPT), (200,)),
        Case("raw-space", request(b"/v2/team/a p/manifests/oci"), REFUSED),
        Case("raw-tab", request(b"/v2/team/a\tp/manifests/oci"), REFUSED),
        Case("raw-nul", request(b"/v2/team/a\x00p/manifests/oci"), REFUSED),
        Case("raw-utf8", request("/v2/tëam/app/manifests/oci".encode()), REFUSED),
        Case("raw-latin1", request(b"/v2/t\xe9am/app/manifests/oci"), REFUSED),
        Case("target-64KiB", request(b"/v2/" + big + b"/manifests/oci"), (431,)),
        Case("tags-n-negative", request(b"/v2/team/app/tags/list?n=-1"), OCI),
        Case("tags-n-huge", request(b"/v2/team/app/tags/list?n=" + b"9" * 5000), (200,)),
        Case("tags-n-repeated", request(b"/v2/team/app/tags/list?n=1&n=x&n=2"), (200,)),
        Case("tags-last-invalid", request(b"/v2/team/app/tags/list?n=1&last=%ff%00"), (200,)),
        Case("digest-md5", request(b"/v2/team/app/manifests/md5:" + b"0" * 32), OCI),
        Case("digest-b64u", request(b"/v2/team/app/blobs/sha256+b64u:" + b"A" * 43), OCI),
        # headers: size, count, bytes
        Case("header-32KiB", request(b"/v2/", headers=b"X-Big: " + b"a" * 32_768 + b"\r\n"),
             (200,)),
        Case("many-headers-2000", request(b"/v2/", headers=b"".join(
            b"X-H%d: v\r\n" % i for i in range(2000))), (200,)),
        Case("accept-1000-lines", request(m, headers=b"Accept: application/vnd.oci.image."
             b"manifest.v1+json\r\n" * 1000), (200,)),
        Case("accept-obs-text", request(m, headers=b"Accept: application/\xe9\r\n"), OCI),
        Case("authorization-obs-text", request(m, headers=b"Authorization: Bearer \xff\r\n"),
             OCI),
        Case("range-junk", request(b"/v2/team/app/blobs/sha256:" + b"0" * 64,
             headers=b"Range: bytes=99999999999999999999-\r\n"), OCI),
        Case("if-none-match-junk", request(m, headers=OCI_ACCEPT
             + b'If-None-Match: "\x7e\x21"*,,\r\n'), (200,)),
        Case("header-ctl", request(b"/v2/", headers=b"Accept: a\x01b\r\n"), REFUSED),
        Case("header-nul", request(b"/v2/", headers=b"Accept: a\x00b\r\n"), REFUSED),
        Case("header-name-space", request(b"/v2/", headers=b"Ac cept: a\r\n"), REFUSED),
        Case("header-name-latin1", request(b"/v2/", headers=b"\xe9: a\r\n"), REFUSED),
        Case("header-obs-fold", request(b"/v2/", headers=b"Accept: a\r\n b\r\n"), REFUSED),
        Case("bare-lf", b"GET /v2/ HTTP/1.1\nHost: x\nConnection: close\n\n", REFUSED),
        Case("no-host-http10", b"GET /v2/ HTTP/1.0\r\n\r\n", (200,)),
        Case("two-hosts", request(b"/v2/", headers=b"Host: other\r\n"), (200,)),
        # methods and versions
        Case("version-9.9", request(b"/v2/", version=b"HTTP/9.9"), REFUSED),
        Case("method-lowercase", request(b"/v2/", method=b"get"), REFUSED),
        Case("method-unknown", request(b"/v2/", method=b"FOO"), REFUSED),
        Case("method-junk", request(b"/v2/", method=b"G@T"), REFUSED),
        Case("method-propfind", request(b"/v2/", method=b"PROPFIND"), OCI),
        Case("method-delete", request(m, method=b"DELETE"), OCI),
        Case("tls-client-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 64,
             REFUSED),
        Case("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", REFUSED),
        Case("h2c-upgrade", request(b"/v2/", headers=b"Upgrade: h2c\r\nHTTP2-Settings: AA\r\n"),
             (200,)),
        # framing
        Case("chunked-invalid-on-get", request(b"/v2/", headers=b"Transfer-Encoding: chunked"
             b"\r\n") + b"ZZZ\r\nabc\r\n0\r\n\r\n", REFUSED),
        Case("chunked-and-content-length", request(b"/v2/", headers=b"Transfer-Encoding: "
             b"chunked\r\nContent-Length: 5\r\n") + b"0\r\n\r\n", REFUSED),
        Case("content-length-negative", request(b"/v2/", headers=b"Content-Length: -1\r\n"),
             REFUSED),
        Case("content-length-twice", request(b"/v2/", headers=b"Content-Length: 1\r\n"
             b"Content-Length: 2\r\n") + b"ab", REFUSED),
        Case("transfer-encoding-gzip", request(b"/v2/", headers=b"Transfer-Encoding: gzip\r\n"),
             REFUSED),
        Case("get-with-body-then-pipelined", request(b"/v2/", close=False,
             headers=b"Content-Length: 5\r\n") + b"hello" + request(b"/healthz"), (200,),
             ("GET", "GET")),
        Case("pipelined-head-head-get", request(m, method=b"HEAD", close=False)
             + request(b"/v2/nope/manifests/v1", method=b"HEAD", close=False)
             + request(b"/healthz"), (200, 404), ("HEAD", "HEAD", "GET")),
        Case("pipelined-50", request(b"/v2/", close=False) * 50 + request(b"/v2/%2e%2e/x"),
             (200, 404), ("GET",) * 51),
    ]  # fmt: skip


CASES = _cases()


def test_raw_requests(wire: Wire, attempt_log: AttemptLog) -> None:
    """Each raw request: answered by the app (OCI errors) or refused by uvicorn's parser as
    documented above; never a 5xx, never a hang; pipelined answers frame correctly."""
    tally = Tally()
    failures: list[str] = []
    refused: list[str] = []
    for case in CASES:
        ex = exchange(wire.port, case.data, list(case.methods))
        tally.add(ex)
        try:
            assert_sane(ex, case.id)
            assert len(ex.replies) == len(case.methods), f"{case.id}: {ex}"
            if case.expect == REFUSED:
                assert [r.by_uvicorn for r in ex.replies] == [True], f"{case.id}: {ex}"
                assert ex.closed, f"{case.id}: not closed after the 400"
                refused.append(case.id)
            elif case.expect == OCI:
                assert all(r.status >= 400 and not r.by_uvicorn for r in ex.replies), case.id
            else:
                assert {r.status for r in ex.replies} <= set(case.expect), f"{case.id}: {ex}"
        except AssertionError as e:
            failures.append(str(e)[:300])
    attempt_log.record(
        "client input",
        "raw HTTP requests against the real process (targets, headers, methods, framing)",
        expected="OCI error from the app, or uvicorn's plain 400 and close; never 5xx/hang",
        statuses=dict(tally.statuses),
        unsigned_served=0,
        ok=not failures,
        detail="; ".join(failures)[:1000] or "answered by: " + ", ".join(
            f"{k} {v}" for k, v in sorted(tally.by.items())),
        extra={"cases": tally.cases, "refused_by_uvicorn": refused},
    )  # fmt: skip
    assert not failures, failures
    alive(wire)


def test_encoded_slash_is_the_same_repository(wire: Wire) -> None:
    """``%2F`` decodes to ``/`` before routing (uvicorn unquotes the path): the client gets
    team/app's manifest, the one the name denotes, not another repository's."""
    ex = exchange(wire.port, request(b"/v2/team%2Fapp/manifests/oci", headers=OCI_ACCEPT),
                  ["GET"])  # fmt: skip
    (reply,) = ex.replies
    assert reply.status == 200
    assert reply.headers["docker-content-digest"] == wire.registry.digests["oci"]


def test_huge_request_heads(wire: Wire, attempt_log: AttemptLog) -> None:
    """A request line or header of 1 MiB, a header of 64 MiB, 100,000 headers (sent as a
    client's writes would come): a 431 OCI error (or a reset while still sending), in
    bounded memory; the process is unharmed."""
    process = psutil.Process(wire.proxy.pid)
    rss_before = process.memory_info().rss
    tally = Tally()
    heads = {
        "header-1MiB": request(b"/v2/", headers=b"X-Big: " + b"a" * (1 << 20) + b"\r\n"),
        "target-1MiB": request(b"/v2/" + b"a" * (1 << 20) + b"/manifests/v1"),
        "headers-100k": request(b"/v2/", headers=b"X-H: v\r\n" * 100_000),
        "header-64MiB": request(b"/v2/", headers=b"X-Big: " + b"a" * (64 << 20) + b"\r\n"),
    }
    for name, data in heads.items():
        ex = exchange(wire.port, data, ["GET"], chunk=16_384)
        tally.add(ex)
        assert_sane(ex, name)
        statuses = [r.status for r in ex.replies]
        assert statuses == [431] or (not statuses and ex.reset), f"{name}: {ex}"
    grown = (process.memory_info().rss - rss_before) >> 20
    attempt_log.record(
        "client input",
        "huge request heads (1 MiB line, 1 MiB and 64 MiB header, 100k headers)",
        expected="431 OCI error (or reset while sending), bounded memory",
        statuses=dict(tally.statuses),
        unsigned_served=0,
        ok=grown < 32,
        extra={"rss_growth_mib": grown, "max_header_bytes": MAX_HEADER_BYTES},
    )
    # Unguarded (uvicorn with httptools), a header grows the process by at least its own
    # size while it arrives (measured: 16 MiB +16 MiB; 300 MiB +580 MiB and minutes of CPU).
    assert grown < 32, f"RSS grew by {grown} MiB"
    alive(wire)


def test_slowloris_and_idle_connections(wire: Wire, attempt_log: AttemptLog) -> None:
    """A head trickled a byte at a time gets a 408 after ``header_timeout``; connections that
    send nothing are closed; meanwhile other clients are served at once."""
    idle = [socket.create_connection(("127.0.0.1", wire.port)) for _ in range(100)]
    slow = socket.create_connection(("127.0.0.1", wire.port))
    start = time.monotonic()
    try:
        head = request(f"/v2/{REPO}/manifests/oci".encode())
        sent = 0
        slow.settimeout(0.25)
        answer = b""
        served_meanwhile = False
        while time.monotonic() - start < HEADER_TIMEOUT + 8 and sent < len(head) - 1:
            if not answer:
                try:
                    slow.sendall(head[sent : sent + 1])  # never the last byte
                    sent += 1
                except OSError:
                    break
            try:
                chunk = slow.recv(4096)
            except TimeoutError:
                chunk = b"?"
            except ConnectionResetError:
                break
            if not chunk:
                break
            if chunk != b"?":
                answer += chunk
                continue  # the answer (a 408) has begun: read it, send nothing more
            if not served_meanwhile:
                ex = exchange(wire.port, request(b"/v2/"), ["GET"], timeout=5)
                served_meanwhile = [r.status for r in ex.replies] == [200]
        elapsed = time.monotonic() - start
        closed_idle = 0
        for s in idle:
            s.settimeout(max(0.1, start + HEADER_TIMEOUT + 8 - time.monotonic()))
            try:
                closed_idle += s.recv(1) == b""
            except ConnectionResetError:
                closed_idle += 1
            except TimeoutError:
                pass
    finally:
        slow.close()
        for s in idle:
            s.close()
    ok = answer.startswith(b"HTTP/1.1 408") and closed_idle == len(idle) and served_meanwhile
    attempt_log.record(
        "client input",
        "slowloris: a head trickled byte by byte; 100 silent connections",
        expected=f"408 OCI error after header_timeout ({HEADER_TIMEOUT:g}s); silent ones closed",
        statuses=[answer.split(b" ")[1].decode() if answer else "hang"],
        unsigned_served=0,
        ok=ok,
        extra={"seconds_to_408": round(elapsed, 1), "idle_closed": closed_idle,
               "bytes_trickled": sent, "others_served_meanwhile": served_meanwhile},
    )  # fmt: skip
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"errors"' in answer
    assert HEADER_TIMEOUT * 0.75 <= elapsed < HEADER_TIMEOUT + 8
    assert served_meanwhile
    assert closed_idle == len(idle)


def test_answer_in_progress_outlives_the_header_timeout(wire: Wire) -> None:
    """A blob relayed slower than ``header_timeout`` (the upstream trickles it) arrives whole:
    the guard never cuts a request in progress."""
    digest = f"sha256:{hashlib.sha256(SLOW_BLOB).hexdigest()}".encode()  # relays verify it
    ex = exchange(wire.port, request(b"/v2/slow/team/app/blobs/" + digest), ["GET"], timeout=30)
    assert [r.status for r in ex.replies] == [200], ex
    assert ex.replies[0].body == SLOW_BLOB
    assert ex.seconds > HEADER_TIMEOUT


# --------------------------------------------------------------------------- heads in every state

BIG_BLOB = 64 << 20  # an answer that cannot fit in the socket buffers while nobody reads it
HUGE_HEAD = 64 << 20  # behind a request in progress: the proxy must stop reading it
LARGE_HEAD = 4 << 20  # otherwise: refused at once (sent whole, so the answer is not reset)


@pytest.fixture(scope="module")
def big_blob(wire: Wire) -> str:
    """A 64 MiB blob in the registry (its digest)."""
    hasher = hashlib.sha256()
    chunks = list(images.random_chunks(BIG_BLOB, seed=b"issue 17 finding 4"))
    for chunk in chunks:
        hasher.update(chunk)
    digest = f"sha256:{hasher.hexdigest()}"
    with httpx.Client(base_url=wire.registry.url, timeout=120) as client:
        images.push_blob_stream(client, REPO, iter(chunks), digest)
    return digest


def huge_header_head(size: int) -> bytes:
    return b"GET /v2/ HTTP/1.1\r\nHost: proxy.test\r\nX-Big: " + b"a" * size + b"\r\n\r\n"


@dataclass
class Pushed:
    sent: int  # bytes of the head the proxy took before it stopped reading (or all)
    stalled: bool  # the proxy stopped reading
    reset: bool


def push(s: socket.socket, data: bytes, *, stall: float = 1.0) -> Pushed:
    """Send ``data`` without blocking until all is sent, the connection fails, or the peer
    has not taken a byte for ``stall`` seconds (it stopped reading)."""
    s.setblocking(False)
    sent = 0
    try:
        while sent < len(data):
            _, writable, _ = select.select([], [s], [], stall)
            if not writable:
                return Pushed(sent, True, False)
            try:
                sent += s.send(data[sent : sent + (1 << 20)])
            except BlockingIOError:
                continue
            except OSError:
                return Pushed(sent, False, True)
        return Pushed(sent, False, False)
    finally:
        s.setblocking(True)


@dataclass
class Answer:
    status: int
    length: int
    digest: str


def read_answers(
    s: socket.socket, heads: list[str], *, consumed: bytes = b"", timeout: float = 60
) -> list[Answer]:
    """Every answer until the connection ends (Content-Length framed; HEAD: no body),
    bodies hashed as they stream (64 MiB through ``bytes +=`` would take minutes).
    ``consumed``: what was already read of the first status line."""
    s.settimeout(timeout)
    answers: list[Answer] = []
    stream = s.makefile("rb")
    try:
        while True:
            status_line = consumed + stream.readline()
            consumed = b""
            if not status_line:
                return answers
            headers: dict[str, str] = {}
            while (line := stream.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if len(answers) < len(heads) and heads[len(answers)] == "HEAD":
                length = 0
            hasher, left = hashlib.sha256(), length
            while left:
                chunk = stream.read(min(left, 1 << 20))
                if not chunk:
                    break
                hasher.update(chunk)
                left -= len(chunk)
            status = int(status_line.split(b" ", 2)[1])
            answers.append(Answer(status, length - left, f"sha256:{hasher.hexdigest()}"))
    except (ConnectionResetError, TimeoutError):
        answers.append(Answer(0, 0, "reset"))
        return answers
    finally:
        stream.close()


def test_request_heads_are_bounded_in_every_connection_state(
    wire: Wire, big_blob: str, attempt_log: AttemptLog
) -> None:
    """Issue 17, finding 4: a head over ``max_header_bytes`` is a 431, whatever the
    connection is doing when it comes; behind a request in progress (the 64 MiB answer
    unread) the proxy stops reading it, so its memory does not grow with the head; and a
    head that arrives whole in one read is held to the limit exactly.

    Before: behind the unread blob the whole head was read and buffered (150 MiB: RSS
    58 -> 327 MiB, +26.5 CPU-seconds), and a 70,000-byte head in one read was served."""
    process = psutil.Process(wire.proxy.pid)
    blob_path = f"/v2/{REPO}/blobs/{big_blob}".encode()
    get_blob = request(blob_path, close=False)
    rss_before = process.memory_info().rss
    cpu_before = sum(process.cpu_times()[:2])
    results: dict[str, dict[str, Any]] = {}
    for state in ("idle-keep-alive", "pipelined", "answer-streaming", "request-body-arriving"):
        with socket.create_connection(("127.0.0.1", wire.port), timeout=30) as s:
            heads, consumed = ["GET"], b""
            if state == "idle-keep-alive":
                s.sendall(request(b"/v2/", close=False))
                assert [a.status for a in read_answers_once(s)] == [200]
                pushed = push(s, huge_header_head(LARGE_HEAD))
                heads = []
            elif state == "pipelined":
                pushed = push(s, request(b"/v2/", close=False) * 2 + huge_header_head(LARGE_HEAD))
                heads = ["GET", "GET"]
            else:
                if state == "answer-streaming":
                    s.sendall(get_blob)
                    rest = b""
                else:  # a request body still arriving when the head behind it comes
                    s.sendall(get_blob[:-2] + b"Content-Length: 6\r\n\r\nab")
                    rest = b"cdef"
                consumed = s.recv(12)
                assert consumed == b"HTTP/1.1 200"  # the answer is streaming, unread
                pushed = push(s, rest + huge_header_head(HUGE_HEAD))
            rss = process.memory_info().rss
            # Meanwhile, another client is served.
            others = exchange(wire.port, request(b"/v2/"), ["GET"], timeout=30)
            answers = read_answers(s, heads, consumed=consumed)
        # The answer in progress is finished first (a whole blob, hashed), then the 431.
        statuses: list[Any] = ["blob" if a.status == 200 and a.digest == big_blob else a.status
                               for a in answers]  # fmt: skip
        if state in ("answer-streaming", "request-body-arriving"):
            expected: list[Any] = ["blob", 431]
        else:
            expected = [200] * len(heads) + [431]
        results[state] = {
            "statuses": statuses,
            "expected": expected,
            "head_bytes_taken_mib": round(pushed.sent / (1 << 20), 1),
            "stalled": pushed.stalled,
            "rss_growth_mib": (rss - rss_before) >> 20,
            "others_served": [r.status for r in others.replies] == [200],
        }
    seventy = huge_header_head(70_000 - len(huge_header_head(0)))
    assert len(seventy) == 70_000
    one_read = exchange(wire.port, seventy, ["GET"])
    results["one-read-70000"] = {"statuses": [r.status for r in one_read.replies],
                                 "expected": [431]}  # fmt: skip
    cpu = sum(process.cpu_times()[:2]) - cpu_before
    grown = max(r.get("rss_growth_mib", 0) for r in results.values())
    ok = all(r["statuses"] == r["expected"] for r in results.values()) and grown < 32
    ok = ok and all(r.get("others_served", True) for r in results.values())
    attempt_log.record(
        "client input",
        "request head over max_header_bytes in every connection state (idle keep-alive, "
        "pipelined, behind an unread 64 MiB answer, behind a request body; 70,000 bytes in "
        "one read)",
        expected="431 OCI error after the answers before it; nothing more read meanwhile; "
        "RSS flat",
        statuses=[200 if x == "blob" else x for r in results.values() for x in r["statuses"]],
        unsigned_served=0,
        ok=ok,
        detail="; ".join(f"{k}: {v}" for k, v in results.items())[:1500],
        extra={"rss_growth_mib": grown, "cpu_seconds": round(cpu, 1),
               "max_header_bytes": MAX_HEADER_BYTES},
    )  # fmt: skip
    for state, r in results.items():
        assert r["statuses"] == r["expected"], (state, r)
        assert r.get("others_served", True), (state, r)
    for state in ("answer-streaming", "request-body-arriving"):
        # The proxy stopped reading: the head did not go in whole.
        assert results[state]["stalled"], (state, results[state])
    assert grown < 32, results
    alive(wire)


def read_answers_once(s: socket.socket) -> list[Answer]:
    """One answer (keep-alive: the connection stays open)."""
    s.settimeout(30)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, _, body = buf.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *([0-9]+)", head)[1])  # type: ignore[index]
    while len(body) < length:
        body += s.recv(65536)
    return [Answer(int(head.split(b" ", 2)[1]), length, "")]


def test_unsatisfiable_range_is_416(wire: Wire, attempt_log: AttemptLog) -> None:
    """The registry's 416 for a Range it cannot satisfy reaches the client as a 416 with the
    blob's size, not a 502 (distribution 2.8 sends that 416 with the blob's Content-Length
    and a shorter text body; the proxy read the body and broke on it)."""
    blob = min(wire.registry.blobs, key=lambda b: len(b.data))
    path = f"/v2/{REPO}/blobs/{blob.digest}".encode()
    replies = []
    for value in (b"bytes=500-0", b"bytes=99999999-"):
        ex = exchange(wire.port, request(path, headers=b"Range: " + value + b"\r\n"), ["GET"])
        assert_sane(ex, value.decode())
        replies.extend(ex.replies)
    statuses = [r.status for r in replies]
    attempt_log.record(
        "client input",
        "unsatisfiable Range on a blob (bytes=500-0, bytes=99999999-)",
        expected="416 with Content-Range bytes */size (the registry's answer), not 502",
        statuses=statuses,
        unsigned_served=0,
        ok=statuses == [416, 416],
        detail="; ".join(r.headers.get("content-range", "-") for r in replies),
    )
    assert statuses == [416, 416], replies
    for r in replies:
        assert_oci_error(r, "416")
        assert r.headers["content-range"] == f"bytes */{len(blob.data)}", r.headers


# Raw request heads for hypothesis: the in-process strategies' targets and header values,
# and bytes around HTTP's own grammar (methods, versions, line ends, framing headers).
# Mostly well-formed (so that many heads reach the app), with odd bytes mixed in.
raw_methods = st.sampled_from([b"GET"] * 12 + [b"HEAD"] * 4 + [b"POST", b"OPTIONS", b"get",
                               b"G T", b"", b"\xff", b"CONNECT", b"PRI"])  # fmt: skip
raw_versions = st.sampled_from([b"HTTP/1.1"] * 20 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1",
                                b"http/1.1", b"", b"HTTP/1.1 x"])  # fmt: skip
line_ends = st.sampled_from([b"\r\n"] * 20 + [b"\n", b"\r", b"\r\r\n"])
raw_header_names = st.sampled_from([b"Accept", b"Range", b"Authorization", b"If-None-Match",
                                    b"Host", b"Content-Length", b"Transfer-Encoding", b"X-A",
                                    b"Expect", b"Connection", b"User-Agent"] * 3
                                   + [b"", b"A B", b"A:B", b"\xe9"])  # fmt: skip
raw_header_values = st.one_of(
    header_text, st.sampled_from([b"chunked", b"100-continue", b"-1", b"1, 2", b"close",
                                  b"keep-alive, upgrade", b"a\x00b", b"a\rb", b"\x7f"]),
)  # fmt: skip


@st.composite
def raw_heads(draw: st.DrawFn) -> bytes:
    eol = draw(line_ends)
    target = draw(st.one_of(targets().map(lambda t: t.encode("ascii")),
                            targets().map(lambda t: t.encode("ascii")),
                            st.binary(max_size=20)))  # fmt: skip
    line = draw(raw_methods) + b" " + target + b" " + draw(raw_versions)
    headers = [b"Host: proxy.test"]
    for _ in range(draw(st.integers(0, 4))):
        headers.append(draw(raw_header_names) + b": " + draw(raw_header_values))
    headers.append(b"Connection: close")
    body = draw(st.sampled_from([b""] * 6 + [b"0\r\n\r\n", b"hello", b"ZZ\r\nx\r\n"]))
    return eol.join([line, *headers]) + eol + eol + body


def test_campaign_raw_heads(wire: Wire, attempt_log: AttemptLog) -> None:
    """Hypothesis over raw request heads, each on its own connection to the real process."""
    tally = Tally()
    failure: list[str] = []

    @fuzz_settings(150)
    @given(raw_heads())
    def run(data: bytes) -> None:
        method = "HEAD" if data.startswith(b"HEAD ") else "GET"  # a HEAD answer has no body
        ex = exchange(wire.port, data, [method], timeout=HEADER_TIMEOUT + 5)
        tally.add(ex)
        try:
            assert_sane(ex, repr(data[:200]))
            # uvicorn answers even what it cannot parse; only a 431 may come as a reset.
            assert ex.replies or ex.reset, f"no answer to {data[:200]!r}: {ex}"
        except AssertionError as e:
            failure.append(str(e)[:300])
            raise

    try:
        run()
    finally:
        attempt_log.record(
            "client input",
            "fuzzed raw request heads (hypothesis) against the real process",
            expected="OCI error from the app, or uvicorn's plain 400; never 5xx/hang",
            statuses=dict(tally.statuses),
            unsigned_served=0,
            ok=not failure,
            detail=failure[-1] if failure else "answered by: " + ", ".join(
                f"{k} {v}" for k, v in sorted(tally.by.items())),
            extra={"examples": tally.cases},
        )  # fmt: skip
    assert tally.by["app"] > 0, tally
    assert tally.by["uvicorn parser"] > 0, tally
    alive(wire)
