"""The Notation source's exceptions, placed under the project's one tree (``proxy.errors``).

- :class:`TrustPolicyError` (a :class:`~proxy.errors.ConfigError`): the operator's
  ``trustpolicy.json``, trust store or inline rule fields are invalid; ``path`` names the
  offending key (``trustPolicies[0].trustStores[1]``).
- :class:`EnvelopeError` (a :class:`~proxy.errors.TrustDataError`): untrusted signature bytes
  are malformed, too large or fail a check; never trusted, never served.
- :class:`SignatureVerificationError` (a :class:`~proxy.errors.NotSignedError`): a signature
  was read but an *enforced* check failed; ``check`` is Notation's check name and
  ``results`` every check that ran, so the enforcement layer can answer 404 with the reason
  and the audit log can record what was only logged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.errors import ConfigError, NotSignedError, TrustDataError

if TYPE_CHECKING:
    from proxy.sources.notation.verify import CheckResult

__all__ = [
    "EnvelopeError",
    "NoApplicableTrustPolicyError",
    "SignatureVerificationError",
    "TrustPolicyError",
    "TrustStoreError",
]


class TrustPolicyError(ConfigError):
    """The trust policy document (or inline rule fields) is invalid."""


class TrustStoreError(ConfigError):
    """A trust store directory or one of its certificates is invalid."""


class NoApplicableTrustPolicyError(NotSignedError):
    """No statement's ``registryScopes`` covers the repository (Notation refuses too)."""

    def __init__(self, repository: str) -> None:
        self.repository = repository
        super().__init__(f"artifact {repository!r} has no applicable oci trust policy statement")


class EnvelopeError(TrustDataError):
    """A signature envelope (or its timestamp or certificate) is malformed or fails a check.

    ``field`` names the part (``protected.crit``, ``x5c[1]``, ``timestampSignature``).
    """

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message, role="notation", field=field)


class SignatureVerificationError(NotSignedError):
    """An enforced check failed for one signature (or for every signature of an artifact).

    ``check`` is Notation's check name (``integrity``, ``authenticity``,
    ``authenticTimestamp``, ``expiry``, ``revocation``) or ``target`` for a payload that
    does not describe the served manifest; ``results`` are the checks that ran.
    """

    def __init__(self, check: str, reason: str, results: tuple[CheckResult, ...] = ()) -> None:
        self.check = check
        self.results = results
        super().__init__(f"{check} validation failed: {reason}")
