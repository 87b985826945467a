"""proxy.workers: the pre-fork master, run in this process with workers that are small
functions (forked children that write what happened to files): restart of a dead worker,
SIGHUP forwarded, SIGTERM stops every worker before the master returns."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from proxy.workers import Master, WorkerFilter, bind_sockets, cpu_count


@pytest.mark.parametrize(
    ("cpu_max", "limit"),
    [(None, None), ("max 100000\n", None), ("200000 100000\n", 2), ("150000 100000", 2),
     ("50000 100000", 1), ("garbage", None), ("0 100000", None)],
    ids=["no-cgroup-file", "no-quota", "two", "one-and-a-half", "half", "garbage", "zero"],
)  # fmt: skip
def test_cpu_count_is_what_this_process_may_use(
    tmp_path: Path, cpu_max: str | None, limit: int | None
) -> None:
    if cpu_max is not None:
        (tmp_path / "cpu.max").write_text(cpu_max)
    affinity = len(os.sched_getaffinity(0))
    want = affinity if limit is None else min(affinity, limit)
    assert cpu_count(tmp_path) == want


def test_bind_sockets_share_one_port() -> None:
    sockets = bind_sockets("127.0.0.1", 0, 1)
    port = sockets[0].getsockname()[1]
    sockets[0].close()
    sockets = bind_sockets("127.0.0.1", port, 3)
    try:
        assert {s.getsockname()[1] for s in sockets} == {port}
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in sockets)
        assert all(s.get_inheritable() for s in sockets)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # one of them accepts (queued in its backlog)
    finally:
        for s in sockets:
            s.close()


def test_bind_sockets_fails_cleanly_for_a_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(OSError, match="in use"):
            bind_sockets("127.0.0.1", taken.getsockname()[1], 2)


def test_worker_filter_marks_records() -> None:
    record = logging.LogRecord("x", logging.INFO, "", 0, "m", (), None)
    assert WorkerFilter(3).filter(record)
    assert record.__dict__["worker"] == 3
    assert record.__dict__["pid"] == os.getpid()


def _wait_for(check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.02)


# Python 3.12+ warns when a process with threads forks: here the test's driver thread exists
# (the real master has none).
FORK_WITH_THREADS = pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")


@FORK_WITH_THREADS
def test_master_restarts_forwards_sighup_and_stops_every_worker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sockets = bind_sockets("127.0.0.1", 0, 2)
    reloads: list[int] = []

    def run_worker(slot: int, sock: socket.socket) -> int:
        # In the forked child: record the start, die at once the first time in slot 0,
        # otherwise wait for signals (SIGHUP writes a marker; SIGTERM ends the process).
        if slot == 0 and not (tmp_path / "died").exists():
            (tmp_path / "died").write_text("")
            (tmp_path / f"start-{slot}-{os.getpid()}").write_text("")
            return 3
        signal.signal(signal.SIGHUP, lambda *_: (tmp_path / f"hup-{os.getpid()}").write_text(""))
        # Written once the handler is in place: the driver's SIGHUP is not lost.
        (tmp_path / f"start-{slot}-{os.getpid()}").write_text(str(sock.getsockname()[1]))
        while True:
            time.sleep(1)

    def starts() -> list[Path]:
        return sorted(tmp_path.glob("start-*"))

    def drive() -> None:
        try:
            _wait_for(lambda: len(starts()) == 3)  # slot 0 twice (restarted), slot 1 once
            os.kill(os.getpid(), signal.SIGHUP)
            _wait_for(lambda: len(list(tmp_path.glob("hup-*"))) == 2)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # never leave the master running

    master = Master(sockets, run_worker, reload=lambda: reloads.append(1), restart_pause=0.1)
    driver = threading.Thread(target=drive, daemon=True)
    caplog.set_level(logging.INFO, logger="trustproxy.workers")
    driver.start()
    assert master.run() == 0
    driver.join(timeout=30)
    assert reloads == [1]
    assert len(list(tmp_path.glob("hup-*"))) == 2, "SIGHUP did not reach both workers"
    pids = [int(p.name.split("-")[2]) for p in starts()]
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reaped: none left behind
    messages = [r.getMessage() for r in caplog.records]
    assert any("exited with code 3; starting another" in m for m in messages), messages
    assert "master: every worker stopped" in messages
    assert all(s.fileno() == -1 for s in sockets)  # the master closed its sockets


@FORK_WITH_THREADS
def test_master_kills_a_worker_that_ignores_sigterm(tmp_path: Path) -> None:
    sockets = bind_sockets("127.0.0.1", 0, 1)

    def run_worker(slot: int, sock: socket.socket) -> int:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        (tmp_path / f"start-{os.getpid()}").write_text("")
        while True:
            time.sleep(1)

    def drive() -> None:
        try:
            _wait_for(lambda: any(tmp_path.glob("start-*")))
        finally:
            os.kill(os.getpid(), signal.SIGINT)

    master = Master(sockets, run_worker, shutdown_timeout=0.5)
    threading.Thread(target=drive, daemon=True).start()
    assert master.run() == 0
    (start,) = tmp_path.glob("start-*")
    with pytest.raises(ChildProcessError):
        os.waitpid(int(start.name.split("-")[1]), os.WNOHANG)


@FORK_WITH_THREADS
def test_master_gives_its_workers_one_metrics_directory_and_removes_it(tmp_path: Path) -> None:
    """Each worker counts in the run's directory; the sum is read from there (as /metrics of
    any worker does); a dead worker's counts stay; the master removes the directory."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    from proxy.metrics import REQUESTS

    # A value the parent made before forking must not keep a worker's counts in memory.
    REQUESTS.labels("GET", "base", "2xx").inc(0)
    sockets = bind_sockets("127.0.0.1", 0, 2)
    state = tmp_path / "state"
    state.mkdir()
    marks = tmp_path / "marks"
    marks.mkdir()

    def run_worker(slot: int, sock: socket.socket) -> int:
        REQUESTS.labels("GET", "base", "2xx").inc(slot + 1)  # 1 in slot 0, 2 in slot 1
        (marks / f"{slot}-{os.getpid()}").write_text("")
        if slot == 0 and len(list(marks.glob("0-*"))) == 1:
            return 0  # slot 0 exits once, counted, and is started again
        while True:
            time.sleep(1)

    def counted() -> float:
        (directory,) = state.glob("metrics-*")
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
        labels = {"method": "GET", "endpoint": "base", "status": "2xx"}
        return registry.get_sample_value("trustproxy_requests_total", labels) or 0.0

    seen: list[float] = []

    def drive() -> None:
        try:
            _wait_for(lambda: len(list(marks.iterdir())) == 3)  # slot 0 twice, slot 1 once
            _wait_for(lambda: counted() == 4.0)
            seen.append(counted())
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    master = Master(sockets, run_worker, restart_pause=0.1, metrics_parent=state)
    threading.Thread(target=drive, daemon=True).start()
    assert master.run() == 0
    assert seen == [4.0]  # 1 (slot 0, exited) + 1 (slot 0 again) + 2 (slot 1)
    assert list(state.iterdir()) == []  # the run's directory is gone
