"""Revocation latency through notary-server's change feed (``make bench``; not a test).

Two trustproxy replicas share a real redis-server and a real notary-server (Debian
``notary``), with ``cache.refresh_seconds`` = 300 s: without the change feed a revoked tag
stays served for up to five minutes. Each round signs a fresh tag with the real notary CLI,
pulls it through both replicas (so both cache it), stages ``notary remove``, waits a random
part of the poll interval (so that the rounds sample every phase of the poll) and then
times from ``notary publish`` returning to the first 404 on each replica (each replica is asked
every ``--poll`` seconds, in its own thread). Prints the median and the maximum per replica
and over both, with the machine's load, and writes them as JSON::

    python -m loadtest.bench_revocation [--rounds 10] [--interval 1] [--out FILE]

It measures; it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from loadtest.tools import missing_tools
from testbed import images
from testbed.notary_server import NotaryBed
from testbed.registry import start_registry
from testbed.replica_bed import Replica, ReplicaSet, signed_replica_set

REFRESH_SECONDS = 300.0
REPO_ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("docker-registry", "notary", "notary-server", "notary-signer", "redis-server")


@dataclass(frozen=True)
class Round:
    tag: str
    #: seconds from ``notary publish`` returning to the first 404, per replica name
    latency: dict[str, float]


def _status(http: httpx.Client, replica: Replica, repo: str, tag: str) -> int:
    r = http.get(
        f"{replica.url}/v2/{repo}/manifests/{tag}",
        headers={"Accept": images.ACCEPT_ALL},
        timeout=30,
    )
    return r.status_code


def _first_404(
    replica: Replica, repo: str, tag: str, published: float, poll: float, limit: float
) -> float:
    """Seconds from ``published`` (perf_counter) until ``replica`` first answers 404."""
    with httpx.Client() as http:
        while True:
            status = _status(http, replica, repo, tag)
            now = time.perf_counter()
            if status == 404:
                return now - published
            if status != 200:
                raise RuntimeError(f"{replica.name}: {repo}:{tag} answered {status}")
            if now - published > limit:
                raise RuntimeError(f"{replica.name} still serves {repo}:{tag} after {limit}s")
            time.sleep(poll)


def one_round(
    replicas: ReplicaSet, name: str, tag: str, *, poll: float, settle: float, jitter: float
) -> Round:
    bed = replicas.bed
    signed = bed.push_and_sign(name, tag, images.single_image(f"{bed.namespace} {name} {tag}"))
    repo, gun = bed.repo(name), bed.gun(name)
    # Signing published too: let that invalidation pass before both replicas cache the tag.
    time.sleep(settle)
    with httpx.Client() as http:
        for replica in replicas.replicas:
            for _ in range(2):  # the second answer comes from the replica's cache
                r = http.get(
                    f"{replica.url}/v2/{repo}/manifests/{tag}",
                    headers={"Accept": images.ACCEPT_ALL},
                    timeout=30,
                )
                if r.status_code != 200 or images.sha256(r.content) != f"sha256:{signed.sha256}":
                    raise RuntimeError(f"{replica.name} does not serve {repo}:{tag}: {r.text}")
    bed.owner.remove(gun, tag, publish=False)
    # Rounds take about the same time each: without a random pause they would publish at
    # the same phase of the 1 s poll every time and sample one point of the distribution.
    time.sleep(random.uniform(0.0, jitter))
    bed.owner.publish(gun)
    published = time.perf_counter()
    results: dict[str, float] = {}
    errors: list[BaseException] = []

    def watch(replica: Replica) -> None:
        try:
            results[replica.name] = _first_404(
                replica, repo, tag, published, poll, REFRESH_SECONDS / 2
            )
        except BaseException as e:  # reported below, with the others
            errors.append(e)

    threads = [threading.Thread(target=watch, args=(r,)) for r in replicas.replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return Round(tag, results)


def summarise(rounds: list[Round]) -> dict[str, Any]:
    names = sorted({n for r in rounds for n in r.latency})
    per = {n: [r.latency[n] for r in rounds] for n in names}
    both = [v for vs in per.values() for v in vs]
    slowest = [max(r.latency.values()) for r in rounds]

    def stats(values: list[float]) -> dict[str, float]:
        return {
            "median_s": round(statistics.median(values), 3),
            "max_s": round(max(values), 3),
            "min_s": round(min(values), 3),
        }

    return {
        "per_replica": {n: stats(v) for n, v in per.items()},
        "all_replicas": stats(both),
        "until_both_refuse": stats(slowest),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.bench_revocation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--interval", type=float, default=1.0, help="changefeed.interval")
    parser.add_argument("--poll", type=float, default=0.02, help="client poll period (s)")
    parser.add_argument("--settle", type=float, default=2.0, help="pause after signing (s)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON results (default: loadtest/results/revocation-<date>.json)",
    )
    args = parser.parse_args(argv)
    missing = missing_tools(TOOLS)
    if missing:
        print(f"missing: {', '.join(missing)} (run `make bench` to install)", file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    rounds: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="bench-revocation-") as tmp:
        workdir = Path(tmp)
        registry = start_registry(workdir / "registry")
        notary = NotaryBed.start(workdir / "notary")
        try:
            with signed_replica_set(
                workdir / "replicas",
                registry.extra["url"],
                notary,
                label="rev",
                refresh_seconds=REFRESH_SECONDS,
                source_extra={"changefeed": {"interval": args.interval}},
            ) as replicas:
                time.sleep(max(3.0, 3 * args.interval))  # the first poll's invalidate-all
                for i in range(args.rounds):
                    done = one_round(
                        replicas,
                        "revoke/app",
                        f"r{i}",
                        poll=args.poll,
                        settle=args.settle,
                        jitter=args.interval,
                    )
                    rounds.append(done)
                    print(
                        f"round {i + 1}/{args.rounds}: "
                        + ", ".join(f"{n} {s:.3f}s" for n, s in sorted(done.latency.items())),
                        flush=True,
                    )
        finally:
            notary.stop()
            registry.stop()
    load_after = os.getloadavg()
    result = {
        "benchmark": "revocation latency: notary publish returning -> first 404 per replica",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "rounds": args.rounds,
        "changefeed_interval_s": args.interval,
        "refresh_seconds": REFRESH_SECONDS,
        "client_poll_s": args.poll,
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "summary": summarise(rounds),
        "samples": [asdict(r) for r in rounds],
    }
    out = args.out or (
        REPO_ROOT / "loadtest" / "results" / f"revocation-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    print(f"load average before {load_before}, after {load_after}; written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
