"""Reading the Notary part of a loaded policy rule in tests."""

from __future__ import annotations

from proxy.policy.model import RepositoryRule
from proxy.sources.notary.policy import NotaryVerification


def notary(rule: RepositoryRule) -> NotaryVerification:
    """``rule``'s verification part, which a Notary source's rule must have."""
    assert isinstance(rule.verification, NotaryVerification), rule
    return rule.verification
