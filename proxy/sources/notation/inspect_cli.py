"""``trustproxy trust inspect`` for repositories a Notation source judges.

``trust inspect`` is one command for every source type: a type that registered it first
(Notary v1) keeps its flags, and this module routes the command to the Notation report when
the repository is a Notation source's: ``--source NAME`` names one, or (without
``--source`` and ``--trust-server``) the policy rule matching the repository names one.

The report reads the registry as the proxy would (the config's upstream for the repository,
its credentials and limits): the tag's digest, every Notation signature of it, and for each
the signer's subject, the certificate fingerprint, the trust store and trust policy
statement that matched, the timestamp, and every check's result. Exit 0 iff a signature
passes (the digest would be served), 1 otherwise, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proxy.cli import DEFAULT_CONFIG, EXIT_NO, EXIT_OK, EXIT_USAGE, _UsageError, parse_image

__all__ = ["add_cli", "cmd_notation_inspect", "notation_source_for"]

_Handler = Callable[[argparse.Namespace], int]


def add_cli(trust_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    existing = trust_sub.choices.get("inspect")
    if existing is None:
        p = trust_sub.add_parser(
            "inspect",
            help="show a repository's signatures and why a tag is acceptable",
            description=__doc__,
        )
        p.add_argument("image", metavar="REGISTRY/REPO[:TAG]")
        p.add_argument("--config", "-c", type=Path, default=None)
        p.add_argument("--source", metavar="NAME")
        p.add_argument("--json", action="store_true", help="one JSON object, for machines")
        p.set_defaults(handler=cmd_notation_inspect)
        return
    previous: _Handler | None = existing.get_default("handler")

    def dispatch(args: argparse.Namespace) -> int:
        if notation_source_for(args) is not None:
            return cmd_notation_inspect(args)
        if previous is None:  # pragma: no cover - the other type set its handler
            print("trustproxy trust inspect: no handler", file=sys.stderr)
            return EXIT_USAGE
        return previous(args)

    existing.set_defaults(handler=dispatch)
    existing.epilog = (
        (existing.epilog or "")
        + " For a repository of a Notation source (--source NAME, or the policy rule "
        "matching it), the Notation report: its signatures, signers, trust store, trust "
        "policy and every check."
    ).strip()


def _settings(args: argparse.Namespace) -> Any:
    from proxy.errors import ConfigError
    from proxy.settings import load_settings

    path = Path(getattr(args, "config", None) or DEFAULT_CONFIG)
    try:
        return load_settings(path, dict(os.environ))
    except (ConfigError, OSError):
        return None


def notation_source_for(args: argparse.Namespace) -> Any:
    """The Notation source settings the command is about, or None (another type's)."""
    if getattr(args, "trust_server", None):
        return None
    settings = _settings(args)
    if settings is None:
        return None
    by_name = {s.name: s for s in settings.trust.sources}
    wanted = getattr(args, "source", None)
    if wanted is None:
        wanted = _rule_source(settings, args.image)
    found = by_name.get(wanted) if wanted else None
    return found if found is not None and found.type == "notation" else None


def _rule_source(settings: Any, image: str) -> str | None:
    from proxy.errors import TrustproxyError
    from proxy.policy.loader import load_policy
    from proxy.policy.matcher import match_rule

    if settings.policy_file is None:
        return None
    try:
        repository, _ = parse_image(image)
        types = {s.name: s.type for s in settings.trust.sources}
        policy = load_policy(settings.policy_file, known_sources=types)
        rule = match_rule(policy, repository)
    except (TrustproxyError, _UsageError, ValueError, OSError):
        return None
    return rule.source if rule is not None else None


def _rule_of(settings: Any, source: str, repository: str) -> Any:
    """The policy rule's Notation rule for ``repository`` (the document alone otherwise)."""
    from proxy.policy.loader import load_policy
    from proxy.policy.matcher import match_rule
    from proxy.sources.notation.rule import NotationRule

    if settings.policy_file is not None:
        types = {s.name: s.type for s in settings.trust.sources}
        rule = match_rule(load_policy(settings.policy_file, known_sources=types), repository)
        if rule is not None and rule.source == source and rule.verification is not None:
            return rule.verification.signing_rule(rule.expiry_grace)
    return NotationRule()


def cmd_notation_inspect(args: argparse.Namespace) -> int:
    from proxy.errors import TrustproxyError

    try:
        repository, tag = parse_image(args.image)
    except _UsageError as e:
        print(f"trustproxy trust inspect: {e}", file=sys.stderr)
        return EXIT_USAGE
    settings = _settings(args)
    source = notation_source_for(args)
    if settings is None or source is None:
        print("trustproxy trust inspect: no Notation source for this image", file=sys.stderr)
        return EXIT_USAGE
    try:
        report = asyncio.run(_report(settings, source, repository, tag))
    except (TrustproxyError, OSError, ValueError) as e:
        message = e.reason if hasattr(e, "reason") else str(e)
        print(f"error: {message}", file=sys.stderr)
        if args.json:
            print(json.dumps({"repository": repository, "tag": tag, "error": message}, indent=2))
        return EXIT_NO
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_format(report), end="")
    return EXIT_OK if report["acceptable"] else EXIT_NO


async def _report(settings: Any, source: Any, repository: str, tag: str | None) -> dict[str, Any]:
    from proxy.errors import UnknownRepositoryError
    from proxy.routing import Route, Router
    from proxy.sources.notation.entry import build_judge
    from proxy.sources.notation.rule import describe_statement
    from proxy.upstream.build import build_upstream_client
    from proxy.upstream.reader import MANIFEST_MEDIA_TYPES, RegistryReader

    up = next((u for u in settings.upstreams if repository.startswith(u.registry + "/")), None)
    if up is None:
        raise UnknownRepositoryError(f"no upstream of the config serves {repository}")
    upstream_name = repository[len(up.registry) + 1 :]
    route = Route(up, Router(settings.upstreams).client_name(up, upstream_name), upstream_name)
    judge = build_judge(source, settings.limits)
    rule = _rule_of(settings, source.name, repository)
    statement = judge.statement_for(repository, rule)
    client = build_upstream_client(settings, up)
    now = datetime.now(UTC)
    try:
        reader = RegistryReader(
            client,
            route,
            accept={"accept": ", ".join(MANIFEST_MEDIA_TYPES)},
            authorization=None,
            manifest_max_bytes=settings.limits.manifest_max_bytes,
        )
        digest: str | None = None
        if tag is not None:
            digest = await reader.head_tag(tag)
            if digest is None:
                tagged = await reader.manifest_by_tag(tag)
                digest = tagged.digest if tagged is not None else None
            if digest is None:
                raise UnknownRepositoryError(f"tag {tag} does not exist in {repository}")
        if digest is None:
            raise UnknownRepositoryError("give a tag: REGISTRY/REPO:TAG")
        signatures = await judge.inspect(reader, repository, digest, rule, now)
    finally:
        await client.aclose()
        await judge.aclose()
    return {
        "repository": repository,
        "tag": tag,
        "digest": digest,
        "source": source.name,
        "trust_policy": statement.name,
        "policy": describe_statement(statement),
        "acceptable": statement.skips or any(s.passed for s in signatures),
        "signatures": [asdict(s) for s in signatures],
    }


def _format(report: dict[str, Any]) -> str:
    lines = [
        f"{report['repository']}:{report['tag']} -> {report['digest']}",
        f"source {report['source']}, trust policy {report['trust_policy']!r}:",
        *("  " + line for line in report["policy"]),
    ]
    if not report["signatures"]:
        lines.append("no Notation signature")
    for s in report["signatures"]:
        lines.append(f"signature {s['signature_manifest']} ({s['envelope_media_type'] or '?'}):")
        lines.append("  PASSED" if s["passed"] else f"  REFUSED: {s['reason']}")
        if s["signer_subject"]:
            lines.append(f"  signer: {s['signer_subject']}")
        if s["cert_fingerprint"]:
            lines.append(f"  certificate sha256: {s['cert_fingerprint']}")
        if s["trust_store"]:
            lines.append(f"  trust store: {s['trust_store']}")
        if s["timestamp"]:
            lines.append(f"  timestamp: {s['timestamp']}")
        lines.extend(f"  {c}" for c in s["checks"])
    lines.append("acceptable" if report["acceptable"] else "NOT acceptable")
    return "\n".join(lines) + "\n"
