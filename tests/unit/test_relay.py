"""proxy.http.relay: header allowlist, pagination Link rewriting, upstream error bodies."""

from __future__ import annotations

import json

import httpx
import pytest

from proxy.http.relay import (
    RELAYED_RESPONSE_HEADERS,
    error_body_for_client,
    relayed_headers,
    rewrite_link,
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
