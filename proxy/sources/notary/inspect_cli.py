"""``trustproxy trust inspect``: Notary v1's own command (added under ``trustproxy trust``
by its registry entry). Fetches and verifies a repository's trust data and shows its signed
tags, signers and keys, and why a tag is or is not acceptable."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from proxy.cli import (
    DEFAULT_CONFIG,
    EXIT_NO,
    EXIT_OK,
    EXIT_USAGE,
    _ConfigFailed,
    _load,
    _UsageError,
    parse_image,
)
from proxy.settings import LimitSettings, TrustSourceSettings
from proxy.sources.notary.rules import SigningRule

__all__ = ["add_cli", "cmd_trust_inspect"]


def add_cli(trust_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = trust_sub.add_parser(
        "inspect",
        help="show signed tags, signers and keys of a repository, and why a tag is acceptable",
        description="Fetch and verify a repository's Notary v1 (Docker Content Trust) data "
        "and show its signed tags with digests and signers, the signers and their key IDs, "
        "the root and repository keys, and why each tag is or is not acceptable. "
        "With a tag: exit 0 iff the tag is acceptable. Without: exit 0 iff the trust data "
        "verifies. Exit 1 otherwise, 2 for usage errors.",
    )
    p.add_argument(
        "image",
        metavar="REGISTRY/REPO[:TAG]",
        help="e.g. registry.example.com:5000/team/app:v1 or docker.io/library/alpine",
    )
    p.add_argument(
        "--config",
        "-c",
        type=Path,
        default=None,
        help=f"config file whose trust.sources name the notary server; default: {DEFAULT_CONFIG}",
    )
    p.add_argument(
        "--source", metavar="NAME", help="which notary source of the config (default: the first)"
    )
    p.add_argument("--trust-server", metavar="URL", help="notary server URL (no config needed)")
    p.add_argument(
        "--ca-file", type=Path, metavar="FILE", help="CA certificate(s) for --trust-server's TLS"
    )
    root = p.add_argument_group("root of trust (default: trust on first use, NOT pinned)")
    root.add_argument(
        "--root-key",
        action="append",
        default=[],
        metavar="ID",
        help="pin a canonical root key ID (docker's 'Root Key'); repeatable",
    )
    root.add_argument(
        "--root-cert",
        action="append",
        default=[],
        metavar="ID",
        help="pin a root certificate ID (the key ID in root.json); repeatable",
    )
    root.add_argument(
        "--root-ca",
        type=Path,
        metavar="FILE",
        help="the root certificate must chain to a CA in this PEM file",
    )
    root.add_argument(
        "--tofu",
        action="store_true",
        help="trust the root seen now (the default when nothing is pinned)",
    )
    p.add_argument(
        "--require-role",
        action="append",
        default=[],
        metavar="ROLE[:N]",
        help="require ROLE (e.g. targets/releases) to sign the tag with at least N signatures "
        "(default 1); repeatable. Without: Docker's rule (targets/releases, else targets)",
    )
    p.add_argument(
        "--allow-expired-root-cert",
        action="store_true",
        help="accept a root whose certificate expired (unsafe; warned)",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument(
        "--pretty",
        action="store_true",
        help="human output laid out like docker trust inspect --pretty",
    )
    out.add_argument("--json", action="store_true", help="one JSON object, for machines")
    p.set_defaults(handler=cmd_trust_inspect)


def _signing_rule(args: argparse.Namespace) -> tuple[SigningRule, bool]:
    """The SigningRule the flags describe, and whether the root is unpinned (TOFU)."""
    from proxy.sources.notary.rules import SigningRule
    from proxy.sources.notary.tuf import (
        PinnedRootCerts,
        PinnedRootKeys,
        RoleRequirement,
        RootCA,
        RootOfTrust,
        TrustOnFirstUse,
    )

    chosen = [bool(args.root_key), bool(args.root_cert), args.root_ca is not None, args.tofu]
    if sum(chosen) > 1:
        raise _UsageError("choose one of --root-key, --root-cert, --root-ca, --tofu")
    rot: RootOfTrust
    if args.root_key:
        rot = PinnedRootKeys(args.root_key)
    elif args.root_cert:
        rot = PinnedRootCerts(args.root_cert)
    elif args.root_ca is not None:
        try:
            rot = RootCA(args.root_ca.read_bytes())
        except (OSError, ValueError) as e:
            raise _UsageError(f"--root-ca {args.root_ca}: {e}") from e
    else:
        rot = TrustOnFirstUse()
    required: tuple[RoleRequirement, ...] | None = None
    if args.require_role:
        reqs = []
        for item in args.require_role:
            role, sep, n = item.partition(":")
            if not role.startswith("targets") or (sep and not n.isdigit()):
                raise _UsageError(
                    f"--require-role {item!r}: expected ROLE[:N], e.g. targets/releases:1"
                )
            try:
                reqs.append(RoleRequirement(role, int(n) if sep else 1))
            except ValueError as e:
                raise _UsageError(f"--require-role {item!r}: {e}") from e
        required = tuple(reqs)
    rule = SigningRule(rot, required, allow_expired_root_cert=args.allow_expired_root_cert)
    return rule, isinstance(rot, TrustOnFirstUse)


def _trust_source_settings(
    args: argparse.Namespace,
) -> tuple[TrustSourceSettings, LimitSettings]:
    """The notary source from --trust-server or the config, and the limits to use."""
    if args.trust_server:
        if args.source:
            raise _UsageError("--source and --trust-server exclude each other")
        url = args.trust_server.rstrip("/")
        if not url.startswith(("https://", "http://")):
            raise _UsageError("--trust-server must be an http(s) URL")
        limits = LimitSettings()
        if args.config is not None:
            settings = _load(args.config)
            if settings is None:
                raise _ConfigFailed
            limits = settings.limits
        return TrustSourceSettings("trust-server", "notary", url, args.ca_file), limits
    if args.ca_file is not None:
        raise _UsageError("--ca-file goes with --trust-server")
    path = args.config or Path(DEFAULT_CONFIG)
    settings = _load(path)
    if settings is None:
        raise _ConfigFailed
    sources = [s for s in settings.trust.sources if s.type == "notary"]
    if args.source:
        sources = [s for s in sources if s.name == args.source]
        if not sources:
            raise _UsageError(f"{path}: no notary source named {args.source!r} in trust.sources")
    if not sources:
        raise _UsageError(f"{path}: no notary source in trust.sources (or use --trust-server)")
    return sources[0], settings.limits


def cmd_trust_inspect(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from proxy.errors import FetchError, TrustDataError
    from proxy.sources.base import NoTrustDataError
    from proxy.sources.notary import inspect_report
    from proxy.sources.notary.source import NotarySource
    from proxy.sources.store import MemoryTrustStateStore

    try:
        repository, tag = parse_image(args.image)
        rule, tofu = _signing_rule(args)
        source_settings, limits = _trust_source_settings(args)
    except _UsageError as e:
        print(f"trustproxy trust inspect: {e}", file=sys.stderr)
        return EXIT_USAGE
    except _ConfigFailed:
        return EXIT_NO
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s: %(message)s")
    if tofu:
        print(f"warning: {inspect_report.TOFU_WARNING}", file=sys.stderr)

    async def run() -> dict[str, Any]:
        source = NotarySource.from_settings(source_settings, limits, MemoryTrustStateStore())
        try:
            ts = await source.load(repository, rule)
        finally:
            await source.aclose()
        return inspect_report.build_report(
            ts, gun=repository, source=source.name, server=source.url, rule=rule, tag=tag
        )

    try:
        report = asyncio.run(run())
    except (NoTrustDataError, FetchError, TrustDataError) as e:
        if isinstance(e, NoTrustDataError):
            kind, message = "no-trust-data", str(e)
        elif isinstance(e, FetchError):
            kind, message = "unavailable", str(e)
        else:
            kind = "verification-failed"
            message = f"trust data for {repository} failed verification: {e}"
        print(f"error: {message}", file=sys.stderr)
        if args.json:
            err = inspect_report.build_error_report(
                gun=repository,
                source=source_settings.name,
                server=source_settings.url,
                rule=rule,
                kind=kind,
                message=message,
            )
            print(json.dumps(err, indent=2))
        return EXIT_NO
    if args.json:
        print(json.dumps(report, indent=2))
    elif args.pretty:
        print(inspect_report.format_pretty(report), end="")
    else:
        print(inspect_report.format_compact(report), end="")
    if tag is not None:
        return EXIT_OK if report["query"]["acceptable"] else EXIT_NO
    return EXIT_OK
