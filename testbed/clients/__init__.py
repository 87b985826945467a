"""Real container clients started by the tests, each with its own roots and socket."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self


@dataclass(frozen=True)
class CommandResult:
    """What one client command did; each client's subclass reads its own error format."""

    argv: Sequence[str]
    returncode: int
    stdout: str
    stderr: str

    @classmethod
    def of(cls, argv: Sequence[str], done: subprocess.CompletedProcess[str]) -> Self:
        return cls(tuple(argv), done.returncode, done.stdout, done.stderr)

    @property
    def ok(self) -> bool:
        return self.returncode == 0
