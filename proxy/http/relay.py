"""What crosses from an upstream response to the client: headers, links, error bodies (pure).

An allowlist, not a blocklist: hop-by-hop headers (Connection, Keep-Alive, Transfer-Encoding,
...) and anything the proxy does not understand stay behind.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from proxy.errors import ClientRequestError
from proxy.http.errors import oci_error_body
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


def relayed_headers(
    upstream_headers: Mapping[str, str], *, body_length: int | None = None
) -> dict[str, str]:
    """The response headers the client gets; ``body_length`` overrides Content-Length."""
    out = {k: upstream_headers[k] for k in RELAYED_RESPONSE_HEADERS if k in upstream_headers}
    if body_length is not None:
        out["content-length"] = str(body_length)
    return out


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
