"""An HTTPS front for a notary-server that counts what the proxy fetches, and can lie.

    trustproxy --HTTPS--> CountingFront --HTTPS--> notary-server

Every GET is forwarded to the real notary-server (verified with the bed's CA) and recorded
as ``(gun, file name, status)``: "exactly one fetch of each metadata file" is then a
question about :meth:`CountingFront.count`. The front's certificate is issued by the
notary bed's CA, so the proxy's trust source keeps ``ca_file: <bed CA>`` and only its
``url`` changes.

Tampering: :meth:`CountingFront.override` makes the front answer chosen files of one GUN
with chosen bytes (e.g. an older ``timestamp.json`` and the snapshot and targets it names,
captured with :meth:`CountingFront.capture`): a trust server that rolls a repository back.
:class:`testbed.hostile_notary.HostileNotary` builds on it: HTTP-level misbehaviour and
repositories served from a simulator (``_answer`` and ``_relay`` are its hooks).
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx

from testbed.notary_server import NotaryBed
from testbed.processes import free_port

_TUF_PATH = re.compile(r"^/v2/(?P<gun>.+)/_trust/tuf/(?P<name>[^?]+)$")


@dataclass(frozen=True)
class Fetch:
    """One request the front saw (``gun`` is None for paths outside ``_trust/tuf``)."""

    at: float  # time.monotonic()
    gun: str | None
    name: str
    status: int
    tampered: bool


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # 200 concurrent cold requests must not be refused at accept


class CountingFront:
    """A threaded HTTPS relay in front of ``notary``; start with :meth:`start` (or ``with``)."""

    def __init__(self, notary: NotaryBed, directory: Path) -> None:
        self.notary = notary
        self.port = free_port()
        self._lock = threading.Lock()
        self._fetches: list[Fetch] = []
        self._overrides: dict[tuple[str, str], bytes] = {}
        self._local = threading.local()  # one upstream client per handler thread
        self._clients: list[httpx.Client] = []
        cert = notary.ca.issue_server(directory, f"counting-front-{self.port}", ["127.0.0.1"])
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                front._relay(self)

        self._server = _Server(("127.0.0.1", self.port), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert.cert), str(cert.key))
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- life cycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> CountingFront:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    def __enter__(self) -> CountingFront:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what was fetched ---------------------------------------------------------------------

    def fetches(self, gun: str | None = None, *, since: float = 0.0) -> list[Fetch]:
        """Requests seen (for ``gun`` only when given) at or after ``since`` (monotonic)."""
        with self._lock:
            found = list(self._fetches)
        return [f for f in found if (gun is None or f.gun == gun) and f.at >= since]

    def counts(self, gun: str, *, since: float = 0.0) -> Counter[str]:
        """How often each file of ``gun`` was requested (any status)."""
        return Counter(f.name for f in self.fetches(gun, since=since))

    def count(self, gun: str, name: str, *, since: float = 0.0) -> int:
        return self.counts(gun, since=since)[name]

    def summary(self, gun: str, *, since: float = 0.0) -> str:
        """``name status xN`` lines, for assertion messages."""
        seen = Counter((f.name, f.status, f.tampered) for f in self.fetches(gun, since=since))
        return "\n".join(
            f"  {name} {status}{' (tampered)' if tampered else ''} x{n}"
            for (name, status, tampered), n in sorted(seen.items())
        )

    # -- tampering ----------------------------------------------------------------------------

    def override(self, gun: str, files: Mapping[str, bytes]) -> None:
        """Answer these files of ``gun`` (``timestamp.json``, ``snapshot.<hex>.json``, ...)
        with these bytes (200) instead of asking the notary-server."""
        with self._lock:
            for name, body in files.items():
                self._overrides[(gun, name)] = body

    def clear_overrides(self, gun: str | None = None) -> None:
        with self._lock:
            for key in [k for k in self._overrides if gun is None or k[0] == gun]:
                del self._overrides[key]

    def capture(self, gun: str) -> dict[str, bytes]:
        """The repository's current consistent view, straight from the notary-server (not
        counted): ``timestamp.json``, the ``snapshot.<hex>.json`` it names, and every
        ``<role>.<hex>.json`` that snapshot names (``targets``, delegations). Feed it to
        :meth:`override` later to serve this view after the repository moved on."""
        with self.notary.client() as http:

            def get(name: str) -> bytes:
                r = http.get(f"/v2/{quote(gun, safe='/:')}/_trust/tuf/{name}")
                r.raise_for_status()
                return r.content

            files = {"timestamp.json": get("timestamp.json")}
            snap_name = consistent_name("snapshot", _meta(files["timestamp.json"])["snapshot"])
            files[snap_name] = get(snap_name)
            for role, entry in _meta(files[snap_name]).items():
                if role == "root":
                    continue  # root is fetched by version, not by hash
                name = consistent_name(role, entry)
                files[name] = get(name)
        return files

    # -- the relay ----------------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(
                base_url=self.notary.url, verify=self.notary.ssl_context(), timeout=30
            )
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _relay(self, handler: BaseHTTPRequestHandler) -> None:
        gun, name = split_path(handler.path)
        status, body, ctype, tampered = self._answer(handler, gun, name)
        self._record(gun, name, status, tampered)
        send(handler, status, body, ctype)

    def _answer(
        self, handler: BaseHTTPRequestHandler, gun: str | None, name: str
    ) -> tuple[int, bytes, str, bool]:
        """(status, body, content type, tampered): an override, else the notary-server's
        answer (a subclass may answer other GUNs itself)."""
        with self._lock:
            fake = self._overrides.get((gun, name)) if gun is not None else None
        if fake is not None:
            return 200, fake, "application/json", True
        headers = {k: v for k, v in handler.headers.items() if k.lower() in {"accept"}}
        headers["accept-encoding"] = "identity"
        try:
            r = self._client().get(handler.path, headers=headers)
        except httpx.HTTPError as e:
            return 502, f"front: {e!r}".encode(), "text/plain", False
        return r.status_code, r.content, r.headers.get("content-type", "application/json"), False

    def _record(self, gun: str | None, name: str, status: int, tampered: bool) -> None:
        with self._lock:
            self._fetches.append(Fetch(time.monotonic(), gun, name, status, tampered))


def split_path(path: str) -> tuple[str | None, str]:
    """(GUN, file name) of a ``/v2/<gun>/_trust/tuf/<name>`` request path; (None, path)
    for anything else."""
    path = path.split("?", 1)[0]
    found = _TUF_PATH.match(path)
    if found is None:
        return None, path
    return unquote(found.group("gun")), unquote(found.group("name"))


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str) -> None:
    """A plain answer with Content-Length."""
    handler.send_response(status)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def consistent_name(role: str, entry: Mapping[str, Any]) -> str:
    """``<role>.<sha256 hex>.json`` for a ``meta`` entry (hashes are base64 in notary)."""
    digest = base64.b64decode(entry["hashes"]["sha256"]).hex()
    return f"{role}.{digest}.json"


def _meta(raw: bytes) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads(raw)["signed"]["meta"]
    return {k.removesuffix(".json"): v for k, v in meta.items()}


def signed_version(raw: bytes) -> int:
    """``signed.version`` of a metadata file."""
    return int(json.loads(raw)["signed"]["version"])
