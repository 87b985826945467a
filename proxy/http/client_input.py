"""Which client request headers may be forwarded to a registry, byte for byte (pure).

The headers the proxy forwards (Accept, Range, If-*, and Authorization in passthrough
mode or to the token relay) must be visible ASCII, spaces and tabs. RFC 9110 5.5 still
lets a field value carry obs-text (bytes 0x80-0xFF) and servers pass it on (uvicorn hands
it to the app as Latin-1), but no registry header means anything with it, and httpx
refuses to send a value that is not ASCII: before this check such a request was a 500.
A 400 is the honest answer. Dropping the header instead would change what the registry
negotiates (an Accept silently lost downgrades the manifest type the client gets).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from proxy.errors import ClientRequestError
from proxy.upstream.client import FORWARDED_REQUEST_HEADERS

FORWARDED_HEADER_NAMES = frozenset(
    name.encode("ascii") for name in (*FORWARDED_REQUEST_HEADERS, "authorization")
)
# Control characters but HTAB, and DEL (RFC 9110 5.5: field-vchar / SP / HTAB).
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def check_forwarded_headers(raw_headers: Iterable[tuple[bytes, bytes]]) -> None:
    """Raises ClientRequestError when a header the proxy forwards is not visible ASCII.

    ``raw_headers``: the ASGI ``scope["headers"]`` (lower-case names, raw values).
    """
    for name, value in raw_headers:
        if name in FORWARDED_HEADER_NAMES and (not value.isascii() or _CONTROL.search(value)):
            raise ClientRequestError(
                f"request header {name.decode('ascii')!r} may hold only visible ASCII "
                "characters, spaces and tabs"
            )
