"""Benchmark of the Notation source (not a test: no timing assertions).

Run: ``python -m loadtest.bench_notation [--seconds S] [--reps R] [--connections C]
[--runs N] [--json FILE]``. Two measures, reported as figures and ratios:

- **warm manifest GET by tag** under a ``type: notation`` rule: ``wrk`` against the
  docker-registry directly and against trustproxy in front of it, interleaved, in the same
  run; the ratio of medians (req/s) is the figure. The image is signed by the project's test
  signer (JWS, RSA 2048 self-signed), pushed with its signature manifest and tag index as
  notation pushes them to a registry without the referrers API. Warm: the verdict is cached
  (``refresh_interval`` 30 s), so the proxy's work per request is the tag's resolution
  (cached as long), the gate and the relay of the manifest bytes.
- **cold JWS verification** with a 3-certificate chain (ECDSA P-256 leaf and intermediate,
  RSA 3072 root in the ``ca`` store): the whole pure core (envelope parse, strict base64,
  signature, chain, trust store anchor, identity, expiry, validity), from bytes each time:
  median and minimum over ``--runs``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from loadtest.stack import start_bench_registry
from loadtest.tools import median, ratio, run_wrk
from proxy.sources.notation.envelope import JWS_MEDIA_TYPE
from proxy.sources.notation.trustpolicy import StoreRef, StoreType, parse_trust_policy
from proxy.sources.notation.truststore import TrustStore
from proxy.sources.notation.verify import descriptor_of, verify_signature
from testbed import images
from testbed.notation_bed import push_signature
from testbed.notation_signer import Signer, make_cert, signature_artifact
from testbed.proxy_server import start_proxy, upstream_config

REPO = "bench/notation-app"
TAG = "v1"
IDENTITY = "x509.subject: C=US, ST=WA, O=trustproxy-test"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _policy_doc(stores: list[str]) -> dict[str, Any]:
    statement = {
        "name": "bench",
        "registryScopes": ["*"],
        "signatureVerification": {"level": "strict"},
        "trustStores": stores,
        "trustedIdentities": [IDENTITY],
    }
    return {"version": "1.0", "trustPolicies": [statement]}


# -- cold verification ---------------------------------------------------------------------


def bench_cold_jws(runs: int) -> dict[str, Any]:
    """Verify one JWS envelope with a 3-certificate chain ``runs`` times, from bytes."""
    root_key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    root = make_cert("root", root_key, ca=True)
    mid_key = ec.generate_private_key(ec.SECP256R1())
    mid = make_cert("intermediate", mid_key, issuer=(root, root_key), ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = make_cert("leaf", leaf_key, issuer=(mid, mid_key))
    signer = Signer(leaf_key, [leaf, mid, root], alg="ES256")
    manifest = images.single_image("bench notation cold").manifest
    served = descriptor_of(manifest, images.OCI_MANIFEST)
    envelope = signer.jws(Signer.payload(served.media_type, served.digest, served.size))
    (statement,) = parse_trust_policy(json.dumps(_policy_doc(["ca:bench"])).encode()).statements
    store = TrustStore.of({StoreRef(StoreType.CA, "bench"): [root]})
    now = datetime.now(UTC)

    def once() -> None:
        verify_signature(
            envelope,
            JWS_MEDIA_TYPE,
            statement=statement,
            trust_store=store,
            served=served,
            now=now,
        )

    once()  # imports, first-call costs
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        once()
        times.append((time.perf_counter() - start) * 1000)
    return {
        "chain": "ES256 leaf <- P-256 intermediate <- RSA 3072 root (in the ca store)",
        "envelope_bytes": len(envelope),
        "runs": runs,
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "target_ms": 5.0,
    }


# -- warm manifest by tag -----------------------------------------------------------------


def bench_warm(workdir: Path, seconds: float, reps: int, connections: int) -> dict[str, Any]:
    registry = start_bench_registry(workdir / "registry")
    proxy = None
    try:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = make_cert("bench", key)
        store = workdir / "notation" / "truststore" / "x509" / "ca" / "bench"
        store.mkdir(parents=True)
        (store / "bench.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        policy_json = workdir / "notation" / "trustpolicy.json"
        policy_json.write_text(json.dumps(_policy_doc(["ca:bench"])), encoding="utf-8")
        url, host = registry.extra["url"], registry.extra["host"]
        image = images.single_image("bench notation warm")
        with httpx.Client(base_url=url, timeout=30) as client:
            digest = images.push_image(client, REPO, image, TAG)
        subject = {"mediaType": image.media_type, "digest": digest, "size": len(image.manifest)}
        payload = Signer.payload(image.media_type, digest, len(image.manifest))
        push_signature(url, REPO, signature_artifact(subject, Signer(key, [cert]).jws(payload)))
        policy = workdir / "policy.yaml"
        policy.write_text(
            f'version: "2.0"\ntrust:\n  repositories:\n    "{host}/{REPO}":\n'
            "      source: notation\n",
            encoding="utf-8",
        )
        config = {
            "upstreams": [upstream_config("bench", url)],
            "trust": {
                "sources": {
                    "notation": {
                        "type": "notation",
                        "trust_policy": str(policy_json),
                        "trust_store": str(store.parents[2]),
                    }
                }
            },
            "policy_file": str(policy),
            "logging": {"format": "json", "level": "warning"},
        }
        proxy = start_proxy(workdir / "proxy", config)
        path = f"/v2/{REPO}/manifests/{TAG}"
        headers = {"Accept": images.ACCEPT_ALL}
        check = httpx.get(proxy.extra["url"] + path, headers=headers, timeout=30)
        if check.status_code != 200 or images.sha256(check.content) != digest:
            raise RuntimeError(f"the proxy does not serve the signed image: {check.text[:300]}")
        urls = {"registry": url, "trustproxy": proxy.extra["url"]}

        def wrk(name: str, secs: float) -> Any:
            return run_wrk(
                urls[name] + path,
                seconds=secs,
                connections=connections,
                threads=2,
                headers=headers,
                workdir=workdir / "wrk",
            )

        for name in urls:
            wrk(name, 2)  # warm-up
        rows: dict[str, list[dict[str, Any]]] = {n: [] for n in urls}
        for rep in range(reps):
            order = list(urls) if rep % 2 == 0 else list(reversed(urls))
            for name in order:
                result = wrk(name, seconds)
                rows[name].append(result.as_dict())
                log(
                    f"  rep {rep + 1}/{reps} {name:<10} {result.rps:8.0f} req/s  "
                    f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
                    f"errors {result.errors + result.status_errors}"
                )
        rps = {n: median([r["rps"] for r in rows[n]]) for n in urls}
        p99 = {n: median([r["p99_ms"] for r in rows[n]]) for n in urls}
        return {
            "connections": connections,
            "seconds_per_run": seconds,
            "reps": reps,
            "rps_median": rps,
            "p99_ms_median": p99,
            "errors": {n: sum(r["errors"] + r["status_errors"] for r in rows[n]) for n in urls},
            "trustproxy_vs_registry_rps": ratio(rps["trustproxy"], rps["registry"]),
            "target_ratio": 1.0,
            "runs": rows,
        }
    finally:
        if proxy is not None:
            proxy.stop()
        registry.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_notation")
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk run")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--runs", type=int, default=200, help="cold verifications")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--skip-warm", action="store_true", help="the in-process part only")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"when": datetime.now(UTC).isoformat()}
    results["cold_jws_3_cert_chain"] = cold = bench_cold_jws(args.runs)
    log(
        f"cold JWS verification, 3-certificate chain: median {cold['median_ms']:.2f} ms, "
        f"min {cold['min_ms']:.2f} ms (target <= 5 ms)"
    )
    if not args.skip_warm:
        with TemporaryDirectory(prefix="bench-notation-") as tmp:
            warm = bench_warm(Path(tmp), args.seconds, args.reps, args.connections)
        results["warm_manifest_by_tag"] = warm
        log(
            f"warm manifest by tag under a Notation rule: trustproxy "
            f"{warm['rps_median']['trustproxy']:.0f} req/s, registry "
            f"{warm['rps_median']['registry']:.0f} req/s: "
            f"{warm['trustproxy_vs_registry_rps']:.2f}x (target >= 1.0x)"
        )
    text = json.dumps(results, indent=2, default=str)
    if args.json is not None:
        args.json.write_text(text + "\n", encoding="utf-8")
    print(text if args.json is None else f"results: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
