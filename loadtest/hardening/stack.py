"""The stack the fault and soak runs drive, all on loopback, every process stopped by PID::

    wrk / prober --> replica a --+--> docker-registry      (restartable, same port)
    wrk / prober --> replica b --+--> redis-server         (restartable, same port, empty)
                                 +--HTTPS--> notary-server --> notary-signer
                                             (restartable; metadata in PostgreSQL)

Two trustproxy replicas share one Redis (as deployed with the Helm chart), with a short
``refresh_interval``/``retry_interval`` so that trust data is refreshed during each fault,
and each writes its audit records to a file of its own. One publisher signs every
repository; the policy pins its root key.

The content (:class:`World`) is what a fail-open proxy would get wrong: signed tags; a tag
re-pushed to other (unsigned) bytes after it was signed; a tag that is in the registry but
not signed; a repository without trust data; and, per phase, repositories no replica has
seen (cold pulls). ``World.signed`` is the honest trust data: which digests each tag is
signed at, the reference for every "was unsigned content served?" check.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from loadtest.hardening.postgres import PostgresServer, postgres_bindir
from loadtest.stack import start_bench_registry
from testbed import images
from testbed.enforcement_bed import (
    EnforcementBed,
    EnforcingProxy,
    proxy_config,
    rule,
    upstream,
    write_policy,
)
from testbed.notary_server import NotaryBed
from testbed.processes import Server, free_port
from testbed.proxy_server import start_proxy
from testbed.redis_server import RedisServer

MiB = 1024 * 1024
ACCEPT = {"Accept": images.ACCEPT_ALL}


@dataclass(frozen=True)
class StackConfig:
    """What the replicas are configured with (reported with the results)."""

    replicas: tuple[str, ...] = ("a", "b")
    refresh_interval: float = 3.0  # trust source refresh_interval (and cache.refresh_seconds)
    retry_interval: float = 2.0  # trust source retry_interval
    redis_timeout: float = 0.5
    lock_timeout: float = 5.0
    #: notary-server on PostgreSQL (restartable with its data); memory when False
    persistent_notary: bool = True


@dataclass
class Replica:
    name: str
    proxy: EnforcingProxy
    port: int
    audit_file: Path

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def pid(self) -> int:
        return self.proxy.server.pid

    def identity(self) -> dict[str, Any]:
        """PID and start time: a restarted process has another (or the PID is reused with
        another start time)."""
        try:
            created = psutil.Process(self.pid).create_time()
        except psutil.NoSuchProcess:
            created = 0.0
        return {"pid": self.pid, "create_time": created, "alive": self.proxy.server.alive()}


@dataclass
class Stack:
    workdir: Path
    config: StackConfig
    registry: Server
    notary: NotaryBed
    redis: RedisServer
    postgres: PostgresServer | None
    bed: EnforcementBed
    replicas: list[Replica]
    _exit: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def registry_url(self) -> str:
        return self.registry.extra["url"]

    def close(self) -> None:
        self._exit.close()

    def pids(self) -> dict[str, dict[str, Any]]:
        return {r.name: r.identity() for r in self.replicas}

    def logs(self, lines: int = 30) -> str:
        return "\n".join(
            f"--- {r.name} ---\n{r.proxy.server.log_tail(lines)}" for r in self.replicas
        )


def postgres_available() -> bool:
    return postgres_bindir() is not None


def start_stack(workdir: Path, config: StackConfig) -> Stack:
    """Start every server; on any failure stop what started (by PID)."""
    workdir = workdir.resolve()
    exit_stack = contextlib.ExitStack()
    try:
        registry = start_bench_registry(workdir / "registry")
        exit_stack.callback(registry.stop)
        postgres: PostgresServer | None = None
        storage = "memory"
        if config.persistent_notary:
            postgres = PostgresServer(workdir / "postgres").start()
            exit_stack.callback(postgres.stop)
            storage = postgres.url
        notary = NotaryBed.start(workdir / "notary", log_level="error", storage=storage)
        exit_stack.callback(notary.stop)
        redis = RedisServer(workdir / "redis")
        redis.start()
        exit_stack.callback(redis.stop)
        ns = f"h{uuid.uuid4().hex[:6]}"
        bed = EnforcementBed.create(
            workdir / "publisher", registry.extra["url"], notary, namespace=ns
        )
        exit_stack.callback(bed.close)
        bed.trust("warm/app")  # the publisher's root key exists from its first repository
        policy_file = write_policy(
            workdir / "proxies" / "policy.yaml",
            {bed.pattern("*/app"): rule(root_keys=[bed.root_key_id])},
        )
        replicas: list[Replica] = []
        for name in config.replicas:
            audit_file = workdir / "proxies" / f"{name}-audit.jsonl"
            proxy_cfg = proxy_config(
                [upstream("internal", bed.registry_url)],
                notary,
                policy_file,
                audit_file=audit_file,
                source_options={
                    "refresh_interval": config.refresh_interval,
                    "retry_interval": config.retry_interval,
                },
            )
            proxy_cfg["cache"] = {
                "redis_url": redis.url,
                "key_prefix": f"hardening-{ns}:",
                "refresh_seconds": config.refresh_interval,
                "redis_timeout": config.redis_timeout,
                "lock_timeout": config.lock_timeout,
            }
            port = free_port()
            server = start_proxy(workdir / "proxies", proxy_cfg, name=name, port=port)
            proxy = EnforcingProxy(server, policy_file, audit_file)
            exit_stack.callback(proxy.stop)
            replicas.append(Replica(name, proxy, port, audit_file))
    except BaseException:
        exit_stack.close()
        raise
    return Stack(
        workdir=workdir,
        config=config,
        registry=registry,
        notary=notary,
        redis=redis,
        postgres=postgres,
        bed=bed,
        replicas=replicas,
        _exit=exit_stack,
    )


# -- content ------------------------------------------------------------------------------------


@dataclass
class World:
    """What was pushed and signed. Keys are registry paths (``<namespace>/<name>``)."""

    #: (repository, tag) -> digests the trust data signs the tag at (the honest answer)
    signed: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    #: (repository, tag) -> the digest the registry's tag points at, where it is NOT signed
    unsigned_in_registry: dict[tuple[str, str], str] = field(default_factory=dict)
    #: repositories with trust data, and without any
    trusted_repos: set[str] = field(default_factory=set)
    untrusted_repos: set[str] = field(default_factory=set)
    #: blob digests (and sizes) pushed into a warm repository
    blobs: dict[str, tuple[str, int]] = field(default_factory=dict)  # digest -> (repo, size)
    warm_manifests: list[tuple[str, str]] = field(default_factory=list)
    warm_refused: list[tuple[str, str]] = field(default_factory=list)
    tag_lists: list[str] = field(default_factory=list)
    #: per pool name (e.g. "registry-down"): cold repositories (repo, tag, signed?)
    cold: dict[str, list[tuple[str, str, bool]]] = field(default_factory=dict)

    def signed_tags(self, repo: str) -> set[str]:
        return {tag for (r, tag) in self.signed if r == repo}

    def signed_digests(self, repo: str) -> set[str]:
        out: set[str] = set()
        for (r, _), digests in self.signed.items():
            if r == repo:
                out |= digests
        return out


def _sign(stack: Stack, world: World, name: str, tag: str, image: images.Image) -> str:
    target = stack.bed.push_and_sign(name, tag, image)
    digest = f"sha256:{target.sha256}"
    repo = stack.bed.repo(name)
    world.signed.setdefault((repo, tag), set()).add(digest)
    world.trusted_repos.add(repo)
    return digest


def build_world(
    stack: Stack, cold_pools: Iterable[str], *, cold_signed: int, cold_plain: int
) -> World:
    """Push and sign the content; ``cold_pools`` names the pools of never-seen
    repositories to make (``cold_signed`` signed and ``cold_plain`` untrusted ones each)."""
    bed, world = stack.bed, World()
    ns = bed.namespace
    for tag in ("v1", "v2"):
        _sign(stack, world, "warm/app", tag, images.single_image(f"{ns} warm {tag}"))
        world.warm_manifests.append((bed.repo("warm/app"), tag))
    _sign(stack, world, "warm2/app", "v1", images.single_image(f"{ns} warm2 v1"))
    world.warm_manifests.append((bed.repo("warm2/app"), "v1"))
    # Signed, then the registry's tag moved to other bytes: a proxy that trusts the tag (or
    # the registry's Docker-Content-Digest) serves unsigned content here.
    _sign(stack, world, "warm/app", "moved", images.single_image(f"{ns} moved signed"))
    moved = images.single_image(f"{ns} moved UNSIGNED")
    bed.push("warm/app", moved, "moved")
    world.unsigned_in_registry[(bed.repo("warm/app"), "moved")] = moved.digest
    world.warm_manifests.append((bed.repo("warm/app"), "moved"))
    # In the registry, never signed, in a repository with trust data.
    extra = images.single_image(f"{ns} extra UNSIGNED")
    bed.push("warm/app", extra, "unsigned")
    world.unsigned_in_registry[(bed.repo("warm/app"), "unsigned")] = extra.digest
    world.warm_refused.append((bed.repo("warm/app"), "unsigned"))
    # A repository without any trust data.
    plain = images.single_image(f"{ns} plain UNSIGNED")
    bed.push("plain/app", plain, "v1")
    world.unsigned_in_registry[(bed.repo("plain/app"), "v1")] = plain.digest
    world.untrusted_repos.add(bed.repo("plain/app"))
    world.warm_refused.append((bed.repo("plain/app"), "v1"))
    world.tag_lists = [bed.repo("warm/app"), bed.repo("warm2/app")]
    # The blobs of the signed warm image.
    warm_image = images.single_image(f"{ns} warm v1")
    for blob in warm_image.blobs:
        world.blobs[blob.digest] = (bed.repo("warm/app"), len(blob.data))
    for pool in cold_pools:
        entries: list[tuple[str, str, bool]] = []
        for i in range(cold_signed):
            name = f"cold-{pool}-{i}/app"
            _sign(stack, world, name, "v1", images.single_image(f"{ns} {name}"))
            entries.append((bed.repo(name), "v1", True))
        for i in range(cold_plain):
            name = f"coldplain-{pool}-{i}/app"
            image = images.single_image(f"{ns} {name} UNSIGNED")
            bed.push(name, image, "v1")
            world.unsigned_in_registry[(bed.repo(name), "v1")] = image.digest
            world.untrusted_repos.add(bed.repo(name))
            entries.append((bed.repo(name), "v1", False))
        world.cold[pool] = entries
    return world


def push_big_blob(stack: Stack, world: World, label: str, size: int) -> str:
    """A ``size``-byte pseudo-random blob in the warm repository (soak: blobs of MiBs)."""
    seed = f"{stack.bed.namespace}-{label}-{size}".encode()
    digest = images.random_blob_digest(size, seed=seed)
    repo = stack.bed.repo("warm/app")
    with httpx.Client(base_url=stack.registry_url, timeout=300) as client:
        images.push_blob_stream(client, repo, images.random_chunks(size, seed=seed), digest)
    world.blobs[digest] = (repo, size)
    return digest


def warm_up(stack: Stack, world: World) -> None:
    """Every warm reference once through every replica (trust state, manifest cache), and
    check the baseline answers; raises RuntimeError with the logs when one is wrong."""
    for replica in stack.replicas:
        with httpx.Client(base_url=replica.url, timeout=30, headers=ACCEPT) as http:
            for repo, tag in world.warm_manifests:
                r = http.get(f"/v2/{repo}/manifests/{tag}")
                if (
                    r.status_code != 200
                    or images.sha256(r.content) not in world.signed[(repo, tag)]
                ):
                    raise RuntimeError(
                        f"warm-up {replica.name} {repo}:{tag}: {r.status_code} {r.text[:300]}\n"
                        f"{stack.logs()}"
                    )
            for repo, tag in world.warm_refused:
                r = http.get(f"/v2/{repo}/manifests/{tag}")
                if r.status_code != 404:
                    raise RuntimeError(f"warm-up {replica.name} {repo}:{tag}: {r.status_code}")
            for digest, (repo, _) in world.blobs.items():
                r = http.get(f"/v2/{repo}/blobs/{digest}")
                if r.status_code != 200:
                    raise RuntimeError(f"warm-up blob {digest}: {r.status_code}")
            for repo in world.tag_lists:
                r = http.get(f"/v2/{repo}/tags/list")
                if r.status_code != 200:
                    raise RuntimeError(f"warm-up tags {repo}: {r.status_code}")
