"""``trustproxy trust migrate --to cosign`` (an entry-point command: it reads through any
source and writes cosign signatures): sign, with the organisation's cosign key, every
digest that verifies today under a repository's policy rule (Docker Content Trust, a
snapshot, any source), so the repository passes a ``cosign`` rule before its old trust data
is gone.

For each repository: the rule's source answers its signed state, verified now (nothing is
copied unchecked); each signed digest (an index for multi-arch tags: its children pass as
children of a signed index) gets a classic ``sha256-<hex>.sig`` signature by the key,
appended to the signatures already there. A digest the key already signed for the
repository is left alone, so running it again adds nothing. Dry run by default: ``--apply``
pushes, with the config's upstream credentials.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from proxy.decisions import NullRecorder
from proxy.enforcement.build import build_enforcement
from proxy.enforcement.enforcing_gate import signing_rule_for
from proxy.errors import ConfigError, NotSignedError, TrustproxyError
from proxy.policy.matcher import match_rule
from proxy.policy.model import Policy
from proxy.routing import Route, Router
from proxy.settings import Settings
from proxy.sources.cosign.classic import (
    SIMPLE_SIGNING,
    ClassicLimits,
    parse_sig_manifest,
    signature_tag,
    verify_classic,
)
from proxy.sources.cosign.errors import CosignFormatError
from proxy.sources.cosign.signing import OCI_MANIFEST, SigningKey, load_signing_key, sign_digest
from proxy.upstream.build import build_upstream_client
from proxy.upstream.reader import RegistryReader
from proxy.upstream.writer import RegistryWriter

__all__ = ["DigestPlan", "RepositoryPlan", "add_cli", "migrate"]

#: manifests read while migrating: every type a signed tag can name
_ACCEPT = {
    "accept": ", ".join(
        (
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
    )
}


@dataclass
class DigestPlan:
    """One signed digest and what migrating does with it."""

    digest: str
    tags: list[str]
    #: "signed" (pushed now), "would sign" (dry run), "already signed" (by this key)
    action: str = ""


@dataclass
class RepositoryPlan:
    repository: str
    digests: list[DigestPlan] = field(default_factory=list)
    #: why nothing could be done for it (no rule, the source refused or is down)
    error: str | None = None


async def migrate(
    settings: Settings,
    policy: Policy,
    repositories: Sequence[str],
    key: SigningKey,
    *,
    apply: bool,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> list[RepositoryPlan]:
    """The plan (and, with ``apply``, the pushes) for each of ``repositories`` (names as
    clients pull them through the proxy)."""
    enforcement = build_enforcement(settings, policy, recorder=NullRecorder(), clock=clock)
    router = Router(settings.upstreams)
    clients = {up.name: build_upstream_client(settings, up) for up in settings.upstreams}
    plans = []
    try:
        for name in repositories:
            plan = RepositoryPlan(name)
            plans.append(plan)
            try:
                route = router.route(name)
                rule = match_rule(policy, route.repository)
                if rule is None or rule.mode == "off" or rule.verification is None:
                    plan.error = f"no policy rule verifies {route.repository}"
                    continue
                source_name = rule.source or next(iter(enforcement.sources), None)
                source = enforcement.sources.get(source_name or "")
                if source is None:
                    plan.error = f"the rule for {route.repository} names no configured source"
                    continue
                client = clients[route.upstream.name]
                reader = RegistryReader(
                    client, route, _ACCEPT, None, settings.limits.manifest_max_bytes
                )
                state = await source.signed_state(
                    route.repository, signing_rule_for(rule), registry=reader
                )
                by_digest: dict[str, list[str]] = {}
                for tag, answer in sorted(state.tags.items()):
                    by_digest.setdefault(answer.digest, []).append(tag)
                for digest, tags in sorted(by_digest.items()):
                    item = DigestPlan(digest, tags)
                    plan.digests.append(item)
                    item.action = await _sign_one(
                        reader, RegistryWriter(client, route), route, digest, key, apply, clock
                    )
            except (TrustproxyError, CosignFormatError) as e:
                plan.error = str(e) if not isinstance(e, NotSignedError) else e.reason
    finally:
        await enforcement.aclose()
        for c in clients.values():
            await c.aclose()
    return plans


async def _sign_one(
    reader: RegistryReader,
    writer: RegistryWriter,
    route: Route,
    digest: str,
    key: SigningKey,
    apply: bool,
    clock: Callable[[], datetime],
) -> str:
    existing = await reader.manifest_by_tag(signature_tag(digest))
    body = existing.body if existing is not None else None
    if body is not None and await _already_signed(reader, body, digest, key, route, clock):
        return "already signed"
    artifacts = sign_digest(key, digest, route.repository, body)
    if not apply:
        return "would sign"
    for blob_digest, data in artifacts.blobs.items():
        await writer.push_blob(blob_digest, data)
    await writer.push_manifest(signature_tag(digest), artifacts.manifest, OCI_MANIFEST)
    return "signed"


async def _already_signed(
    reader: RegistryReader,
    manifest: bytes,
    digest: str,
    key: SigningKey,
    route: Route,
    clock: Callable[[], datetime],
) -> bool:
    """Whether a layer of the ``.sig`` manifest is a signature of ``digest`` by ``key`` for
    this repository (verified: a layer that only claims it does not count)."""
    limits = ClassicLimits()
    blobs = {}
    for layer in parse_sig_manifest(manifest, limits):
        if layer.media_type != SIMPLE_SIGNING:
            continue
        data = await reader.blob(layer.digest, limits.max_payload_bytes)
        if data is not None:
            blobs[layer.digest] = data
    result = verify_classic(
        manifest, blobs, digest=digest, keys=[key.public], root=None, now=clock()
    )
    return any(v.reference == route.repository for v in result.verified)


# --- the command ---------------------------------------------------------------------------


def add_cli(trust_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = trust_sub.add_parser(
        "migrate",
        help="sign with a cosign key every digest that verifies today (DCT -> cosign)",
        description="For each repository, sign every digest that verifies today under its "
        "policy rule with the given cosign key, as classic cosign signatures "
        "(sha256-<hex>.sig) in the registry. Dry run unless --apply. Digests the key "
        "already signed are left alone. Exit 0 when every repository was handled, 1 "
        "otherwise, 2 for usage errors.",
    )
    p.add_argument("--to", choices=["cosign"], required=True, help="the format to sign in")
    p.add_argument("--key", type=Path, required=True, help="PEM private key (ECDSA or ed25519)")
    p.add_argument(
        "--key-password-env",
        metavar="VAR",
        help="environment variable holding the key's password (encrypted PKCS#8)",
    )
    p.add_argument(
        "--repos",
        nargs="+",
        required=True,
        metavar="REPO",
        help="repositories as clients name them through the proxy (e.g. team/app)",
    )
    p.add_argument("--config", "-c", type=Path, default=None, help="the proxy's config file")
    p.add_argument("--apply", action="store_true", help="push the signatures (default: dry run)")
    p.add_argument("--json", action="store_true", help="the plan as JSON")
    p.set_defaults(handler=cmd_trust_migrate)


def cmd_trust_migrate(args: argparse.Namespace, out: TextIO | None = None) -> int:
    import os

    out = out or sys.stdout

    from proxy.cli import DEFAULT_CONFIG, EXIT_NO, EXIT_OK, EXIT_USAGE, _load
    from proxy.reload import Builder

    password = None
    if args.key_password_env:
        value = os.environ.get(args.key_password_env)
        if value is None:
            print(f"migrate: {args.key_password_env} is not set", file=sys.stderr)
            return EXIT_USAGE
        password = value.encode()
    try:
        key = load_signing_key(args.key.read_bytes(), password)
    except OSError as e:
        print(f"migrate: --key {args.key}: {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    except CosignFormatError as e:
        print(f"migrate: --key {args.key}: {e}", file=sys.stderr)
        return EXIT_USAGE
    settings = _load(args.config or Path(DEFAULT_CONFIG))
    if settings is None:
        return EXIT_NO
    try:
        policy = Builder(stdout=sys.stdout).read_policy(settings)
    except ConfigError as e:
        print(f"migrate: {e}", file=sys.stderr)
        return EXIT_NO
    if policy is None:
        print("migrate: the config names no policy_file", file=sys.stderr)
        return EXIT_NO
    plans = asyncio.run(migrate(settings, policy, args.repos, key, apply=args.apply))
    if args.json:
        doc = {
            "key_id": key.public.key_id,
            "applied": args.apply,
            "repositories": [
                {
                    "repository": p.repository,
                    "error": p.error,
                    "digests": [
                        {"digest": d.digest, "tags": d.tags, "action": d.action} for d in p.digests
                    ],
                }
                for p in plans
            ],
        }
        print(json.dumps(doc, indent=2), file=out)
    else:
        print(f"cosign key {key.public.key_id[:12]}… ({'apply' if args.apply else 'dry run'})",
              file=out)  # fmt: skip
        for p in plans:
            if p.error is not None:
                print(f"{p.repository}: NOT MIGRATED: {p.error}", file=out)
                continue
            print(f"{p.repository}: {len(p.digests)} signed digests", file=out)
            for d in p.digests:
                print(f"  {d.digest} ({', '.join(d.tags)}): {d.action}", file=out)
        if not args.apply and any(d.action == "would sign" for p in plans for d in p.digests):
            print("dry run: nothing was pushed; run again with --apply", file=out)
    return EXIT_OK if all(p.error is None for p in plans) else EXIT_NO
