"""``python -m loadtest.bench_notation`` end to end, shortest settings: it runs and its results
have every figure (shape only: benchmarks never assert on time)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_notation_benchmark_reports_its_figures(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (make bench installs it)")
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.bench_notation", "--seconds", "1", "--reps", "1",
         "--runs", "5", "--connections", "4", "--json", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    cold = results["cold_jws_3_cert_chain"]
    warm = results["warm_manifest_by_tag"]
    for value in (cold["median_ms"], warm["trustproxy_vs_registry_rps"]):
        assert isinstance(value, float)
        assert math.isfinite(value)
        assert value > 0
    assert warm["errors"] == {"registry": 0, "trustproxy": 0}
