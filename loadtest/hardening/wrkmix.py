"""``wrk`` rotating over a list of paths, counting answers by status (in wrk's Lua).

wrk sends GETs only here: its HTTP parser does not know which request an answer belongs
to, so a HEAD answer's Content-Length would make it wait for a body that never comes
(HEADs are the prober's). Each wrk thread counts statuses in its own Lua state; ``done``
adds them up and prints one JSON line, so nothing parses wrk's human output.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCRIPT = """\
local paths = {paths}
local threads = {{}}
{headers}

function setup(thread)
  thread:set("offset", #threads * 7)
  table.insert(threads, thread)
end

function init(args)
  counts = {{}}
  idx = offset or 0
end

function request()
  idx = idx + 1
  return wrk.format("GET", paths[(idx % #paths) + 1])
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
  local parts = {{}}
  local total = {{}}
  for _, t in ipairs(threads) do
    local c = t:get("counts")
    for k, v in pairs(c) do total[k] = (total[k] or 0) + v end
  end
  for k, v in pairs(total) do table.insert(parts, string.format('"%d":%d', k, v)) end
  local e = summary.errors
  io.write(string.format(
    'WRK_MIX {{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"timeout":%d,"statuses":{{%s}},"p99_us":%d,"max_us":%d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout,
    table.concat(parts, ","), latency:percentile(99), latency.max))
end
"""


def _lua(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid Lua string literal here


@dataclass
class WrkMix:
    """One running ``wrk``; :meth:`result` waits for it (bounded) and parses the line."""

    name: str
    process: subprocess.Popen[bytes]
    seconds: float
    started: float

    def result(self) -> dict[str, Any]:
        try:
            out, err = self.process.communicate(timeout=self.seconds + 60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate(timeout=10)
        text = out.decode(errors="replace")
        line = next((ln for ln in text.splitlines() if ln.startswith("WRK_MIX ")), None)
        if self.process.returncode != 0 or line is None:
            return {
                "name": self.name,
                "failed": f"wrk exited {self.process.returncode}: "
                f"{text[-500:]} {err.decode(errors='replace')[-500:]}",
            }
        data: dict[str, Any] = json.loads(line.removeprefix("WRK_MIX "))
        data["name"] = self.name
        data["statuses"] = {k: int(v) for k, v in sorted(data["statuses"].items())}
        data["errors"] = sum(int(data[k]) for k in ("connect", "read", "write", "timeout"))
        return data

    def stop(self) -> None:
        """Kill it (a run that fails half way): by PID."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def start_wrk(
    name: str,
    base_url: str,
    paths: Sequence[str],
    *,
    seconds: float,
    connections: int,
    workdir: Path,
    headers: Mapping[str, str] | None = None,
    threads: int = 1,
) -> WrkMix:
    """Start ``wrk`` for ``seconds`` (whole seconds, at least 1) over ``paths``."""
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / f"wrk-{name}.lua"
    header_lines = "\n".join(
        f"wrk.headers[{_lua(k)}] = {_lua(v)}" for k, v in (headers or {}).items()
    )
    script.write_text(
        _SCRIPT.format(paths="{" + ", ".join(_lua(p) for p in paths) + "}", headers=header_lines)
    )
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{max(connections, threads)}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        base_url,
    ]
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    return WrkMix(name, process, seconds, time.monotonic())
