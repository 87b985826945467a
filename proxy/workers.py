"""Several worker processes serving one port (``server.workers``): a pre-fork master.

::

    master (no event loop, no threads)          binds one SO_REUSEPORT socket per worker
      |-- fork --> worker 0: uvicorn on socket 0   builds its own app, clients, sources
      |-- fork --> worker 1: uvicorn on socket 1
      ...

Why this shape: uvicorn runs one event loop per process, so using every core takes several
processes. The master binds every listening socket **before** forking and keeps them open,
so the port is never unbound: a worker that dies leaves its socket listening, connections
queue in its backlog, and the worker the master starts in its place takes the same socket.
One socket per worker with ``SO_REUSEPORT`` (instead of one socket shared by all) lets the
kernel spread connections evenly over the workers; with a shared socket, the event loop
that wakes first accepts a whole burst (asyncio accepts up to the backlog per wake-up), so
one core does the work. Only processes of the same user can join a ``SO_REUSEPORT`` group.

Signals to the master:

* ``SIGHUP``: forwarded to every worker, each reloads as a single process does
  (:mod:`proxy.reload`: a config or policy error keeps its running config). The master
  re-reads the config too, so a worker it starts later starts with the latest good one.
* ``SIGTERM`` / ``SIGINT``: forwarded; workers finish their requests (uvicorn's graceful
  shutdown) and exit; after ``shutdown_timeout`` the rest are killed. The master exits last.
* a worker that exits on its own (crash, OOM kill) is logged and started again, at most once
  a second per slot (a worker that keeps dying at start does not become a fork loop).

Workers die with the master: ``PR_SET_PDEATHSIG`` (Linux) sends them SIGTERM if the master
is killed, so none is left orphaned. What workers share (rollback floors, roots pinned on
first use, the refresh lock, the last verified state of each repository) lives in the
host's state file or Redis, never in the master: see :mod:`proxy.sources.sqlite_store`.

Metrics: given a directory (the host's state directory), the master makes a directory of the
run in it, each worker counts in files there and ``/metrics`` of any worker adds up all of
them (:mod:`proxy.metrics`); the master removes a dead worker's live gauges, and the whole
directory when it exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import select
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from proxy import metrics

__all__ = ["Master", "WorkerFilter", "bind_sockets", "cpu_count"]

log = logging.getLogger("trustproxy.workers")

_PR_SET_PDEATHSIG = 1
RESTART_PAUSE = 1.0  # seconds between starts of one slot's worker
SHUTDOWN_TIMEOUT = 20.0  # uvicorn's graceful shutdown (10 s) and closing the generations


def cpu_count(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: the CPUs it may run on (affinity, cpusets), and no more
    than a CPU quota of its cgroup (``docker run --cpus 2``, a Kubernetes CPU limit), whose
    ``cpu.max`` affinity does not show: more workers than that would only contend."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota(cgroup)
    if quota is not None:
        cpus = min(cpus, quota)
    return max(1, cpus)


def _cgroup_cpu_quota(cgroup: Path) -> int | None:
    """``ceil(quota / period)`` from cgroup v2's ``cpu.max`` ("max 100000": none)."""
    try:
        fields = (cgroup / "cpu.max").read_text().split()
        if len(fields) != 2 or fields[0] == "max":
            return None
        quota, period = int(fields[0]), int(fields[1])
    except (OSError, ValueError):
        return None
    return math.ceil(quota / period) if quota > 0 and period > 0 else None


def bind_sockets(host: str, port: int, count: int, *, backlog: int = 2048) -> list[socket.socket]:
    """``count`` listening TCP sockets on ``host:port`` in one ``SO_REUSEPORT`` group.

    Raises:
        OSError: the address cannot be bound (in use by another user, no such address).
    """
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    family, kind, proto, _, address = info
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.set_inheritable(True)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class WorkerFilter(logging.Filter):
    """Adds ``worker`` (the slot) and ``pid`` to every log record of a worker, so the
    access log says which process answered."""

    def __init__(self, slot: int) -> None:
        super().__init__()
        self.slot = slot
        self.pid = os.getpid()

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.slot
        record.pid = self.pid
        return True


def _die_with_parent(master: int) -> None:
    """SIGTERM this process when the master dies (Linux); exit now if it already did."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the master's shutdown still stops us
        pass
    if os.getppid() != master:  # the master died before prctl
        os._exit(1)


@dataclass
class _Slot:
    index: int
    sock: socket.socket
    pid: int = 0
    started: float = 0.0
    restart_at: float = 0.0


@dataclass
class Master:
    """Starts one worker per socket, restarts the ones that die, forwards signals.

    ``run_worker(slot, sock)`` runs in the child after fork and returns its exit code;
    ``reload()`` runs in the master on SIGHUP (re-reads the config for later workers);
    ``metrics_parent``: where the run's shared metrics directory is made (None: each worker
    keeps its metrics in memory and ``/metrics`` shows the worker the scrape reached).
    """

    sockets: list[socket.socket]
    run_worker: Callable[[int, socket.socket], int]
    reload: Callable[[], None] = lambda: None
    metrics_parent: Path | None = None
    shutdown_timeout: float = SHUTDOWN_TIMEOUT
    restart_pause: float = RESTART_PAUSE
    monotonic: Callable[[], float] = time.monotonic
    _slots: list[_Slot] = field(default_factory=list, init=False)
    _pending: list[int] = field(default_factory=list, init=False)
    _metrics_dir: Path | None = field(default=None, init=False)

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the master's exit code.

        Raises:
            OSError: the metrics directory cannot be made in ``metrics_parent``.
        """
        self._slots = [_Slot(i, s) for i, s in enumerate(self.sockets)]
        if self.metrics_parent is not None:
            # Per run and private (mkdtemp: mode 0700): a new run never adds up the counts
            # of an old one, and two proxies sharing the state directory never mix.
            self._metrics_dir = Path(tempfile.mkdtemp(prefix="metrics-", dir=self.metrics_parent))
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        old_wakeup = signal.set_wakeup_fd(wake_w)
        handled = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
        previous = {s: signal.signal(s, self._on_signal) for s in handled}
        try:
            for slot in self._slots:
                self._start(slot)
            log.info("master: %d workers started", len(self._slots),
                     extra={"workers": [s.pid for s in self._slots]})  # fmt: skip
            while True:
                with contextlib.suppress(InterruptedError):
                    select.select([wake_r], [], [], 1.0)
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 512):
                        pass
                pending, self._pending = self._pending, []
                if signal.SIGTERM in pending or signal.SIGINT in pending:
                    stop = signal.SIGINT if signal.SIGINT in pending else signal.SIGTERM
                    self._shutdown(stop)
                    return 0
                if signal.SIGHUP in pending:
                    self._reload()
                self._reap()
                self._restart_due()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(wake_r)
            os.close(wake_w)
            for sock in self.sockets:
                sock.close()
            if self._metrics_dir is not None:
                shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._pending.append(signum)

    def _start(self, slot: _Slot) -> None:
        master = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                for s in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                    signal.signal(s, signal.SIG_DFL)
                # Until the worker's reload handler is installed a SIGHUP is ignored
                # (its default would kill it); the config it starts with is the latest.
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                signal.set_wakeup_fd(-1)
                _die_with_parent(master)
                for other in self.sockets:
                    if other is not slot.sock:
                        other.close()
                if self._metrics_dir is not None:
                    metrics.count_in_shared_directory(self._metrics_dir)
                code = self.run_worker(slot.index, slot.sock)
            except BaseException:
                log.exception("worker %d failed", slot.index)
            finally:
                logging.shutdown()
                os._exit(code)
        slot.pid = pid
        slot.started = self.monotonic()
        log.info("worker %d started", slot.index, extra={"worker_pid": pid})

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for slot in self._slots:
                if slot.pid == pid:
                    slot.pid = 0
                    if self._metrics_dir is not None:
                        metrics.forget_worker(self._metrics_dir, pid)
                    how = _describe(status)
                    log.error(
                        "worker %d (pid %d) %s; starting another", slot.index, pid, how,
                        extra={"worker_pid": pid, "exit": how},
                    )  # fmt: skip
                    # A worker that dies at once is not restarted in a tight loop.
                    slot.restart_at = max(self.monotonic(), slot.started + self.restart_pause)

    def _restart_due(self) -> None:
        now = self.monotonic()
        for slot in self._slots:
            if slot.pid == 0 and now >= slot.restart_at:
                self._start(slot)

    def _reload(self) -> None:
        log.info("master: SIGHUP, reloading every worker")
        try:
            self.reload()
        except Exception:
            log.exception("master: re-reading the config failed (workers decide for themselves)")
        for slot in self._slots:
            if slot.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGHUP)

    def _shutdown(self, sig: signal.Signals) -> None:
        log.info("master: %s, stopping %d workers", sig.name, len(self._slots))
        live = {s.pid for s in self._slots if s.pid}
        for pid in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = self.monotonic() + self.shutdown_timeout
        while live and self.monotonic() < deadline:
            for pid in list(live):
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done = pid
                if done:
                    live.discard(pid)
            time.sleep(0.05)
        for pid in live:
            log.warning("master: worker pid %d still running, killed", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        log.info("master: every worker stopped")


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"
