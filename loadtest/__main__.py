"""``python -m loadtest``: run every benchmark in this folder, one after another.

Benchmarks report timings and ratios against a baseline measured in the same run; they
never assert on time (see the project README).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main() -> int:
    here = Path(__file__).parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    for name in names:
        print(f"==> loadtest.{name}", flush=True)
        module = importlib.import_module(f"loadtest.{name}")
        entry = getattr(module, "main", None)
        if entry is None:
            print(f"    (no main() in loadtest.{name}; skipped)")
            continue
        entry()
    return 0


if __name__ == "__main__":
    sys.exit(main())
