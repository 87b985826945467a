"""Benchmark of the Notary v1 verification core (not a test: no timing assertions).

Run: ``python -m loadtest.bench_trust [--tags N] [--runs R]``. Prints median timings of
verifying a targets role with N tags, of a full cold refresh (root rotation -> timestamp ->
snapshot -> targets -> targets/releases), of a restore from persisted state, and of lookups.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from collections.abc import Callable
from datetime import timedelta

from proxy.sources.notary.tuf import (
    Limits,
    TrustedSet,
    TrustOnFirstUse,
    parse_targets,
    refresh,
    resolve_docker,
    signed_tags,
)
from proxy.sources.notary.tuf.trusted_set import verify_threshold
from tests.simulators.notary_repo import DEFAULT_NOW, NotaryRepository

REFERENCE_TIME = DEFAULT_NOW + timedelta(days=1)
LIMITS = Limits(max_targets_bytes=64 * 1024 * 1024)


def build_repo(tags: int) -> NotaryRepository:
    repo = NotaryRepository("registry.example.com:5000/team/app")
    for i in range(tags):
        repo.add_target(f"v{i}", hashlib.sha256(str(i).encode()).digest())
    repo.add_delegation("targets/releases")
    for i in range(tags):
        repo.add_target(f"v{i}", f"release {i}".encode(), role="targets/releases")
    repo.publish()
    repo.rotate_root()
    repo.publish()
    return repo


def median_ms(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times)


def benchmarks(tags: int) -> tuple[Callable[[], object], list[tuple[str, Callable[[], object]]]]:
    """The same-run baseline (``json.loads`` of the targets file) and the timed operations,
    by name, on a repository with ``tags`` tags (also used by ``python -m loadtest``)."""
    repo = build_repo(tags)
    raw_targets = repo.current["targets"]
    root = repo.root_bytes(1)

    def new_set() -> TrustedSet:
        return TrustedSet(
            root,
            gun=repo.gun,
            root_of_trust=TrustOnFirstUse(),
            reference_time=REFERENCE_TIME,
            limits=LIMITS,
        )

    def verify_targets() -> None:
        md = parse_targets(raw_targets, limits=LIMITS)
        role = ts_root.root.signed.roles["targets"]
        verify_threshold(md, ts_root.root.signed.keys, role.key_ids, role.threshold, role="targets")

    ts_root = new_set()
    ts_root.update_root(repo.root_bytes(2))

    def cold() -> TrustedSet:
        ts = new_set()
        refresh(ts, repo.fetch, delegations={"targets/releases"})
        return ts

    warm = cold()
    state = warm.state()
    state_bytes = state.to_bytes()

    def restore() -> None:
        from proxy.sources.notary.tuf import TrustedState

        TrustedSet.from_state(
            TrustedState.from_bytes(state_bytes),
            gun=repo.gun,
            root_of_trust=TrustOnFirstUse(),
            reference_time=REFERENCE_TIME,
            limits=LIMITS,
        )

    # Baseline, measured in the same run: what merely reading the targets file costs any
    # JSON consumer. Verification is reported as a multiple of it, which stays comparable
    # across machines where absolute milliseconds do not.
    rows: list[tuple[str, Callable[[], object]]] = [
        (f"parse + verify targets ({tags} tags, {len(raw_targets)} B)", verify_targets),
        ("cold refresh root(1->2) -> ts -> snapshot -> targets -> releases", cold),
        (f"restore from state ({len(state_bytes)} B, re-verifies all)", restore),
        ("resolve_docker (one tag)", lambda: resolve_docker(warm, f"v{tags // 2}")),
        ("signed_tags (all tags)", lambda: signed_tags(warm)),
    ]
    return (lambda: json.loads(raw_targets)), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tags", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    baseline_fn, rows = benchmarks(args.tags)
    baseline, _ = median_ms(baseline_fn, args.runs)
    print(f"trust core benchmark: {args.runs} runs, median (min) in ms, and x baseline")
    print(f"  {'baseline: json.loads of the targets file':<70} {baseline:9.2f}")
    for name, fn in rows:
        med, best = median_ms(fn, args.runs)
        print(f"  {name:<70} {med:9.2f} ({best:.2f})  x{med / baseline:.1f}")


if __name__ == "__main__":
    main()
