"""Enforcement: the policy applied to trust sources' answers, as a
:class:`~proxy.trust_gate.TrustGate`.

:mod:`proxy.enforcement.enforcing_gate` decides (one decision function, :func:`decide`);
:mod:`proxy.enforcement.fail_closed` answers 503 when nothing can be decided;
:mod:`proxy.enforcement.digest_allowlist` answers pulls by digest under ``digests: signed``;
:mod:`proxy.enforcement.build` builds the gate and its sources from settings and policy.
"""

from __future__ import annotations

from proxy.enforcement.build import Enforcement, build_enforcement, policy_unavailable
from proxy.enforcement.digest_allowlist import DigestAllowlist
from proxy.enforcement.enforcing_gate import EnforcingGate, decide, signing_rule_for
from proxy.enforcement.fail_closed import (
    FailClosedGate,
    PolicyUnavailableError,
    UnavailableSource,
)

__all__ = [
    "DigestAllowlist",
    "Enforcement",
    "EnforcingGate",
    "FailClosedGate",
    "PolicyUnavailableError",
    "UnavailableSource",
    "build_enforcement",
    "decide",
    "policy_unavailable",
    "signing_rule_for",
]
