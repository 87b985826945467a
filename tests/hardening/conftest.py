"""Hardening tests: hostile trust servers, hostile registries, fuzzed requests.

They use the integration fixtures (a real registry, a real notary bed) and record what they
tried in an :class:`testbed.attempts.AttemptLog` (written out under ``make hardening``).
"""

from __future__ import annotations

import pytest

from testbed.attempts import AttemptLog
from tests.integration.conftest import notary_bed, tls_ca  # noqa: F401  (shared fixtures)


@pytest.fixture(scope="session")
def attempt_log() -> AttemptLog:
    """One log for the session; appends to $HARDENING_RESULTS_FILE when set."""
    return AttemptLog()
