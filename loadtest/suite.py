"""The benchmark suite: every section of the "Performance" issue, measured in one run against
same-run baselines (direct registry, nginx as a plain reverse proxy, raw HTTP fetches).

Sections (each returns plain JSON-able data; ``run_suite`` assembles the results file):

- ``trust_core``: parse + verify of a 10,000-tag targets role (in process).
- ``manifests``: warm manifest GET by tag (Accept sent), ``wrk`` at 50 connections,
  registry / nginx / trustproxy interleaved, several repetitions, medians: as fast as each
  goes (throughput; wrk's own CPU is reported, it shares the cores), then paced (each
  connection pauses between requests, about half the registry's capacity) for the latency
  the proxy adds when no queue forms.
- ``blob_single``: one blob of 256 MiB downloaded by ``curl``, per target, interleaved.
- ``blob_concurrent``: 50 concurrent downloads of a 16 MiB blob (one ``curl --parallel``),
  aggregate MB/s, peak RSS of the serving process tree (sampler thread).
- ``cold``: first pull of a signed tag in a repository trustproxy has never seen (trust
  refresh included) vs the same HTTP GETs made back to back by a plain client.
- ``single_flight``: ``hey`` sends 1,000 concurrent cold requests to a trustproxy reading
  notary through a counting front: how often each metadata file was fetched.
- ``cpu``: proxy CPU seconds (psutil, before/after) per GB streamed and per 1,000 manifests.
- ``scale``: 1,000 repositories x 100 signed tags (trust data made in process, served by a
  stub notary): memory per repository in Redis and in process, warm req/s at 10, 100 and
  1,000 repositories (:mod:`loadtest.scale`).

Nothing here asserts on time: the numbers are reported, and compared with the targets in
``targets()``.
"""

from __future__ import annotations

import base64
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from loadtest import bench_trust
from loadtest.scale import bench_scale
from loadtest.stack import REFRESH_SECONDS, WARM_REPO, WARM_TAG, WORKERS, Stack, start_stack
from loadtest.tools import (
    CpuMeter,
    RssSampler,
    curl_download,
    median,
    ratio,
    rss_bytes,
    run_hey,
    run_wrk,
    tool_path,
    tool_version,
)
from testbed import images
from testbed.nginx import nginx_version

MiB = 1024 * 1024
REPO_ROOT = Path(__file__).resolve().parents[1]
ACCEPT = {"Accept": images.ACCEPT_ALL}


@dataclass(frozen=True)
class Plan:
    """How much of everything: ``FULL`` (the reported numbers) or ``QUICK`` (a smoke run)."""

    mode: str
    manifest_seconds: float
    manifest_reps: int
    warmup_seconds: float
    connections: int
    wrk_threads: int
    #: paced latency runs: each connection's pause between requests, and run length
    paced_delay_ms: float
    paced_seconds: float
    blob_size: int
    blob_reps: int
    streams: int
    stream_size: int
    stream_reps: int
    cold_reps: int
    burst: int
    trust_tags: int
    trust_runs: int
    #: the scale curve: cumulative repository counts, signed tags per repository, wrk seconds
    scale_points: tuple[int, ...]
    scale_tags: int
    scale_seconds: float


FULL = Plan(
    mode="full",
    manifest_seconds=10,
    manifest_reps=5,
    warmup_seconds=3,
    connections=50,
    wrk_threads=2,
    paced_delay_ms=100,
    paced_seconds=10,
    blob_size=256 * MiB,
    blob_reps=5,
    streams=50,
    stream_size=16 * MiB,
    stream_reps=5,
    cold_reps=9,
    burst=1000,
    trust_tags=10_000,
    trust_runs=9,
    scale_points=(10, 100, 1000),
    scale_tags=100,
    scale_seconds=10,
)

QUICK = Plan(
    mode="quick",
    manifest_seconds=2,
    manifest_reps=1,
    warmup_seconds=1,
    connections=50,
    wrk_threads=2,
    paced_delay_ms=100,
    paced_seconds=3,
    blob_size=32 * MiB,
    blob_reps=1,
    streams=50,
    stream_size=2 * MiB,
    stream_reps=1,
    cold_reps=2,
    burst=1000,
    trust_tags=10_000,
    trust_runs=3,
    scale_points=(10, 40),
    scale_tags=100,
    scale_seconds=2,
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def rotated(names: Sequence[str], rep: int) -> list[str]:
    """The targets in a different order each repetition (no target always runs first)."""
    k = rep % len(names)
    return [*names[k:], *names[:k]]


def _summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": median(values), "min": min(values), "max": max(values)}


# -- trust core ---------------------------------------------------------------------------------


def bench_trust_core(plan: Plan) -> dict[str, Any]:
    baseline_fn, rows = bench_trust.benchmarks(plan.trust_tags)
    baseline_runs = _time_ms(baseline_fn, plan.trust_runs)
    out: dict[str, Any] = {
        "tags": plan.trust_tags,
        "runs": plan.trust_runs,
        "json_loads_ms": _summary(baseline_runs),
        "operations": [],
    }
    for name, fn in rows:
        runs = _time_ms(fn, plan.trust_runs)
        out["operations"].append({"name": name, "ms": _summary(runs), "runs_ms": runs})
    verify = out["operations"][0]
    out["verify_targets_ms"] = verify["ms"]["median"]
    out["verify_vs_json_loads"] = ratio(verify["ms"]["median"], out["json_loads_ms"]["median"])
    return out


def _time_ms(fn: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


# -- warm manifests ----------------------------------------------------------------------------


def bench_manifests(stack: Stack, plan: Plan) -> dict[str, Any]:
    path = stack.manifest_path(stack.bed.repo(WARM_REPO), WARM_TAG)
    urls = stack.urls
    names = list(urls)
    wrk_dir = stack.workdir / "wrk"
    cores = len(os.sched_getaffinity(0))

    def wrk(url: str, seconds: float, delay_ms: float | None = None) -> Any:
        return run_wrk(
            url + path,
            seconds=seconds,
            connections=plan.connections,
            threads=plan.wrk_threads,
            headers=ACCEPT,
            workdir=wrk_dir,
            delay_ms=delay_ms,
        )

    for name in names:  # warm-up: connections, trust state, manifest cache, JIT-free paths
        wrk(urls[name], plan.warmup_seconds)
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for rep in range(plan.manifest_reps):
        for name in rotated(names, rep):
            with CpuMeter(stack.pids) as cpu:
                result = wrk(urls[name], plan.manifest_seconds)
            row = result.as_dict()
            row["rep"] = rep
            row["cpu_s"] = cpu.used
            runs[name].append(row)
            log(
                f"  manifests rep {rep + 1}/{plan.manifest_reps} {name:<10} "
                f"{result.rps:8.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
                f"p99 {result.p99_ms:6.2f} ms  errors {result.errors + result.status_errors}  "
                f"wrk CPU {100 * result.generator_cpu_s / result.seconds / cores:.0f} %"
            )
    paced: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for rep in range(plan.manifest_reps):
        for name in rotated(names, rep):
            with CpuMeter(stack.pids) as cpu:
                result = wrk(urls[name], plan.paced_seconds, plan.paced_delay_ms)
            row = result.as_dict()
            row["rep"] = rep
            row["cpu_s"] = cpu.used
            paced[name].append(row)
            log(
                f"  paced rep {rep + 1}/{plan.manifest_reps} {name:<10} "
                f"{result.rps:8.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
                f"p99 {result.p99_ms:6.2f} ms  p99.9 {result.p999_ms:6.2f} ms  "
                f"errors {result.errors + result.status_errors}"
            )
    targets: dict[str, Any] = {}
    for name in names:
        rows = runs[name]
        proxy_process = name  # the process that serves this target (registry serves itself)
        targets[name] = {
            "rps": _summary([r["rps"] for r in rows]),
            "p50_ms": _summary([r["p50_ms"] for r in rows]),
            "p90_ms": _summary([r["p90_ms"] for r in rows]),
            "p99_ms": _summary([r["p99_ms"] for r in rows]),
            "requests": sum(r["requests"] for r in rows),
            "errors": sum(r["errors"] + r["status_errors"] for r in rows),
            "cpu_s_per_1k_requests": median(
                [r["cpu_s"][proxy_process] / r["requests"] * 1000 for r in rows if r["requests"]]
            ),
            "registry_cpu_s_per_1k_requests": median(
                [r["cpu_s"]["registry"] / r["requests"] * 1000 for r in rows if r["requests"]]
            ),
            # The load generator's share of the machine's cores during these runs.
            "wrk_cpu_share": median(
                [r["generator_cpu_s"] / r["seconds"] / cores for r in rows if r["seconds"]]
            ),
            "runs": rows,
        }
        prows = paced[name]
        targets[name]["paced"] = {
            "rps": _summary([r["rps"] for r in prows]),
            "p50_ms": _summary([r["p50_ms"] for r in prows]),
            "p99_ms": _summary([r["p99_ms"] for r in prows]),
            "p999_ms": _summary([r["p999_ms"] for r in prows]),
            "max_ms": _summary([r["max_ms"] for r in prows]),
            "errors": sum(r["errors"] + r["status_errors"] for r in prows),
            "runs": prows,
        }
    reg, tp, ngx = targets["registry"], targets["trustproxy"], targets["nginx"]
    preg, ptp, pngx = reg["paced"], tp["paced"], ngx["paced"]
    return {
        "path": path,
        "connections": plan.connections,
        "seconds_per_run": plan.manifest_seconds,
        "reps": plan.manifest_reps,
        "wrk_threads": plan.wrk_threads,
        "workers": WORKERS,
        "paced_delay_ms": plan.paced_delay_ms,
        "paced_seconds": plan.paced_seconds,
        "targets": targets,
        "trustproxy_vs_registry_rps": ratio(tp["rps"]["median"], reg["rps"]["median"]),
        "nginx_vs_registry_rps": ratio(ngx["rps"]["median"], reg["rps"]["median"]),
        "trustproxy_vs_nginx_rps": ratio(tp["rps"]["median"], ngx["rps"]["median"]),
        # At saturation (closed loop: latency is mostly the queue of 50 connections, and the
        # three servers share the cores with wrk): informative only.
        "saturated_added_p50_ms": tp["p50_ms"]["median"] - reg["p50_ms"]["median"],
        "saturated_added_p99_ms": tp["p99_ms"]["median"] - reg["p99_ms"]["median"],
        # Paced (no queue): what the target row reports.
        "trustproxy_added_p50_ms": ptp["p50_ms"]["median"] - preg["p50_ms"]["median"],
        "trustproxy_added_p99_ms": ptp["p99_ms"]["median"] - preg["p99_ms"]["median"],
        "trustproxy_added_p999_ms": ptp["p999_ms"]["median"] - preg["p999_ms"]["median"],
        "nginx_added_p99_ms": pngx["p99_ms"]["median"] - preg["p99_ms"]["median"],
    }


# -- blobs -------------------------------------------------------------------------------------


def bench_blob_single(stack: Stack, plan: Plan) -> dict[str, Any]:
    blob = stack.push_blob("single", plan.blob_size)
    urls, names = stack.urls, list(stack.urls)
    for name in names:  # warm-up: page cache, upstream connections
        curl_download(urls[name] + blob.path)
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for rep in range(plan.blob_reps):
        for name in rotated(names, rep):
            with CpuMeter(stack.pids) as cpu:
                d = curl_download(urls[name] + blob.path)
            _check_download(d, blob.size, name)
            runs[name].append(
                {
                    "rep": rep,
                    "bytes": d.bytes,
                    "seconds": d.seconds,
                    "mb_per_s": d.mb_per_s,
                    "cpu_s": cpu.used,
                }
            )
            log(
                f"  blob {blob.size // MiB} MiB rep {rep + 1}/{plan.blob_reps} {name:<10} "
                f"{d.mb_per_s:8.0f} MB/s"
            )
    targets = {name: _blob_target(name, runs[name]) for name in names}
    tp, ngx, reg = targets["trustproxy"], targets["nginx"], targets["registry"]
    return {
        "blob_bytes": blob.size,
        "reps": plan.blob_reps,
        "targets": targets,
        "trustproxy_vs_nginx": ratio(tp["mb_per_s"]["median"], ngx["mb_per_s"]["median"]),
        "trustproxy_vs_registry": ratio(tp["mb_per_s"]["median"], reg["mb_per_s"]["median"]),
        "nginx_vs_registry": ratio(ngx["mb_per_s"]["median"], reg["mb_per_s"]["median"]),
    }


def bench_blob_redirect(stack: Stack, plan: Plan) -> dict[str, Any]:
    """The single blob through a trustproxy with ``blobs: redirect`` (curl follows the 307
    to the registry), interleaved with nginx: what the option trades verification for."""
    blob = stack.blobs["single"]
    urls = {"nginx": stack.nginx.extra["url"], "redirect": stack.redirect_proxy.url}
    pids = {"nginx": stack.nginx.pid, "redirect": stack.redirect_proxy.server.pid,
            "registry": stack.registry.pid}  # fmt: skip
    for name in urls:
        curl_download(urls[name] + blob.path, follow=True)
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in urls}
    for rep in range(plan.blob_reps):
        for name in rotated(list(urls), rep):
            with CpuMeter(pids) as cpu:
                d = curl_download(urls[name] + blob.path, follow=True)
            _check_download(d, blob.size, name)
            runs[name].append({"rep": rep, "mb_per_s": d.mb_per_s, "bytes": d.bytes,
                               "cpu_s": cpu.used})  # fmt: skip
            log(
                f"  blob {blob.size // MiB} MiB rep {rep + 1}/{plan.blob_reps} {name:<10} "
                f"{d.mb_per_s:8.0f} MB/s"
            )
    red, ngx = runs["redirect"], runs["nginx"]
    red_bytes = sum(r["bytes"] for r in red)
    return {
        "blob_bytes": blob.size,
        "reps": plan.blob_reps,
        "redirect_mb_per_s": _summary([r["mb_per_s"] for r in red]),
        "nginx_mb_per_s": _summary([r["mb_per_s"] for r in ngx]),
        "redirect_vs_nginx": ratio(
            median([r["mb_per_s"] for r in red]), median([r["mb_per_s"] for r in ngx])
        ),
        # The proxy's CPU per GB the client received (it relayed none of it).
        "proxy_cpu_s_per_gb": ratio(sum(r["cpu_s"]["redirect"] for r in red), red_bytes / 1e9),
        "runs": runs,
    }


def bench_blob_concurrent(stack: Stack, plan: Plan) -> dict[str, Any]:
    blob = stack.push_blob("streams", plan.stream_size)
    urls, names, pids = stack.urls, list(stack.urls), stack.pids
    idle_rss = {name: rss_bytes(pid) for name, pid in pids.items()}
    for name in names:
        curl_download(urls[name] + blob.path)
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for rep in range(plan.stream_reps):
        for name in rotated(names, rep):
            with CpuMeter(pids) as cpu, RssSampler(pids[name]) as rss:
                d = curl_download(urls[name] + blob.path, streams=plan.streams)
            _check_download(d, blob.size * plan.streams, name)
            runs[name].append(
                {
                    "rep": rep,
                    "bytes": d.bytes,
                    "seconds": d.seconds,
                    "mb_per_s": d.mb_per_s,
                    "cpu_s": cpu.used,
                    "rss_peak_bytes": rss.peak,
                    "pss_peak_bytes": rss.pss_peak,
                    "rss_samples": rss.samples,
                }
            )
            log(
                f"  {plan.streams} x {blob.size // MiB} MiB rep {rep + 1}/{plan.stream_reps} "
                f"{name:<10} {d.mb_per_s:8.0f} MB/s  RSS peak {rss.peak / MiB:6.1f} MiB  "
                f"PSS peak {rss.pss_peak / MiB:6.1f} MiB"
            )
    targets = {name: _blob_target(name, runs[name]) for name in names}
    for name in names:
        targets[name]["rss_idle_mib"] = idle_rss[name] / MiB
        targets[name]["rss_peak_mib"] = max(r["rss_peak_bytes"] for r in runs[name]) / MiB
        targets[name]["pss_peak_mib"] = max(r["pss_peak_bytes"] for r in runs[name]) / MiB
    tp, ngx, reg = targets["trustproxy"], targets["nginx"], targets["registry"]
    return {
        "blob_bytes": blob.size,
        "streams": plan.streams,
        "reps": plan.stream_reps,
        "targets": targets,
        "trustproxy_vs_nginx": ratio(tp["mb_per_s"]["median"], ngx["mb_per_s"]["median"]),
        "trustproxy_vs_registry": ratio(tp["mb_per_s"]["median"], reg["mb_per_s"]["median"]),
        "nginx_vs_registry": ratio(ngx["mb_per_s"]["median"], reg["mb_per_s"]["median"]),
        "trustproxy_rss_peak_mib": tp["rss_peak_mib"],
        "trustproxy_pss_peak_mib": tp["pss_peak_mib"],
    }


def _blob_target(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    total_bytes = sum(r["bytes"] for r in rows)
    cpu = sum(r["cpu_s"][name] for r in rows)
    return {
        "mb_per_s": _summary([r["mb_per_s"] for r in rows]),
        "bytes": total_bytes,
        "cpu_s_per_gb": ratio(cpu, total_bytes / 1e9),
        "registry_cpu_s_per_gb": ratio(
            sum(r["cpu_s"]["registry"] for r in rows), total_bytes / 1e9
        ),
        "runs": rows,
    }


def _check_download(d: Any, expected: int, name: str) -> None:
    if not d.ok or d.bytes != expected:
        raise RuntimeError(f"{name}: blob download got {d.bytes} bytes, codes {d.codes}")


# -- cold tag resolution --------------------------------------------------------------------------


def _meta(raw: bytes) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads(raw)["signed"]["meta"]
    return {k.removesuffix(".json"): v for k, v in meta.items()}


def _consistent_name(role: str, entry: dict[str, Any]) -> str:
    return f"{role}.{base64.b64decode(entry['hashes']['sha256']).hex()}.json"


def raw_cold_fetch(
    notary: httpx.Client, registry: httpx.Client, gun: str, repo: str, digest: str
) -> tuple[float, list[str]]:
    """The HTTP GETs a cold pull needs, back to back on warm connections, with only the
    parsing needed to know the next file name: root.json, the probe for the next root
    version (404), timestamp, the snapshot it names, every role the snapshot names, then
    the manifest by digest from the registry. Returns (ms, files fetched)."""
    base = f"/v2/{quote(gun, safe='/:')}/_trust/tuf/"
    fetched: list[str] = []

    def get(name: str, *, ok: bool = True) -> bytes:
        r = notary.get(base + name)
        fetched.append(name)
        if ok:
            r.raise_for_status()
        return r.content

    start = time.perf_counter()
    root = get("root.json")
    get(f"{int(json.loads(root)['signed']['version']) + 1}.root.json", ok=False)
    timestamp = get("timestamp.json")
    snapshot = get(_consistent_name("snapshot", _meta(timestamp)["snapshot"]))
    for role, entry in _meta(snapshot).items():
        if role != "root":
            get(_consistent_name(role, entry))
    manifest = registry.get(f"/v2/{repo}/manifests/{digest}", headers=ACCEPT)
    manifest.raise_for_status()
    elapsed = (time.perf_counter() - start) * 1000
    return elapsed, fetched


def bench_cold(stack: Stack, plan: Plan) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    with (
        stack.notary.client(timeout=30) as notary,
        httpx.Client(base_url=stack.registry.extra["url"], timeout=30) as registry,
        httpx.Client(base_url=stack.proxy.url, timeout=60) as proxy,
    ):
        proxy.get("/v2/")  # the client's own connection is warm in both measurements
        for rep in range(-1, plan.cold_reps):  # rep -1: warm-up, not reported
            repo, target = stack.new_signed_repo("cold")
            gun = f"{stack.bed.registry_host}/{repo}"
            digest = f"sha256:{target.sha256}"

            def through_proxy(repo: str = repo, digest: str = digest) -> float:
                start = time.perf_counter()
                r = proxy.get(f"/v2/{repo}/manifests/v1", headers=ACCEPT)
                elapsed = (time.perf_counter() - start) * 1000
                if r.status_code != 200 or images.sha256(r.content) != digest:
                    raise RuntimeError(f"cold pull of {repo}:v1: {r.status_code} {r.text[:300]}")
                return elapsed

            if rep % 2:  # alternate which goes first
                proxy_ms = through_proxy()
                raw_ms, files = raw_cold_fetch(notary, registry, gun, repo, digest)
            else:
                raw_ms, files = raw_cold_fetch(notary, registry, gun, repo, digest)
                proxy_ms = through_proxy()
            warm_start = time.perf_counter()
            proxy.get(f"/v2/{repo}/manifests/v1", headers=ACCEPT).raise_for_status()
            warm_ms = (time.perf_counter() - warm_start) * 1000
            if rep < 0:
                continue
            runs.append(
                {
                    "rep": rep,
                    "repo": repo,
                    "trustproxy_ms": proxy_ms,
                    "raw_ms": raw_ms,
                    "warm_ms": warm_ms,
                    "files": files,
                }
            )
            log(
                f"  cold rep {rep + 1}/{plan.cold_reps}: trustproxy {proxy_ms:6.1f} ms, "
                f"raw GETs {raw_ms:6.1f} ms ({len(files)} notary files + manifest)"
            )
    proxy_ms = median([r["trustproxy_ms"] for r in runs])
    raw_ms = median([r["raw_ms"] for r in runs])
    return {
        "reps": plan.cold_reps,
        "trustproxy_ms": _summary([r["trustproxy_ms"] for r in runs]),
        "raw_ms": _summary([r["raw_ms"] for r in runs]),
        "warm_after_ms": _summary([r["warm_ms"] for r in runs]),
        "files": runs[0]["files"] if runs else [],
        "trustproxy_vs_raw": ratio(proxy_ms, raw_ms),
        "runs": runs,
    }


# -- single flight --------------------------------------------------------------------------------


def bench_single_flight(stack: Stack, plan: Plan) -> dict[str, Any]:
    repo, target = stack.new_signed_repo("burst")
    gun = f"{stack.bed.registry_host}/{repo}"
    since = time.monotonic()
    result = run_hey(
        f"{stack.sf_proxy.url}/v2/{repo}/manifests/v1",
        requests=plan.burst,
        concurrency=plan.burst,
        headers=ACCEPT,
        timeout=60,
    )
    counts = stack.front.counts(gun, since=since)
    log(
        f"  single flight: {plan.burst} concurrent cold requests -> statuses {result.statuses}, "
        f"errors {result.errors}; notary fetches {dict(counts)}"
    )
    return {
        "requests": plan.burst,
        "concurrency": plan.burst,
        "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
        "errors": result.errors,
        "seconds": result.seconds,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "ok_share": 100.0 * result.statuses.get(200, 0) / plan.burst,
        "notary_fetches": sum(counts.values()),
        "distinct_files": len(counts),
        "max_fetches_per_file": max(counts.values()) if counts else 0,
        "fetches_per_file": dict(sorted(counts.items())),
        "signed_digest": f"sha256:{target.sha256}",
    }


# -- CPU ---------------------------------------------------------------------------------------


def cpu_summary(results: dict[str, Any]) -> dict[str, Any]:
    """Proxy CPU seconds per GB streamed (single and concurrent blob runs together) and per
    1,000 warm manifest requests, for trustproxy and for nginx (the baseline's cost)."""
    out: dict[str, Any] = {}
    for name in ("trustproxy", "nginx", "registry"):
        cpu = 0.0
        total = 0
        for section in ("blob_single", "blob_concurrent"):
            for row in results[section]["targets"][name]["runs"]:
                cpu += row["cpu_s"][name]
                total += row["bytes"]
        manifests = results["manifests"]["targets"][name]
        out[name] = {
            "cpu_s_per_gb_streamed": ratio(cpu, total / 1e9),
            "cpu_s_per_1k_manifests": manifests["cpu_s_per_1k_requests"],
        }
    return out


# -- targets ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    measured: float
    unit: str
    op: str  # ">=" or "<="
    limit: float

    @property
    def met(self) -> bool:
        return self.measured >= self.limit if self.op == ">=" else self.measured <= self.limit

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}


def targets(results: dict[str, Any]) -> list[Target]:
    """Every row of the "Performance" issue's table that this suite measures, against the
    issue's target, in the issue's order; then the single-flight rows. Memory per cached
    repository has no limit in the issue: the scale section reports it."""
    m, bs, bc = results["manifests"], results["blob_single"], results["blob_concurrent"]
    cold, core, sf = results["cold"], results["trust_core"], results["single_flight"]
    sc = results["scale"]
    return [
        Target(
            "manifest_rps_ratio",
            f"warm manifest-by-tag throughput, trustproxy ({WORKERS} workers) / registry",
            m["trustproxy_vs_registry_rps"],
            "×",
            ">=",
            2.5,
        ),
        Target(
            "manifest_added_p99_ms",
            f"p99 latency added to the registry's ({m['connections']} clients, paced at "
            f"{m['targets']['registry']['paced']['rps']['median']:.0f} req/s)",
            m["trustproxy_added_p99_ms"],
            "ms",
            "<=",
            2.0,
        ),
        Target(
            "blob_single_ratio",
            f"single-stream {bs['blob_bytes'] // MiB} MiB blob throughput, trustproxy / nginx "
            "(blob verification on)",
            bs["trustproxy_vs_nginx"],
            "×",
            ">=",
            0.9,
        ),
        Target(
            "blob_concurrent_ratio",
            f"{bc['streams']} concurrent {bc['blob_bytes'] // MiB} MiB blobs, aggregate "
            "throughput, trustproxy / nginx",
            bc["trustproxy_vs_nginx"],
            "×",
            ">=",
            0.9,
        ),
        Target(
            "blob_cpu_s_per_gb",
            "trustproxy CPU seconds per GB relayed (all blob runs, verification on)",
            results["cpu"]["trustproxy"]["cpu_s_per_gb_streamed"],
            "s/GB",
            "<=",
            0.5,
        ),
        Target(
            "blob_concurrent_rss_mib",
            f"trustproxy RSS peak (sum over master and workers), {bc['streams']} concurrent "
            f"{bc['blob_bytes'] // MiB} MiB streams",
            bc["trustproxy_rss_peak_mib"],
            "MiB",
            "<=",
            200.0,
        ),
        Target(
            "cold_ratio",
            "cold tag resolution, trustproxy / raw HTTP GETs",
            cold["trustproxy_vs_raw"],
            "×",
            "<=",
            1.3,
        ),
        Target(
            "verify_targets_ms",
            f"parse + verify a {core['tags']:,}-tag targets role",
            core["verify_targets_ms"],
            "ms",
            "<=",
            40.0,
        ),
        Target(
            "scale_warm_flat",
            f"warm req/s at {sc['points'][-1]:,} repositories / at {sc['points'][0]:,} "
            f"({sc['tags_per_repository']} signed tags each; flat is 1)",
            sc["warm_rps_last_vs_first"],
            "×",
            ">=",
            0.9,
        ),
        Target(
            "single_flight_max_per_file",
            f"notary fetches per file under {sf['requests']:,} concurrent cold requests",
            sf["max_fetches_per_file"],
            "",
            "<=",
            1.0,
        ),
        # Not a target of the issue: the count above means little if the burst failed.
        Target(
            "single_flight_ok_share",
            f"share of the {sf['requests']:,} cold requests answered 200 (correctness)",
            sf["ok_share"],
            "%",
            ">=",
            100.0,
        ),
    ]


# -- the machine and what was measured ----------------------------------------------------------


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", "--no-optional-locks", *args],
            cwd=REPO_ROOT,
            capture_output=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.decode(errors="replace").strip() if done.returncode == 0 else ""


def source_state() -> dict[str, Any]:
    """The commit and the working-tree changes of the code under test (read-only git)."""
    import hashlib

    changed = [line for line in _git("status", "--porcelain", "--", "proxy").splitlines() if line]
    diff = _git("diff", "HEAD", "--", "proxy")
    return {
        "commit": _git("rev-parse", "HEAD"),
        "commit_subject": _git("log", "-1", "--format=%s"),
        "proxy_changes": changed,
        "proxy_diff_sha256": hashlib.sha256(diff.encode()).hexdigest()[:16] if diff else "",
        "proxy_diff_lines": len(diff.splitlines()),
    }


def machine() -> dict[str, Any]:
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_total = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(mem_total / 1024**3, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "event_loop": loop,
        "tools": {
            "wrk": tool_version(["wrk", "-v"]),
            "hey": tool_path("hey") or "",
            "curl": tool_version(["curl", "--version"]),
            "nginx": nginx_version(),
            "docker-registry": tool_version(["docker-registry", "--version"]),
            "redis-server": tool_version(["redis-server", "--version"]),
            "notary-server": tool_version(["notary-server", "-version"]),
        },
    }


# -- the run ---------------------------------------------------------------------------------------


def run_suite(plan: Plan, workdir: Path) -> dict[str, Any]:
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    results: dict[str, Any] = {
        "schema": 1,
        "started": started.isoformat(timespec="seconds"),
        "mode": plan.mode,
        "plan": asdict(plan),
        "machine": {**machine(), "load_average_start": list(os.getloadavg())},
        "source": source_state(),
        "config": {
            "trustproxy": f"{WORKERS} uvicorn workers under the pre-fork master "
            "(uvloop/httptools when installed), enforce "
            "mode, root key pinned, access log on, audit records to a file, Redis trust "
            f"store, refresh_seconds {REFRESH_SECONDS:g}, manifest cache on (defaults)",
            "nginx": "worker_processes auto, upstream keepalive 128, proxy_buffering off, "
            "proxy_buffer_size 1m, access_log off",
            "registry": "docker-registry, filesystem storage, blobdescriptor cache inmemory",
            "loopback": True,
        },
    }
    log(f"trust core: verify a {plan.trust_tags}-tag targets role ({plan.trust_runs} runs)")
    results["trust_core"] = bench_trust_core(plan)
    log(f"  verify: {results['trust_core']['verify_targets_ms']:.1f} ms (median)")
    log("starting the stack: docker-registry, notary-server + signer, redis, trustproxy, nginx")
    stack = start_stack(workdir)
    try:
        log(f"stack up in {time.perf_counter() - t0:.1f} s: {stack.urls}")
        log(
            f"warm manifests: {plan.manifest_reps} x {plan.manifest_seconds:g} s per target, "
            f"{plan.connections} connections, interleaved"
        )
        results["manifests"] = bench_manifests(stack, plan)
        log(f"single-stream blob: {plan.blob_size // MiB} MiB x {plan.blob_reps} per target")
        results["blob_single"] = bench_blob_single(stack, plan)
        log("blobs: redirect: the same blob through a `blobs: redirect` trustproxy vs nginx")
        results["blob_redirect"] = bench_blob_redirect(stack, plan)
        log(
            f"concurrent blobs: {plan.streams} x {plan.stream_size // MiB} MiB "
            f"x {plan.stream_reps} per target"
        )
        results["blob_concurrent"] = bench_blob_concurrent(stack, plan)
        log(f"cold tag resolution: {plan.cold_reps} new repositories")
        results["cold"] = bench_cold(stack, plan)
        log(f"single flight: {plan.burst} concurrent cold requests")
        results["single_flight"] = bench_single_flight(stack, plan)
        log(
            f"scale: {max(plan.scale_points)} repositories x {plan.scale_tags} signed tags, "
            f"warm req/s at {', '.join(str(p) for p in plan.scale_points)}"
        )
        results["scale"] = bench_scale(
            workdir=stack.workdir / "scale",
            registry_url=stack.registry.extra["url"],
            registry_pid=stack.registry.pid,
            notary=stack.notary,
            redis_server=stack.redis,
            points=plan.scale_points,
            tags=plan.scale_tags,
            seconds=plan.scale_seconds,
            connections=plan.connections,
            threads=plan.wrk_threads,
            log=log,
        )
        results["processes_alive"] = {
            "trustproxy": stack.proxy.server.alive(),
            "nginx": stack.nginx.alive(),
            "registry": stack.registry.alive(),
        }
    finally:
        stack.close()
    # Other work on the same cores moves every absolute number: say how busy they were.
    results["machine"]["load_average_end"] = list(os.getloadavg())
    results["cpu"] = cpu_summary(results)
    results["targets"] = [t.as_dict() for t in targets(results)]
    results["duration_s"] = round(time.perf_counter() - t0, 1)
    return results
