"""What the hardening suite tried and what came back, for ``docs/hardening.md``.

Every hardening test that attacks the proxy records its attempts here::

    log = attempts.AttemptLog()
    log.record("trust server", "rollback of timestamp", expected="refused", statuses=[503],
               unsigned_served=0)

Records are appended as JSON lines to the file named by ``HARDENING_RESULTS_FILE``
when it is set (``make hardening`` sets it and turns the lines into the report); without it
they are only kept in memory, so ``make test`` writes nothing into the checkout.

``unsigned_served`` counts answers that carried content the honest trust data does not sign
for the reference asked (checked by hashing the body): the number the suite exists to keep
at zero. Tests assert it; the record is the evidence.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_ENV = "HARDENING_RESULTS_FILE"

SURFACES = ("trust server", "registry", "client input", "faults", "soak")


@dataclass(frozen=True)
class Attempt:
    surface: str  # one of SURFACES
    attack: str  # short, human: "rollback of timestamp.json"
    expected: str  # what a correct proxy does: "refused (404/503)", "OCI error, no 500"
    requests: int  # requests sent to the proxy for this attempt
    statuses: dict[str, int]  # status code (as text) -> count; "hang" for timeouts
    unsigned_served: int  # answers with content the honest trust data does not sign
    ok: bool  # the proxy did what ``expected`` says
    detail: str = ""  # error codes seen, the refusal's message, anything a reader needs
    extra: dict[str, Any] = field(default_factory=dict)  # numbers (cases tried, seconds)


class AttemptLog:
    """Collects :class:`Attempt` records; appends each to the results file when configured."""

    _lock = threading.Lock()

    def __init__(self, path: Path | None = None) -> None:
        env = os.environ.get(RESULTS_ENV)
        self.path = path if path is not None else (Path(env) if env else None)
        self.attempts: list[Attempt] = []

    def record(
        self,
        surface: str,
        attack: str,
        *,
        expected: str,
        statuses: Iterable[int | str] | Mapping[str, int],
        unsigned_served: int,
        ok: bool,
        detail: str = "",
        extra: Mapping[str, Any] | None = None,
    ) -> Attempt:
        if surface not in SURFACES:
            raise ValueError(f"unknown surface {surface!r}; one of {SURFACES}")
        if isinstance(statuses, Mapping):
            counted = {str(k): int(v) for k, v in statuses.items()}
        else:
            counted = {str(k): v for k, v in Counter(str(s) for s in statuses).items()}
        attempt = Attempt(
            surface=surface,
            attack=attack,
            expected=expected,
            requests=sum(counted.values()),
            statuses=dict(sorted(counted.items())),
            unsigned_served=unsigned_served,
            ok=ok,
            detail=detail,
            extra=dict(extra or {}),
        )
        self.attempts.append(attempt)
        if self.path is not None:
            line = json.dumps(asdict(attempt), sort_keys=True)
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as out:
                    out.write(line + "\n")
        return attempt


def load(path: Path) -> list[Attempt]:
    """The attempts recorded in ``path`` (JSON lines), in order; later duplicates of the
    same (surface, attack) replace earlier ones (a re-run of one test)."""
    found: dict[tuple[str, str], Attempt] = {}
    if not path.exists():
        return []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            raw = json.loads(line)
            attempt = Attempt(**raw)
            found.pop((attempt.surface, attempt.attack), None)
            found[(attempt.surface, attempt.attack)] = attempt
    return list(found.values())
