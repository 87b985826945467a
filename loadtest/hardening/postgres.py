"""A throwaway PostgreSQL server holding notary-server's tables, so that a killed
notary-server comes back with every repository (``NotaryBed.start(storage=url)``).

Why: the fault "notary-server crashes and restarts" needs the server's metadata to outlive
the process, as it does in production (notary-server on MySQL or PostgreSQL). Debian's
notary-server has no sqlite3 driver, and with memory storage a restarted server knows no
repository at all (every tag would then be refused as "no trust data", which is a
different event).

The cluster lives in a fresh temporary folder (``initdb``, trust authentication on
loopback, no fsync: nothing here needs to survive a crash of PostgreSQL itself, which is
never killed) and is removed by :meth:`PostgresServer.stop`. As root, PostgreSQL runs as
the ``postgres`` user (it refuses to run as root). Stopped by PID, like every server.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from testbed.processes import Server, free_port, start_server

__all__ = ["NOTARY_SERVER_SCHEMA", "PostgresServer", "postgres_bindir"]

# The tables of notary-server 0.7's SQL storage (its gorm models TUFFile and Change): the
# metadata files by GUN, role and version, and the change feed with its two categories.
NOTARY_SERVER_SCHEMA = """
CREATE TABLE tuf_files (
    id serial PRIMARY KEY,
    created_at timestamp NULL DEFAULT NULL,
    updated_at timestamp NULL DEFAULT NULL,
    deleted_at timestamp NULL DEFAULT NULL,
    gun varchar(255) NOT NULL,
    role varchar(255) NOT NULL,
    version integer NOT NULL,
    data bytea NOT NULL,
    sha256 char(64) DEFAULT NULL,
    UNIQUE (gun, role, version)
);
CREATE INDEX tuf_files_sha256_idx ON tuf_files (sha256);
CREATE TABLE change_category (category varchar(20) PRIMARY KEY);
INSERT INTO change_category VALUES ('update'), ('deletion');
CREATE TABLE changefeed (
    id serial PRIMARY KEY,
    created_at timestamp DEFAULT CURRENT_TIMESTAMP,
    gun varchar(255) NOT NULL,
    version integer NOT NULL,
    sha256 char(64) DEFAULT NULL,
    category varchar(20) NOT NULL DEFAULT 'update' REFERENCES change_category
);
CREATE INDEX idx_changefeed_gun ON changefeed (gun);
"""

_DB_USER = "notary"


def postgres_bindir() -> Path | None:
    """The folder holding ``initdb`` and ``postgres``: on PATH, else Debian's layout
    (``/usr/lib/postgresql/<major>/bin``, the newest major). None when not installed."""
    found = shutil.which("initdb")
    if found is not None and shutil.which("postgres") is not None:
        return Path(found).resolve().parent
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return candidates[-1].parent if candidates else None


def _run_as() -> str | None:
    """The user PostgreSQL runs as: ``postgres`` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError(
            "running as root and there is no postgres user to run PostgreSQL"
        ) from None
    return "postgres"


class PostgresServer:
    """One PostgreSQL cluster on a free loopback port with notary-server's tables."""

    def __init__(self, log_dir: Path, *, start_timeout: float = 30.0) -> None:
        bindir = postgres_bindir()
        if bindir is None or shutil.which("psql") is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bindir = bindir
        self.log_dir = log_dir
        self.start_timeout = start_timeout
        self.port = free_port()
        self.user = _run_as()
        self._tmp: Path | None = None
        self._server: Server | None = None

    @property
    def url(self) -> str:
        """The URL notary-server's ``storage.db_url`` takes (lib/pq syntax)."""
        return f"postgres://{_DB_USER}@127.0.0.1:{self.port}/postgres?sslmode=disable"

    @property
    def pid(self) -> int | None:
        return self._server.pid if self._server is not None else None

    def start(self) -> PostgresServer:
        """initdb, start, create the tables. Raises RuntimeError with the log tail."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # A folder of its own under the system temp dir: the postgres user must be able to
        # reach it (a test's tmp_path sits under a folder only its owner may enter).
        self._tmp = Path(tempfile.mkdtemp(prefix="trustproxy-pg-"))
        data = self._tmp / "data"
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self._tmp, entry.pw_uid, entry.pw_gid)
        try:
            init = subprocess.run(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(data),
                    "-A",
                    "trust",
                    "-U",
                    _DB_USER,
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "--no-instructions",
                ],
                cwd=self._tmp,
                user=self.user,
                capture_output=True,
                timeout=120,
                check=False,
            )
            if init.returncode != 0:
                raise RuntimeError(f"initdb failed: {init.stderr.decode(errors='replace')}")
            self._server = start_server(
                "postgres",
                [
                    str(self.bindir / "postgres"),
                    "-D",
                    str(data),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-k",
                    str(self._tmp),
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=200",
                ],
                log_dir=self.log_dir,
                port=self.port,
                cwd=self._tmp,
                user=self.user,
                wait_timeout=self.start_timeout,
            )
            self._create_schema()
        except BaseException:
            self.stop()
            raise
        return self

    def _psql(self, sql: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                _DB_USER,
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-q",
                "-X",
            ],
            input=sql.encode(),
            capture_output=True,
            timeout=60,
            check=False,
        )

    def _create_schema(self) -> None:
        # The port listens a moment before the cluster accepts sessions ("starting up").
        deadline = time.monotonic() + self.start_timeout
        while True:
            done = self._psql("SELECT 1;")
            if done.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL never accepted a session: {done.stderr!r}")
            time.sleep(0.1)
        done = self._psql(NOTARY_SERVER_SCHEMA)
        if done.returncode != 0:
            raise RuntimeError(f"creating notary's tables failed: {done.stderr!r}")

    def stop(self) -> None:
        """Stop the server (by PID) and remove the cluster's folder."""
        try:
            if self._server is not None:
                self._server.stop(timeout=20)
        finally:
            if self._tmp is not None:
                with contextlib.suppress(OSError):
                    shutil.rmtree(self._tmp)
                self._tmp = None

    def log_tail(self, lines: int = 40) -> str:
        return self._server.log_tail(lines) if self._server is not None else ""
