"""``python -m loadtest.bench_cosign``: a Cosign-enforced pull proxy against its registry.

Two figures of the Cosign issue, measured on the real stack (docker-registry, trustproxy with
a ``type: cosign`` source, one worker), in the same run:

- **warm manifest by tag** under a cosign rule: ``wrk`` at N connections against the
  registry and against trustproxy, alternating, several repetitions; the ratio of median
  req/s (target ≥ 1.0×);
- **cold round trips**: the upstream requests one cold ``GET /v2/<repo>/manifests/<tag>``
  costs, counted by a relaying front between the proxy and the registry, for a classic
  key-signed tag and for a tag signed with a cosign 3 bundle (sigstore-js, found through the
  referrers tag schema because Debian's registry has no referrers API).

A benchmark reports ratios and counts; it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx

from loadtest.tools import run_wrk
from testbed import cosign_signer, images, sigstore_js_signer
from testbed.enforcement_bed import TamperingUpstream, write_policy
from testbed.processes import Server
from testbed.proxy_server import start_proxy, upstream_config
from testbed.registry import start_registry

REPO = "bench/cosign"
ACCEPT = {"Accept": images.ACCEPT_ALL}


class CountingUpstream(TamperingUpstream):
    """Relays to the registry and records every request (method and path)."""

    def __init__(self, target_url: str) -> None:
        super().__init__(target_url)
        self.requests: list[str] = []

    def _relay(self, handler: BaseHTTPRequestHandler, *, head: bool) -> None:
        self.requests.append(f"{'HEAD' if head else 'GET'} {handler.path}")
        super()._relay(handler, head=head)


def _proxy(work: Path, name: str, upstream_url: str, policy: Path) -> Server:
    config = {
        "upstreams": [upstream_config("internal", upstream_url)],
        "trust": {"sources": {"sigs": {"type": "cosign", "refresh_interval": "30s"}}},
        "policy_file": str(policy),
        "logging": {"format": "json", "level": "warning"},
    }
    return start_proxy(work / name, config, name=name)


def _policy(work: Path, host: str, key_file: Path, signed_host: str) -> Path:
    rule: dict[str, Any] = {
        "requireSignatures": True,
        "source": "sigs",
        "authorities": [{"key": str(key_file), "name": "release"}],
        "tlog": "optional",
    }
    # The proxy names the repository by the upstream's registry: the counting front is
    # another name for the registry the signatures name.
    if host != signed_host:
        rule["remapIdentity"] = [
            {"prefix": f"{host}/bench", "signedPrefix": f"{signed_host}/bench"}
        ]
    return write_policy(work / f"policy-{host.replace(':', '-')}.yaml", {f"{host}/**": rule})


def _cold(front: Any, proxy: Server, tag: str) -> list[str]:
    before = len(front.requests)
    r = httpx.get(f"{proxy.extra['url']}/v2/{REPO}/manifests/{tag}", headers=ACCEPT, timeout=30)
    if r.status_code != 200:
        raise RuntimeError(f"cold {tag}: HTTP {r.status_code} {r.text[:300]}")
    made: list[str] = front.requests[before:]
    return made


def run(seconds: float, reps: int, connections: int, work: Path) -> dict[str, Any]:
    registry = start_registry(work / "registry")
    servers: list[Server] = [registry]
    front = CountingUpstream(registry.extra["url"])
    front.start()
    try:
        key = cosign_signer.new_key()
        key_file = work / "release.pub"
        key_file.write_bytes(cosign_signer.public_pem(key))
        host = registry.extra["host"]
        front_host = front.url.split("://", 1)[1]
        tags: dict[str, str] = {}
        with httpx.Client(base_url=registry.extra["url"], timeout=30) as client:
            for tag in ("warm", "cold-classic", "cold-bundle"):
                image = images.single_image(f"bench cosign {tag}")
                tags[tag] = digest = images.push_image(client, REPO, image, tag)
                if tag != "cold-bundle":
                    cosign_signer.sign_classic(client, REPO, digest, f"{host}/{REPO}", [key])
            bundles = sigstore_js_signer.ensure_installed() is None
            if bundles:
                image = images.single_image("bench cosign cold-bundle")
                bundle = cosign_signer.dsse_bundle(key, tags["cold-bundle"])
                cosign_signer.attach_bundle(client, REPO, image, bundle)
        direct = _proxy(
            work, "trustproxy", registry.extra["url"], _policy(work, host, key_file, host)
        )
        servers.append(direct)
        counted = _proxy(work, "trustproxy-counted", front.url,
                         _policy(work, front_host, key_file, host))  # fmt: skip
        servers.append(counted)

        cold: dict[str, Any] = {"classic": _cold(front, counted, "cold-classic")}
        if bundles:
            cold["bundle"] = _cold(front, counted, "cold-bundle")

        path = f"/v2/{REPO}/manifests/warm"
        urls = {"registry": registry.extra["url"], "trustproxy": direct.extra["url"]}
        wrk_dir = work / "wrk"
        for url in urls.values():  # warm-up: connections, verdicts, manifest cache
            run_wrk(url + path, seconds=1, connections=connections, threads=2, headers=ACCEPT,
                    workdir=wrk_dir)  # fmt: skip
        rps: dict[str, list[float]] = {n: [] for n in urls}
        p99: dict[str, list[float]] = {n: [] for n in urls}
        for rep in range(reps):
            order = list(urls) if rep % 2 == 0 else list(reversed(urls))
            for name in order:
                result = run_wrk(urls[name] + path, seconds=seconds, connections=connections,
                                 threads=2, headers=ACCEPT, workdir=wrk_dir)  # fmt: skip
                if result.errors or result.status_errors:
                    raise RuntimeError(f"{name}: {result.errors} errors, "
                                       f"{result.status_errors} bad statuses")  # fmt: skip
                rps[name].append(result.rps)
                p99[name].append(result.p99_ms)
                print(f"  rep {rep + 1}/{reps} {name:<10} {result.rps:8.0f} req/s  "
                      f"p99 {result.p99_ms:6.2f} ms", file=sys.stderr)  # fmt: skip
        median = {n: statistics.median(v) for n, v in rps.items()}
        return {
            "warm_manifest_by_tag": {
                "connections": connections,
                "seconds_per_run": seconds,
                "reps": reps,
                "rps": rps,
                "p99_ms": p99,
                "median_rps": median,
                "trustproxy_vs_registry": median["trustproxy"] / median["registry"],
            },
            "cold_round_trips": {layout: len(reqs) for layout, reqs in cold.items()},
            "cold_requests": cold,
        }
    finally:
        front.stop()
        for server in reversed(servers):
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.bench_cosign",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk run (default 5)")
    parser.add_argument("--reps", type=int, default=3, help="alternating repetitions (3)")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-cosign-") as tmp:
        results = run(args.seconds, args.reps, args.connections, Path(tmp))
    warm = results["warm_manifest_by_tag"]
    print(f"warm manifest by tag under a cosign rule: trustproxy "
          f"{warm['median_rps']['trustproxy']:.0f} req/s, registry "
          f"{warm['median_rps']['registry']:.0f} req/s: "
          f"{warm['trustproxy_vs_registry']:.2f}x (target >= 1.0x)")  # fmt: skip
    for layout, requests in results["cold_requests"].items():
        print(f"cold manifest by tag, {layout} signature: {len(requests)} upstream requests")
        for line in requests:
            print(f"    {line}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
