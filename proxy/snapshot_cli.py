"""``trustproxy trust snapshot export|verify|inspect``: trust snapshots on the command line.

``export`` drives the configured trust sources as ``serve`` does (the same policy rules,
the same source rules, ``signed_state`` re-verifying whatever is cached), so a snapshot
holds only what verifies at the moment it is written; it is then signed with the
operator's key (:mod:`proxy.sources.static.snapshot`). ``verify`` checks a snapshot against
public keys, ``inspect`` shows what it holds.

An entry-point command (it builds every source), registered by :mod:`proxy.cli`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proxy.errors import (
    ConfigError,
    FetchError,
    NotSignedError,
    TrustDataError,
    TrustproxyError,
)

__all__ = ["add_cli"]

EXIT_OK, EXIT_NO, EXIT_USAGE = 0, 1, 2
MAX_CATALOG_PAGES = 1000  # 1000 names a page: a million repositories is more than enough
CATALOG_PAGE = 1000
MAX_CATALOG_BYTES = 4 * 1024 * 1024


class _Failed(Exception):
    """Printed, then exit 1."""


def add_cli(trust_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    snap = trust_sub.add_parser(
        "snapshot",
        help="export, verify and inspect signed trust snapshots",
        description="Trust snapshots: what trustproxy verifies today, signed with your key, "
        "for a static trust source to serve after the original trust server is gone "
        "(docs/moving-off-notary.md).",
    )
    sub = snap.add_subparsers(title="commands", metavar="COMMAND")

    def usage(_args: argparse.Namespace) -> int:
        snap.print_help()
        return EXIT_USAGE

    snap.set_defaults(handler=usage)

    ex = sub.add_parser(
        "export",
        help="write a signed snapshot of what the configured sources verify now",
        description="For every repository matching --repos that an enforcing policy rule "
        "covers, ask the rule's trust source for its signed tags (verified now, exactly as "
        "serve does) and write them, with digests, lengths, signers, evidence and the time "
        "of verification, as a DSSE envelope signed with --key. Repositories without trust "
        "data are left out (and listed); a source that cannot be reached or whose data does "
        "not verify stops the export (nothing is written).",
    )
    ex.add_argument("--config", "-c", type=Path, default=Path("config/trustproxy.yaml"),
                    help="trustproxy config (its policy_file and trust.sources)")  # fmt: skip
    ex.add_argument(
        "--repos",
        nargs="+",
        default=[],
        metavar="GLOB",
        help="repositories as <registry>/<path>, policy globs allowed ('*' one segment, "
        "'**' any); globs are matched against the upstreams' catalogs (/v2/_catalog). "
        "Default: every repository the catalogs list",
    )
    ex.add_argument("--key", required=True, type=Path,
                    help="the signing key: PEM private key, ECDSA P-256 or ed25519")  # fmt: skip
    ex.add_argument(
        "--key-password-env",
        metavar="VAR",
        help="environment variable holding the key's password (encrypted PEM)",
    )
    ex.add_argument("--output", "-o", required=True, type=Path, help="the snapshot file")
    ex.set_defaults(handler=cmd_export)

    ve = sub.add_parser(
        "verify",
        help="check a snapshot's signature (and registries)",
        description="Exit 0 when a signature by one of --key verifies over the snapshot and "
        "it is well-formed (and, with --registry, speaks only for those registries).",
    )
    ve.add_argument("file", type=Path)
    ve.add_argument("--key", required=True, action="append", type=Path,
                    help="a public key (PEM); repeatable: any one of them suffices")  # fmt: skip
    ve.add_argument("--registry", action="append", default=None,
                    help="a registry the snapshot may speak for; repeatable")  # fmt: skip
    ve.set_defaults(handler=cmd_verify)

    ins = sub.add_parser(
        "inspect",
        help="show what a snapshot holds",
        description="Show a snapshot's repositories, tags, digests, signers, sources and "
        "times of verification. With --key the signature is checked first (exit 1 if it "
        "does not verify); without, it is shown as NOT checked.",
    )
    ins.add_argument("file", type=Path)
    ins.add_argument("--key", action="append", default=[], type=Path,
                     help="a public key (PEM) to check the signature with; repeatable")  # fmt: skip
    ins.add_argument("--json", action="store_true", help="the statement as JSON")
    ins.set_defaults(handler=cmd_inspect)


def _err(message: str) -> None:
    print(message, file=sys.stderr)


# --------------------------------------------------------------------------- export


def cmd_export(args: argparse.Namespace) -> int:
    from proxy.sources.static.snapshot_keys import SnapshotKeyError, load_private_key
    from proxy.sources.static.snapshot_load import read_bounded

    try:
        password = None
        if args.key_password_env:
            value = os.environ.get(args.key_password_env)
            if value is None:
                _err(f"export: environment variable {args.key_password_env} is not set")
                return EXIT_USAGE
            password = value.encode()
        pem = read_bounded(args.key, 16 * 1024)
        if pem is None:
            raise SnapshotKeyError(f"{args.key}: too large for a PEM key")
        key = load_private_key(pem, password=password, name=str(args.key))
    except OSError as e:
        _err(f"export: cannot read {args.key}: {e.strerror or e}")
        return EXIT_USAGE
    except SnapshotKeyError as e:
        _err(f"export: {e}")
        return EXIT_USAGE
    try:
        return asyncio.run(_export(args, key))
    except _Failed as e:
        _err(f"export: {e}")
        return EXIT_NO


async def _export(args: argparse.Namespace, key: Any) -> int:
    from proxy.decisions import NullRecorder
    from proxy.enforcement.build import build_enforcement
    from proxy.enforcement.enforcing_gate import signing_rule_for
    from proxy.policy.loader import load_policy
    from proxy.policy.matcher import match_rule, tag_allowed
    from proxy.settings import load_settings
    from proxy.sources.base import NoTrustDataError
    from proxy.sources.static.snapshot import (
        SnapshotRepository,
        SnapshotTag,
        sign_snapshot,
        statement_bytes,
        verify_snapshot,
    )

    try:
        settings = load_settings(args.config, dict(os.environ))
        if settings.policy_file is None:
            raise _Failed(f"{args.config}: no policy_file: nothing is verified, nothing to export")
        types = {s.name: s.type for s in settings.trust.sources}
        policy = load_policy(settings.policy_file, known_sources=types)
    except ConfigError as e:
        raise _Failed(f"{args.config}: {e}") from e
    repositories = await _repositories(settings, args.repos)
    enforcement = build_enforcement(settings, policy, recorder=NullRecorder())
    exported: list[SnapshotRepository] = []
    skipped: list[str] = []
    problems: list[str] = []
    try:
        for repo in repositories:
            rule = match_rule(policy, repo)
            if rule is None or not rule.enforced or rule.source is None:
                skipped.append(f"{repo}: no enforcing policy rule names its source")
                continue
            source = enforcement.sources.get(rule.source)
            if source is None:
                problems.append(f"{repo}: trust source {rule.source!r} is not configured")
                continue
            try:
                state = await source.signed_state(repo, signing_rule_for(rule))
            except NoTrustDataError as e:
                skipped.append(f"{repo}: {e}")
                continue
            except (NotSignedError, FetchError, TrustDataError) as e:
                problems.append(f"{repo}: {rule.source}: {e}")
                continue
            now = _rfc3339(datetime.now(UTC))
            tags = {
                tag: SnapshotTag(
                    tag, a.digest, a.length, tuple(a.signers), now, _jsonable(a.evidence)
                )
                for tag, a in state.tags.items()
                if tag_allowed(rule, tag)
            }
            exported.append(
                SnapshotRepository(
                    repo,
                    rule.source,
                    types.get(rule.source, ""),
                    now,
                    _jsonable(state.info.evidence),
                    tags,
                    frozenset(state.digests),
                    state.info.stale,
                )
            )
    finally:
        await enforcement.aclose()
    for line in skipped:
        _err(f"left out: {line}")
    if problems:
        for line in problems:
            _err(f"error: {line}")
        raise _Failed(f"{_repos(len(problems))} could not be verified: nothing written")
    if not exported:
        raise _Failed("no repository with verified trust data matched: nothing written")
    created = datetime.now(UTC)
    statement = statement_bytes(exported, created)
    envelope = sign_snapshot(statement, key)
    # What is written must be what the static source will accept.
    snap = verify_snapshot(envelope, [key.public], now=created, registries=None)
    _write(args.output, envelope)
    print(
        f"{args.output}: {_repos(len(snap.repositories))}, {_count(snap.tag_count, 'tag')}, "
        f"signed by {key.public.key_id} ({key.kind}), statement {snap.statement_digest}"
    )
    return EXIT_OK


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _Failed(f"cannot write {path}: {e.strerror or e}") from e


def _jsonable(value: Any) -> Any:
    """Evidence as plain JSON values (sources hand out read-only mappings, tuples, sets)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(_jsonable(v) for v in value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def _repos(n: int) -> str:
    return f"{n} repository" if n == 1 else f"{n} repositories"


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


async def _repositories(settings: Any, patterns: Sequence[str]) -> list[str]:
    """Literal names as given; globs (and no --repos: everything) matched against the
    upstreams' catalogs."""
    from proxy.policy.matcher import compile_pattern

    literal = [p for p in patterns if not _is_glob(p)]
    globs = [p for p in patterns if _is_glob(p)] if patterns else ["**"]
    out = list(dict.fromkeys(literal))
    if not globs:
        return out
    try:
        compiled = [compile_pattern(g if g != "**" else "**") for g in globs]
    except ValueError as e:
        raise _Failed(f"--repos: {e}") from e
    for name in await _catalog(settings):
        if name not in out and any(c.matches(name) for c in compiled):
            out.append(name)
    return out


async def _catalog(settings: Any) -> list[str]:
    """Every ``<registry>/<repo>`` the upstreams list (``/v2/_catalog``, paginated, bounded)."""
    from urllib.parse import urlsplit

    from proxy.upstream.build import build_upstream_client

    names: list[str] = []
    for up in settings.upstreams:
        client = build_upstream_client(settings, up)
        try:
            query = f"n={CATALOG_PAGE}"
            for _ in range(MAX_CATALOG_PAGES):
                resp = await client.open(
                    "GET", "/v2/_catalog", scope="registry:catalog:*", query=query
                )
                try:
                    if resp.status_code != 200:
                        raise _Failed(
                            f"upstream {up.name} does not list its repositories (/v2/_catalog: "
                            f"HTTP {resp.status_code}): name them in --repos without globs"
                        )
                    body = await client.read_bounded(resp, MAX_CATALOG_BYTES, "catalog")
                    link = resp.headers.get("link", "")
                finally:
                    await resp.aclose()
                try:
                    repos = json.loads(body).get("repositories") or []
                except (ValueError, AttributeError) as e:
                    raise _Failed(f"upstream {up.name}: /v2/_catalog is not JSON") from e
                names.extend(f"{up.registry}/{r}" for r in repos if isinstance(r, str))
                # RFC 5988 Link: </v2/_catalog?last=x&n=1000>; rel="next"
                if 'rel="next"' not in link:
                    break
                query = urlsplit(link.split(";", 1)[0].strip().strip("<>")).query
        except TrustproxyError as e:
            if isinstance(e, _Failed):
                raise
            raise _Failed(f"upstream {up.name}: /v2/_catalog: {e}") from e
        finally:
            await client.aclose()
    return names


# --------------------------------------------------------------------------- verify, inspect


def _read(path: Path) -> bytes:
    from proxy.sources.static.snapshot import MAX_SNAPSHOT_BYTES, SnapshotError
    from proxy.sources.static.snapshot_load import read_bounded

    try:
        data = read_bounded(path, MAX_SNAPSHOT_BYTES)
    except OSError as e:
        raise _Failed(f"cannot read {path}: {e.strerror or e}") from e
    if data is None:
        raise SnapshotError(f"{path.name}: larger than {MAX_SNAPSHOT_BYTES} bytes")
    return data


def _verified(path: Path, key_files: Sequence[Path], registries: Sequence[str] | None) -> Any:
    from proxy.sources.static.snapshot import verify_snapshot
    from proxy.sources.static.snapshot_load import read_keys

    try:
        keys = read_keys(key_files)
    except OSError as e:
        raise _Failed(f"cannot read a key: {e.strerror or e}: {e.filename}") from e
    return verify_snapshot(_read(path), keys, now=datetime.now(UTC), registries=registries,
                           name=path.name)  # fmt: skip


def cmd_verify(args: argparse.Namespace) -> int:
    from proxy.sources.static.snapshot import SnapshotError
    from proxy.sources.static.snapshot_keys import SnapshotKeyError

    try:
        snap = _verified(args.file, args.key, args.registry)
    except (SnapshotError, SnapshotKeyError, _Failed) as e:
        _err(f"verify: {e}")
        return EXIT_NO
    print(
        f"{args.file}: OK: signed by {', '.join(snap.signed_by)}; created "
        f"{_rfc3339(snap.created)}; {_repos(len(snap.repositories))}, "
        f"{_count(snap.tag_count, 'tag')}; registries {', '.join(snap.registries)}; "
        f"statement {snap.statement_digest}"
    )
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from proxy.sources.static.snapshot import SnapshotError, parse_snapshot
    from proxy.sources.static.snapshot_keys import SnapshotKeyError

    try:
        if args.key:
            snap = _verified(args.file, args.key, None)
            checked = f"signature verified: {', '.join(snap.signed_by)}"
        else:
            snap = parse_snapshot(_read(args.file), name=args.file.name)
            checked = "signature NOT checked (give --key PUB to check it)"
    except (SnapshotError, SnapshotKeyError, _Failed) as e:
        _err(f"inspect: {e}")
        return EXIT_NO
    if args.json:
        print(json.dumps(_as_json(snap, checked), indent=2))
        return EXIT_OK
    print(f"Snapshot {args.file}")
    print(f"  {checked}")
    print(f"  created {_rfc3339(snap.created)}, statement {snap.statement_digest}")
    print(f"  registries: {', '.join(snap.registries)}")
    for repo, r in sorted(snap.repositories.items()):
        stale = " (stale: served within its expiry grace)" if r.stale else ""
        print(f"\n{repo}  (source {r.source}, {r.source_type}, verified {r.verified_at}{stale})")
        if not r.tags:
            print("  no signed tags")
        width = max((len(t) for t in r.tags), default=0)
        for tag, t in sorted(r.tags.items()):
            length = f" {t.length} bytes" if t.length is not None else ""
            print(f"  {tag:<{width}}  {t.digest}{length}  signed by {', '.join(t.signers)}")
        for d in sorted(r.digests):
            print(f"  (by digest) {d}")
    return EXIT_OK


def _as_json(snap: Any, checked: str) -> dict[str, Any]:
    return {
        "signature": checked,
        "created": _rfc3339(snap.created),
        "statement_digest": snap.statement_digest,
        "registries": list(snap.registries),
        "repositories": {
            repo: {
                "source": r.source,
                "source_type": r.source_type,
                "verified_at": r.verified_at,
                "stale": r.stale,
                "evidence": dict(r.evidence),
                "tags": {
                    tag: {
                        "digest": t.digest,
                        "length": t.length,
                        "signers": list(t.signers),
                        "verified_at": t.verified_at,
                    }
                    for tag, t in sorted(r.tags.items())
                },
                "digests": sorted(r.digests),
            }
            for repo, r in sorted(snap.repositories.items())
        },
    }
