"""The real stack the benchmark measures, all on loopback, every process stopped by PID::

    wrk / hey / curl --> docker-registry                                   (direct)
    wrk / hey / curl --> nginx (plain reverse proxy) --> docker-registry   (baseline)
    wrk / hey / curl --> trustproxy --> docker-registry                    (measured)
                             |--> redis-server (shared trust state)
                             +--HTTPS--> notary-server --> notary-signer

Both trustproxies run as the issue's table asks: ``server.workers`` = every CPU this process
may use (the pre-fork master and its workers; CPU and RSS are read over the whole process
tree), plus a second trustproxy (``sf``) that reads trust data through a counting HTTPS front
(``testbed.counting_front``), used only to count notary fetches under a cold burst (the
front is a Python relay: it would slow the main proxy's cold path, so that one talks to
notary-server directly), and a third with ``blobs: redirect`` for the redirect row.

One publisher signs every repository (``<registry>/bench/*``); the policy pins its root key.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from proxy.workers import cpu_count
from testbed import images
from testbed.counting_front import CountingFront
from testbed.enforcement_bed import (
    EnforcementBed,
    EnforcingProxy,
    proxy_config,
    rule,
    upstream,
    write_policy,
)
from testbed.nginx import start_nginx
from testbed.notary_server import NotaryBed
from testbed.processes import Server, free_port, start_server
from testbed.proxy_server import start_proxy
from testbed.redis_server import RedisServer
from testbed.registry import registry_binary, registry_config
from testbed.trust_scenarios import SignedTarget

NAMESPACE = "bench"
WARM_REPO = "app"  # <namespace>/app:v1, signed: the warm manifest target
WARM_TAG = "v1"
#: trustproxy re-checks a repository's timestamp at most this often (its default).
REFRESH_SECONDS = 30.0
#: trustproxy's worker processes: its default (``auto``), spelled out for the report.
WORKERS = cpu_count()


def start_bench_registry(workdir: Path) -> Server:
    """docker-registry as the testbed starts it, plus the in-memory blob descriptor cache
    that distribution's sample config (and Debian's) enables: the baseline is a registry
    configured the usual way, not a handicapped one."""
    binary = registry_binary()
    if binary is None:
        raise RuntimeError("docker-registry is not installed (apt-get install docker-registry)")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = registry_config(workdir, port)
    config["storage"]["cache"] = {"blobdescriptor": "inmemory"}
    path = workdir / "registry.yml"
    path.write_text(yaml.safe_dump(config))
    server = start_server("registry", [binary, "serve", str(path)], log_dir=workdir, port=port)
    server.extra["url"] = f"http://127.0.0.1:{port}"
    server.extra["host"] = f"127.0.0.1:{port}"
    return server


@dataclass
class BlobRef:
    repo: str
    digest: str
    size: int

    @property
    def path(self) -> str:
        return f"/v2/{self.repo}/blobs/{self.digest}"


@dataclass
class Stack:
    workdir: Path
    registry: Server
    notary: NotaryBed
    redis: RedisServer
    front: CountingFront
    bed: EnforcementBed
    proxy: EnforcingProxy
    sf_proxy: EnforcingProxy
    redirect_proxy: EnforcingProxy
    nginx: Server
    warm_target: SignedTarget | None = None
    blobs: dict[str, BlobRef] = field(default_factory=dict)
    _exit: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _counter: int = 0

    # -- addresses ------------------------------------------------------------------------------

    @property
    def urls(self) -> dict[str, str]:
        """The three measured targets, in their reporting order."""
        return {
            "registry": self.registry.extra["url"],
            "nginx": self.nginx.extra["url"],
            "trustproxy": self.proxy.url,
        }

    @property
    def pids(self) -> dict[str, int]:
        return {
            "registry": self.registry.pid,
            "nginx": self.nginx.pid,
            "trustproxy": self.proxy.server.pid,
        }

    def manifest_path(self, repo: str, tag: str) -> str:
        return f"/v2/{repo}/manifests/{tag}"

    # -- content --------------------------------------------------------------------------------

    def new_signed_repo(self, prefix: str) -> tuple[str, SignedTarget]:
        """A repository no proxy has seen: ``notary init`` + publish, push an image, sign
        ``v1`` in ``targets``. Returns (repository path, signed target)."""
        self._counter += 1
        name = f"{prefix}-{self._counter}-{uuid.uuid4().hex[:6]}"
        image = images.single_image(f"{NAMESPACE} {name}")
        target = self.bed.push_and_sign(name, "v1", image)
        return self.bed.repo(name), target

    def push_blob(self, label: str, size: int) -> BlobRef:
        """A ``size``-byte pseudo-random blob in ``bench/app``, pushed in chunks."""
        seed = f"{label}-{size}".encode()
        digest = images.random_blob_digest(size, seed=seed)
        repo = self.bed.repo(WARM_REPO)
        with httpx.Client(base_url=self.registry.extra["url"], timeout=300) as client:
            if client.head(f"/v2/{repo}/blobs/{digest}").status_code != 200:
                images.push_blob_stream(client, repo, images.random_chunks(size, seed=seed), digest)
        ref = BlobRef(repo, digest, size)
        self.blobs[label] = ref
        return ref

    # -- life cycle -----------------------------------------------------------------------------

    def close(self) -> None:
        self._exit.close()


def _start_trustproxy(
    workdir: Path,
    name: str,
    bed: EnforcementBed,
    notary: NotaryBed,
    redis: RedisServer,
    policy_file: Path,
    *,
    source_url: str | None,
    key_prefix: str,
    blobs: str = "stream",
    workers: int = WORKERS,
) -> EnforcingProxy:
    audit_file = workdir / f"{name}-audit.jsonl"
    options: dict[str, Any] = {"url": source_url} if source_url else {}
    config = proxy_config(
        [upstream("internal", bed.registry_url, blobs=blobs)],
        notary,
        policy_file,
        audit_file=audit_file,
        source_options=options,
    )
    config["cache"] = {
        "redis_url": redis.url,
        "key_prefix": key_prefix,
        "refresh_seconds": REFRESH_SECONDS,
    }
    config["server"] = {"workers": workers}
    server = start_proxy(workdir, config, name=name)
    return EnforcingProxy(server=server, policy_file=policy_file, audit_file=audit_file)


def start_stack(workdir: Path) -> Stack:
    """Start every server and sign the warm repository; on any failure, stop what started."""
    workdir = workdir.resolve()
    exit_stack = contextlib.ExitStack()
    try:
        registry = start_bench_registry(workdir / "registry")
        exit_stack.callback(registry.stop)
        notary = NotaryBed.start(workdir / "notary", log_level="error")
        exit_stack.callback(notary.stop)
        redis = RedisServer(workdir / "redis")
        redis.start()
        exit_stack.callback(redis.stop)
        front = CountingFront(notary, workdir / "front")
        front.start()
        exit_stack.callback(front.stop)
        bed = EnforcementBed.create(
            workdir / "publisher", registry.extra["url"], notary, namespace=NAMESPACE
        )
        exit_stack.callback(bed.close)
        warm = bed.push_and_sign(WARM_REPO, WARM_TAG, images.single_image(f"{NAMESPACE} warm"))
        policy_file = write_policy(
            workdir / "proxies" / "policy.yaml",
            {bed.pattern("*"): rule(root_keys=[bed.root_key_id])},
        )
        ns = uuid.uuid4().hex[:8]
        proxy = _start_trustproxy(
            workdir / "proxies",
            "trustproxy",
            bed,
            notary,
            redis,
            policy_file,
            source_url=None,
            key_prefix=f"bench-{ns}-main:",
        )
        exit_stack.callback(proxy.stop)
        sf_proxy = _start_trustproxy(
            workdir / "proxies",
            "trustproxy-sf",
            bed,
            notary,
            redis,
            policy_file,
            source_url=front.url,
            key_prefix=f"bench-{ns}-sf:",
        )
        exit_stack.callback(sf_proxy.stop)
        # ``blobs: redirect`` (one worker: it only answers blob GETs with a redirect).
        redirect_proxy = _start_trustproxy(
            workdir / "proxies",
            "trustproxy-redirect",
            bed,
            notary,
            redis,
            policy_file,
            source_url=None,
            key_prefix=f"bench-{ns}-redirect:",
            blobs="redirect",
            workers=1,
        )
        exit_stack.callback(redirect_proxy.stop)
        nginx = start_nginx(workdir / "nginx", registry.extra["url"])
        exit_stack.callback(nginx.stop)
    except BaseException:
        exit_stack.close()
        raise
    return Stack(
        workdir=workdir,
        registry=registry,
        notary=notary,
        redis=redis,
        front=front,
        bed=bed,
        proxy=proxy,
        sf_proxy=sf_proxy,
        redirect_proxy=redirect_proxy,
        nginx=nginx,
        warm_target=warm,
        _exit=exit_stack,
    )


def manifest_digest(target: SignedTarget) -> str:
    return f"sha256:{target.sha256}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
