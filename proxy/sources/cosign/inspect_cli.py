"""``trustproxy trust inspect`` for cosign sources: the signatures of an image (or of every
tag of a repository), who signed (key ID, or identity and issuer), their log entries, and
the verdict per authority of the rule, with the reasons; ``--json`` for machines.

The rule is the one the config's policy applies to the repository (or ``--key`` files as
ad-hoc authorities); the registry is read through the config's upstream for that registry,
with the upstream's own credentials, exactly as the proxy would judge the image.

``trust inspect`` is one command for every source type: Notary's entry adds it first; this
module adds its options to it and answers for repositories whose rule (or ``--source``)
names a cosign source, handing everything else to the command it found.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from proxy.errors import FetchError, TrustproxyError
from proxy.sources.cosign.facts import CertSigner, KeySigner, VerifiedSignature
from proxy.sources.cosign.policy import CosignPolicy, KeyAuthority, Verdict
from proxy.sources.cosign.rule import CosignRule, CosignVerification

__all__ = ["add_cli"]

#: tags judged when a whole repository is inspected
MAX_TAGS: Final = 100
MAX_TAG_LIST_BYTES: Final = 1024 * 1024
Handler = Callable[[argparse.Namespace], int]
#: options the Notary command adds to ``trust inspect`` (any set: its command answers)
_OTHER_OPTIONS: Final = (
    "trust_server",
    "ca_file",
    "root_key",
    "root_cert",
    "root_ca",
    "tofu",
    "require_role",
    "allow_expired_root_cert",
    "pretty",
)


def add_cli(trust_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = trust_sub.choices.get("inspect")
    fallback: Handler | None = None
    if parser is None:
        parser = trust_sub.add_parser(
            "inspect",
            help="show the signatures of an image or repository and whether they are acceptable",
        )
        parser.add_argument("image", metavar="REGISTRY/REPO[:TAG]")
        parser.add_argument("--config", "-c", type=Path, default=None)
        parser.add_argument("--source", metavar="NAME")
        parser.add_argument("--json", action="store_true", help="one JSON object, for machines")
    else:
        fallback = parser.get_default("handler")
    group = parser.add_argument_group(
        "cosign sources (type: cosign): the rule is the config's policy rule for the repository"
    )
    group.add_argument(
        "--key",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="cosign: judge with this public key (PEM) as an authority instead of the "
        "policy's rule (transparency log optional); repeatable",
    )
    parser.set_defaults(handler=lambda args: _dispatch(args, fallback))


def _dispatch(args: argparse.Namespace, fallback: Handler | None) -> int:
    from proxy.cli import DEFAULT_CONFIG, EXIT_USAGE, _load, _UsageError, parse_image

    def usage(message: str) -> int:
        print(f"trustproxy trust inspect: {message}", file=sys.stderr)
        return EXIT_USAGE

    # Options of the other type's command: that command answers (and checks them).
    theirs = [name for name in _OTHER_OPTIONS if getattr(args, name, None)]
    if theirs:
        if fallback is not None:
            return _fallback(args, fallback)
        return usage(f"--{theirs[0].replace('_', '-')} is not an option of cosign sources")
    try:
        repository, tag = parse_image(args.image)
    except _UsageError as e:
        return usage(str(e))
    path = args.config or Path(DEFAULT_CONFIG)
    if fallback is not None:
        # A config that does not load is the other command's to report (as before).
        from proxy.errors import ConfigError
        from proxy.settings import load_settings

        try:
            settings = load_settings(path, dict(os.environ))
        except ConfigError:
            return _fallback(args, fallback)
    else:
        loaded = _load(path)
        if loaded is None:
            return 1
        settings = loaded
    policy = None
    if settings.policy_file is not None:
        from proxy.errors import ConfigError
        from proxy.policy.loader import load_policy

        try:
            known = {s.name: s.type for s in settings.trust.sources}
            policy = load_policy(settings.policy_file, known_sources=known)
        except ConfigError as e:
            print(f"{settings.policy_file}: {e}", file=sys.stderr)
            return 1
    source_name, rule = _chosen(settings, policy, repository, args.source)
    types = {s.name: s.type for s in settings.trust.sources}
    if source_name is None or types.get(source_name) != "cosign":
        if fallback is not None:
            return _fallback(args, fallback)
        return usage(f"{path}: no cosign source applies to {repository}")
    if args.key:
        try:
            rule = _key_rule(args.key)
        except TrustproxyError as e:
            return usage(str(e))
    if rule is None:
        return usage(
            f"no cosign rule of the policy matches {repository}: give --key FILE to judge "
            "with a key"
        )
    try:
        report = asyncio.run(_inspect(settings, source_name, repository, tag, rule))
    except (FetchError, TrustproxyError, OSError, ValueError) as e:
        print(f"trustproxy trust inspect: {repository}: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    if tag is not None:
        return 0 if report["tags"] and report["tags"][0]["acceptable"] else 1
    return 0


def _fallback(args: argparse.Namespace, fallback: Handler) -> int:
    # The other type's command does not know these options: it must not see them set.
    if args.key:
        print("trustproxy trust inspect: --key is for cosign sources", file=sys.stderr)
        return 2
    return fallback(args)


def _chosen(
    settings: Any, policy: Any, repository: str, named: str | None
) -> tuple[str | None, CosignRule | None]:
    """The cosign source and rule for ``repository``: the policy's rule, else ``--source``,
    else the config's only cosign source."""
    from proxy.policy.matcher import match_rule

    rule = match_rule(policy, repository) if policy is not None else None
    verification = rule.verification if rule is not None else None
    cosign_rule = verification.rule if isinstance(verification, CosignVerification) else None
    if named is not None:
        return named, cosign_rule
    if rule is not None and rule.source is not None:
        return rule.source, cosign_rule
    cosign = [s.name for s in settings.trust.sources if s.type == "cosign"]
    if len(cosign) == len(settings.trust.sources) and cosign:
        return cosign[0], cosign_rule
    return None, None


def _key_rule(files: list[Path]) -> CosignRule:
    from proxy.errors import ConfigError
    from proxy.sources.cosign.errors import CosignFormatError
    from proxy.sources.cosign.keys import load_pem_key

    authorities = []
    for file in files:
        try:
            key = load_pem_key(file.read_bytes(), what="key")
        except OSError as e:
            raise ConfigError(f"--key {file}", e.strerror or str(e)) from e
        except CosignFormatError as e:
            raise ConfigError(f"--key {file}", e.detail) from e
        authorities.append(KeyAuthority(key, name=file.name))
    return CosignRule(CosignPolicy(tuple(authorities), tlog="optional", rule="--key"))


async def _inspect(
    settings: Any, source_name: str, repository: str, tag: str | None, rule: CosignRule
) -> dict[str, Any]:
    # The CLI builds what the proxy would: an upstream client and a reader as the proxy
    # itself (no client credentials), the source's judge.
    from proxy.routing import Route
    from proxy.sources.cosign.config import load_trusted_root
    from proxy.sources.cosign.entry import CosignSettings
    from proxy.sources.cosign.judge import CosignJudge
    from proxy.sources.cosign.verify import CosignVerifier
    from proxy.upstream.build import build_upstream_client
    from proxy.upstream.reader import RegistryReader

    source = next(s for s in settings.trust.sources if s.name == source_name)
    if not isinstance(source, CosignSettings):
        raise ValueError(f"trust source {source_name} is not a cosign source")
    registry, _, path = repository.partition("/")
    upstream = next((u for u in settings.upstreams if u.registry == registry), None)
    if upstream is None:
        raise ValueError(f"no upstream of the config serves registry {registry}")
    root = load_trusted_root(source.cosign, f"trust.sources.{source_name}.trusted_root")
    judge = CosignJudge(
        CosignVerifier(root, require_sct=not source.cosign.insecure_ignore_sct,
                       limits=source.cosign.limits),
        source=source_name,
        signature_repository=source.cosign.signature_repository,
        limits=source.cosign.limits,
    )  # fmt: skip
    client = build_upstream_client(settings, upstream)
    client_name = f"{upstream.prefix}/{path}" if upstream.prefix else path
    reader = RegistryReader(
        client,
        Route(upstream, client_name, path),
        accept={"accept": _ACCEPT},
        authorization=None,
        manifest_max_bytes=settings.limits.manifest_max_bytes,
    )
    try:
        tags = [tag] if tag is not None else await _tags(reader)
        out = []
        for name in tags[:MAX_TAGS]:
            digest = await reader.head_tag(name)
            if digest is None:
                tagged = await reader.manifest_by_tag(name)
                digest = tagged.digest if tagged is not None else None
            if digest is None:
                out.append({"tag": name, "digest": None, "acceptable": False,
                            "reasons": [f"tag {name} does not exist in {repository}"]})  # fmt: skip
                continue
            verdict, attestations = await judge.evaluate(
                reader, repository, digest, rule, datetime.now(UTC), everything=True
            )
            out.append(_tag_report(name, verdict, attestations, rule))
    finally:
        await client.aclose()
    return {
        "repository": repository,
        "source": source_name,
        "rule": rule.name,
        "authorities": [a.label for a in rule.policy.authorities],
        "threshold": rule.policy.threshold,
        "tlog": rule.policy.tlog,
        "tags": out,
        "tags_not_shown": max(0, len(tags) - MAX_TAGS),
    }


_ACCEPT: Final = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


async def _tags(reader: Any) -> list[str]:
    """The repository's tags, less cosign's own (``sha256-<hex>.sig/.att``, referrer
    indexes): those are signatures, not images."""
    resp = await reader.client.open(
        "GET", f"/v2/{reader.route.upstream_name}/tags/list", scope=reader.route.scope
    )
    if resp.status_code != 200:
        await resp.aclose()
        raise ValueError(f"the registry answered HTTP {resp.status_code} for the tag list")
    body = await reader.client.read_bounded(resp, MAX_TAG_LIST_BYTES, "tag list")
    doc = json.loads(body)
    tags = doc.get("tags") if isinstance(doc, dict) else None
    if not isinstance(tags, list):
        return []
    return [
        t for t in tags if isinstance(t, str) and not (t.startswith("sha256-") and len(t) >= 71)
    ]


def _signature(sig: VerifiedSignature) -> dict[str, Any]:
    entry = sig.log_entry
    out: dict[str, Any] = {
        "signer": sig.signer.describe(),
        "layout": sig.layout,
        "origin": sig.origin,
        "reference": sig.reference,
        "log_index": entry.log_index if entry is not None else None,
        "integrated_time": (
            entry.integrated_time.isoformat()
            if entry is not None and entry.integrated_time is not None
            else None
        ),
    }
    if isinstance(sig.signer, KeySigner):
        out["key_id"] = sig.signer.key_id
    if isinstance(sig.signer, CertSigner):
        out["identity"] = list(sig.signer.identity.sans)
        out["issuer"] = sig.signer.identity.issuer
    return out


def _tag_report(
    tag: str, verdict: Verdict, attestations: list[tuple[str, Verdict]], rule: CosignRule
) -> dict[str, Any]:
    acceptable = verdict.accepted and all(v.accepted for _, v in attestations)
    return {
        "tag": tag,
        "digest": verdict.digest,
        "acceptable": acceptable,
        "authorities": {a.label: a.label in verdict.satisfied for a in rule.policy.authorities},
        "signatures": [_signature(s) for s in verdict.signatures],
        "attestations": {t: v.accepted for t, v in attestations},
        "reasons": list(verdict.reasons)
        + [r for _, v in attestations if not v.accepted for r in v.reasons[:1]],
    }


def _print(report: dict[str, Any]) -> None:
    print(f"repository: {report['repository']} (source {report['source']})")
    print(
        f"rule: {report['rule'] or '-'}: {report['threshold']} of "
        f"{len(report['authorities'])} authorities, transparency log {report['tlog']}"
    )
    for item in report["tags"]:
        mark = "acceptable" if item["acceptable"] else "NOT acceptable"
        print(f"\n{item['tag']}  {item['digest'] or '-'}  {mark}")
        for label, ok in item.get("authorities", {}).items():
            print(f"  {'✓' if ok else '✗'} {label}")
        for sig in item.get("signatures", []):
            log_index = sig["log_index"]
            logged = f", log index {log_index}" if log_index is not None else ", no log entry"
            print(f"  signature ({sig['layout']}, {sig['origin']}) by {sig['signer']}{logged}")
        for predicate_type, ok in item.get("attestations", {}).items():
            print(f"  attestation {predicate_type}: {'verified' if ok else 'missing'}")
        for reason in item.get("reasons", []):
            print(f"  - {reason}")
    if report["tags_not_shown"]:
        print(f"\n({report['tags_not_shown']} more tags not shown)")
