"""The cosign source's config section and a rule's cosign verification part: typed objects
and the functions that build them from parsed YAML, with path-qualified errors
(:class:`proxy.errors.ConfigError`, e.g.
``rules["ghcr.io/myorg/**"].authorities[1].keyless.subjectRegExp: not a regular expression``).

Source section::

    type: cosign
    trustedRoot: trust/trusted_root.json   # a file, or "sigstore-public-good" (the root
                                           # shipped in PyPI sigstore); none: key-only
    signatureRepository: ghcr.io/myorg/sigs   # where .sig tags live (COSIGN_REPOSITORY)
    insecureIgnoreSCT: false               # policy-controller's name; logs on every use
    maxSignatureLayers: 64

Rule part::

    authorities:                     # any one passes unless threshold says otherwise
      - key: keys/release.pub        # or keyData: PEM; hashAlgorithm: sha256|sha384|sha512
        name: release                # optional, for messages
      - keyless:
          issuer: https://token.actions.githubusercontent.com   # or issuerRegExp
          subjectRegExp: ^https://github\\.com/myorg/app/       # or subject
    threshold: 1                     # distinct authorities that must verify
    tlog: required                   # or optional
    remapIdentity:                   # signatures naming signedPrefix/x count for prefix/x
      - {prefix: registry.local/myorg, signedPrefix: ghcr.io/myorg}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from proxy.errors import ClientRequestError, ConfigError
from proxy.reference import parse_image_ref
from proxy.sources.cosign.classic import ClassicLimits
from proxy.sources.cosign.errors import CosignFormatError
from proxy.sources.cosign.keys import HASHES, load_pem_key
from proxy.sources.cosign.policy import (
    TLOG_MODES,
    Authority,
    CosignPolicy,
    KeyAuthority,
    KeylessAuthority,
    Match,
)
from proxy.sources.cosign.trusted_root import (
    MAX_TRUSTED_ROOT_BYTES,
    TrustedRoot,
    parse_trusted_root,
    public_good_trusted_root_bytes,
)

__all__ = [
    "PUBLIC_GOOD",
    "CosignSourceConfig",
    "load_trusted_root",
    "parse_rule_config",
    "parse_source_config",
]

PUBLIC_GOOD: Final = "sigstore-public-good"
MAX_AUTHORITIES: Final = 32


@dataclass(frozen=True)
class CosignSourceConfig:
    """The cosign source's settings."""

    #: a trusted_root.json file; None with ``public_good`` False: key-based only
    trusted_root: Path | None = None
    #: use the public-good root shipped in PyPI ``sigstore`` (only when asked for)
    public_good: bool = False
    #: ``registry/path`` holding the ``.sig`` tags instead of the image's repository
    signature_repository: str | None = None
    #: skip the embedded-SCT check of Fulcio certificates in classic signatures (unsafe;
    #: say so in logs). Bundles always get sigstore-python's SCT check.
    insecure_ignore_sct: bool = False
    limits: ClassicLimits = field(default_factory=ClassicLimits)


def _kind(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _mapping(v: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise ConfigError(path, f"must be a mapping, not {_kind(v)}")
    return v


def _unknown(node: Mapping[str, Any], known: set[str], path: str) -> None:
    for key in node:
        if key not in known:
            raise ConfigError(f"{path}.{key}", "unknown key")


def _str(v: Any, path: str) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(path, f"must be a non-empty string, not {_kind(v)}")
    return v


def _bool(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(path, f"must be true or false, not {v!r}")
    return v


def _positive(v: Any, path: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(path, f"must be a whole number >= 1, not {v!r}")
    return v


def _repository(v: Any, path: str) -> str:
    text = _str(v, path)
    try:
        repository, tag = parse_image_ref(text)
    except ClientRequestError as e:
        raise ConfigError(path, f"not a repository name: {e}") from e
    if tag is not None:
        raise ConfigError(path, "give a repository, without a tag")
    return repository


def parse_source_config(raw: Any, path: str, base_dir: Path) -> CosignSourceConfig:
    """Build the source's settings; relative file paths are relative to ``base_dir``.

    Raises:
        ConfigError: naming the offending key (``path`` is the section's own path).
    """
    node = _mapping(raw, path)
    _unknown(
        node,
        {"type", "trustedRoot", "signatureRepository", "insecureIgnoreSCT", "maxSignatureLayers"},
        path,
    )
    if node.get("type", "cosign") != "cosign":
        raise ConfigError(f"{path}.type", "must be cosign")
    root_value = node.get("trustedRoot")
    trusted_root, public_good = None, False
    if root_value is not None:
        text = _str(root_value, f"{path}.trustedRoot")
        if text == PUBLIC_GOOD:
            public_good = True
        else:
            trusted_root = Path(text) if Path(text).is_absolute() else base_dir / text
            if not trusted_root.is_file():
                raise ConfigError(f"{path}.trustedRoot", f"file not found: {trusted_root}")
    sig_repo = node.get("signatureRepository")
    layers = node.get("maxSignatureLayers", ClassicLimits.max_layers)
    return CosignSourceConfig(
        trusted_root=trusted_root,
        public_good=public_good,
        signature_repository=(
            None if sig_repo is None else _repository(sig_repo, f"{path}.signatureRepository")
        ),
        insecure_ignore_sct=_bool(
            node.get("insecureIgnoreSCT", False), f"{path}.insecureIgnoreSCT"
        ),
        limits=ClassicLimits(max_layers=_positive(layers, f"{path}.maxSignatureLayers")),
    )


def load_trusted_root(config: CosignSourceConfig, path: str = "trustedRoot") -> TrustedRoot | None:
    """Read and parse the configured trusted root (startup I/O; None when none is set).

    Raises:
        ConfigError: unreadable or invalid, naming ``path`` and the field inside the file.
    """
    if config.public_good:
        data = public_good_trusted_root_bytes()
    elif config.trusted_root is not None:
        try:
            with config.trusted_root.open("rb") as f:
                data = f.read(MAX_TRUSTED_ROOT_BYTES + 1)
        except OSError as e:
            raise ConfigError(path, f"cannot read {config.trusted_root}: {e.strerror}") from e
    else:
        return None
    try:
        return parse_trusted_root(data)
    except CosignFormatError as e:
        where = f"{path}: {e.field}" if e.field else path
        raise ConfigError(where, e.detail) from e


def _match(node: Mapping[str, Any], exact_key: str, regexp_key: str, path: str) -> Match:
    has_exact, has_regexp = exact_key in node, regexp_key in node
    if has_exact == has_regexp:
        raise ConfigError(path, f"give exactly one of {exact_key} and {regexp_key}")
    if has_exact:
        return Match(exact=_str(node[exact_key], f"{path}.{exact_key}"))
    text = _str(node[regexp_key], f"{path}.{regexp_key}")
    try:
        return Match(regexp=re.compile(text))
    except re.error as e:
        raise ConfigError(f"{path}.{regexp_key}", f"not a regular expression: {e}") from e


def _authority(raw: Any, path: str, base_dir: Path) -> Authority:
    node = _mapping(raw, path)
    name = _str(node["name"], f"{path}.name") if "name" in node else ""
    kinds = [k for k in ("key", "keyData", "keyless") if k in node]
    if len(kinds) != 1:
        raise ConfigError(path, "give exactly one of key, keyData and keyless")
    if kinds[0] == "keyless":
        _unknown(node, {"keyless", "name"}, path)
        sub = _mapping(node["keyless"], f"{path}.keyless")
        _unknown(sub, {"issuer", "issuerRegExp", "subject", "subjectRegExp"}, f"{path}.keyless")
        return KeylessAuthority(
            subject=_match(sub, "subject", "subjectRegExp", f"{path}.keyless"),
            issuer=_match(sub, "issuer", "issuerRegExp", f"{path}.keyless"),
            name=name,
        )
    _unknown(node, {kinds[0], "hashAlgorithm", "name"}, path)
    hash_name = node.get("hashAlgorithm", "sha256")
    if hash_name not in HASHES:
        raise ConfigError(f"{path}.hashAlgorithm", f"must be one of {', '.join(HASHES)}")
    if kinds[0] == "key":
        file = Path(_str(node["key"], f"{path}.key"))
        file = file if file.is_absolute() else base_dir / file
        try:
            pem = file.read_bytes()
        except OSError as e:
            raise ConfigError(f"{path}.key", f"cannot read {file}: {e.strerror}") from e
    else:
        pem = _str(node["keyData"], f"{path}.keyData").encode("utf-8")
    try:
        key = load_pem_key(pem, hash_name=str(hash_name), what="key")
    except CosignFormatError as e:
        raise ConfigError(f"{path}.{kinds[0]}", e.detail) from e
    return KeyAuthority(key=key, name=name)


def parse_rule_config(raw: Any, path: str, base_dir: Path, *, rule: str = "") -> CosignPolicy:
    """Build a rule's cosign verification part from its mapping (the keys listed in the
    module docstring; the caller removes the keys that are not cosign's first).

    Raises:
        ConfigError: naming the offending key.
    """
    node = _mapping(raw, path)
    _unknown(node, {"authorities", "threshold", "tlog", "remapIdentity"}, path)
    items = node.get("authorities")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{path}.authorities", "must be a non-empty list")
    if len(items) > MAX_AUTHORITIES:
        raise ConfigError(f"{path}.authorities", f"at most {MAX_AUTHORITIES} authorities")
    authorities = tuple(
        _authority(item, f"{path}.authorities[{i}]", base_dir) for i, item in enumerate(items)
    )
    labels = [a.label for a in authorities]
    for i, label in enumerate(labels):
        if label in labels[:i]:
            raise ConfigError(f"{path}.authorities[{i}]", f"duplicates {label}")
    threshold = _positive(node.get("threshold", 1), f"{path}.threshold")
    if threshold > len(authorities):
        raise ConfigError(
            f"{path}.threshold", f"{threshold} exceeds the {len(authorities)} authorities"
        )
    tlog = node.get("tlog", "required")
    if tlog not in TLOG_MODES:
        raise ConfigError(f"{path}.tlog", f"must be one of {', '.join(TLOG_MODES)}")
    remap_raw = node.get("remapIdentity", [])
    if not isinstance(remap_raw, list):
        raise ConfigError(f"{path}.remapIdentity", "must be a list")
    remap = []
    for i, item in enumerate(remap_raw):
        where = f"{path}.remapIdentity[{i}]"
        entry = _mapping(item, where)
        _unknown(entry, {"prefix", "signedPrefix"}, where)
        remap.append(
            (
                _repository(entry.get("prefix"), f"{where}.prefix"),
                _repository(entry.get("signedPrefix"), f"{where}.signedPrefix"),
            )
        )
    return CosignPolicy(
        authorities=authorities,
        threshold=threshold,
        tlog=tlog,
        remap=tuple(remap),
        rule=rule,
    )
