"""The registry entry of Notation (``type: notation``): its settings section, the Notation part
of policy rules (:mod:`.rule`), the builder and ``trustproxy trust inspect`` for Notation.

Settings (``trust.sources.<name>``), pointing at the files ``notation verify`` already uses::

    type: notation
    trust_policy: notation/trustpolicy.json   # Notation's OCI trust policy document
    trust_store: notation/truststore          # holds x509/{ca,signingAuthority,tsa}/<name>/
    crl_dir: notation/crls                    # optional: CRLs (DER or PEM) for revocation
    crl_fetch_hosts: [crl.example.com]        # optional: fetch CRLs from the signing chain's
                                              # distribution points on these hosts only
    crl_max_age: 1h                           # a fetched CRL is used at most this long
    max_signatures: 100                       # signatures tried per digest
    max_envelope_bytes: 524288                # one signature envelope, at most
    refresh_interval: 30s                     # a verdict is judged again after this long
    grace: 5m                                 # verified verdicts kept on registry outages
    max_tags: 1000                            # tags judged per tag listing
    tag_concurrency: 8                        # judgements in flight per tag listing

An invalid trust policy document is refused at load, with the key path inside the document
(``trust.sources.notation.trust_policy: trustpolicy.json.trustPolicies[0].registryScopes[0]:
…``); a missing or broken trust store named by a statement is a warning (Notation treats it
as an authenticity failure of the signatures that need it).
"""

from __future__ import annotations

import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from proxy.errors import ConfigError
from proxy.settings import (
    CacheSettings,
    ConfigSection,
    LimitSettings,
    TrustSourceSettings,
    parse_duration,
)
from proxy.sources.base import TrustSource
from proxy.sources.notation.config import NotationSourceConfig
from proxy.sources.notation.envelope import MAX_ENVELOPE_BYTES
from proxy.sources.notation.revocation import MAX_CRL_BYTES, CrlSet, parse_crls
from proxy.sources.notation.rule import RULE_KEYS, parse_rule
from proxy.sources.notation.trustpolicy import (
    MAX_POLICY_BYTES,
    Level,
    TrustPolicyDocument,
    parse_trust_policy,
)
from proxy.sources.notation.truststore import TrustStore, load_trust_store_dir
from proxy.sources.notation.verify import MAX_SIGNATURES
from proxy.sources.registry import SourceType
from proxy.sources.store import TrustStateStore

if TYPE_CHECKING:
    from proxy.sources.notation.judge import NotationJudge

__all__ = [
    "SOURCE_TYPE",
    "NotationSettings",
    "build",
    "load_crls",
    "load_document",
    "parse_settings",
]

DEFAULT_GRACE: Final = 300.0
DEFAULT_MAX_TAGS: Final = 1000
DEFAULT_TAG_CONCURRENCY: Final = 8
MAX_CRL_FILES: Final = 256


@dataclass(frozen=True)
class NotationSettings(TrustSourceSettings):
    """A Notation source's settings: the common ones plus where Notation's files are."""

    notation: NotationSourceConfig = field(
        default_factory=lambda: NotationSourceConfig(Path("trustpolicy.json"), Path("truststore"))
    )
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


_HOST = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*"
                   r"|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?\Z")  # fmt: skip


def _hosts(v: Any, path: str) -> tuple[str, ...]:
    """``crl_fetch_hosts``: host names or ``host:port`` (lower case), no wildcards: the URLs
    come from untrusted certificates, so every host fetched from is named."""
    if not isinstance(v, list) or len(v) > 64:
        raise ConfigError(path, "must be a list of at most 64 host names (host or host:port)")
    out = []
    for i, item in enumerate(v):
        if not isinstance(item, str) or not _HOST.match(item.lower()):
            raise ConfigError(f"{path}[{i}]", f"not a host name (host or host:port): {item!r}")
        out.append(item.lower())
    return tuple(out)


def _read_bounded(path: Path, limit: int) -> bytes:
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path}: larger than {limit} bytes")
    return data


def load_document(path: Path) -> TrustPolicyDocument:
    """Read and validate a trust policy document. Raises OSError, ValueError (too large),
    TrustPolicyError (a ConfigError naming the key inside the document)."""
    return parse_trust_policy(_read_bounded(path, MAX_POLICY_BYTES), source=path.name)


def load_crls(folder: Path | None) -> CrlSet:
    """Every regular file of ``folder`` as a CRL (DER or PEM). Raises OSError, ValueError."""
    if folder is None:
        return CrlSet()
    files: dict[str, bytes] = {}
    for entry in sorted(folder.iterdir()):
        if not stat.S_ISREG(entry.lstat().st_mode):
            continue  # sub-folders, symlinks: not CRLs of ours
        if len(files) >= MAX_CRL_FILES:
            raise ValueError(f"{folder}: more than {MAX_CRL_FILES} CRL files")
        files[entry.name] = _read_bounded(entry, MAX_CRL_BYTES)
    return parse_crls(files)


def _check_stores(
    document: TrustPolicyDocument, store: TrustStore, where: str, warnings: list[str]
) -> None:
    for st in document.statements:
        for ref in st.trust_stores:
            try:
                store.certificates(ref)
            except ConfigError as e:
                warnings.append(
                    f"{where}: trust policy {st.name!r} names {ref}, which cannot be used "
                    f"({e.message}): its signatures fail authenticity"
                )
        if st.level is Level.SKIP:
            warnings.append(
                f"{where}: trust policy {st.name!r} is level skip: images in its scopes are "
                "served without looking at signatures"
            )
        elif st.level is Level.AUDIT:
            warnings.append(
                f"{where}: trust policy {st.name!r} is level audit: signatures from signers "
                "that are not trusted are accepted (authenticity is only logged)"
            )


def parse_settings(s: ConfigSection, name: str, warnings: list[str]) -> TrustSourceSettings:
    """``trust.sources.<name>`` of ``type: notation`` (keys in the module docstring).
    Raises ConfigError with the key path (unknown keys and invalid trust policies
    included)."""
    trust_policy = s.path_value("trust_policy")
    if trust_policy is None:
        raise ConfigError(s.sub("trust_policy"), "is required (Notation's trustpolicy.json)")
    trust_store = s.path_value("trust_store")
    if trust_store is None:
        raise ConfigError(s.sub("trust_store"), "is required (Notation's truststore folder)")
    crl_dir = s.path_value("crl_dir")
    no_hosts: tuple[str, ...] = ()
    crl_hosts = s.value("crl_fetch_hosts", _hosts, no_hosts)
    crl_max_age = s.value("crl_max_age", parse_duration, 3600.0)
    config = NotationSourceConfig(
        trust_policy=trust_policy,
        trust_store_dir=trust_store,
        crl_dir=crl_dir,
        max_signatures=s.value("max_signatures", _positive(1000), MAX_SIGNATURES),
        max_envelope_bytes=s.value("max_envelope_bytes", _positive(32 << 20), MAX_ENVELOPE_BYTES),
        crl_fetch_hosts=crl_hosts,
        crl_max_age=crl_max_age,
    )
    refresh = s.value("refresh_interval", parse_duration, None)
    grace = s.value("grace", parse_duration, DEFAULT_GRACE)
    max_tags = s.value("max_tags", _positive(100_000), DEFAULT_MAX_TAGS)
    concurrency = s.value("tag_concurrency", _positive(64), DEFAULT_TAG_CONCURRENCY)
    s.finish()
    if s.check_files:
        try:
            document = load_document(trust_policy)
        except ConfigError as e:
            raise ConfigError(s.sub("trust_policy"), str(e)) from e
        except (OSError, ValueError) as e:
            raise ConfigError(s.sub("trust_policy"), f"cannot read {trust_policy}: {e}") from e
        if not trust_store.is_dir():
            # As a missing CA file: not fatal at load; its repositories get 503 until it exists.
            warnings.append(f"{s.sub('trust_store')}: folder not found: {trust_store}")
        else:
            try:
                store = load_trust_store_dir(trust_store)
            except ConfigError as e:
                raise ConfigError(s.sub("trust_store"), str(e)) from e
            _check_stores(document, store, s.path, warnings)
        if crl_dir is not None:
            try:
                load_crls(crl_dir)
            except (OSError, ValueError) as e:
                raise ConfigError(s.sub("crl_dir"), str(e)) from e
    # The url names the store namespace (remembered tags for lastSigned).
    return NotationSettings(
        name,
        "notation",
        "notation:" + trust_policy.as_uri(),
        refresh_interval=refresh,
        notation=config,
        grace=grace,
        max_tags=max_tags,
        tag_concurrency=concurrency,
    )


def build(
    settings: TrustSourceSettings,
    limits: LimitSettings,
    store: TrustStateStore,
    *,
    clock: Callable[[], datetime],
    cache: CacheSettings,
) -> TrustSource:
    """A :class:`~proxy.sources.signed_digests.SignedDigestSource` judging with a
    :class:`~.judge.NotationJudge`. Raises OSError / ValueError when the trust policy, trust
    store or CRLs cannot be used (the caller answers 503 for its repositories)."""
    from proxy.sources.signed_digests import DigestSourceSettings, SignedDigestSource

    judge = build_judge(settings, limits)
    if not isinstance(settings, NotationSettings):  # pragma: no cover - build_judge checks
        raise ValueError(f"trust source {settings.name}: not notation settings")
    return SignedDigestSource(
        settings.name,
        judge,
        store=store,
        clock=clock,
        settings=DigestSourceSettings(
            verdict_ttl=_seconds(settings.fresh_for(cache)),
            tag_ttl=_seconds(settings.fresh_for(cache)),
            grace=_seconds(settings.grace),
            max_tags=settings.max_tags,
            tag_concurrency=settings.tag_concurrency,
        ),
    )


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def build_judge(
    settings: TrustSourceSettings, limits: LimitSettings | None = None
) -> NotationJudge:
    """The :class:`~.judge.NotationJudge` of ``settings`` (files read now). Raises OSError /
    ValueError."""
    from proxy.sources.notation.judge import NotationJudge, NotationLimits

    if not isinstance(settings, NotationSettings):
        raise ValueError(f"trust source {settings.name}: not notation settings")
    config = settings.notation
    try:
        document = load_document(config.trust_policy)
        trust_store = load_trust_store_dir(config.trust_store_dir)
    except ConfigError as e:
        raise ValueError(f"trust source {settings.name}: {e}") from e
    crls = load_crls(config.crl_dir)
    fetcher, http = None, None
    if config.crl_fetch_hosts:
        from proxy.sources.notation.crl_fetch import CrlFetcher, http_get
        from proxy.upstream.client import make_http_client

        http = make_http_client(limits or LimitSettings(), None)
        fetcher = CrlFetcher(
            frozenset(config.crl_fetch_hosts),
            http_get(http),
            max_age=timedelta(seconds=config.crl_max_age),
        )
    return NotationJudge(
        source=settings.name,
        document=document,
        trust_store=trust_store,
        crls=crls,
        limits=NotationLimits(config.max_signatures, config.max_envelope_bytes),
        crl_fetcher=fetcher,
        http=http,
    )


def add_cli(trust_sub: Any) -> None:
    """``trustproxy trust inspect`` for Notation repositories (loaded only by the CLI)."""
    from proxy.sources.notation.inspect_cli import add_cli as add

    add(trust_sub)


SOURCE_TYPE = SourceType(
    name="notation",
    title="Notation (Notary Project v2) signatures",
    parse_settings=parse_settings,
    rule_keys=RULE_KEYS,
    parse_rule=parse_rule,
    build=build,
    evidence_fields={"cert_fingerprints": [], "trust_policy": ""},
    add_cli=add_cli,
)
