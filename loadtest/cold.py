"""``python -m loadtest.cold [REPS]``: only the cold-tag row of the suite, with more
repetitions (the suite's stack, ``bench_cold`` itself): for working on the cold path
without running the blob and throughput sections. Prints the per-repetition timings and
the ratio of medians, trustproxy / raw GETs (same run, same machine load)."""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

from loadtest.stack import start_stack
from loadtest.suite import QUICK, bench_cold, log
from loadtest.tools import cpu_seconds


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    reps = int(args[0]) if args else 11
    plan = dataclasses.replace(QUICK, cold_reps=reps)
    with tempfile.TemporaryDirectory(prefix="trustproxy-cold-") as tmp:
        log(f"load average at start: {os.getloadavg()[0]:.2f}")
        stack = start_stack(Path(tmp))
        try:
            pid = stack.proxy.server.pid
            # What the idle proxy spends (change feed, health, metrics) per second: the
            # per-repository figure below is net of it.
            idle_start, idle_cpu = time.perf_counter(), cpu_seconds(pid)
            time.sleep(3)
            idle = (cpu_seconds(pid) - idle_cpu) / (time.perf_counter() - idle_start)
            started, cpu_before = time.perf_counter(), cpu_seconds(pid)
            result = bench_cold(stack, plan)
            cpu = cpu_seconds(pid) - cpu_before - idle * (time.perf_counter() - started)
        finally:
            stack.close()
        log(f"load average at end: {os.getloadavg()[0]:.2f}")
    t, r = result["trustproxy_ms"], result["raw_ms"]
    log(
        f"cold: trustproxy median {t['median']:.1f} ms, raw GETs median {r['median']:.1f} ms, "
        f"ratio {result['trustproxy_vs_raw']:.2f}x over {reps} repositories; trustproxy CPU "
        f"{cpu * 1000 / (reps + 1):.1f} ms per repository (cold pull, then one warm one; "
        f"idle: {idle * 1000:.1f} ms/s taken off)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
