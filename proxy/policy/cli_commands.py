"""``trustproxy policy check`` and ``trustproxy policy explain`` (wired by ``proxy/cli.py``).

Exit codes: 0 yes / valid, 1 no / invalid (messages on stderr), 2 usage errors.
The CLI layer may read the environment (config overrides), like ``config check``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from proxy import reference
from proxy.errors import ClientRequestError, ConfigError
from proxy.policy.explain import explain as explain_lines
from proxy.policy.explain import format_grace
from proxy.policy.loader import load_policy
from proxy.policy.matcher import compile_pattern, matcher_for, tag_allowed
from proxy.policy.model import Policy, RepositoryRule
from proxy.settings import Settings, load_settings

__all__ = ["cmd_policy_check", "cmd_policy_explain", "parse_image_ref", "register"]

EXIT_OK, EXIT_NO, EXIT_USAGE = 0, 1, 2
DEFAULT_CONFIG = "config/trustproxy.yaml"  # as proxy.cli (not imported: cli imports us)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``policy check`` and ``policy explain`` to the top-level subparsers."""
    policy = subparsers.add_parser(
        "policy",
        help="check policy files and explain what they require",
        description="Check policy files and explain which rule applies to an image.",
    )
    sub = policy.add_subparsers(title="commands", metavar="COMMAND")
    policy.set_defaults(handler=lambda _a: _help(policy))

    check = sub.add_parser(
        "check",
        help="validate a policy file",
        description="Validate a policy file and print path-qualified errors, e.g. "
        "\"trust.repositories['registry.example.com/myorg/*'].signers[1].role: ...\". "
        "On success print each rule (most specific first) with its mode. "
        "Exit 0 when valid, 1 otherwise.",
    )
    check.add_argument("file", type=Path, metavar="FILE", help="policy file (YAML)")
    check.add_argument(
        "--config",
        "-c",
        type=Path,
        default=None,
        help="also check the policy against this config: every 'source' must name one of "
        "its trust.sources, and each rule's registry should be one of its upstreams",
    )
    check.set_defaults(handler=cmd_policy_check)

    exp = sub.add_parser(
        "explain",
        help="show which rule applies to an image and what it requires",
        description="Show which policy rule applies to IMAGE_REF, and what it requires: "
        "mode, trust source, root of trust, signers and thresholds, allowed tags, digest "
        "pulls and expiry grace. IMAGE_REF names the upstream image, as in policy patterns "
        "(<registry>/<repo>[:tag]); no registry means Docker Hub (alpine is "
        "docker.io/library/alpine). Exit 0 when a rule matches and the tag (if given) is "
        "allowed by its tag patterns; 1 otherwise; 2 for a bad IMAGE_REF.",
    )
    exp.add_argument(
        "image",
        metavar="IMAGE_REF",
        help="e.g. registry.example.com/myorg/app:v1.2.3, 127.0.0.1:5000/team/app or alpine",
    )
    exp.add_argument(
        "--policy",
        "-p",
        type=Path,
        default=None,
        metavar="FILE",
        help="policy file; default: the config's policy_file",
    )
    exp.add_argument(
        "--config",
        "-c",
        type=Path,
        default=None,
        help=f"config file (for policy_file and trust.sources); default: {DEFAULT_CONFIG} "
        "when --policy is not given",
    )
    exp.set_defaults(handler=cmd_policy_explain)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EXIT_USAGE


class _Failed(Exception):
    """Already reported on stderr."""


def _err(message: str) -> None:
    print(message, file=sys.stderr)


def _load_config(path: Path) -> Settings:
    try:
        return load_settings(path, dict(os.environ))
    except ConfigError as e:
        _err(f"{path}: {_message(e, path)}")
        raise _Failed from e


def _load_policy(path: Path, known_sources: Mapping[str, str] | None) -> Policy:
    try:
        return load_policy(path, known_sources=known_sources)
    except ConfigError as e:
        _err(f"{path}: {_message(e, path)}")
        raise _Failed from e


def _message(e: ConfigError, file: Path) -> str:
    # Errors about the file itself carry its name as their path: do not print it twice.
    return e.message if e.path == str(file) else str(e)


def _sources(settings: Settings) -> dict[str, str]:
    """The config's trust sources, name -> type (a rule's keys depend on its source's type)."""
    return {s.name: s.type for s in settings.trust.sources}


# --------------------------------------------------------------------------- check


def cmd_policy_check(args: argparse.Namespace) -> int:
    try:
        settings = _load_config(args.config) if args.config is not None else None
        known = _sources(settings) if settings is not None else None
        policy = _load_policy(args.file, known)
    except _Failed:
        return EXIT_NO
    for warning in policy.warnings:
        _err(f"warning: {warning}")
    if settings is None:
        _err("note: trust source names were not checked (pass --config to check them)")
    else:
        for warning in _registry_warnings(policy, settings):
            _err(f"warning: {warning}")
    ordered = matcher_for(policy).ordered
    count = f"{len(ordered)} rule" + ("" if len(ordered) == 1 else "s")
    print(f"{args.file}: OK — {count}, most specific first:")
    for rule in ordered:
        print(f"  {rule.pattern} → {_summary(rule)}")
    if not any(r.pattern == "*" for r in ordered):
        print('  (no "*" rule: repositories no rule matches are refused)')
    return EXIT_OK


def _summary(rule: RepositoryRule) -> str:
    if not rule.enforced:
        return rule.mode
    parts: list[str] = [rule.mode]
    if rule.source:
        parts.append(f"source {rule.source}")
    if rule.verification is not None:
        parts.extend(rule.verification.summary())
    if rule.tag_patterns:
        parts.append(f"tags {', '.join(rule.tag_patterns)}")
    if rule.digests != "allow":
        parts.append(f"digests {rule.digests}")
    if rule.fallback:
        parts.append(f"fallback {rule.fallback}")
    if rule.expiry_grace:
        parts.append(f"grace {format_grace(rule.expiry_grace)}")
    return parts[0] + " (" + "; ".join(parts[1:]) + ")"


def _registry_warnings(policy: Policy, settings: Settings) -> list[str]:
    """Rules that no upstream can reach, and upstreams that no rule covers."""
    registries = sorted({u.registry for u in settings.upstreams})
    out: list[str] = []
    compiled = [(r, compile_pattern(r.pattern)) for r in policy.rules]
    for rule, c in compiled:
        if not any(c.could_match_registry(reg) for reg in registries):
            out.append(
                f"{rule.path}: matches no upstream registry of the config "
                f"({', '.join(registries)}): the rule never applies"
            )
    for reg in registries:
        if not any(c.could_match_registry(reg) for _, c in compiled):
            out.append(f"no rule can match registry {reg}: everything pulled from it is refused")
    return out


# --------------------------------------------------------------------------- explain


def parse_image_ref(ref: str) -> tuple[str, str | None]:
    """``[registry/]repo[:tag]`` -> (``<registry>/<repo>``, tag). Raises ValueError.

    The grammar and Docker's normalisation live in ``proxy.reference.parse_image_ref``.
    """
    try:
        return reference.parse_image_ref(ref)
    except ClientRequestError as e:
        if "@" in ref:
            raise ValueError(
                "give a tag, not a digest (digest pulls follow the rule's 'digests')"
            ) from e
        raise ValueError(str(e)) from e


def cmd_policy_explain(args: argparse.Namespace) -> int:
    try:
        repository, tag = parse_image_ref(args.image)
    except ValueError as e:
        _err(f"trustproxy policy explain: {e}")
        return EXIT_USAGE
    try:
        settings: Settings | None
        if args.policy is not None:
            policy_file: Path = args.policy
            settings = _load_config(args.config) if args.config is not None else None
        else:
            settings = _load_config(args.config or Path(DEFAULT_CONFIG))
            if settings.policy_file is None:
                _err(
                    f"{settings.source_file}: no policy_file (nothing is enforced); "
                    "use --policy FILE"
                )
                return EXIT_NO
            policy_file = settings.policy_file
        policy = _load_policy(policy_file, _sources(settings) if settings else None)
    except _Failed:
        return EXIT_NO
    for line in explain_lines(policy, repository, tag):
        print(line)
    rule = matcher_for(policy).match(repository)
    # Mode off checks nothing, tag patterns included: the tag is served.
    if rule is None or (tag is not None and rule.enforced and not tag_allowed(rule, tag)):
        return EXIT_NO
    return EXIT_OK
