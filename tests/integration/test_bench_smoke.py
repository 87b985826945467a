"""``python -m loadtest --quick`` end to end: the whole benchmark stack starts, every section
runs, and the results file has every section with numbers in it.

Only the shape is checked, never a timing or a target (benchmarks do not assert on time).
Skips when the benchmark tools are not installed (``make bench`` installs them through
``scripts/install-bench-deps.sh``; ``make test`` does not).
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadtest.tools import missing_tools

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
TARGETS = ("registry", "nginx", "trustproxy")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(section: dict[str, Any], *keys: str) -> None:
    for key in keys:
        node: Any = section
        for part in key.split("."):
            assert isinstance(node, dict), f"{key}: {node!r} is not an object"
            assert part in node, f"missing {key} in {section.keys()}"
            node = node[part]
        assert _number(node), f"{key} is not a number: {node!r}"


@pytest.mark.timeout(240)
def test_quick_benchmark_writes_every_section(tmp_path: Path) -> None:
    missing = missing_tools()
    if missing:
        pytest.skip(
            f"benchmark tools not installed: {', '.join(missing)} "
            "(bash scripts/install-bench-deps.sh, or `make bench`)"
        )
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed (the `bench` extra: pip install -e '.[bench]')")
    results_dir = tmp_path / "results"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest",
            "--quick",
            "--results-dir",
            str(results_dir),
            "--workdir",
            str(tmp_path / "work"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=200,
        check=False,
    )
    output = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert done.returncode == 0, output[-4000:]
    files = sorted(results_dir.glob("*-quick.json"))
    assert len(files) == 1, (files, output[-2000:])
    assert (results_dir / files[0].name.replace(".json", ".md")).stat().st_size > 0
    assert (results_dir / files[0].name.replace(".json", ".png")).stat().st_size > 0
    results = json.loads(files[0].read_text())

    assert results["mode"] == "quick"
    _numbers(results["machine"], "nproc")
    assert results["machine"]["python"]
    assert results["source"]["commit"]

    _numbers(results["trust_core"], "verify_targets_ms", "json_loads_ms.median")
    m = results["manifests"]
    _numbers(m, "trustproxy_vs_registry_rps", "trustproxy_added_p99_ms", "workers")
    assert m["workers"] >= 1
    for name in TARGETS:
        t = m["targets"][name]
        _numbers(t, "rps.median", "p50_ms.median", "p99_ms.median", "cpu_s_per_1k_requests")
        _numbers(t, "wrk_cpu_share", "paced.rps.median", "paced.p99_ms.median")
        assert t["requests"] > 0, (name, t)
        assert t["paced"]["errors"] == 0, (name, t["paced"])
    for section in ("blob_single", "blob_concurrent"):
        s = results[section]
        _numbers(s, "trustproxy_vs_nginx", "trustproxy_vs_registry")
        for name in TARGETS:
            _numbers(s["targets"][name], "mb_per_s.median", "cpu_s_per_gb")
            assert s["targets"][name]["mb_per_s"]["median"] > 0
    _numbers(results["blob_concurrent"], "trustproxy_rss_peak_mib")
    _numbers(results["blob_redirect"], "redirect_vs_nginx", "proxy_cpu_s_per_gb")
    assert results["blob_redirect"]["redirect_mb_per_s"]["median"] > 0
    assert results["blob_concurrent"]["trustproxy_rss_peak_mib"] > 0
    _numbers(results["cold"], "trustproxy_ms.median", "raw_ms.median", "trustproxy_vs_raw")
    assert "timestamp.json" in results["cold"]["files"]
    sf = results["single_flight"]
    _numbers(sf, "notary_fetches", "max_fetches_per_file", "ok_share")
    assert sf["notary_fetches"] > 0  # the front saw the cold refresh
    for name in ("trustproxy", "nginx"):
        _numbers(results["cpu"][name], "cpu_s_per_gb_streamed", "cpu_s_per_1k_manifests")
    scale = results["scale"]
    _numbers(scale, "rss_per_repository_kib", "redis_per_repository_kib", "warm_rps_last_vs_first")
    assert [r["repositories"] for r in scale["rows"]] == scale["points"]
    for row in scale["rows"]:
        assert row["errors"] == 0, row
        assert row["warm_rps"] > 0, row
        assert row["redis_keys"] >= row["repositories"], row  # each one's state is in Redis
    assert scale["proxy_alive"]
    assert results["targets"], results.keys()
    for target in results["targets"]:
        _numbers(target, "measured", "limit")
        assert isinstance(target["met"], bool)
    assert all(results["processes_alive"].values()), results["processes_alive"]
