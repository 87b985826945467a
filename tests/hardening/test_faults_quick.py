"""Faults under load, the short variant (``make test``): two replicas sharing Redis, the
registry, Redis and the notary-server each killed with SIGKILL while the prober's Python
load runs, then restarted on the same port. The long variant with wrk and the report is
``python -m loadtest.hardening`` (``make hardening``); both use ``loadtest/hardening``.

No timing is asserted beyond "no answer took over 10 s" (a hang) and "back to normal by
the end of the settle period after the restart" (5 s here, stated as such).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from loadtest.hardening.faults import TEST, attempts_from, run_faults
from proxy.sources.redis_store import RedisConnection
from proxy.sources.store import StoreUnavailableError
from testbed.attempts import AttemptLog
from testbed.redis_server import RedisServer, redis_binary
from tests.conftest import requires

pytestmark = [pytest.mark.integration, pytest.mark.hardening]


def _windows(results: dict[str, Any], phase: str, window: str) -> dict[str, dict[str, Any]]:
    found = next(p for p in results["phases"] if p["name"] == phase)
    windows: dict[str, dict[str, Any]] = found["windows"][window]
    return windows


@pytest.mark.slow
def test_faults_under_load(tmp_path: Path, attempt_log: AttemptLog) -> None:
    requires("docker-registry", "notary", "notary-server", "notary-signer", "redis-server")
    results = run_faults(TEST, tmp_path, use_wrk=False)
    for attempt in attempts_from(results, suffix=" (make test: Python load, short phases)"):
        attempt_log.record(**attempt)
    assert results["ok"], "\n".join(results["violations"][:40])

    # The same expectations, spelled out (run_faults checked each answer already).
    totals = results["totals"]
    assert totals["requests"] > 1000, totals
    assert totals["unsigned_served"] == 0
    assert totals["tag_list_leaks"] == 0
    assert totals["non_oci_errors"] == 0
    assert totals["hangs"] == 0
    assert totals["server_errors_500"] == 0
    assert results["pids"]["unchanged"]
    audit = results["audit"]
    assert audit["served_records_checked"] > 0
    assert audit["served_not_signed"] == 0

    registry = _windows(results, "registry", "down")
    assert set(registry["blob"]["statuses"]) <= {"200", "502"}  # 200: in flight at restart
    assert registry["blob"]["codes"].get("UNAVAILABLE", 0) > 0
    assert registry["warm-refused"]["statuses"] == {"404": registry["warm-refused"]["requests"]}

    notary = _windows(results, "notary", "down")
    # Warm tags from verified cached trust data; cold ones refused as unavailable.
    assert notary["warm-manifest"]["statuses"] == {"200": notary["warm-manifest"]["requests"]}
    assert notary["cold-manifest"]["statuses"].get("503", 0) > 0

    redis = _windows(results, "redis", "down")
    for cls, summary in redis.items():
        assert set(summary["statuses"]) <= {"200", "404"}, (cls, summary)

    for phase in results["phases"]:
        for cls, rec in phase["recovery"].items():
            if "recovered" in rec:
                assert rec["recovered"], (phase["name"], cls, rec)


def test_redis_restart_leaves_no_stale_connections(tmp_path: Path) -> None:
    """After Redis is killed and restarted, a burst of operations finds no pooled
    connection to the dead server: the store is not marked down a second time (it was,
    once per stale connection, which left refresh locks to expire under load)."""
    if redis_binary() is None:
        pytest.skip("redis-server is not installed (run `make test` to install it)")

    async def scenario(redis: RedisServer) -> tuple[int, int]:
        conn = RedisConnection(redis.url, timeout=0.5, retry_after=0.2)
        store = conn.store("stale:")

        async def burst(n: int) -> int:
            found = await asyncio.gather(
                *(store.load(f"gun-{i}") for i in range(n)), return_exceptions=True
            )
            return sum(isinstance(r, StoreUnavailableError) for r in found)

        try:
            before = await burst(10)  # ten pooled connections
            redis.kill()
            redis.start()
            for _ in range(50):  # the probe lets one call through per retry_after
                await asyncio.sleep(0.25)
                if await burst(1) == 0:
                    break
            assert conn.health.up
            return before, await burst(10)
        finally:
            await conn.aclose()

    with RedisServer(tmp_path / "redis") as redis:
        before, after = asyncio.run(scenario(redis))
    assert before == 0
    assert after == 0, f"{after} of 10 operations failed on stale pooled connections"
