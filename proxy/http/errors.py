"""Exceptions → OCI error responses: the ONE table.

Every error the proxy answers is ``{"errors":[{"code","message","detail"}]}`` (OCI
Distribution Spec, "Error Codes"). Codes outside the spec's list say what happened
(``UNAVAILABLE`` for 502/503/504, which clients retry).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.responses import Response

from proxy import errors as e
from proxy.upstream.auth import UpstreamUnauthorizedError

log = logging.getLogger("trustproxy.errors")

# (exception class, HTTP status, OCI code). First match wins: subclasses before bases.
ERROR_TABLE: tuple[tuple[type[BaseException], int, str], ...] = (
    (e.NotSignedError, 404, "MANIFEST_UNKNOWN"),
    (e.UnknownRepositoryError, 404, "NAME_UNKNOWN"),
    (e.InvalidNameError, 400, "NAME_INVALID"),
    (e.InvalidDigestError, 400, "DIGEST_INVALID"),
    # A manifest reference that is not a valid tag names no manifest: 404, as the OCI
    # conformance suite requires (GET/HEAD .../manifests/.INVALID_MANIFEST_NAME), and as
    # distribution answers (its route does not match). A malformed digest stays a 400.
    (e.InvalidReferenceError, 404, "MANIFEST_UNKNOWN"),
    (e.UnsupportedError, 405, "UNSUPPORTED"),
    (e.ClientRequestError, 400, "UNSUPPORTED"),
    # The upstream refused the proxy's own credentials: nothing the client can fix, so no
    # challenge (a 401 would make clients prompt for credentials that cannot help).
    (UpstreamUnauthorizedError, 403, "DENIED"),
    (e.UnauthorizedError, 401, "UNAUTHORIZED"),
    # Trust data that fails verification is never used: with nothing valid cached there is
    # nothing we may serve, so the tag is unavailable rather than unsigned.
    (e.TrustDataError, 503, "UNAVAILABLE"),
    (e.TrustSourceUnavailableError, 503, "UNAVAILABLE"),
    (e.UpstreamContentError, 502, "UNAVAILABLE"),
    (e.OversizeError, 502, "UNAVAILABLE"),
    (e.BadDataError, 502, "UNAVAILABLE"),
    (e.UpstreamUnavailableError, 502, "UNAVAILABLE"),
    (e.FetchError, 502, "UNAVAILABLE"),
    (e.ConfigError, 500, "UNKNOWN"),
)


def oci_error_body(code: str, message: str, detail: Any = None) -> bytes:
    entry: dict[str, Any] = {"code": code, "message": message}
    entry["detail"] = detail if detail is not None else {}
    return json.dumps({"errors": [entry]}, separators=(",", ":")).encode()


#: On every answer of the proxy's own under /v2, errors included: Docker clients look for it
#: (distribution sends it on every response; the API version check reads it).
API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}


def oci_error_response(
    status: int, code: str, message: str, detail: Any = None, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        oci_error_body(code, message, detail),
        status_code=status,
        headers={**API_VERSION_HEADER, **(headers or {})},
        media_type="application/json",
    )


def response_for_exception(exc: BaseException, *, basic_realm: str | None = None) -> Response:
    """The OCI error response for ``exc``; unknown exceptions are a 500 without detail."""
    for cls, status, code in ERROR_TABLE:
        if isinstance(exc, cls):
            if isinstance(exc, e.UpstreamUnavailableError) and exc.timeout:
                status = 504
            headers = None
            if status == 401 and basic_realm:
                headers = {"WWW-Authenticate": f'Basic realm="{basic_realm}"'}
            detail = _detail(exc)
            return oci_error_response(status, code, str(exc), detail, headers)
    log.error("internal error", exc_info=exc)
    return oci_error_response(500, "UNKNOWN", "internal error (see the proxy's log)")


def _detail(exc: BaseException) -> dict[str, str]:
    detail: dict[str, str] = {}
    if isinstance(exc, e.UpstreamUnavailableError):
        detail["upstream"] = exc.upstream
    if isinstance(exc, e.TrustSourceUnavailableError):
        detail["trust_source"] = exc.source
    if isinstance(exc, e.TrustDataError):
        if exc.role:
            detail["role"] = exc.role
        if exc.field:
            detail["field"] = exc.field
    if isinstance(exc, e.NotSignedError):
        detail["reason"] = exc.reason
    return detail
