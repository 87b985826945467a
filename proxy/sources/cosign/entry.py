"""The registry entry of Cosign / Sigstore (``type: cosign``): its settings section, the
cosign part of policy rules (:mod:`.rule`), the builder and ``trustproxy trust inspect``.

Settings (``trust.sources.<name>``)::

    type: cosign
    trusted_root: sigstore/trusted_root.json   # or "sigstore-public-good" (PyPI sigstore's
                                               # embedded root); none: key-based only
    signature_repository: ghcr.io/myorg/sigs   # where signatures live (COSIGN_REPOSITORY);
                                               # default: the image's own repository
    insecure_ignore_sct: false
    max_signature_layers: 64                   # signers in one .sig manifest
    refresh_interval: 30s                      # a verdict is judged again after this long
    grace: 5m                                  # verified verdicts kept on registry outages
    max_tags: 1000                             # tags judged per tag listing
    tag_concurrency: 8                         # judgements in flight per tag listing
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from proxy.errors import ConfigError
from proxy.policy.loader import RuleContext, RuleSection
from proxy.policy.model import Mode
from proxy.settings import (
    CacheSettings,
    ConfigSection,
    LimitSettings,
    TrustSourceSettings,
    parse_duration,
)
from proxy.sources.base import TrustSource
from proxy.sources.cosign.classic import ClassicLimits
from proxy.sources.cosign.config import PUBLIC_GOOD, CosignSourceConfig, load_trusted_root
from proxy.sources.cosign.rule import RULE_KEYS, CosignVerification, parse_cosign_rule
from proxy.sources.registry import SourceType
from proxy.sources.store import TrustStateStore

__all__ = ["SOURCE_TYPE", "CosignSettings", "build", "parse_rule", "parse_settings"]

DEFAULT_GRACE: Final = 300.0
DEFAULT_MAX_TAGS: Final = 1000
DEFAULT_TAG_CONCURRENCY: Final = 8
MAX_TAG_CONCURRENCY: Final = 64


@dataclass(frozen=True)
class CosignSettings(TrustSourceSettings):
    """A cosign source's settings: the common ones plus the cosign section."""

    cosign: CosignSourceConfig = field(default_factory=CosignSourceConfig)
    #: stale verified verdicts answer this long when the registry cannot be read
    grace: float = DEFAULT_GRACE
    max_tags: int = DEFAULT_MAX_TAGS
    tag_concurrency: int = DEFAULT_TAG_CONCURRENCY


def _positive(limit: int) -> Callable[[Any, str], int]:
    def parse(v: Any, path: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= limit:
            raise ConfigError(path, f"must be a whole number from 1 to {limit}, not {v!r}")
        return v

    return parse


def _flag(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(path, f"must be true or false, not {v!r}")
    return v


def _repository(v: Any, path: str) -> str:
    from proxy.sources.cosign.config import _repository as parse

    return parse(v, path)


def parse_settings(s: ConfigSection, name: str, warnings: list[str]) -> TrustSourceSettings:
    """``trust.sources.<name>`` of ``type: cosign`` (keys in the module docstring). Raises
    ConfigError with the key path (unknown keys included)."""
    raw_root = s.get("trusted_root")
    trusted_root: Path | None = None
    public_good = False
    if raw_root == PUBLIC_GOOD:
        public_good = True
    elif raw_root is not None:
        trusted_root = s.path_value("trusted_root")
    config = CosignSourceConfig(
        trusted_root=trusted_root,
        public_good=public_good,
        signature_repository=s.value("signature_repository", _repository, None),
        insecure_ignore_sct=s.value("insecure_ignore_sct", _flag, False),
        limits=ClassicLimits(
            max_layers=s.value("max_signature_layers", _positive(1024), ClassicLimits.max_layers)
        ),
    )
    refresh = s.value("refresh_interval", parse_duration, None)
    grace = s.value("grace", parse_duration, DEFAULT_GRACE)
    max_tags = s.value("max_tags", _positive(100_000), DEFAULT_MAX_TAGS)
    concurrency = s.value(
        "tag_concurrency", _positive(MAX_TAG_CONCURRENCY), DEFAULT_TAG_CONCURRENCY
    )
    s.finish()
    if trusted_root is not None and s.check_files:
        if not trusted_root.is_file():
            raise ConfigError(s.sub("trusted_root"), f"file not found: {trusted_root}")
        load_trusted_root(config, s.sub("trusted_root"))  # a bad root is a config error
    if config.insecure_ignore_sct:
        warnings.append(
            f"{s.sub('insecure_ignore_sct')}: Fulcio certificates are accepted without a "
            "verified SCT (certificate transparency)"
        )
    if trusted_root is None and not public_good:
        what = "key-based signatures only (no trusted_root: keyless and Rekor checks fail)"
        warnings.append(f"{s.path}: {what}")
    # The url names the store namespace: remembered tags start afresh with another root.
    url = "cosign:" + (
        PUBLIC_GOOD if public_good else trusted_root.as_uri() if trusted_root else "keys-only"
    )
    return CosignSettings(
        name,
        "cosign",
        url,
        refresh_interval=refresh,
        cosign=config,
        grace=grace,
        max_tags=max_tags,
        tag_concurrency=concurrency,
    )


_PATTERN = re.compile(r"\[(.*)\]\Z")


def _rule_name(path: str) -> str:
    """The scope pattern of a rule from its key path (``trust.repositories['x/**']``)."""
    m = _PATTERN.search(path)
    if m is None:
        return ""
    try:
        value = ast.literal_eval(m.group(1))
    except (ValueError, SyntaxError):
        return ""
    return value if isinstance(value, str) else ""


def parse_rule(node: RuleSection, mode: Mode, ctx: RuleContext) -> CosignVerification | None:
    """The cosign part of a policy rule. A rule that is off may name no authorities."""
    if mode == "off" and not node.has("authorities"):
        return None
    rule = parse_cosign_rule(node.data, node.path, ctx.base_dir, rule=_rule_name(node.path))
    return CosignVerification(rule)


def build(
    settings: TrustSourceSettings,
    limits: LimitSettings,
    store: TrustStateStore,
    *,
    clock: Callable[[], datetime],
    cache: CacheSettings,
) -> TrustSource:
    """A :class:`~proxy.sources.signed_digests.SignedDigestSource` judging with a
    :class:`~.judge.CosignJudge`. Raises ValueError when the trusted root cannot be used."""
    from proxy.sources.cosign.judge import CosignJudge
    from proxy.sources.cosign.verify import CosignVerifier
    from proxy.sources.signed_digests import DigestSourceSettings, SignedDigestSource

    if not isinstance(settings, CosignSettings):
        raise ValueError(f"trust source {settings.name}: not cosign settings")
    config = settings.cosign
    try:
        root = load_trusted_root(config, f"trust.sources.{settings.name}.trusted_root")
    except ConfigError as e:
        raise ValueError(str(e)) from e
    verifier = CosignVerifier(
        root, require_sct=not config.insecure_ignore_sct, limits=config.limits
    )
    judge = CosignJudge(
        verifier,
        source=settings.name,
        signature_repository=config.signature_repository,
        limits=config.limits,
    )
    return SignedDigestSource(
        settings.name,
        judge,
        store=store,
        clock=clock,
        settings=DigestSourceSettings(
            # A deleted signature or a moved tag is seen within the refresh interval.
            verdict_ttl=timedelta(seconds=settings.fresh_for(cache)),
            tag_ttl=timedelta(seconds=settings.fresh_for(cache)),
            grace=timedelta(seconds=settings.grace),
            max_tags=settings.max_tags,
            tag_concurrency=settings.tag_concurrency,
        ),
    )


def add_cli(trust_sub: Any) -> None:
    """``trustproxy trust inspect`` for cosign repositories (loaded only by the CLI)."""
    from proxy.sources.cosign.inspect_cli import add_cli as add

    add(trust_sub)


SOURCE_TYPE = SourceType(
    name="cosign",
    title="Cosign / Sigstore signatures",
    parse_settings=parse_settings,
    rule_keys=RULE_KEYS,
    parse_rule=parse_rule,
    build=build,
    evidence_fields={"key_ids": [], "identities": [], "log_indexes": []},
    add_cli=add_cli,
)
