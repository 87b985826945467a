"""Typed configuration for the Notation source: not registered anywhere yet.

Two parts, each parsed from a plain mapping (what YAML gives) with path-qualified errors:

- :class:`NotationSourceConfig`, the source's settings section: where the user's existing
  ``trustpolicy.json`` and trust store directory (Notation's ``truststore`` folder, holding
  ``x509/<type>/<name>/``) live, an optional folder of operator CRLs, and bounds.
- :class:`NotationRuleFields`, what a policy rule may carry inline instead of naming a
  statement of the document: Notation's own vocabulary (``level``, ``override``,
  ``verifyTimestamp``, ``trustStores``, ``trustedIdentities``) plus required signed
  ``annotations`` (Notation's ``--user-metadata``). The rule's repository patterns are the
  scope, so ``registryScopes`` is not accepted here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.errors import ConfigError
from proxy.sources.notation.envelope import MAX_ENVELOPE_BYTES
from proxy.sources.notation.trustpolicy import TrustPolicyStatement, parse_statement_core
from proxy.sources.notation.verify import MAX_SIGNATURES

__all__ = ["NotationRuleFields", "NotationSourceConfig", "parse_rule_fields", "parse_source_config"]


@dataclass(frozen=True)
class NotationSourceConfig:
    trust_policy: Path
    trust_store_dir: Path
    crl_dir: Path | None = None
    max_signatures: int = MAX_SIGNATURES
    max_envelope_bytes: int = MAX_ENVELOPE_BYTES


@dataclass(frozen=True)
class NotationRuleFields:
    """Inline rule fields. ``statement`` is None when the rule defers to the document."""

    statement: TrustPolicyStatement | None
    required_annotations: Mapping[str, str] = field(default_factory=dict)


def _positive_int(raw: Mapping[str, Any], key: str, path: str, default: int, ceiling: int) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= ceiling:
        raise ConfigError(f"{path}.{key}", f"must be an integer from 1 to {ceiling}")
    return value


def _path(raw: Mapping[str, Any], key: str, path: str, *, required: bool) -> Path | None:
    value = raw.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{path}.{key}", "is required")
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}.{key}", "must be a non-empty path")
    return Path(value)


def parse_source_config(raw: Any, path: str) -> NotationSourceConfig:
    """Raises :class:`ConfigError` naming ``path.<key>``."""
    allowed = {"trustPolicy", "trustStore", "crlDir", "maxSignatures", "maxEnvelopeBytes"}
    if not isinstance(raw, Mapping):
        raise ConfigError(path, "must be a mapping")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(
            f"{path}.{unknown[0]}", f"unknown key (known: {', '.join(sorted(allowed))})"
        )
    trust_policy = _path(raw, "trustPolicy", path, required=True)
    trust_store = _path(raw, "trustStore", path, required=True)
    if trust_policy is None or trust_store is None:  # pragma: no cover - required=True
        raise RuntimeError("required paths missing")
    return NotationSourceConfig(
        trust_policy=trust_policy,
        trust_store_dir=trust_store,
        crl_dir=_path(raw, "crlDir", path, required=False),
        max_signatures=_positive_int(raw, "maxSignatures", path, MAX_SIGNATURES, 1000),
        max_envelope_bytes=_positive_int(
            raw, "maxEnvelopeBytes", path, MAX_ENVELOPE_BYTES, 32 << 20
        ),
    )


def parse_rule_fields(raw: Any, path: str) -> NotationRuleFields:
    """A rule's Notation fields. With no ``level``, the rule defers to the document's
    statement for the repository (``statement`` None). Raises :class:`ConfigError`."""
    allowed = {
        "level",
        "override",
        "verifyTimestamp",
        "trustStores",
        "trustedIdentities",
        "annotations",
    }
    if raw is None:
        return NotationRuleFields(None)
    if not isinstance(raw, Mapping):
        raise ConfigError(path, "must be a mapping")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(
            f"{path}.{unknown[0]}", f"unknown key (known: {', '.join(sorted(allowed))})"
        )
    annotations = raw.get("annotations", {})
    if not isinstance(annotations, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        raise ConfigError(f"{path}.annotations", "must map strings to strings")
    inline = {k: v for k, v in raw.items() if k != "annotations"}
    if not inline:
        return NotationRuleFields(None, dict(annotations))
    if "level" not in inline:
        raise ConfigError(f"{path}.level", "is required when other Notation fields are inline")
    verification = {k: inline[k] for k in ("level", "override", "verifyTimestamp") if k in inline}
    obj = {
        "signatureVerification": verification,
        **{k: inline[k] for k in ("trustStores", "trustedIdentities") if k in inline},
    }
    statement = parse_statement_core(obj, path, name=path, scopes=(), verification_path=path)
    return NotationRuleFields(statement, dict(annotations))
