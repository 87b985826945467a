"""What crosses from an upstream response to the client: headers, links, error bodies (pure).

An allowlist, not a blocklist: hop-by-hop headers (Connection, Keep-Alive, Transfer-Encoding,
...) and anything the proxy does not understand stay behind.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from starlette.responses import Response

from proxy.errors import ClientRequestError, UpstreamContentError
from proxy.http.errors import oci_error_body, oci_error_response
from proxy.reference import parse_repo_path

RELAYED_RESPONSE_HEADERS = (
    "content-type",
    "content-length",
    "docker-content-digest",
    "etag",
    "content-range",
    "accept-ranges",
    "last-modified",
    "cache-control",
    "docker-distribution-api-version",
    "oci-filters-applied",
)

_LINK = re.compile(r"^\s*<(?P<url>[^>]*)>(?P<rest>.*)$")
# RFC 9110 14.4: "bytes first-last/complete", the complete length "*" when unknown.
_CONTENT_RANGE = re.compile(r"bytes (?P<first>[0-9]{1,19})-(?P<last>[0-9]{1,19})"
                            r"/(?P<complete>[0-9]{1,19}|\*)")  # fmt: skip


def relayed_headers(
    upstream_headers: Mapping[str, str], *, body_length: int | None = None
) -> dict[str, str]:
    """The response headers the client gets; ``body_length`` overrides Content-Length."""
    out = {k: upstream_headers[k] for k in RELAYED_RESPONSE_HEADERS if k in upstream_headers}
    if body_length is not None:
        out["content-length"] = str(body_length)
    return out


def framed_length(upstream_headers: Mapping[str, str]) -> int | None:
    """The body length an upstream answer's framing really gives, or None (chunked, or
    delimited by the close).

    RFC 9112 6.3: Transfer-Encoding overrides Content-Length, and that is what the HTTP
    client reads by; a Content-Length next to it says nothing about the body (the upstream
    client refuses such answers). Duplicates of one value count once, as h11 takes them."""
    if "transfer-encoding" in upstream_headers:
        return None
    values = {v.strip() for v in upstream_headers.get("content-length", "").split(",")}
    if len(values) != 1:
        return None
    (value,) = values
    return int(value) if value.isdigit() else None


def whole_blob_answer(
    status: int, upstream_headers: Mapping[str, str], *, range_requested: bool, upstream: str
) -> bool:
    """Whether a blob answer (200, 206 or 304) carries the whole blob, to be hashed: decided
    from what the upstream sent, never from what was asked.

    * 200 is the whole blob, Range or not (a server may ignore Range, RFC 9110 14.2);
    * 206 whose Content-Range covers every byte (``bytes 0-(n-1)/n``) is the whole blob too;
    * any other 206 is a part, relayed unchecked only to a client that asked for a part
      (it checks the blob it assembles); to a request without Range it is refused, and so
      is a 206 whose Content-Range does not parse or disagrees with its Content-Length.

    Raises UpstreamContentError."""
    if status != 206:
        return True
    if not range_requested:
        raise UpstreamContentError(f"upstream {upstream} answered 206 to a request without Range")
    content_range = upstream_headers.get("content-range")
    if content_range is None:
        media_type = upstream_headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type == "multipart/byteranges":  # several ranges asked: parts, each framed
            return False
        raise UpstreamContentError(f"upstream {upstream} answered 206 without Content-Range")
    m = _CONTENT_RANGE.fullmatch(content_range.strip())
    first, last = (int(m["first"]), int(m["last"])) if m else (1, 0)
    complete = None if m is None or m["complete"] == "*" else int(m["complete"])
    if first > last or (complete is not None and last >= complete):
        raise UpstreamContentError(
            f"upstream {upstream} answered 206 with an invalid Content-Range {content_range[:80]!r}"
        )
    length = framed_length(upstream_headers)
    if length is not None and length != last - first + 1:
        raise UpstreamContentError(
            f"upstream {upstream} answered 206 with {length} bytes for the range {first}-{last}"
        )
    return first == 0 and complete == last + 1


def range_not_satisfiable(upstream_headers: Mapping[str, str], upstream: str) -> Response:
    """The client's answer to an upstream 416: the status and the blob's size
    (``Content-Range: bytes */n``), with an OCI error body of our own. The upstream's body is
    not read: distribution 2.8 sends its 416 with the blob's Content-Length and a 33-byte
    text body, so reading it broke (a 502 instead of the 416)."""
    headers = {}
    content_range = upstream_headers.get("content-range", "").strip()
    if re.fullmatch(r"bytes \*/[0-9]{1,19}", content_range):
        headers["Content-Range"] = content_range
    return oci_error_response(
        416,
        "UNSUPPORTED",
        f"upstream {upstream}: the requested range is not satisfiable",
        {"upstream": upstream},
        headers,
    )


def rewrite_link(link: str, upstream_name: str | None, client_name: str | None) -> str | None:
    """Rewrite a pagination ``Link`` so the next page is fetched through the proxy.

    The URL is made relative (the client resolves it against the proxy) and the repository
    name is mapped back to the one the client used. Returns None for a Link we cannot parse:
    better no next page than a next page on the upstream that bypasses the proxy.
    """
    m = _LINK.match(link)
    # A second link-value ("<a>; rel=next, <b>; rel=prev") would be relayed untouched and
    # could point the client at the upstream itself: fail closed on anything but one link.
    if m is None or "<" in m.group("rest"):
        return None
    try:
        parts = urlsplit(m.group("url"))
    except ValueError:  # e.g. an unclosed IPv6 bracket in an upstream-controlled header
        return None
    path = parts.path
    if upstream_name is not None and client_name is not None:
        old = f"/v2/{upstream_name}/"
        if not path.startswith(old) or not _names_repository(path, upstream_name):
            return None
        path = f"/v2/{client_name}/" + path[len(old) :]
    if not path.startswith("/v2/"):
        return None
    query = f"?{parts.query}" if parts.query else ""
    return f"<{path}{query}>{m.group('rest')}"


def _names_repository(path: str, name: str) -> bool:
    # "/v2/team/app/tags/list" starts with "/v2/team/" but is repository team/app's list.
    try:
        parsed = parse_repo_path(path)
    except ClientRequestError:
        return False
    return parsed is not None and parsed.name == name


def error_body_for_client(status: int, content_type: str, body: bytes, upstream: str) -> bytes:
    """Relay an upstream OCI error body if it is one; otherwise wrap it in one."""
    if content_type.split(";")[0].strip() == "application/json":
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):  # deeply nested JSON raises RecursionError
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("errors"), list):
            return body
    code = {401: "UNAUTHORIZED", 403: "DENIED", 404: "NOT_FOUND", 429: "TOOMANYREQUESTS"}.get(
        status, "UNKNOWN"
    )
    return oci_error_body(
        code, f"upstream {upstream} answered HTTP {status}", {"upstream": upstream}
    )
