"""The one exception tree of trustproxy.

Three kinds of failure, three roots (plus configuration), so that callers can tell
"the data is bad" from "we could not get the data" from "the client may not have it"::

    TrustproxyError
    ├── ConfigError                  the operator's config or policy is invalid (startup)
    ├── BadDataError                 untrusted bytes are wrong: never served, never trusted
    │   ├── TrustDataError           trust metadata failed verification   (role, field)
    │   │   └── ...                  leaves in each source's verification core
    │   ├── UpstreamContentError     registry bytes are wrong (digest, size, syntax) -> 502
    │   └── OversizeError            a size-bounded read crossed its limit
    ├── FetchError                   something could not be fetched
    │   ├── UpstreamUnavailableError registry unreachable -> 502, or timed out -> 504
    │   └── TrustSourceUnavailableError  trust server unreachable, nothing valid cached -> 503
    ├── ClientRequestError           the client's request is malformed or unsupported -> 4xx
    │   ├── InvalidNameError, InvalidReferenceError, InvalidDigestError, UnsupportedError
    │   └── UnknownRepositoryError   no upstream routes this name
    ├── UnauthorizedError            the client did not authenticate to the proxy -> 401
    └── NotSignedError               trust data does not sign what was asked for -> 404

Exceptions are turned into OCI error bodies in one place: ``proxy/http/errors.py``.
Caller bugs are plain ``RuntimeError``/``TypeError`` and become a 500 with no detail.
"""

from __future__ import annotations


class TrustproxyError(Exception):
    """Base of every error trustproxy raises on purpose."""


class ConfigError(TrustproxyError):
    """A config or policy file is invalid. ``path`` names the offending key."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class BadDataError(TrustproxyError):
    """Untrusted input (from a registry, a trust server or a cache) is wrong."""


class TrustDataError(BadDataError):
    """Trust metadata failed parsing or verification.

    ``role`` names the part of the trust data at fault (a metadata role, a signature
    artifact) and ``field`` the offending field when there is one, so an operator can find
    the problem.
    """

    def __init__(self, message: str, *, role: str = "", field: str = "") -> None:
        self.role = role
        self.field = field
        where = ".".join(p for p in (role, field) if p)
        super().__init__(f"{where}: {message}" if where else message)


class UpstreamContentError(BadDataError):
    """The registry sent bytes that do not match what was asked for or what is signed."""


class DigestMismatchError(UpstreamContentError):
    """Bytes read by digest are not that digest (or not the length the trust data gives).

    Carries what the bytes really are, for the alert a signed manifest's mismatch raises:
    the bytes themselves are never kept or passed on.
    """

    def __init__(self, message: str, *, expected: str, actual: str, size: int) -> None:
        self.expected = expected
        self.actual = actual
        self.size = size
        super().__init__(message)


class OversizeError(BadDataError):
    """A bounded read crossed its configured limit."""

    def __init__(self, what: str, limit: int) -> None:
        self.what = what
        self.limit = limit
        super().__init__(f"{what} exceeds the limit of {limit} bytes")


class FetchError(TrustproxyError):
    """Something could not be fetched (network, TLS, timeout, server error)."""


class UpstreamUnavailableError(FetchError):
    """The upstream registry could not be reached or answered with a server error."""

    def __init__(self, upstream: str, message: str, *, timeout: bool = False) -> None:
        self.upstream = upstream
        self.timeout = timeout
        super().__init__(f"upstream {upstream}: {message}")


class TrustSourceUnavailableError(FetchError):
    """The trust server could not be reached and nothing valid is cached."""

    def __init__(self, source: str, message: str) -> None:
        self.source = source
        super().__init__(f"trust source {source}: {message}")


class ClientRequestError(TrustproxyError):
    """The client's request is malformed or asks for something the proxy does not do."""


class InvalidNameError(ClientRequestError):
    """A repository name does not follow the OCI distribution name grammar."""


class InvalidReferenceError(ClientRequestError):
    """A manifest reference is neither a valid tag nor a valid digest."""


class InvalidDigestError(ClientRequestError):
    """A digest is malformed or uses an unsupported algorithm."""


class UnsupportedError(ClientRequestError):
    """The operation is not supported (the proxy is read-only). ``allow``: the methods the
    proxy does serve on that resource (the 405's Allow header; "" for none)."""

    def __init__(self, message: str, *, allow: str = "GET, HEAD") -> None:
        self.allow = allow
        super().__init__(message)


class UnknownRepositoryError(ClientRequestError):
    """No configured upstream routes this repository name."""


class UnauthorizedError(TrustproxyError):
    """The client did not present valid credentials for the proxy itself."""


class NotSignedError(TrustproxyError):
    """Trust data does not sign the requested tag (or no trust data exists).

    ``reason`` is shown to the client in the OCI error detail.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
