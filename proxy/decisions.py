"""What the enforcement layer decided, as a record (pure), and who gets told.

One ``Decision`` per manifest request (and per tag-list / digest decision); the recorder
writes the audit record and counts metrics. The gate never formats logs itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Outcome = Literal[
    "served_signed",  # enforce/audit: served the signed digest
    "denied",  # enforce: refused (not signed, pattern, no trust data, no rule)
    "audit_would_deny",  # audit: served unchecked, enforce would have refused
    "passed_through",  # mode off / no policy: served unchecked
    "unavailable",  # trust data unreachable and nothing valid cached (503)
    "upstream_mismatch",  # upstream bytes != signed digest (502, alert)
    "bad_trust_data",  # trust data failed verification
]


@dataclass(frozen=True)
class Decision:
    time: str  # RFC 3339 UTC
    kind: Literal["manifest", "digest", "tags", "referrers"]
    outcome: Outcome
    repository: str  # <registry>/<repo>
    reference: str  # tag or digest asked for
    reason: str
    rule: str | None = None  # the matching policy pattern
    mode: str | None = None
    served_digest: str | None = None
    signers: tuple[str, ...] = ()  # who signed what was served, as people name them
    #: the trust source's facts behind the decision (its answer's and its state's);
    #: the audit line carries them as top-level fields (proxy/audit.py)
    evidence: Mapping[str, Any] = field(default_factory=dict)
    client: str | None = None
    user_agent: str | None = None
    user: str | None = None
    method: str | None = None


class DecisionRecorder(Protocol):
    def record(self, decision: Decision) -> None:
        """Write the audit record and count it. Must not raise and must not block long."""
        ...


class NullRecorder:
    def record(self, decision: Decision) -> None:
        return None
