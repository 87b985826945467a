"""Command line: ``trustproxy serve``, ``trustproxy config check``, ``trustproxy trust
inspect``, ``trustproxy trust snapshot``. The only place (with ``__main__``) that reads argv
and the environment and configures logging."""

from __future__ import annotations

import argparse
import logging
import math
import os
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from proxy.errors import ConfigError
from proxy.settings import ENV_PREFIX, Settings, load_settings
from proxy.sources.registry import source_type, source_type_names

if TYPE_CHECKING:
    import socket

    from proxy.reload import Builder, Generation

log = logging.getLogger("trustproxy")

DEFAULT_CONFIG = "config/trustproxy.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else list(argv)
    # ``serve`` is the long-lived process (and, with workers, the master every worker is
    # forked from): it builds only its own parser. The others load every source's
    # commands, the doctor and the policy tools: about 25 MiB that each process of the
    # tree would otherwise keep resident for nothing.
    parser = build_parser(only="serve" if args_in[:1] == ["serve"] else None)
    args = parser.parse_args(args_in)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    code: int = args.handler(args)
    return code


def build_parser(*, only: str | None = None) -> argparse.ArgumentParser:
    """The command line; with ``only``, just that command (see :func:`main`)."""
    parser = argparse.ArgumentParser(
        prog="trustproxy",
        description=(
            "An OCI registry pull proxy that makes unsigned images invisible: manifests by "
            "tag are served only at the digest the trust data signs."
        ),
        epilog=f"Every config value can be overridden by an environment variable: "
        f"{ENV_PREFIX}<KEY__PATH>, e.g. {ENV_PREFIX}SERVER__LISTEN=0.0.0.0:8443.",
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the proxy", description="Run the proxy (uvicorn).")
    serve.add_argument(
        "--config", "-c", type=Path, default=Path(DEFAULT_CONFIG),
        help=f"config file (YAML); default: {DEFAULT_CONFIG}",
    )  # fmt: skip
    serve.set_defaults(handler=cmd_serve)
    if only == "serve":
        return parser

    config = sub.add_parser("config", help="work with config files",
                            description="Work with config files.")  # fmt: skip
    config_sub = config.add_subparsers(title="commands", metavar="COMMAND")
    check = config_sub.add_parser(
        "check",
        help="validate a config file",
        description="Validate a config file (with environment overrides applied) and print "
        "path-qualified errors, e.g. 'upstreams[0].url: not a URL'. Exit 0 when valid.",
    )
    check.add_argument("file", type=Path, help="config file (YAML)")
    check.add_argument(
        "--skip-file-checks",
        action="store_true",
        help="do not require referenced files (TLS, CA, htpasswd, passwords) to exist: "
        "check a config meant for another machine",
    )
    check.set_defaults(handler=cmd_config_check)
    config.set_defaults(handler=lambda _a: _help(config))
    _add_trust_parser(sub)
    from proxy import doctor
    from proxy.policy.cli_commands import register as register_policy_commands

    register_policy_commands(sub)
    doc = sub.add_parser("doctor", help=doctor.HELP, description=doctor.DESCRIPTION)
    doctor.add_arguments(doc)
    doc.set_defaults(handler=doctor.cmd_doctor)
    return parser


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _load(path: Path, *, check_files: bool = True) -> Settings | None:
    try:
        return load_settings(path, dict(os.environ), check_files=check_files)
    except ConfigError as e:
        print(f"{path}: {e}", file=sys.stderr)
        return None


def cmd_config_check(args: argparse.Namespace) -> int:
    settings = _load(args.file, check_files=not args.skip_file_checks)
    if settings is None:
        return 1
    for warning in settings.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    ups = ", ".join(f"{u.name} ({u.url}, registry {u.registry}"
                    + (f", prefix /{u.prefix}" if u.prefix else "") + ")"
                    for u in settings.upstreams)  # fmt: skip
    print(
        f"{args.file}: OK — listen {settings.server.host}:{settings.server.port}, upstreams: {ups}"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return 1
    from proxy.observability import configure_logging

    configure_logging(settings.logging)
    for warning in settings.warnings:
        log.warning("config: %s", warning)
    _warn_open_door(settings)
    unreadable = unreadable_tls_files(settings)
    if unreadable:
        print(f"{args.config}: {unreadable}", file=sys.stderr)
        return 1
    if not _state_dir_usable(settings):
        return 1

    from proxy.workers import cpu_count

    workers = settings.server.workers or cpu_count()
    if workers > 1:
        return _serve_workers(args, settings, workers)

    from proxy.reload import Builder

    builder = Builder(stdout=sys.stdout)
    try:
        # A policy that cannot be loaded does not stop the start: the gate then refuses every
        # manifest (503) until a SIGHUP brings a good one. Only the audit file is fatal here.
        first = builder.first(settings)
    except ConfigError as e:
        print(f"{args.config}: {e}", file=sys.stderr)
        return 1
    _log_listening(settings, first.policy is not None or first.fail_closed is not None, 1)
    _serve_generation(args.config, settings, settings, builder, first, sockets=None)
    return 0


def _state_dir_usable(settings: Settings) -> bool:
    """Create the host's state file now, so a directory that cannot be written is one clear
    error at startup (not a miss per request in every worker)."""
    state_dir = settings.cache.state_dir
    if state_dir is None:
        return True
    import sqlite3

    from proxy.sources.sqlite_store import check_state_dir

    try:
        check_state_dir(state_dir)
    except (OSError, sqlite3.Error) as e:
        print(
            f"cache.state_dir: cannot use {state_dir} for the trust state file: {e} "
            "(point it at a writable directory, e.g. an emptyDir volume)",
            file=sys.stderr,
        )
        return False
    return True


def _serve_generation(
    config_path: Path,
    settings: Settings,
    listen: Settings,
    builder: Builder,
    first: Generation,
    *,
    sockets: list[socket.socket] | None,
) -> None:
    """Run uvicorn on ``first`` (a :class:`proxy.reload.Generation`) until shutdown.
    ``listen``: the settings the listening sockets and TLS come from (a worker started
    after a reload keeps the master's, as its siblings do)."""
    import uvicorn

    from proxy.http.app import create_app
    from proxy.http.server_protocol import guarded_protocol
    from proxy.reload import Runtime

    runtime = Runtime(first, builder, config_path=config_path, environ=dict(os.environ))
    server = listen.server
    client_ca = server.client_auth.client_ca_file
    config = uvicorn.Config(
        create_app(settings, runtime=runtime),
        host=server.host,
        port=server.port,
        ssl_certfile=str(server.tls_cert_file) if server.tls_cert_file else None,
        ssl_keyfile=str(server.tls_key_file) if server.tls_key_file else None,
        ssl_ca_certs=str(client_ca) if client_ca else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if client_ca else ssl.CERT_NONE,
        loop="auto",  # uvloop where installed
        # httptools where installed (as http="auto"), with the request-head limits uvicorn
        # lacks: a timeout and a size (see proxy/http/server_protocol.py).
        http=guarded_protocol(
            header_timeout=server.header_timeout, max_header_bytes=server.max_header_bytes
        ),
        h11_max_incomplete_event_size=server.max_header_bytes,  # where h11 is used
        timeout_keep_alive=math.ceil(server.keep_alive_timeout),  # uvicorn takes whole seconds
        log_config=None,  # logging is ours (JSON lines)
        access_log=False,  # our access line carries upstream, bytes and duration
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    uvicorn.Server(config).run(sockets=sockets)


def _log_listening(settings: Settings, enforcing: bool, workers: int) -> None:
    server = settings.server
    log.info(
        "trustproxy listening",
        extra={"listen": f"{server.host}:{server.port}", "tls": server.tls,
               "upstreams": [u.name for u in settings.upstreams],
               "policy": str(settings.policy_file) if settings.policy_file else None,
               "enforcing": enforcing, "workers": workers,
               "audit": settings.audit.sink,
               "metrics": server.metrics_enabled},
    )  # fmt: skip


def _serve_workers(args: argparse.Namespace, settings: Settings, workers: int) -> int:
    """The pre-fork master (proxy/workers.py): bind, fork ``workers`` workers, supervise."""
    # The master imports what it needs to supervise and no more: each module it loads is
    # resident in every process of the tree (the app's are loaded by each worker).
    from proxy.audit import open_recorder
    from proxy.settings import restart_needed
    from proxy.workers import Master, WorkerFilter, bind_sockets

    try:
        # Each worker opens its own recorder; a file that cannot be opened stops the start
        # here, once, as it does for one process.
        open_recorder(settings.audit, stdout=sys.stdout).close()
    except ConfigError as e:
        print(f"{args.config}: {e}", file=sys.stderr)
        return 1
    server = settings.server
    try:
        sockets = bind_sockets(server.host, server.port, workers)
    except OSError as e:
        print(f"server.listen: cannot listen on {server.host}:{server.port}: {e}",
              file=sys.stderr)  # fmt: skip
        return 1
    environ = dict(os.environ)
    latest = [settings]
    # Made before forking, held in memory only: sibling workers vouch for each other's saves
    # in the state file with it (proxy/sources/sqlite_store.py), a writer of the file cannot.
    import secrets

    handoff_key = secrets.token_bytes(32)

    def reload() -> None:
        # For workers started from now on; the running ones reload themselves.
        try:
            new = load_settings(args.config, environ)
        except ConfigError as e:
            log.error("master: reload failed, workers started later use the previous "
                      "config: %s", e)  # fmt: skip
            return
        latest[0] = new
        pending = restart_needed(settings, new)
        if pending:
            log.warning("restart needed for: %s (kept the running values)", ", ".join(pending))

    def run_worker(slot: int, sock: socket.socket) -> int:
        from proxy.reload import Builder

        for handler in logging.getLogger().handlers:
            handler.addFilter(WorkerFilter(slot))
        current = latest[0]
        builder = Builder(stdout=sys.stdout, handoff_key=handoff_key)
        try:
            first = builder.first(current)
        except ConfigError as e:
            log.error("worker %d cannot start: %s", slot, e)
            return 1
        _serve_generation(args.config, current, settings, builder, first, sockets=[sock])
        return 0

    _log_listening(settings, settings.policy_file is not None, workers)
    return Master(sockets, run_worker, reload, metrics_parent=settings.cache.state_dir).run()


def unreadable_tls_files(settings: Settings) -> str | None:
    """Why the TLS files cannot be read by this process, or None.

    The config check only sees that they exist; uvicorn would fail later with a bare
    PermissionError. In the container the process runs as uid 10001, and a key copied as
    root with mode 0600 is the usual cause (docs/deploy.md)."""
    server = settings.server
    files = (
        ("server.tls_cert_file", server.tls_cert_file),
        ("server.tls_key_file", server.tls_key_file),
        ("server.client_auth.client_ca_file", server.client_auth.client_ca_file),
    )
    for key, path in files:
        if path is None:
            continue
        try:
            with path.open("rb"):
                pass
        except OSError as e:
            uid, gid = os.getuid(), os.getgid()
            return (
                f"{key}: cannot read {path}: {e.strerror or e} (trustproxy runs as uid {uid}, "
                f"gid {gid}: the file must be readable by it, e.g. owner root, group {gid}, "
                "mode 0640; see docs/deploy.md)"
            )
    return None


def _warn_open_door(settings: Settings) -> None:
    """The proxy's own upstream credentials must not become an open door."""
    server = settings.server
    own_creds = [u.name for u in settings.upstreams if u.auth.mode != "passthrough"]
    if not server.loopback_only and not server.client_auth.enabled and own_creds:
        log.warning(
            "listening on %s without client authentication: anyone who reaches this port "
            "pulls with the proxy's own upstream access (%s). Set server.client_auth "
            "(htpasswd_file and/or client_ca_file) or restrict the network.",
            server.host,
            ", ".join(own_creds),
        )


# --------------------------------------------------------------------------- trust inspect

EXIT_OK, EXIT_NO, EXIT_USAGE = 0, 1, 2


class _UsageError(Exception):
    """A bad command line (exit 2)."""


def _add_trust_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    trust = sub.add_parser("trust", help="inspect trust data", description="Inspect trust data.")
    trust_sub = trust.add_subparsers(title="commands", metavar="COMMAND")
    trust.set_defaults(handler=lambda _a: _help(trust))
    # Each source type adds its own (proxy/sources/registry.py: add_cli).
    for name in source_type_names():
        add = source_type(name).add_cli
        if add is not None:
            add(trust_sub)
    # Commands that drive every source: the entry point's own.
    from proxy.snapshot_cli import add_cli as add_snapshot_cli
    from proxy.trust_migrate import add_cli as add_migrate

    add_snapshot_cli(trust_sub)
    add_migrate(trust_sub)


def parse_image(ref: str) -> tuple[str, str | None]:
    """``registry/repo[:tag]`` -> (repository, tag), see ``proxy.reference.parse_image_ref``."""
    from proxy.errors import ClientRequestError
    from proxy.reference import parse_image_ref

    try:
        return parse_image_ref(ref)
    except ClientRequestError as e:
        raise _UsageError(f"inspect: {e}") from e


class _ConfigFailed(Exception):
    """_load already printed why."""
