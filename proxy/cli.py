"""Command line: ``trustproxy serve``, ``trustproxy config check``. The only place (with
``__main__``) that reads argv and the environment and configures logging."""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path

from proxy.errors import ConfigError
from proxy.settings import ENV_PREFIX, Settings, load_settings

log = logging.getLogger("trustproxy")

DEFAULT_CONFIG = "config/trustproxy.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    code: int = args.handler(args)
    return code


def build_parser() -> argparse.ArgumentParser:
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

    import uvicorn

    from proxy.http.app import create_app

    server = settings.server
    client_ca = server.client_auth.client_ca_file
    config = uvicorn.Config(
        create_app(settings),
        host=server.host,
        port=server.port,
        ssl_certfile=str(server.tls_cert_file) if server.tls_cert_file else None,
        ssl_keyfile=str(server.tls_key_file) if server.tls_key_file else None,
        ssl_ca_certs=str(client_ca) if client_ca else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if client_ca else ssl.CERT_NONE,
        loop="auto",  # uvloop where installed
        http="auto",  # httptools where installed
        log_config=None,  # logging is ours (JSON lines)
        access_log=False,  # our access line carries upstream, bytes and duration
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    log.info(
        "trustproxy listening",
        extra={"listen": f"{server.host}:{server.port}", "tls": server.tls,
               "upstreams": [u.name for u in settings.upstreams]},
    )  # fmt: skip
    uvicorn.Server(config).run()
    return 0


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
