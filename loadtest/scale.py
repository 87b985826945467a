"""The scale curve: many repositories with many signed tags, what each costs in memory, and
whether the warm path stays flat as the number of repositories it serves grows.

::

    wrk --> trustproxy (scale) --> docker-registry      (one image per repository, tag v0)
                |--> redis-server (its own key prefix)
                +--HTTPS--> a stub notary (testbed.hostile_notary, honest here) serving
                            trust data made in process (tests.simulators.notary_repo)

Every repository ``scale/r<i>`` is a Notary repository of its own (root certificate,
targets, snapshot and timestamp keys) with ``tags`` signed tags in ``targets``: ``v0`` signs
the manifest pushed to the registry, the others sign manifests that were never pushed (they
make the trust data as large as a real repository's; nobody asks for them). The policy
trusts each repository's root on first use (one key per repository, as notary makes them).

For each step (``points``: 10, 100, 1,000 repositories, cumulative), the new repositories
are pulled once (cold, 16 at a time; every answer checked against the signed digest), then:
the proxy's RSS, the bytes its keys take in Redis (``MEMORY USAGE`` of every key under its
prefix), and ``wrk`` over ``v0`` of all repositories so far, round robin (warm req/s).

The scale proxy runs one worker (memory per repository is then one process's figure; with
several workers each keeps its own hot copies in front of the shared store), and
``refresh_seconds`` long enough that no repository is due for a timestamp check while
measured: the curve is the cache's, not the refresh rate's (at the default 30 s, each
repository costs a timestamp fetch every 30 s, which at 1,000 repositories is 33 per second).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis

from loadtest.tools import CpuMeter, rss_bytes, run_wrk
from testbed import images
from testbed.enforcement_bed import (
    EnforcingProxy,
    proxy_config,
    rule,
    upstream,
    write_policy,
)
from testbed.hostile_notary import HostileNotary
from testbed.notary_server import NotaryBed
from testbed.proxy_server import start_proxy
from testbed.redis_server import RedisServer
from tests.simulators.notary_repo import NotaryRepository

MiB = 1024 * 1024
NAMESPACE = "scale"
ACCEPT = {"Accept": images.ACCEPT_ALL}
#: long enough that no repository is due for a timestamp check during the benchmark
SCALE_REFRESH_SECONDS = 3600.0
COLD_CONCURRENCY = 16


def _never_pushed(repo_index: int, tag_index: int) -> bytes:
    """Stand-in manifest bytes for a signed tag nobody pulls (its hash is what is signed)."""
    seed = f"scale {repo_index} {tag_index}".encode()
    return hashlib.sha256(seed).hexdigest().encode() * 8


def make_repositories(
    count: int,
    tags: int,
    registry_url: str,
    front: HostileNotary,
    log: Callable[[str], None],
) -> list[tuple[str, str]]:
    """Push one image per repository and mount its signed trust data on ``front``.
    Returns (repository path, signed digest of ``v0``) per repository."""
    host = registry_url.split("://", 1)[1]
    now = datetime.now(UTC)
    out: list[tuple[str, str]] = []
    start = time.perf_counter()
    with httpx.Client(base_url=registry_url, timeout=60) as client:
        for i in range(count):
            repo = f"{NAMESPACE}/r{i:04d}"
            image = images.single_image(f"scale {i}")
            images.push_image(client, repo, image, "v0")
            sim = NotaryRepository(f"{host}/{repo}", now=now)
            sim.add_target("v0", image.manifest)
            for t in range(1, tags):
                sim.add_target(f"v{t}", _never_pushed(i, t))
            sim.publish()
            front.mount(f"{host}/{repo}", sim)
            out.append((repo, image.digest))
            if (i + 1) % 250 == 0:
                log(f"  scale: {i + 1}/{count} repositories made")
    log(f"  scale: {count} repositories x {tags} tags made in {time.perf_counter() - start:.1f} s")
    return out


async def _pull_all(url: str, repos: Sequence[tuple[str, str]]) -> list[str]:
    """GET ``v0`` of every repository, ``COLD_CONCURRENCY`` at a time; the problems."""
    problems: list[str] = []
    gate = asyncio.Semaphore(COLD_CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:

        async def one(repo: str, digest: str) -> None:
            async with gate:
                r = await http.get(f"/v2/{repo}/manifests/v0", headers=ACCEPT)
            if r.status_code != 200 or images.sha256(r.content) != digest:
                problems.append(f"{repo}:v0 -> {r.status_code} {r.text[:200]}")

        await asyncio.gather(*(one(repo, digest) for repo, digest in repos))
    return problems


def redis_bytes(redis_url: str, prefix: str) -> tuple[int, int]:
    """(keys, bytes) under ``prefix``: ``MEMORY USAGE`` of each key (value and overhead)."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = 0
        total = 0
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            keys += 1
            total += int(client.memory_usage(key, samples=0) or 0)
        return keys, total
    finally:
        client.close()


def _start_scale_proxy(
    workdir: Path,
    registry_url: str,
    notary: NotaryBed,
    front: HostileNotary,
    redis_server: RedisServer,
    key_prefix: str,
) -> EnforcingProxy:
    host = registry_url.split("://", 1)[1]
    policy_file = write_policy(
        workdir / "scale-policy.yaml",
        {f"{host}/{NAMESPACE}/*": rule(trust_on_first_use=True)},
    )
    config = proxy_config(
        [upstream("internal", registry_url)],
        notary,
        policy_file,
        source_options={"url": front.url},
    )
    config["cache"] = {
        "redis_url": redis_server.url,
        "key_prefix": key_prefix,
        "refresh_seconds": SCALE_REFRESH_SECONDS,
    }
    config["server"] = {"workers": 1}
    server = start_proxy(workdir, config, name="trustproxy-scale")
    return EnforcingProxy(server=server, policy_file=policy_file, audit_file=None)


def bench_scale(
    *,
    workdir: Path,
    registry_url: str,
    registry_pid: int,
    notary: NotaryBed,
    redis_server: RedisServer,
    points: Sequence[int],
    tags: int,
    seconds: float,
    connections: int,
    threads: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The curve over ``points`` (cumulative repository counts, ascending)."""
    count = max(points)
    prefix = f"bench-{uuid.uuid4().hex[:8]}-scale:"
    with contextlib.ExitStack() as stop:
        front = HostileNotary(notary, workdir / "scale-front")
        front.start()
        stop.callback(front.stop)
        repos = make_repositories(count, tags, registry_url, front, log)
        proxy = _start_scale_proxy(workdir, registry_url, notary, front, redis_server, prefix)
        stop.callback(proxy.stop)
        with httpx.Client(base_url=proxy.url, timeout=30) as http:
            http.get("/v2/").raise_for_status()
        rss_start = rss_bytes(proxy.server.pid)
        keys_start, redis_start = redis_bytes(redis_server.url, prefix)
        rows: list[dict[str, Any]] = []
        done = 0
        for point in sorted(points):
            new = repos[done:point]
            cold_start = time.perf_counter()
            problems = asyncio.run(_pull_all(proxy.url, new))
            cold_s = time.perf_counter() - cold_start
            if problems:
                raise RuntimeError(f"scale: {len(problems)} cold pulls failed: {problems[:3]}")
            done = point
            # A second pass: every repository answered from the caches once before wrk.
            problems = asyncio.run(_pull_all(proxy.url, repos[:point]))
            if problems:
                raise RuntimeError(f"scale: {len(problems)} warm pulls failed: {problems[:3]}")
            rss = rss_bytes(proxy.server.pid)
            keys, rbytes = redis_bytes(redis_server.url, prefix)
            paths = [f"/v2/{repo}/manifests/v0" for repo, _ in repos[:point]]
            with CpuMeter({"trustproxy": proxy.server.pid, "registry": registry_pid}) as cpu:
                result = run_wrk(
                    proxy.url,
                    seconds=seconds,
                    connections=connections,
                    threads=threads,
                    headers=ACCEPT,
                    workdir=workdir / "scale-wrk",
                    paths=paths,
                )
            previous = rows[-1] if rows else None
            step = point - (previous["repositories"] if previous else 0)
            rss_before = previous["rss_bytes"] if previous else rss_start
            redis_before = previous["redis_total_bytes"] if previous else redis_start
            row = {
                "repositories": point,
                "rss_bytes": rss,
                "redis_total_bytes": rbytes,
                # What the repositories added since the last point cost each: the first
                # point also pays for everything a first request warms up (pools, caches).
                "rss_marginal_kib": (rss - rss_before) / step / 1024,
                "redis_marginal_kib": (rbytes - redis_before) / step / 1024,
                "cold_pulls_per_s": len(new) / cold_s if cold_s > 0 else 0.0,
                "rss_mib": rss / MiB,
                "rss_per_repository_kib": (rss - rss_start) / point / 1024,
                "redis_keys": keys - keys_start,
                "redis_bytes": rbytes - redis_start,
                "redis_per_repository_kib": (rbytes - redis_start) / point / 1024,
                "warm": result.as_dict(),
                "warm_rps": result.rps,
                "warm_p99_ms": result.p99_ms,
                "errors": result.errors + result.status_errors,
                "cpu_s": cpu.used,
                # Independent of how much of the shared cores the proxy got in this step.
                "cpu_ms_per_request": (
                    cpu.used["trustproxy"] * 1000 / result.requests if result.requests else 0.0
                ),
            }
            rows.append(row)
            log(
                f"  scale {point:>5} repositories: warm {result.rps:7.0f} req/s "
                f"(p99 {result.p99_ms:6.2f} ms, errors {row['errors']}, "
                f"{row['cpu_ms_per_request']:.3f} CPU ms/req), "
                f"RSS {row['rss_mib']:6.1f} MiB (+{row['rss_marginal_kib']:.1f} KiB per new repo), "
                f"Redis +{row['redis_marginal_kib']:.1f} KiB per new repo, {row['redis_keys']} keys"
            )
        fetched = len(front.fetches())
        alive = proxy.server.alive()
    first, last = rows[0], rows[-1]
    return {
        "repositories": count,
        "tags_per_repository": tags,
        "points": list(points),
        "seconds_per_point": seconds,
        "connections": connections,
        "refresh_seconds": SCALE_REFRESH_SECONDS,
        "workers": 1,
        "rows": rows,
        "notary_fetches": fetched,
        "proxy_alive": alive,
        "rss_per_repository_kib": last["rss_per_repository_kib"],
        "redis_per_repository_kib": last["redis_per_repository_kib"],
        # Between the last two points: the cost of one more cached repository.
        "rss_marginal_kib": last["rss_marginal_kib"],
        "redis_marginal_kib": last["redis_marginal_kib"],
        "warm_rps_last_vs_first": last["warm_rps"] / first["warm_rps"] if first["warm_rps"] else 0,
    }
