"""proxy.http.relay: header allowlist, pagination Link rewriting, upstream error bodies."""

from __future__ import annotations

import json

import httpx
import pytest

from proxy.errors import UpstreamContentError
from proxy.http.relay import (
    RELAYED_RESPONSE_HEADERS,
    error_body_for_client,
    framed_length,
    range_not_satisfiable,
    relayed_headers,
    rewrite_link,
    whole_blob_answer,
)

HOP_BY_HOP = ("connection", "transfer-encoding", "keep-alive", "upgrade", "te", "trailer",
              "proxy-authenticate", "proxy-connection")  # fmt: skip
OTHER = ("set-cookie", "www-authenticate", "location", "server", "x-internal", "link")


def upstream_headers() -> httpx.Headers:
    headers = httpx.Headers({name: f"value-{name}" for name in RELAYED_RESPONSE_HEADERS})
    for name in HOP_BY_HOP + OTHER:
        headers[name] = f"value-{name}"
    return headers


def test_allowlisted_headers_are_relayed() -> None:
    out = relayed_headers(upstream_headers())
    assert out == {name: f"value-{name}" for name in RELAYED_RESPONSE_HEADERS}


@pytest.mark.parametrize("name", HOP_BY_HOP + OTHER)
def test_other_headers_stay_behind(name: str) -> None:
    out = relayed_headers(upstream_headers())
    assert name not in {k.lower() for k in out}


def test_header_names_match_case_insensitively() -> None:
    headers = httpx.Headers([("Content-Type", "application/json"), ("Connection", "close"),
                             ("Docker-Content-Digest", "sha256:x")])  # fmt: skip
    assert relayed_headers(headers) == {
        "content-type": "application/json",
        "docker-content-digest": "sha256:x",
    }


def test_body_length_overrides_content_length() -> None:
    headers = httpx.Headers({"content-length": "999", "content-type": "a/b"})
    assert relayed_headers(headers, body_length=12)["content-length"] == "12"
    assert "content-length" in relayed_headers(httpx.Headers({}), body_length=0)


@pytest.mark.parametrize(
    ("link", "upstream_name", "client_name", "expected"),
    [
        ('<https://reg.example/v2/app/tags/list?n=2&last=b>; rel="next"', "app", "mirror/app",
         '</v2/mirror/app/tags/list?n=2&last=b>; rel="next"'),
        ('</v2/library/alpine/tags/list?last=3.19>; rel="next"', "library/alpine", "hub/alpine",
         '</v2/hub/alpine/tags/list?last=3.19>; rel="next"'),
        ('</v2/app/tags/list>; rel="next"', "app", "app", '</v2/app/tags/list>; rel="next"'),
        ('  <http://10.0.0.1:5000/v2/_catalog?n=10&last=x>; rel="next"', None, None,
         '</v2/_catalog?n=10&last=x>; rel="next"'),
        ('<https://reg.example/v2/other/tags/list?last=b>; rel="next"', "app", "app", None),
        ('<https://reg.example/v2/app-other/tags/list>; rel="next"', "app", "app", None),
        ('<https://reg.example/v2/team/app/tags/list>; rel="next"', "team", "mirror/team", None),
        ('<https://reg.example/other/path>; rel="next"', None, None, None),
        ("https://reg.example/v2/app/tags/list", "app", "app", None),
        ("", None, None, None),
        ('<http://[::1/v2/app/tags/list>; rel="next"', "app", "app", None),
        ('</v2/app/tags/list?last=a>; rel="next", <https://reg.example/v2/app/x>; rel="prev"',
         "app", "app", None),
    ],
    ids=["absolute-to-relative", "hub-library-name", "same-name", "catalog", "other-repo",
         "repo-prefix-lookalike", "parent-repo", "not-v2", "no-brackets", "empty",
         "bad-ipv6", "two-links"],
)  # fmt: skip
def test_rewrite_link(
    link: str, upstream_name: str | None, client_name: str | None, expected: str | None
) -> None:
    assert rewrite_link(link, upstream_name, client_name) == expected


def test_rewritten_link_never_names_the_upstream_host() -> None:
    out = rewrite_link('<https://secret.internal:5000/v2/a/tags/list?n=1>; rel="next"', "a", "b")
    assert out is not None
    assert "secret.internal" not in out
    assert out.startswith("</v2/b/")


OCI_ERROR = json.dumps(
    {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown", "detail": {}}]}
).encode()


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", " application/json "]
)
def test_upstream_oci_error_is_relayed_as_is(content_type: str) -> None:
    assert error_body_for_client(404, content_type, OCI_ERROR, "internal") is OCI_ERROR


@pytest.mark.parametrize(
    ("status", "content_type", "body", "code"),
    [(404, "text/html", b"<h1>Not Found</h1>", "NOT_FOUND"),
     (401, "application/json", b"not json", "UNAUTHORIZED"),
     (403, "application/json", b'{"message": "no"}', "DENIED"),
     (429, "application/json", b'{"errors": "many"}', "TOOMANYREQUESTS"),
     (400, "", OCI_ERROR, "UNKNOWN"),
     (404, "application/json", b"[" * 100_000, "NOT_FOUND"),
     (404, "application/json", b"\xff\xfe", "NOT_FOUND"),
     (418, "application/json", b"[]", "UNKNOWN")],
    ids=["html", "not-json", "json-without-errors", "errors-not-list", "no-content-type",
         "deeply-nested", "not-utf8", "list"],
)  # fmt: skip
def test_other_error_bodies_are_wrapped(status: int, content_type: str, body: bytes,
                                        code: str) -> None:  # fmt: skip
    out = json.loads(error_body_for_client(status, content_type, body, "internal"))
    assert out == {
        "errors": [
            {
                "code": code,
                "message": f"upstream internal answered HTTP {status}",
                "detail": {"upstream": "internal"},
            }
        ]
    }


# --------------------------------------------------------------------------- blob framing


@pytest.mark.parametrize(
    ("headers", "length"),
    [({"content-length": "28"}, 28), ({"content-length": "28, 28"}, 28),
     ({"content-length": "28, 29"}, None), ({"content-length": "-1"}, None), ({}, None),
     ({"content-length": "28", "transfer-encoding": "chunked"}, None),
     ({"transfer-encoding": "chunked"}, None)],
    ids=["plain", "duplicate", "conflicting", "negative", "none", "with-chunked", "chunked"],
)  # fmt: skip
def test_framed_length(headers: dict[str, str], length: int | None) -> None:
    assert framed_length(httpx.Headers(headers)) == length


SIZE = 1000
WHOLE_BLOB_CASES = [
    # (id, status, headers, Range asked, whole (True/False) or the refusal's words)
    ("200", 200, {}, False, True),
    ("200-to-range", 200, {}, True, True),
    ("304", 304, {}, True, True),
    ("206-whole", 206, {"content-range": f"bytes 0-{SIZE - 1}/{SIZE}"}, True, True),
    ("206-part", 206, {"content-range": f"bytes 0-99/{SIZE}"}, True, False),
    ("206-tail", 206, {"content-range": f"bytes 900-{SIZE - 1}/{SIZE}"}, True, False),
    ("206-unknown-size", 206, {"content-range": "bytes 0-99/*"}, True, False),
    ("206-length-agrees", 206, {"content-range": f"bytes 0-99/{SIZE}", "content-length": "100"},
     True, False),
    ("206-multipart", 206, {"content-type": "multipart/byteranges; boundary=x"}, True, False),
    ("206-not-asked-whole", 206, {"content-range": f"bytes 0-{SIZE - 1}/{SIZE}"}, False,
     "without Range"),
    ("206-not-asked-part", 206, {"content-range": f"bytes 0-99/{SIZE}"}, False, "without Range"),
    ("206-no-content-range", 206, {}, True, "without Content-Range"),
    ("206-junk", 206, {"content-range": "bytes=0-99/1000"}, True, "invalid Content-Range"),
    ("206-backwards", 206, {"content-range": "bytes 99-0/1000"}, True, "invalid Content-Range"),
    ("206-past-the-end", 206, {"content-range": "bytes 0-1000/1000"}, True,
     "invalid Content-Range"),
    ("206-unsatisfied", 206, {"content-range": "bytes */1000"}, True, "invalid Content-Range"),
    ("206-length-disagrees", 206, {"content-range": "bytes 0-99/1000", "content-length": "28"},
     True, "28 bytes for the range 0-99"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("status", "headers", "ranged", "expected"),
    [c[1:] for c in WHOLE_BLOB_CASES],
    ids=[c[0] for c in WHOLE_BLOB_CASES],
)
def test_whole_blob_answer_follows_what_the_upstream_sent(
    status: int, headers: dict[str, str], ranged: bool, expected: bool | str
) -> None:
    if isinstance(expected, bool):
        got = whole_blob_answer(status, httpx.Headers(headers), range_requested=ranged,
                                upstream="r")  # fmt: skip
        assert got is expected
    else:
        with pytest.raises(UpstreamContentError, match=expected):
            whole_blob_answer(status, httpx.Headers(headers), range_requested=ranged,
                              upstream="r")  # fmt: skip


@pytest.mark.parametrize(
    ("content_range", "relayed"),
    [("bytes */121", "bytes */121"), (None, None), ("bytes 0-1/2\r\nX: y", None)],
    ids=["size", "none", "junk"],
)
def test_range_not_satisfiable(content_range: str | None, relayed: str | None) -> None:
    headers = httpx.Headers({"content-range": content_range} if content_range else {})
    response = range_not_satisfiable(headers, "r")
    assert response.status_code == 416
    assert response.headers.get("content-range") == relayed
    error = json.loads(bytes(response.body))["errors"][0]
    assert error["code"] == "UNSUPPORTED"
    assert "not satisfiable" in error["message"]
