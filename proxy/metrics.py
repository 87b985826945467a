"""Prometheus metrics, on the proxy's own registry (served at ``/metrics``).

Names are a public contract (dashboards and alerts use them). Instrumented where the event
happens: the access-log middleware (requests), the decision recorder (decisions), trust
sources (refresh latency, cache hits), the upstream client (upstream errors), the shared
trust-state store (up, errors).

With several workers (``server.workers``), each worker counts in files of its own under a
directory the master makes for the run (prometheus_client's multiprocess mode: one mmap file
per process and metric type), and ``/metrics`` of whichever worker the scrape reaches adds
them up: counters and histograms are the sums over every worker, including workers that died
since (a counter must not go back), and ``trustproxy_store_up`` is the lowest of the live
workers (0 if any worker sees the store down). One process (``server.workers: 1``) keeps its
metrics in memory.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values

REGISTRY = CollectorRegistry(auto_describe=True)

#: the run's shared metrics directory, once :func:`count_in_shared_directory` was called
_shared_directory: list[Path] = []

REQUESTS = Counter(
    "trustproxy_requests_total",
    "HTTP requests answered, by method, endpoint kind and status class.",
    ["method", "endpoint", "status"],
    registry=REGISTRY,
)
DECISIONS = Counter(
    "trustproxy_decisions_total",
    "Enforcement decisions, by kind (manifest, digest, tags, referrers) and outcome.",
    ["kind", "outcome"],
    registry=REGISTRY,
)
FALLBACK_ANSWERS = Counter(
    "trustproxy_fallback_answers_total",
    "Decisions answered by a policy rule's fallback (a signed trust snapshot) because its "
    "own source had no trust data or could not be reached, by fallback, primary source, "
    "kind and outcome.",
    ["fallback", "primary", "kind", "outcome"],
    registry=REGISTRY,
)
TRUST_REFRESH_SECONDS = Histogram(
    "trustproxy_trust_refresh_seconds",
    "Time to refresh one repository's trust data from its source.",
    ["source", "result"],
    registry=REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TRUST_CACHE = Counter(
    "trustproxy_trust_cache_total",
    "Trust-state lookups, by source and result (hit, miss, stale_served).",
    ["source", "result"],
    registry=REGISTRY,
)
UPSTREAM_ERRORS = Counter(
    "trustproxy_upstream_errors_total",
    "Upstream failures, by upstream and kind (unreachable, timeout, bad_response, "
    "redirect_refused, mismatch: bytes not matching their digest, broken: a stream cut, "
    "too_slow: under min_upstream_rate).",
    ["upstream", "kind"],
    registry=REGISTRY,
)
STORE_UP = Gauge(
    "trustproxy_store_up",
    "Whether the shared trust-state store (Redis) answers: 1 up, 0 down (serving from "
    "per-process state meanwhile).",
    ["store"],
    registry=REGISTRY,
    # Several workers: the lowest of the live ones (a dead worker's value is dropped).
    multiprocess_mode="livemin",
)
STORE_ERRORS = Counter(
    "trustproxy_store_errors_total",
    "Failed shared trust-state store operations, by store and operation "
    "(load, save, lock, unlock).",
    ["store", "operation"],
    registry=REGISTRY,
)

_METRICS = (
    REQUESTS,
    DECISIONS,
    TRUST_REFRESH_SECONDS,
    TRUST_CACHE,
    UPSTREAM_ERRORS,
    STORE_UP,
    STORE_ERRORS,
)


def count_in_shared_directory(directory: Path) -> None:
    """Keep this process's metrics in ``directory`` (a worker, right after fork, before it
    counts anything), so that :func:`exposition_registry` of any worker sees every worker.

    Every metric here has labels, and a labelled metric makes its value when ``labels()`` is
    first called: switching the value class here, before any of those calls in this
    process, puts every value of this process in the shared files. The environment variable
    is how prometheus_client's file writer finds the directory.
    """
    # Values made before (inherited from the parent, which should have none) would stay in
    # memory, unseen by the scrape: dropped, so that labels() makes them again, in files.
    # Before the switch: prometheus_client refuses to clear in multiprocess mode.
    for metric in _METRICS:
        metric.clear()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    _shared_directory[:] = [directory]


def exposition_registry() -> CollectorRegistry:
    """What ``/metrics`` renders: this process's registry, or with several workers a fresh
    one that reads every worker's files."""
    if not _shared_directory:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(_shared_directory[0]))  # type: ignore[no-untyped-call]
    return registry


def forget_worker(directory: Path, pid: int) -> None:
    """The master, when a worker exited: drop its live-only gauges (its counters stay)."""
    multiprocess.mark_process_dead(pid, path=str(directory))  # type: ignore[no-untyped-call]
