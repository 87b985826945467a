"""A real notary-signer + notary-server pair on loopback, for integration tests and demos.

The layout is Docker's: the server manages timestamp (always) and snapshot (Docker initialises
repos with a server-managed snapshot key) through a remote notary-signer; publishers keep root,
targets and delegation keys in their own trust directories (see ``testbed.notary_cli``).

    NotaryCli --HTTPS--> notary-server --gRPC, mutual TLS--> notary-signer
                         (memory storage)                    (memory storage)

Both processes keep everything in memory by default: a stopped bed leaves nothing behind
but its temporary directory (configs, certificates, logs). ``storage="postgres://..."``
keeps the server's metadata in a PostgreSQL database instead (the caller runs it and
creates notary's tables), so that the server can be killed and restarted on the same port
(:meth:`NotaryBed.kill_server`, :meth:`NotaryBed.restart_server`) with every repository
still there, as a production notary-server on MySQL or PostgreSQL is; the signer keeps
running (and keeps the timestamp and snapshot keys in memory) meanwhile. (Debian's
notary-server is built without the sqlite3 driver, and with memory storage a restarted
server has no repository at all.)
"""

from __future__ import annotations

import json
import secrets
import shutil
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import httpx

from testbed.processes import Server, free_port, start_server
from testbed.tls import CA, CertPair, client_ssl_context, make_ca

# notary-signer encrypts the private keys it stores under a passphrase named by an alias; the
# passphrase itself comes from NOTARY_SIGNER_<ALIAS> (docs: signer-config.md).
_SIGNER_ALIAS = "testbed"

# A GUN used only to prove at start-up that the server can reach the signer: fetching
# timestamp.key makes the server ask the signer to create a key (notes: ".key creates one
# for an unknown GUN"). /_notary_server/health alone answers 200 before the first periodic
# check of the signer has run.
_PROBE_GUN = "testbed.invalid/notary-bed-probe"


class NotaryBedError(RuntimeError):
    """The bed could not be started; the message carries both servers' log tails."""


def find_binary(name: str) -> str | None:
    """Path of ``name`` on PATH, or None (tests skip with a reason when it is missing)."""
    return shutil.which(name)


@dataclass
class NotaryBed:
    """A running notary-signer + notary-server. Build with :meth:`start`; end with :meth:`stop`."""

    directory: Path
    ca: CA
    signer: Server
    server: Server
    host: str = "127.0.0.1"

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        """Base URL of notary-server, e.g. ``https://127.0.0.1:41234`` (no trailing slash)."""
        return f"https://{self.host}:{self.server.port}"

    @property
    def ca_file(self) -> Path:
        """PEM of the CA that issued the server certificate (``--tlscacert`` / ``verify``)."""
        return self.ca.cert

    def ssl_context(self, client: CertPair | None = None) -> ssl.SSLContext:
        """An SSL context that trusts this bed's CA only."""
        return client_ssl_context(self.ca.cert, client)

    def client(self, *, timeout: float = 10.0) -> httpx.Client:
        """An httpx client bound to :attr:`url`, verifying with :attr:`ca_file`. Close it."""
        return httpx.Client(base_url=self.url, verify=self.ssl_context(), timeout=timeout)

    def metadata_url(self, gun: str, name: str) -> str:
        """URL of ``<name>.json`` of ``gun`` (``name`` like ``root``, ``2.root``,
        ``snapshot.<sha256hex>``, ``targets/releases``)."""
        return f"{self.url}/v2/{quote(gun, safe='/:')}/_trust/tuf/{name}.json"

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of both servers' logs, for failure messages."""
        return (
            f"--- notary-signer ({self.signer.log_path}) ---\n{self.signer.log_tail(lines)}\n"
            f"--- notary-server ({self.server.log_path}) ---\n{self.server.log_tail(lines)}"
        )

    def alive(self) -> bool:
        return self.signer.alive() and self.server.alive()

    def kill_server(self) -> None:
        """SIGKILL notary-server (a crash); the signer keeps running."""
        self.server.kill()

    def restart_server(self, *, timeout: float = 20.0) -> None:
        """Start notary-server again on the same port and wait until it can sign (it must
        have been started with a ``postgres://`` storage for the repositories to survive)."""
        self.server.restart(wait_timeout=timeout)
        self._wait_ready(timeout)

    def stop(self) -> None:
        """Stop the server first (it holds connections to the signer), then the signer."""
        try:
            self.server.stop()
        finally:
            self.signer.stop()

    def __enter__(self) -> NotaryBed:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @classmethod
    def start(
        cls,
        directory: Path,
        *,
        ca: CA | None = None,
        timeout: float = 20.0,
        log_level: str = "info",
        storage: str = "memory",
    ) -> NotaryBed:
        """Generate TLS material and configs in ``directory``, start both servers, wait until
        notary-server answers and can reach the signer.

        ``storage``: the server's metadata store, ``memory`` or a ``postgres://`` URL of a
        database holding notary-server's tables (it survives a restart of the server).

        Raises NotaryBedError (with log tails) when a binary is missing or a server does not
        come up within ``timeout`` seconds.
        """
        signer_bin = find_binary("notary-signer")
        server_bin = find_binary("notary-server")
        if signer_bin is None or server_bin is None:
            raise NotaryBedError("notary-signer / notary-server not found on PATH")
        if storage != "memory" and not storage.startswith("postgres://"):
            raise ValueError(f"storage must be memory or a postgres:// URL, not {storage!r}")
        directory.mkdir(parents=True, exist_ok=True)
        tls_dir = directory / "tls"
        ca = ca or make_ca(tls_dir, "notary-bed CA")
        signer_tls = ca.issue_server(tls_dir, "notary-signer", ["127.0.0.1"])
        server_tls = ca.issue_server(tls_dir, "notary-server", ["127.0.0.1", "localhost"])
        # notary-signer only accepts clients whose certificate chains to client_ca_file.
        server_client_tls = ca.issue_client(tls_dir, "notary-server-client", "notary-server")

        grpc_port = free_port()
        signer_config = directory / "signer-config.json"
        signer_config.write_text(
            json.dumps(
                {
                    "server": {
                        "grpc_addr": f"127.0.0.1:{grpc_port}",
                        "tls_cert_file": str(signer_tls.cert),
                        "tls_key_file": str(signer_tls.key),
                        "client_ca_file": str(ca.cert),
                    },
                    "logging": {"level": log_level},
                    "storage": {"backend": "memory", "default_alias": _SIGNER_ALIAS},
                },
                indent=2,
            )
        )
        log_dir = directory / "logs"
        try:
            signer = start_server(
                "notary-signer",
                [signer_bin, "-config", str(signer_config)],
                log_dir=log_dir,
                port=grpc_port,
                env={f"NOTARY_SIGNER_{_SIGNER_ALIAS.upper()}": secrets.token_hex(16)},
                cwd=directory,
                wait_timeout=timeout,
            )
        except RuntimeError as e:  # start_server's message carries the log tail
            raise NotaryBedError(str(e)) from e
        try:
            http_port = free_port()
            server_config = directory / "server-config.json"
            server_config.write_text(
                json.dumps(
                    {
                        "server": {
                            "http_addr": f"127.0.0.1:{http_port}",
                            "tls_cert_file": str(server_tls.cert),
                            "tls_key_file": str(server_tls.key),
                        },
                        "trust_service": {
                            "type": "remote",
                            "hostname": "127.0.0.1",
                            "port": str(grpc_port),
                            "key_algorithm": "ecdsa",
                            "tls_ca_file": str(ca.cert),
                            "tls_client_cert": str(server_client_tls.cert),
                            "tls_client_key": str(server_client_tls.key),
                        },
                        "logging": {"level": log_level},
                        "storage": _server_storage(storage),
                    },
                    indent=2,
                )
            )
            server = start_server(
                "notary-server",
                [server_bin, "-config", str(server_config)],
                log_dir=log_dir,
                port=http_port,
                cwd=directory,
                wait_timeout=timeout,
            )
        except RuntimeError as e:
            signer.stop()
            raise NotaryBedError(str(e)) from e
        except BaseException:
            signer.stop()
            raise
        bed = cls(directory=directory, ca=ca, signer=signer, server=server)
        try:
            bed._wait_ready(timeout)
        except BaseException:
            bed.stop()
            raise
        return bed

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        with self.client(timeout=2.0) as http:
            while True:
                if not self.alive():
                    raise NotaryBedError(f"a notary process exited at start\n{self.log_tail()}")
                try:
                    health = http.get("/_notary_server/health")
                    probe = http.get(f"/v2/{_PROBE_GUN}/_trust/tuf/timestamp.key")
                    if health.status_code == 200 and probe.status_code == 200:
                        return
                    last = f"health {health.status_code}, key probe {probe.status_code}"
                except httpx.HTTPError as e:
                    last = repr(e)
                if time.monotonic() > deadline:
                    raise NotaryBedError(
                        f"notary-server not ready after {timeout}s ({last})\n{self.log_tail()}"
                    )
                time.sleep(0.05)


def _server_storage(storage: str) -> dict[str, str]:
    if storage.startswith("postgres://"):
        return {"backend": "postgres", "db_url": storage}
    return {"backend": "memory"}


def fetch_metadata(
    bed: NotaryBed,
    gun: str,
    name: str,
    *,
    client: httpx.Client | None = None,
    timeout: float = 10.0,
) -> bytes:
    """The raw bytes of ``<name>.json`` for ``gun`` (e.g. ``timestamp``, ``targets/releases``,
    ``snapshot.<sha256hex>``, ``2.root``). Raises httpx.HTTPStatusError on a non-2xx answer
    (404 METADATA_NOT_FOUND for an unknown GUN, role or version)."""
    response = fetch_metadata_response(bed, gun, name, client=client, timeout=timeout)
    response.raise_for_status()
    return response.content


def fetch_metadata_response(
    bed: NotaryBed,
    gun: str,
    name: str,
    *,
    client: httpx.Client | None = None,
    timeout: float = 10.0,
) -> httpx.Response:
    """Like :func:`fetch_metadata` but returns the (fully read) response whatever its status.
    ``client`` (e.g. from :meth:`NotaryBed.client`) is reused when given."""
    if client is not None:
        return client.get(bed.metadata_url(gun, name))
    with httpx.Client(verify=bed.ssl_context(), timeout=timeout) as http:
        return http.get(bed.metadata_url(gun, name))
