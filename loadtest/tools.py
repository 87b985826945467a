"""The measuring instruments: load generators run as subprocesses (wrk, hey, curl) with
parsed output, and per-process CPU and memory readings (psutil).

Every subprocess has a timeout and every loop a bound; nothing here asserts on time.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import resource
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from testbed.nginx import nginx_binary

#: What the suite starts or runs; ``missing_tools()`` names the absent ones.
REQUIRED_TOOLS = (
    "wrk",
    "hey",
    "curl",
    "nginx",
    "docker-registry",
    "notary",
    "notary-server",
    "notary-signer",
    "redis-server",
)


def tool_path(name: str) -> str | None:
    if name == "nginx":
        return nginx_binary()
    return shutil.which(name)


def missing_tools(names: Iterable[str] = REQUIRED_TOOLS) -> list[str]:
    return [n for n in names if tool_path(n) is None]


def tool_version(argv: Sequence[str]) -> str:
    """First line of a ``--version`` style command (stdout or stderr), or ""."""
    try:
        done = subprocess.run(list(argv), capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (done.stdout or done.stderr).decode(errors="replace").strip()
    return text.splitlines()[0] if text else ""


# -- wrk ---------------------------------------------------------------------------------------

# wrk's Lua hooks: the request headers (Accept) set here, and at the end one JSON line with
# the summary and latency percentiles (microseconds), so nothing parses wrk's human output.
_WRK_SCRIPT = """\
{headers}
{pacing}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {{"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean))
end
"""


@dataclass(frozen=True)
class WrkResult:
    """One wrk run. ``status_errors``: answers other than 2xx/3xx."""

    requests: int
    seconds: float
    bytes: int
    errors: int
    status_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float
    #: CPU seconds wrk itself used (user + system): what the load generator took from the
    #: cores the measured servers run on
    generator_cpu_s: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rps": self.rps}


def _lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid Lua string literal here


def run_wrk(
    url: str,
    *,
    seconds: float,
    connections: int,
    threads: int,
    headers: Mapping[str, str],
    workdir: Path,
    delay_ms: float | None = None,
    paths: Sequence[str] = (),
) -> WrkResult:
    """``wrk -t threads -c connections -d seconds`` against ``url`` with ``headers``.

    ``delay_ms``: each connection waits this long after an answer before its next request
    (wrk's ``delay()`` hook), so the offered load is about ``connections / (delay + latency)``
    requests per second instead of as many as the servers (and wrk) can do: latency at a
    load below saturation, where percentiles measure the server, not a queue. wrk times a
    request from its send, so the pause is not counted in the latency. ``paths``: request
    these (on ``url``'s host) in turn instead of ``url``'s own path."""
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / "wrk-report.lua"
    header_lines = "\n".join(
        f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items()
    )
    pacing = ""
    if delay_ms is not None:
        pacing = f"delay = function() return {max(0, round(delay_ms))} end"
    if paths:
        # Round robin over ``paths`` (each wrk thread its own counter): many repositories.
        table = ", ".join(_lua_string(p) for p in paths)
        pacing += (
            f"\npaths = {{{table}}}\ncounter = 0\n"
            "request = function()\n"
            "  counter = counter + 1\n"
            "  return wrk.format(nil, paths[(counter % #paths) + 1])\n"
            "end"
        )
    script.write_text(_WRK_SCRIPT.format(headers=header_lines, pacing=pacing))
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    # Children's CPU times grow when a child is waited for: the difference is wrk's.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, capture_output=True, timeout=seconds + 60, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    generator_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = done.stdout.decode(errors="replace")
    line = next((ln for ln in out.splitlines() if ln.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(
            f"wrk failed ({done.returncode}): {out[-2000:]}\n{done.stderr.decode()[-2000:]}"
        )
    data = json.loads(line.removeprefix("WRK_JSON "))
    errors = sum(
        int(data[k]) for k in ("connect_errors", "read_errors", "write_errors", "timeouts")
    )
    return WrkResult(
        requests=int(data["requests"]),
        seconds=int(data["duration_us"]) / 1e6,
        bytes=int(data["bytes"]),
        errors=errors,
        status_errors=int(data["status_errors"]),
        p50_ms=int(data["p50_us"]) / 1000,
        p90_ms=int(data["p90_us"]) / 1000,
        p99_ms=int(data["p99_us"]) / 1000,
        p999_ms=int(data["p999_us"]) / 1000,
        max_ms=int(data["max_us"]) / 1000,
        mean_ms=float(data["mean_us"]) / 1000,
        generator_cpu_s=generator_cpu,
    )


# -- hey ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeyResult:
    """A ``hey -n N -c C`` burst: status codes of the answered requests (hey's CSV has a row
    per request that got an HTTP answer), the rest are errors; latencies in ms."""

    requests: int
    statuses: dict[int, int]
    errors: int
    seconds: float  # wall time of the burst, as seen from here
    p50_ms: float
    p99_ms: float
    max_ms: float


def run_hey(
    url: str, *, requests: int, concurrency: int, headers: Mapping[str, str], timeout: float
) -> HeyResult:
    argv = ["hey", "-n", str(requests), "-c", str(concurrency), "-t", str(round(timeout))]
    argv += ["-disable-compression", "-o", "csv"]
    for k, v in headers.items():
        argv += ["-H", f"{k}: {v}"]
    argv.append(url)
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, timeout=timeout + 60, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"hey failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    rows = list(csv.DictReader(io.StringIO(done.stdout.decode(errors="replace"))))
    statuses = Counter(int(r["status-code"]) for r in rows)
    lat = sorted(float(r["response-time"]) * 1000 for r in rows)
    return HeyResult(
        requests=requests,
        statuses=dict(statuses),
        errors=requests - len(rows),
        seconds=wall,
        p50_ms=percentile(lat, 50),
        p99_ms=percentile(lat, 99),
        max_ms=lat[-1] if lat else 0.0,
    )


# -- curl ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Download:
    """Blob downloads by curl: bytes received, wall seconds, HTTP codes."""

    bytes: int
    seconds: float
    codes: dict[int, int]
    streams: int

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        return set(self.codes) == {200}


def curl_download(
    url: str, *, streams: int = 1, timeout: float = 300, follow: bool = False
) -> Download:
    """Download ``url`` ``streams`` times at once (one curl process, ``--parallel``, one
    connection per transfer) into /dev/null; wall time of the whole batch. ``follow``:
    follow redirects (the code is then the last answer's)."""
    argv = ["curl", "--silent", "--show-error", "--max-time", str(round(timeout))]
    if follow:
        argv.append("--location")
    argv += ["--write-out", "%{http_code} %{size_download}\\n"]
    if streams > 1:
        argv += ["--parallel", "--parallel-immediate", "--parallel-max", str(streams)]
    for _ in range(streams):
        argv += ["--output", "/dev/null", url]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, timeout=timeout + 30, check=False)
    wall = time.perf_counter() - start
    codes: Counter[int] = Counter()
    total = 0
    for line in done.stdout.decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            codes[int(parts[0])] += 1
            total += int(float(parts[1]))
    if done.returncode != 0:
        raise RuntimeError(f"curl failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    return Download(bytes=total, seconds=wall, codes=dict(codes), streams=streams)


# -- processes: CPU and memory ---------------------------------------------------------------


def process_tree(pid: int) -> list[psutil.Process]:
    """The process and its live children (nginx: master + workers)."""
    proc = psutil.Process(pid)
    return [proc, *proc.children(recursive=True)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its children so far."""
    total = 0.0
    for proc in process_tree(pid):
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` and its children (bytes)."""
    total = 0
    for proc in process_tree(pid):
        try:
            total += int(proc.memory_info().rss)
        except psutil.NoSuchProcess:
            continue
    return total


def pss_bytes(pid: int) -> int:
    """Proportional set size of ``pid`` and its children (bytes): pages shared between
    processes (a pre-fork master and its workers share their code and imports) counted
    once in all, where the RSS sum counts them in every process."""
    total = 0
    for proc in process_tree(pid):
        try:
            total += int(getattr(proc.memory_full_info(), "pss", 0))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


class CpuMeter:
    """CPU seconds used by each named process tree between ``start()`` and ``stop()``."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._before: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def __enter__(self) -> CpuMeter:
        self._before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        self.used = {name: cpu_seconds(pid) - self._before[name] for name, pid in self.pids.items()}


@dataclass
class RssSampler:
    """A thread sampling the RSS (and PSS) of a process tree every ``interval`` seconds while
    active (at most ``max_seconds``); ``peak``, ``pss_peak`` and ``samples`` afterwards."""

    pid: int
    interval: float = 0.02
    max_seconds: float = 600.0
    peak: int = 0
    pss_peak: int = 0
    samples: int = 0
    first: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                value = rss_bytes(self.pid)
            except psutil.NoSuchProcess:
                return
            if self.samples == 0:
                self.first = value
            self.peak = max(self.peak, value)
            with contextlib.suppress(psutil.NoSuchProcess):
                self.pss_peak = max(self.pss_peak, pss_bytes(self.pid))
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


# -- statistics ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of sorted ``values`` (0.0 when empty)."""
    if not values:
        return 0.0
    rank = max(1, min(len(values), math.ceil(pct / 100 * len(values))))
    return float(values[rank - 1])


def median(values: Iterable[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[mid])
    return (ordered[mid - 1] + ordered[mid]) / 2


def ratio(a: float, b: float) -> float:
    return a / b if b else 0.0
