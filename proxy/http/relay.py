"""What crosses from an upstream response to the client: headers, links, error bodies (pure).

An allowlist, not a blocklist: hop-by-hop headers (Connection, Keep-Alive, Transfer-Encoding,
...) and anything the proxy does not understand stay behind.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from proxy.http.errors import oci_error_body

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
    if m is None:
        return None
    parts = urlsplit(m.group("url"))
    path = parts.path
    if upstream_name is not None and client_name is not None:
        old = f"/v2/{upstream_name}/"
        if not path.startswith(old):
            return None
        path = f"/v2/{client_name}/" + path[len(old) :]
    if not path.startswith("/v2/"):
        return None
    query = f"?{parts.query}" if parts.query else ""
    return f"<{path}{query}>{m.group('rest')}"


def error_body_for_client(status: int, content_type: str, body: bytes, upstream: str) -> bytes:
    """Relay an upstream OCI error body if it is one; otherwise wrap it in one."""
    if content_type.split(";")[0].strip() == "application/json":
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("errors"), list):
            return body
    code = {401: "UNAUTHORIZED", 403: "DENIED", 404: "NOT_FOUND", 429: "TOOMANYREQUESTS"}.get(
        status, "UNKNOWN"
    )
    return oci_error_body(
        code, f"upstream {upstream} answered HTTP {status}", {"upstream": upstream}
    )
