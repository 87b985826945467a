"""Building blocks for the multi-replica tests: several trustproxy processes sharing one real
redis-server, reading trust data through a counting (and, on demand, lying) front::

    httpx --> replica a --+                      +--> docker-registry
    httpx --> replica b --+--> redis-server      |
                          +--HTTPS--> CountingFront --HTTPS--> notary-server

Every replica gets the same config (the cache section names the shared Redis and its key
prefix) and the same policy; a replica can be restarted on its own port with that config.
Stored records are found by scanning the prefix, so the tests depend on the key scheme of
``proxy.sources.redis_store`` only as far as "a hash with the record in its ``data`` field":
the record of a GUN is the key under the prefix holding a trust-state record for that GUN.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from redis import Redis

from proxy.sources.notary.source import decode_record, encode_record
from proxy.sources.notary.tuf.state import TrustedState
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
from testbed.notary_server import NotaryBed
from testbed.processes import free_port
from testbed.proxy_server import start_proxy
from testbed.redis_server import RedisServer

RECORD_MAGIC = b"trustproxy-notary-state/1 "
RECORD_FIELD = b"data"  # proxy.sources.redis_store: <prefix>...state:<gun> is a hash


def cache_section(
    redis_server: RedisServer,
    *,
    key_prefix: str,
    refresh_seconds: float,
    lock_timeout: float = 10.0,
    redis_timeout: float = 0.5,
) -> dict[str, Any]:
    """The config's ``cache:`` section for replicas sharing ``redis_server``."""
    return {
        "redis_url": redis_server.url,
        "refresh_seconds": refresh_seconds,
        "lock_timeout": lock_timeout,
        "key_prefix": key_prefix,
        "redis_timeout": redis_timeout,
    }


@dataclass
class Replica:
    """One trustproxy process of the set; :meth:`restart` keeps its port and config."""

    name: str
    workdir: Path
    config: dict[str, Any]
    port: int
    proxy: EnforcingProxy

    @property
    def url(self) -> str:
        return self.proxy.url

    def stop(self) -> None:
        self.proxy.stop()

    def restart(self) -> None:
        self.proxy.stop()
        server = start_proxy(self.workdir, self.config, name=self.name, port=self.port)
        self.proxy = EnforcingProxy(server, self.proxy.policy_file, self.proxy.audit_file)

    def manifest(self, repo: str, tag: str) -> httpx.Response:
        return self.proxy.manifest(repo, tag)

    def get(self, path: str) -> httpx.Response:
        with self.proxy.client() as http:
            return http.get(path)

    def log_tail(self, lines: int = 30) -> str:
        return f"--- {self.name} ---\n{self.proxy.server.log_tail(lines)}"


@dataclass
class ReplicaSet:
    """Replicas sharing one Redis, the front they fetch trust data through, and the
    publisher's bed (registry + notary) the tests sign with."""

    bed: EnforcementBed
    redis: RedisServer
    front: CountingFront
    key_prefix: str
    refresh_seconds: float
    replicas: list[Replica] = field(default_factory=list)

    def __getitem__(self, index: int) -> Replica:
        return self.replicas[index]

    def stop(self) -> None:
        for r in self.replicas:
            r.stop()

    def logs(self, lines: int = 30) -> str:
        """Every replica's log tail (for assertion messages)."""
        return "\n".join(r.log_tail(lines) for r in self.replicas)

    # -- the shared store, seen from outside ---------------------------------------------------

    def redis_client(self) -> Redis:
        return Redis(host=self.redis.host, port=self.redis.port, socket_timeout=5.0)

    def keys(self) -> list[bytes]:
        with self.redis_client() as r:
            return sorted(r.scan_iter(match=f"{self.key_prefix}*".encode(), count=1000))

    def record_key(self, gun: str) -> bytes | None:
        """The key holding ``gun``'s trust-state record (``proxy.sources.redis_store``: a
        hash whose ``data`` field is the record; a plain string value is accepted too), or
        None when there is none."""
        for key in self.keys():
            value = self.read(key)
            if value is None or not value.startswith(RECORD_MAGIC):
                continue
            try:
                _, state = decode_record(value, max_bytes=64 * 1024 * 1024)
            except Exception:  # noqa: S112 - someone else's garbage: not our record
                continue
            if state.gun == gun:
                return key
        return None

    def read(self, key: bytes) -> bytes | None:
        """The record bytes under ``key`` (the hash's ``data`` field, or the string)."""
        with self.redis_client() as r:
            kind = r.type(key)
            if kind == b"hash":
                value = r.hget(key, RECORD_FIELD)
            elif kind == b"string":
                value = r.get(key)
            else:
                return None
        return value if isinstance(value, bytes) else None

    def record(self, gun: str) -> tuple[datetime, TrustedState] | None:
        key = self.record_key(gun)
        value = None if key is None else self.read(key)
        return None if value is None else decode_record(value, max_bytes=64 * 1024 * 1024)

    def overwrite(self, key: bytes, value: bytes) -> None:
        """Replace the record bytes under ``key`` in place (the hash's ``data`` field, other
        fields kept; a string keeps its TTL)."""
        with self.redis_client() as r:
            if r.type(key) == b"hash":
                r.hset(key, RECORD_FIELD, value)
            else:
                r.set(key, value, keepttl=True)

    def lock_key(self, gun: str) -> bytes:
        """The key of ``gun``'s cross-replica refresh lock: beside its record
        (``proxy.sources.redis_store``: ``...state:<gun>`` / ``...lock:<gun>``)."""
        key = self.record_key(gun)
        if key is None:
            raise RuntimeError(f"no record for {gun} yet: pull through a replica first")
        head = key[: -len(gun.encode())]
        if not head.endswith(b"state:"):
            raise RuntimeError(f"unexpected key layout: {key!r}")
        return head[: -len(b"state:")] + b"lock:" + gun.encode()

    def set_field(self, key: bytes, name: bytes, value: bytes) -> None:
        """Set one field of the record hash (``gen``, say) as a Redis writer could."""
        with self.redis_client() as r:
            r.hset(key, name, value)

    def replace_with_string(self, key: bytes, value: bytes) -> None:
        """Replace ``key`` by a plain string value (a key of the wrong type)."""
        with self.redis_client() as r:
            r.delete(key)
            r.set(key, value)


def start_replica_set(
    workdir: Path,
    bed: EnforcementBed,
    notary: NotaryBed,
    redis_server: RedisServer,
    front: CountingFront,
    repositories: Mapping[str, Mapping[str, Any]],
    *,
    names: Sequence[str] = ("a", "b"),
    key_prefix: str,
    refresh_seconds: float,
    cache_extra: Mapping[str, Any] | None = None,
    source_extra: Mapping[str, Any] | None = None,
) -> ReplicaSet:
    """Start one trustproxy per name, all with the same policy and cache section, trust
    source ``url`` = the front (its certificate comes from the notary bed's CA, so the
    source's ``ca_file`` stays the bed's CA)."""
    workdir.mkdir(parents=True, exist_ok=True)
    policy_file = write_policy(workdir / "policy.yaml", repositories)
    cache = cache_section(redis_server, key_prefix=key_prefix, refresh_seconds=refresh_seconds)
    cache.update(cache_extra or {})
    replicas = ReplicaSet(bed, redis_server, front, key_prefix, refresh_seconds)
    try:
        for name in names:
            audit_file = workdir / f"{name}-audit.jsonl"
            config = proxy_config(
                [upstream("internal", bed.registry_url)],
                notary,
                policy_file,
                audit_file=audit_file,
                source_options={"url": front.url, **(source_extra or {})},
            )
            config["cache"] = dict(cache)
            port = free_port()
            server = start_proxy(workdir, config, name=name, port=port)
            proxy = EnforcingProxy(server, policy_file, audit_file)
            replicas.replicas.append(Replica(name, workdir, config, port, proxy))
    except BaseException:
        replicas.stop()
        raise
    return replicas


@contextlib.contextmanager
def signed_replica_set(
    workdir: Path,
    registry_url: str,
    notary: NotaryBed,
    *,
    label: str,
    refresh_seconds: float,
    cache_extra: Mapping[str, Any] | None = None,
    source_extra: Mapping[str, Any] | None = None,
) -> Iterator[ReplicaSet]:
    """Replicas ``a`` and ``b`` on their own redis-server and counting front, enforcing
    ``<namespace>/*/app`` under the bed publisher's root key (``namespace``: ``label`` and a
    random suffix, so test modules sharing the registry and notary share nothing else)."""
    ns = f"{label}{uuid.uuid4().hex[:8]}"
    bed = EnforcementBed.create(workdir / "bed", registry_url, notary, namespace=ns)
    redis_server = RedisServer(workdir / "redis")
    front = CountingFront(notary, workdir / "front")
    started: ReplicaSet | None = None
    try:
        bed.trust("setup/app")  # the publisher's root key exists from here on
        redis_server.start()
        front.start()
        started = start_replica_set(
            workdir / "proxies",
            bed,
            notary,
            redis_server,
            front,
            {bed.pattern("*/app"): rule(root_keys=[bed.root_key_id])},
            key_prefix=f"tp-{ns}:",
            refresh_seconds=refresh_seconds,
            cache_extra=cache_extra,
            source_extra=source_extra,
        )
        yield started
    finally:
        if started is not None:
            started.stop()
        front.stop()
        redis_server.stop()
        bed.close()


# -- load -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    replica: str
    repo: str
    tag: str
    status: int  # 0: no HTTP answer (connection error, timeout)
    digest: str | None
    error: str = ""


async def _one(
    http: httpx.AsyncClient, replica: Replica, repo: str, tag: str, limit: float
) -> Answer:
    try:
        r = await http.get(
            f"{replica.url}/v2/{repo}/manifests/{tag}",
            headers={"Accept": images.ACCEPT_ALL},
            timeout=limit,
        )
    except httpx.HTTPError as e:
        return Answer(replica.name, repo, tag, 0, None, repr(e))
    digest = images.sha256(r.content) if r.status_code == 200 else None
    return Answer(replica.name, repo, tag, r.status_code, digest, "" if digest else r.text[:300])


async def burst(
    requests: Iterable[tuple[Replica, str, str]], *, request_timeout: float = 60.0
) -> list[Answer]:
    """Send every ``(replica, repo, tag)`` manifest GET at once; the answers in order."""
    todo = list(requests)
    limits = httpx.Limits(max_connections=len(todo) + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits) as http:
        return list(
            await asyncio.gather(*(_one(http, r, repo, t, request_timeout) for r, repo, t in todo))
        )


async def sustained(
    targets: Sequence[tuple[Replica, str, str]],
    *,
    seconds: float,
    concurrency: int = 16,
    request_timeout: float = 30.0,
) -> list[Answer]:
    """Round-robin over ``targets`` with ``concurrency`` workers for ``seconds``."""
    answers: list[Answer] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    counter = 0

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal counter
        while loop.time() < end:
            replica, repo, tag = targets[counter % len(targets)]
            counter += 1
            answers.append(await _one(http, replica, repo, tag, request_timeout))

    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(limits=limits) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return answers


# -- a well-formed but tampered record ----------------------------------------------------------


def retarget_record(record: bytes, role: str, tag: str, data: bytes) -> bytes:
    """``record`` (a stored trust-state record) with ``tag`` in ``role``'s metadata pointing
    at ``data``'s sha256 and length, and a fetch time of now (so a replica takes it as fresh
    and replays it): shape-valid, signature broken."""
    _, state = decode_record(record, max_bytes=64 * 1024 * 1024)
    doc = json.loads(state.metadata[role])
    entry = doc["signed"]["targets"][tag]
    entry["hashes"] = {"sha256": _b64(images.sha256(data).removeprefix("sha256:"))}
    entry["length"] = len(data)
    metadata = dict(state.metadata)
    metadata[role] = json.dumps(doc, separators=(",", ":")).encode()
    tampered = TrustedState(
        gun=state.gun, root=state.root, versions=state.versions, metadata=metadata
    )
    return encode_record(tampered, datetime.now(UTC))


def redate_record(record: bytes) -> bytes:
    """``record`` unchanged but for its fetch time, now: an old genuine state made to look
    fresh."""
    _, state = decode_record(record, max_bytes=64 * 1024 * 1024)
    return encode_record(state, datetime.now(UTC))


def _b64(hex_digest: str) -> str:
    import base64

    return base64.b64encode(bytes.fromhex(hex_digest)).decode("ascii")
