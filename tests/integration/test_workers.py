"""``proxy serve`` with ``server.workers: 2`` against the real registry and notary-server,
without Redis: the workers share trust state through the host's state file
(``cache.state_dir``), so no check is weaker than with one process. With Redis (the last
tests) records and lock are there, and the floors and the hand-over between the workers
stay in the host's file.

Which worker answered a request is read from the proxy's log (every line of a worker carries
its ``worker`` slot). Connections are spread by the kernel (one ``SO_REUSEPORT`` socket per
worker, picked by a hash of the connection's addresses), so a test that needs "the other
worker" sends several requests, each on a new connection, and checks from the log that the
other worker did answer some.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from proxy.sources.sqlite_store import STATE_FILE_NAME
from testbed import images
from testbed.counting_front import CountingFront
from testbed.enforcement_bed import (
    EnforcementBed,
    EnforcingProxy,
    oci_error,
    proxy_config,
    rule,
    upstream,
    wait_until,
    write_policy,
)
from testbed.notary_server import NotaryBed
from testbed.proxy_server import start_proxy
from testbed.redis_server import RedisServer, redis_binary
from testbed.trust_scenarios import RELEASES
from tests.conftest import RegistryBed, requires

pytestmark = pytest.mark.integration

REFRESH = 2.0  # cache.refresh_seconds
BURST = 200


@dataclass
class WorkerBed:
    bed: EnforcementBed
    front: CountingFront
    proxy: EnforcingProxy
    workdir: Path
    config: dict[str, Any]

    @property
    def log_path(self) -> Path:
        return self.proxy.server.log_path

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def answered_by(self, path_part: str, *, since: int = 0) -> Counter[int]:
        """How many requests whose path contains ``path_part`` each worker answered
        (access log lines from line ``since`` on)."""
        return Counter(
            int(line["worker"])
            for line in self.log_lines()[since:]
            if line.get("logger") == "trustproxy.access" and path_part in line.get("path", "")
        )

    def logs(self, lines: int = 40) -> str:
        return self.proxy.server.log_tail(lines)


def start_worker_bed(
    workdir: Path,
    registry_url: str,
    notary: NotaryBed,
    *,
    label: str,
    cache: dict[str, Any] | None = None,
) -> tuple[EnforcementBed, CountingFront, EnforcingProxy, dict[str, Any]]:
    ns = f"{label}{uuid.uuid4().hex[:8]}"
    bed = EnforcementBed.create(workdir / "bed", registry_url, notary, namespace=ns)
    front = CountingFront(notary, workdir / "front")
    try:
        bed.trust("setup/app")  # the publisher's root key exists from here on
        front.start()
        policy_file = write_policy(
            workdir / "policy.yaml", {bed.pattern("*/app"): rule(root_keys=[bed.root_key_id])}
        )
        config = proxy_config(
            [upstream("internal", bed.registry_url)],
            notary,
            policy_file,
            # Without the change feed: a change it reports while a burst is in flight (the
            # publish just before it) makes a worker ask the trust server itself, one more
            # timestamp fetch than the single flight this file counts. The feed across
            # workers is tests/integration/test_changefeed.py's.
            source_options={"url": front.url, "changefeed": {"enabled": False}},
        )
        config["server"] = {"workers": 2}
        config["cache"] = {
            "refresh_seconds": REFRESH,
            "state_dir": str(workdir / "state"),
            **(cache or {}),
        }
        server = start_proxy(workdir, config, name="workers")
    except BaseException:
        front.stop()
        bed.close()
        raise
    return bed, front, EnforcingProxy(server, policy_file, None), config


@pytest.fixture(scope="module")
def workers(
    registry: RegistryBed, notary_bed: NotaryBed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerBed]:
    requires("notary")
    workdir = tmp_path_factory.mktemp("workers")
    bed, front, proxy, config = start_worker_bed(workdir, registry.url, notary_bed, label="wk")
    try:
        yield WorkerBed(bed, front, proxy, workdir, config)
    finally:
        proxy.stop()
        front.stop()
        bed.close()


def _image(wb: WorkerBed, label: str) -> images.Image:
    return images.single_image(f"{wb.bed.namespace} {label}")


async def _get_each_on_new_connection(url: str, paths: list[str]) -> list[tuple[int, bytes, str]]:
    """GET every path at once, each on its own connection (so the kernel spreads them)."""
    limits = httpx.Limits(max_connections=len(paths) + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:

        async def one(path: str) -> tuple[int, bytes, str]:
            r = await http.get(path, headers={"Accept": images.ACCEPT_ALL})
            return r.status_code, r.content, r.text[:300]

        return list(await asyncio.gather(*(one(p) for p in paths)))


def _pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        # A zombie is gone as a process (reaped later by its parent): read its state.
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def _worker_pids(wb: WorkerBed) -> list[int]:
    return [
        int(line["worker_pid"])
        for line in wb.log_lines()
        if line.get("msg", "").startswith("worker ") and line.get("msg", "").endswith("started")
    ]


# -- single flight and rollback across the workers -------------------------------------------------


def test_cold_burst_over_both_workers_walks_the_trust_data_once(workers: WorkerBed) -> None:
    """200 concurrent requests on 200 connections, spread by the kernel over both workers,
    for a tag of a repository neither has seen: one worker walks the trust data (the state
    file's refresh lock), the other waits for the state it saves and, vouched for by the
    serve's key, uses it: each file, timestamp.json and the next-root probe included, is
    fetched once from the trust server."""
    _cold_burst_fetches_each_file_once(workers, "burst/app")


def _cold_burst_fetches_each_file_once(workers: WorkerBed, name: str) -> None:
    bed, front = workers.bed, workers.front
    bed.trust(name).add_signer(f"{bed.namespace}-burst", RELEASES)
    target = bed.push_and_sign(name, "v1", _image(workers, f"{name} v1"), role=RELEASES)
    gun, repo = bed.gun(name), bed.repo(name)
    expected = set(front.capture(gun)) | {"root.json"}
    assert any(n.startswith("targets/releases.") for n in expected), expected
    since = time.monotonic()
    answers = asyncio.run(
        _get_each_on_new_connection(workers.proxy.url, [f"/v2/{repo}/manifests/v1"] * BURST)
    )
    assert all(status == 200 for status, _, _ in answers), (
        Counter(status for status, _, _ in answers),
        [text for status, _, text in answers if status != 200][:3],
        workers.logs(),
    )
    assert {images.sha256(body) for _, body, _ in answers} == {f"sha256:{target.sha256}"}
    path = f"/v2/{repo}/manifests/v1"
    # The access line is written after the answer is sent: wait for all of them.
    wait_until(lambda: sum(workers.answered_by(path).values()) >= BURST, timeout=10, interval=0.1)
    by_worker = workers.answered_by(path)
    assert sum(by_worker.values()) == BURST, by_worker
    assert set(by_worker) == {0, 1}, f"one worker answered everything: {by_worker}"
    counts = front.counts(gun, since=since)
    summary = front.summary(gun, since=since)
    for file in sorted(expected):
        assert counts[file] == 1, f"{file} fetched {counts[file]} times:\n{summary}"
    others = {n: c for n, c in counts.items() if n not in expected}
    # The root walk's probe for the next version (404), once.
    assert len(others) == 1, f"unexpected fetches:\n{summary}"
    for file, n in others.items():
        assert re.fullmatch(r"\d+\.root\.json", file), f"unexpected fetch {file}:\n{summary}"
        assert n == 1, f"{file} fetched {n} times:\n{summary}"


def test_rollback_to_the_other_worker_after_one_saw_newer_is_refused(
    workers: WorkerBed,
) -> None:
    """One worker verifies v2 (tag ``old`` revoked); the trust server then serves the older,
    validly signed v1. The other worker, which never fetched this repository itself, must
    refuse it once it asks the server: from what the first left in the state file (record
    and floors)."""
    bed, front = workers.bed, workers.front
    name = "rollback/app"
    gun, repo = bed.gun(name), bed.repo(name)
    bed.push_and_sign(name, "old", _image(workers, f"{name} old"))
    v1 = front.capture(gun)
    bed.trust(name).remove("old")
    new = bed.push_and_sign(name, "new", _image(workers, f"{name} new"))
    try:
        first = workers.proxy.manifest(repo, "new")  # one connection: one worker
        assert first.status_code == 200, (first.status_code, first.text, workers.logs())
        assert images.sha256(first.content) == f"sha256:{new.sha256}"
        wait_until(lambda: bool(workers.answered_by(f"/v2/{repo}/")), timeout=10, interval=0.1)
        seen = workers.answered_by(f"/v2/{repo}/")
        assert sum(seen.values()) == 1, seen
        (saw_v2,) = seen
        other = 1 - saw_v2
        # Within refresh_seconds the other worker would use what the first verified (handed
        # over through the state file) without asking the server: wait until both must ask.
        time.sleep(REFRESH + 0.5)
        staged = time.monotonic()
        mark = len(workers.log_lines())
        front.override(gun, v1)
        answers = asyncio.run(
            _get_each_on_new_connection(workers.proxy.url, [f"/v2/{repo}/manifests/old"] * 24)
        )
        old_path = f"/v2/{repo}/manifests/old"
        wait_until(
            lambda: sum(workers.answered_by(old_path, since=mark).values()) >= len(answers),
            timeout=10,
            interval=0.1,
        )
        by_worker = workers.answered_by(old_path, since=mark)
        assert by_worker[other] >= 1, (
            f"worker {other} never answered (all went to {saw_v2}): {by_worker}"
        )
        served = [body for status, body, _ in answers if status == 200]
        assert not served, (
            f"a worker served tag 'old' (revoked in v2) from the rolled-back v1 view: "
            f"{images.sha256(served[0])}\n{workers.logs()}"
        )
        assert {status for status, _, _ in answers} <= {404, 503}, answers[:3]
        tampered = [f for f in front.fetches(gun, since=staged) if f.tampered]
        assert any(f.name == "timestamp.json" for f in tampered), (
            f"nobody asked the lying server:\n{front.summary(gun, since=staged)}"
        )
        r_new = workers.proxy.manifest(repo, "new")
        assert r_new.status_code in (200, 503), (r_new.status_code, r_new.text)
        if r_new.status_code == 503:
            assert oci_error(r_new)["code"] == "UNAVAILABLE"
        else:
            assert images.sha256(r_new.content) == f"sha256:{new.sha256}"
    finally:
        front.clear_overrides(gun)


# -- metrics of every worker -----------------------------------------------------------------------


def _requests_total(url: str, endpoint: str, status: str = "2xx") -> float:
    """``trustproxy_requests_total`` for GET ``endpoint`` in one scrape (a new connection,
    so the kernel picks the worker)."""
    with httpx.Client(base_url=url, timeout=30) as http:
        r = http.get("/metrics")
    r.raise_for_status()
    labels = {"method": "GET", "endpoint": endpoint, "status": status}
    total = 0.0
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            if sample.name == "trustproxy_requests_total" and sample.labels == labels:
                total += sample.value
    return total


def _answered_exactly(wb: WorkerBed, path: str, since: int) -> Counter[int]:
    return Counter(
        int(line["worker"])
        for line in wb.log_lines()[since:]
        if line.get("logger") == "trustproxy.access" and line.get("path") == path
    )


def test_metrics_add_up_the_counts_of_both_workers(workers: WorkerBed) -> None:
    """Requests spread over both workers are all counted in ``/metrics``, whichever worker
    the scrape reaches: a worker showing only its own counts would show fewer."""
    url = workers.proxy.url
    before = _requests_total(url, "base")
    mark = len(workers.log_lines())
    sent = 40
    answers = asyncio.run(_get_each_on_new_connection(url, ["/v2/"] * sent))
    assert {status for status, _, _ in answers} == {200}, answers[:3]
    wait_until(
        lambda: sum(_answered_exactly(workers, "/v2/", mark).values()) >= sent,
        timeout=10,
        interval=0.1,
    )
    assert set(_answered_exactly(workers, "/v2/", mark)) == {0, 1}, "one worker answered all"
    scrape_mark = len(workers.log_lines())
    seen = [_requests_total(url, "base") for _ in range(16)]
    assert seen == [before + sent] * len(seen), (before, seen)
    wait_until(
        lambda: sum(_answered_exactly(workers, "/metrics", scrape_mark).values()) >= len(seen),
        timeout=10,
        interval=0.1,
    )
    assert set(_answered_exactly(workers, "/metrics", scrape_mark)) == {0, 1}, (
        "every scrape reached the same worker: the test proves nothing"
    )


# -- reload, worker restart and shutdown ----------------------------------------------------


def test_sighup_reloads_every_worker_a_dead_one_is_replaced_and_none_is_left(
    registry: RegistryBed, notary_bed: NotaryBed, tmp_path: Path
) -> None:
    requires("notary")
    bed, front, proxy, config = start_worker_bed(tmp_path, registry.url, notary_bed, label="wh")
    wb = WorkerBed(bed, front, proxy, tmp_path, config)
    master = proxy.server.pid
    try:
        name = "reload/app"
        repo = bed.repo(name)
        unsigned = bed.push(name, _image(wb, "unsigned"), "v1")
        wait_until(lambda: len(_worker_pids(wb)) == 2, timeout=20, interval=0.1)
        # A worker takes SIGHUP once its app has started (before, the signal is ignored).
        wait_until(
            lambda: _count_msg(wb, "Application startup complete") >= 2, timeout=20, interval=0.1
        )
        paths = [f"/v2/{repo}/manifests/v1"] * 24

        # Enforced: nobody serves the unsigned tag.
        answers = asyncio.run(_get_each_on_new_connection(proxy.url, paths))
        assert {status for status, _, _ in answers} == {404}, answers[:3]

        # A broken config: every worker keeps its running config and says so.
        config_path = Path(proxy.server.extra["config"])
        good = config_path.read_text()
        config_path.write_text("server: [\n")
        os.kill(master, signal.SIGHUP)
        wait_until(
            lambda: _count_msg(wb, "reload failed, still serving") >= 2, timeout=20, interval=0.1
        )
        answers = asyncio.run(_get_each_on_new_connection(proxy.url, paths))
        assert {status for status, _, _ in answers} == {404}, answers[:3]

        # A good change (the repository is no longer enforced): every worker applies it.
        config_path.write_text(good)
        write_policy(proxy.policy_file, {bed.pattern("*/app"): {"requireSignatures": False}})
        os.kill(master, signal.SIGHUP)
        wait_until(lambda: _count_msg(wb, "reloaded") >= 2, timeout=20, interval=0.1)
        mark = len(wb.log_lines())
        answers = asyncio.run(_get_each_on_new_connection(proxy.url, paths))
        assert {status for status, _, _ in answers} == {200}, (answers[:3], wb.logs())
        assert {images.sha256(body) for _, body, _ in answers} == {unsigned}
        wait_until(
            lambda: sum(wb.answered_by(paths[0], since=mark).values()) >= len(paths),
            timeout=10,
            interval=0.1,
        )
        assert set(wb.answered_by(paths[0], since=mark)) == {0, 1}

        # A worker that dies is replaced (logged), and the port keeps answering; what the
        # dead worker counted stays in /metrics (a counter never goes back).
        counted = _requests_total(proxy.url, "manifests")
        victim = _worker_pids(wb)[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(_worker_pids(wb)) == 3, timeout=20, interval=0.1)
        assert _count_msg(wb, "was killed by SIGKILL; starting another") == 1
        answers = asyncio.run(_get_each_on_new_connection(proxy.url, paths))
        assert {status for status, _, _ in answers} == {200}, (answers[:3], wb.logs())
        workers_now = _worker_pids(wb)[1:]
        assert _pids_alive(workers_now) == workers_now
        assert _requests_total(proxy.url, "manifests") == counted + len(paths)
        state_dir = Path(config["cache"]["state_dir"])
        assert len(list(state_dir.glob("metrics-*"))) == 1

        # SIGTERM: every worker stops, then the master; no process is left.
        proxy.server.process.send_signal(signal.SIGTERM)
        assert proxy.server.process.wait(timeout=60) == 0
        assert _pids_alive([master, *workers_now]) == [], wb.logs()
        assert _count_msg(wb, "master: every worker stopped") == 1
        assert _count_msg(wb, "still running, killed") == 0, wb.logs()
        assert list(state_dir.glob("metrics-*")) == [], "the run's metrics files were left"
    finally:
        proxy.stop()
        front.stop()
        bed.close()


def _count_msg(wb: WorkerBed, text: str) -> int:
    return sum(1 for line in wb.log_lines() if text in str(line.get("msg", "")))


def test_config_keeps_existing_tests_on_one_worker(tmp_path: Path) -> None:
    """The testbed starts one worker unless a test asks for more (the default, every CPU,
    would multiply the suite's processes)."""
    server = start_proxy(
        tmp_path, {"upstreams": [{"name": "u", "url": "http://127.0.0.1:9"}]}, name="one"
    )
    try:
        written = yaml.safe_load(Path(server.extra["config"]).read_text())
        assert written["server"]["workers"] == 1
        assert written["cache"]["state_dir"].startswith(str(tmp_path))
    finally:
        server.stop()


# -- with Redis: records and lock there, floors in the host's file ------------------------------


def test_with_redis_two_workers_share_the_state_and_keep_floors_in_the_file(
    registry: RegistryBed, notary_bed: NotaryBed, tmp_path: Path
) -> None:
    """``cache.redis_url`` set: the workers share records and the refresh lock in Redis (as
    replicas do) and the rollback floors in the host's file, where a Redis writer cannot
    lower them: after Redis is flushed and both workers are replaced (nothing verified
    left in any process), a rollback is still refused. (The hand-over between the workers
    through the host's file: the cold-burst test below.)"""
    requires("notary")
    if redis_binary() is None:
        pytest.skip("redis-server is not installed (run `make test` to install it)")
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    bed, front, proxy = None, None, None
    try:
        bed, front, proxy, config = start_worker_bed(
            tmp_path, registry.url, notary_bed, label="wr",
            cache={"redis_url": redis.url, "key_prefix": f"tp-{uuid.uuid4().hex[:8]}:"},
        )  # fmt: skip
        wb = WorkerBed(bed, front, proxy, tmp_path, config)
        name = "redis/app"
        gun, repo = bed.gun(name), bed.repo(name)
        bed.push_and_sign(name, "old", _image(wb, "redis old"))
        v1 = front.capture(gun)
        bed.trust(name).remove("old")
        new = bed.push_and_sign(name, "new", _image(wb, "redis new"))
        since = time.monotonic()
        paths = [f"/v2/{repo}/manifests/new"] * BURST
        answers = asyncio.run(_get_each_on_new_connection(proxy.url, paths))
        answered = time.monotonic()  # the state saved is from before this
        assert {status for status, _, _ in answers} == {200}, (answers[:3], wb.logs())
        assert {images.sha256(body) for _, body, _ in answers} == {f"sha256:{new.sha256}"}
        counts = front.counts(gun, since=since)
        summary = front.summary(gun, since=since)
        assert counts["root.json"] == 1, summary
        assert 1 <= counts["timestamp.json"] <= 2, summary
        assert all(n == 1 for f, n in counts.items() if f.startswith(("snapshot.", "targets."))), (
            summary
        )
        floors = _floors_in_file(tmp_path / "state", gun)
        assert floors.get("timestamp", 0) > json.loads(v1["timestamp.json"])["signed"]["version"]

        redis.flushall()  # Redis forgets (or a writer rolls it back)
        # Both workers die and are replaced: nothing verified is left in any process, only
        # the floors in the host's file (and the state the burst saved there, vouched for
        # the new workers too, siblings of one serve: past its window, so they ask the
        # trust server, which now serves the rollback).
        for pid in _worker_pids(wb):
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: len(_worker_pids(wb)) == 4, timeout=20, interval=0.1)
        time.sleep(max(0.0, answered + REFRESH + 0.2 - time.monotonic()))
        staged = time.monotonic()
        front.override(gun, v1)
        answers = asyncio.run(
            _get_each_on_new_connection(proxy.url, [f"/v2/{repo}/manifests/old"] * 24)
        )
        assert not [b for s, b, _ in answers if s == 200], f"rolled back:\n{wb.logs()}"
        assert {status for status, _, _ in answers} <= {404, 503}, answers[:3]
        assert any(f.tampered for f in front.fetches(gun, since=staged))
    finally:
        if proxy is not None:
            proxy.stop()
        if front is not None:
            front.stop()
        if bed is not None:
            bed.close()
        redis.stop()


def test_with_redis_a_cold_burst_over_both_workers_walks_the_trust_data_once(
    registry: RegistryBed, notary_bed: NotaryBed, tmp_path: Path
) -> None:
    """As without Redis: the worker that waited for the other's refresh lock (in Redis now)
    takes the state that worker saved from the host's file, vouched for by the serve's key,
    rather than fetching timestamp.json and the root probe again (a state read from Redis
    is never freshness). Each file is fetched once from the trust server."""
    requires("notary")
    if redis_binary() is None:
        pytest.skip("redis-server is not installed (run `make test` to install it)")
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    bed, front, proxy = None, None, None
    try:
        bed, front, proxy, config = start_worker_bed(
            tmp_path, registry.url, notary_bed, label="wb",
            cache={"redis_url": redis.url, "key_prefix": f"tp-{uuid.uuid4().hex[:8]}:"},
        )  # fmt: skip
        _cold_burst_fetches_each_file_once(
            WorkerBed(bed, front, proxy, tmp_path, config), "redisburst/app"
        )
    finally:
        if proxy is not None:
            proxy.stop()
        if front is not None:
            front.stop()
        if bed is not None:
            bed.close()
        redis.stop()


def _floors_in_file(state_dir: Path, gun: str) -> dict[str, int]:
    conn = sqlite3.connect(state_dir / STATE_FILE_NAME)
    try:
        rows = conn.execute(
            "SELECT role, version FROM floors WHERE repository = ?", (gun,)
        ).fetchall()
    finally:
        conn.close()
    return {str(role): int(version) for role, version in rows}
