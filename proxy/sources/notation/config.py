"""Typed configuration for the Notation source (:mod:`.entry` parses the settings section
into :class:`NotationSourceConfig`; :mod:`.rule` parses inline rule fields here).

Two parts:

- :class:`NotationSourceConfig`, the source's settings (parsed by :mod:`.entry`): where
  the user's existing ``trustpolicy.json`` and trust store directory (Notation's
  ``truststore`` folder, holding ``x509/<type>/<name>/``) live, operator CRLs, the hosts
  CRLs may be fetched from, and bounds.
- :class:`NotationRuleFields`, parsed here from a plain mapping (what YAML gives) with
  path-qualified errors: what a policy rule may carry inline instead of naming a
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

__all__ = ["NotationRuleFields", "NotationSourceConfig", "parse_rule_fields"]


@dataclass(frozen=True)
class NotationSourceConfig:
    trust_policy: Path
    trust_store_dir: Path
    crl_dir: Path | None = None
    max_signatures: int = MAX_SIGNATURES
    max_envelope_bytes: int = MAX_ENVELOPE_BYTES
    #: hosts (``host`` or ``host:port``) whose CRL distribution points may be fetched
    crl_fetch_hosts: tuple[str, ...] = ()
    #: a fetched CRL is used at most this long (seconds; less when its nextUpdate is sooner)
    crl_max_age: float = 3600.0


@dataclass(frozen=True)
class NotationRuleFields:
    """Inline rule fields. ``statement`` is None when the rule defers to the document."""

    statement: TrustPolicyStatement | None
    required_annotations: Mapping[str, str] = field(default_factory=dict)


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
