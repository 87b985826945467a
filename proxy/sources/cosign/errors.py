"""Errors of the Cosign verification core.

Every leaf subclasses :class:`proxy.errors.TrustDataError`, so a caller catches "the
signature data is bad" in one place; ``field`` names where in the data it went wrong::

    TrustDataError (proxy.errors)
    ├── CosignFormatError         bytes are not what the format allows (JSON, sizes, fields)
    │   └── CosignLimitError      a count, size or depth crossed its bound
    ├── CosignSignatureError      a signature, chain, SCT or log entry does not verify
    └── CosignMismatchError       verified, but for something else (another digest/artifact)

"Verified, but not by anyone the rule accepts" is not an error here: the policy answers it
with a :class:`~proxy.sources.cosign.policy.Verdict` and its reasons.
"""

from __future__ import annotations

from proxy.errors import TrustDataError

__all__ = [
    "CosignFormatError",
    "CosignLimitError",
    "CosignMismatchError",
    "CosignSignatureError",
]


class CosignFormatError(TrustDataError):
    """The bytes are not a well-formed manifest, payload, bundle, key or trusted root."""

    def __init__(self, message: str, *, field: str = "") -> None:
        self.detail = message
        super().__init__(message, role="cosign", field=field)


class CosignLimitError(CosignFormatError):
    """A bound on untrusted input was crossed (layers, annotation size, depth, chain)."""


class CosignSignatureError(TrustDataError):
    """A signature, certificate chain, SCT or transparency-log entry does not verify."""

    def __init__(self, message: str, *, field: str = "") -> None:
        self.detail = message
        super().__init__(message, role="cosign", field=field)


class CosignMismatchError(TrustDataError):
    """Valid material that is about something else: another image digest, another
    artifact in the log entry, another payload type (a copy-paste attack, CVE-2022-36056)."""

    def __init__(self, message: str, *, field: str = "") -> None:
        self.detail = message
        super().__init__(message, role="cosign", field=field)
