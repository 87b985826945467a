"""Prometheus metrics, on the proxy's own registry (served at ``/metrics``).

Names are a public contract (dashboards and alerts use them). Instrumented where the event
happens: the access-log middleware (requests), the decision recorder (decisions), trust
sources (refresh latency, cache hits), the upstream client (upstream errors), the shared
trust-state store (up, errors).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

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
)
STORE_ERRORS = Counter(
    "trustproxy_store_errors_total",
    "Failed shared trust-state store operations, by store and operation "
    "(load, save, lock, unlock).",
    ["store", "operation"],
    registry=REGISTRY,
)
