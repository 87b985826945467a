"""The prober: requests issued continuously against every replica, each answer checked.

For every answer it records the status, the OCI error code, whether a non-2xx answer had
an OCI error body, and the proof that matters: a 200 manifest body (or a HEAD's
``Docker-Content-Digest``) is hashed and compared with the digests the honest trust data
signs for that tag; a tag list must hold signed tags only; a blob must hash to its digest.
No answer within the timeout is a ``hang``.

It runs its own event loop in a thread, so the driver (kill, restart, sleep) stays plain
synchronous code; the targets of a class can be swapped while it runs (the cold pool of
the next phase). A monitor samples each replica's ``/metrics`` (store up/down) and
``/readyz`` every half second.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from testbed import images

Kind = Literal["manifest", "blob", "tags"]


@dataclass(frozen=True)
class Target:
    """One request the prober makes. ``signed``: the digests the trust data signs for
    (repo, tag) (manifests), the signed tag names (tag lists) or the blob's digest.
    An empty ``signed`` for a manifest means any 200 would be unsigned content."""

    cls: str
    kind: Kind
    repo: str
    ref: str = ""
    signed: frozenset[str] = frozenset()
    method: str = "GET"

    @property
    def path(self) -> str:
        if self.kind == "manifest":
            return f"/v2/{self.repo}/manifests/{self.ref}"
        if self.kind == "blob":
            return f"/v2/{self.repo}/blobs/{self.ref}"
        return f"/v2/{self.repo}/tags/list"


@dataclass(frozen=True)
class Observation:
    t: float  # seconds since the prober's zero
    cls: str
    replica: str
    method: str
    path: str
    status: int  # 0: no HTTP answer
    code: str = ""  # OCI error code of a non-2xx answer ("" for 2xx and bodiless HEADs)
    error: str = ""  # no answer: hang, connect, reset, truncated, other
    oci_body: bool = True  # False: a non-2xx GET whose body is not an OCI error body
    unsigned: bool = False  # 200 with content the trust data does not sign (or a bad blob)
    leak: bool = False  # a tag list naming a tag that is not signed
    ms: float = 0.0


@dataclass(frozen=True)
class MonitorSample:
    t: float
    replica: str
    store_up: float | None  # trustproxy_store_up (None: /metrics did not answer)
    ready: int  # /readyz status (0: no answer)
    trust_store: str


#: Idle pooled connections are not reused after this long: below the proxy's keep-alive
#: timeout (5 s, uvicorn's default), so a request never races the server closing an idle
#: connection (that race is a reset on any HTTP/1.1 server; clients retry it). A reset seen
#: by the prober is then the proxy's doing.
CLIENT_KEEPALIVE_S = 2.0

_STORE_UP = re.compile(r"^trustproxy_store_up(?:\{[^}]*\})? (\S+)$", re.M)


def oci_error_code(body: bytes) -> str | None:
    """The first error's code of an OCI error body, or None when it is not one."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list) or not errors:
        return None
    first = errors[0]
    if not isinstance(first, dict) or not isinstance(first.get("code"), str):
        return None
    if not isinstance(first.get("message"), str):
        return None
    return str(first["code"])


def check_answer(
    target: Target, status: int, headers: Mapping[str, str], body: bytes
) -> dict[str, Any]:
    """The checks of one answer (fields of :class:`Observation`)."""
    out: dict[str, Any] = {"status": status}
    if status >= 300:
        if target.method == "HEAD":
            return out  # no body to check
        code = oci_error_code(body)
        out["code"] = code or "?"
        out["oci_body"] = code is not None
        return out
    if target.kind == "manifest":
        digest = (
            headers.get("docker-content-digest", "")
            if target.method == "HEAD"
            else images.sha256(body)
        )
        out["unsigned"] = digest not in target.signed
    elif target.kind == "blob":
        if target.method == "GET":
            out["unsigned"] = images.sha256(body) != target.ref
    else:
        try:
            tags = json.loads(body).get("tags") or []
        except (ValueError, AttributeError):
            tags = ["<not JSON>"]
        out["leak"] = any(t not in target.signed for t in tags)
    return out


def transport_error(e: BaseException) -> str:
    if isinstance(e, httpx.TimeoutException):
        return "hang"
    if isinstance(e, httpx.ConnectError):
        return "connect"
    if isinstance(e, httpx.RemoteProtocolError):
        return "truncated"
    if isinstance(e, httpx.ReadError | httpx.WriteError):
        return "reset"
    return "other"


@dataclass
class Prober:
    """Workers per class, round-robin over the class's targets and the replicas."""

    replicas: dict[str, str]  # name -> base URL
    targets: dict[str, list[Target]]  # class -> targets (swappable while running)
    workers: int = 2  # per class
    timeout: float = 10.0  # no answer in this long: a hang
    pause: float = 0.0  # between one worker's requests
    monitor_interval: float = 0.5
    zero: float = field(default_factory=time.monotonic)
    observations: list[Observation] = field(default_factory=list)
    monitor: list[MonitorSample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _error: BaseException | None = None

    def now(self) -> float:
        return time.monotonic() - self.zero

    def set_targets(self, cls: str, targets: Sequence[Target]) -> None:
        self.targets[cls] = list(targets)  # one assignment: the workers see old or new

    def start(self) -> Prober:
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 30)
        if self._error is not None:
            raise RuntimeError("the prober failed") from self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # reported by stop()
            self._error = e

    async def _main(self) -> None:
        limits = httpx.Limits(
            max_connections=self.workers * len(self.targets) * 2 + 8,
            keepalive_expiry=CLIENT_KEEPALIVE_S,
        )
        timeout = httpx.Timeout(self.timeout)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as http:
            tasks = [
                self._worker(http, cls, n)
                for cls in list(self.targets)
                for n in range(self.workers)
            ]
            tasks.append(self._monitor(http))
            await asyncio.gather(*tasks)

    async def _worker(self, http: httpx.AsyncClient, cls: str, n: int) -> None:
        names = list(self.replicas)
        i = n
        while not self._stop.is_set():
            targets = self.targets.get(cls) or []
            if not targets:
                await asyncio.sleep(0.05)
                continue
            target = targets[i % len(targets)]
            replica = names[(i // len(targets) + n) % len(names)]
            i += 1
            self.observations.append(await self._probe(http, replica, target))
            if self.pause:
                await asyncio.sleep(self.pause)

    async def _probe(self, http: httpx.AsyncClient, replica: str, target: Target) -> Observation:
        url = self.replicas[replica] + target.path
        headers = {"Accept": images.ACCEPT_ALL} if target.kind == "manifest" else {}
        started = time.monotonic()
        t = started - self.zero
        try:
            r = await http.request(target.method, url, headers=headers)
        except httpx.HTTPError as e:
            return Observation(
                t,
                target.cls,
                replica,
                target.method,
                target.path,
                0,
                error=transport_error(e),
                ms=(time.monotonic() - started) * 1000,
            )
        checked = check_answer(target, r.status_code, r.headers, r.content)
        return Observation(
            t,
            target.cls,
            replica,
            target.method,
            target.path,
            ms=(time.monotonic() - started) * 1000,
            **checked,
        )

    async def _monitor(self, http: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            for name, base in self.replicas.items():
                t = self.now()
                store_up: float | None = None
                ready, trust_store = 0, ""
                try:
                    m = await http.get(base + "/metrics", timeout=5)
                    found = _STORE_UP.findall(m.text)
                    store_up = min(float(v) for v in found) if found else None
                    rz = await http.get(base + "/readyz", timeout=5)
                    ready = rz.status_code
                    body = rz.json()
                    trust_store = str(body.get("trust_store", "")) if isinstance(body, dict) else ""
                except (httpx.HTTPError, ValueError):
                    pass
                self.monitor.append(MonitorSample(t, name, store_up, ready, trust_store))
            await asyncio.sleep(self.monitor_interval)


def ok_answer(o: Observation, expected_status: int) -> bool:
    """The class's normal answer: the expected status, nothing unsigned, no leak."""
    return (
        o.status == expected_status and not o.error and not o.unsigned and not o.leak and o.oci_body
    )
