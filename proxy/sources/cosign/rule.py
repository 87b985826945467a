"""A policy rule's cosign part: the verification policy plus what the source does with tags
and attestations, as one hashable value the source keys its verdict cache on.

Rule keys (``docs/policy.md``, "Cosign"): ``authorities``, ``threshold``, ``tlog``,
``remapIdentity`` (the core's :class:`~.policy.CosignPolicy`, parsed by :mod:`.config`),
plus ``onUnsignedTag`` (``deny`` | ``lastSigned``) and ``attestations``
(``[{predicateType: …}]``: a verified attestation bundle of each type by the rule's
authorities must exist as well).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, Literal

from proxy.errors import ConfigError
from proxy.sources.cosign.config import parse_rule_config
from proxy.sources.cosign.policy import CosignPolicy, KeyAuthority, KeylessAuthority

__all__ = [
    "ON_UNSIGNED_TAG",
    "RULE_KEYS",
    "CosignRule",
    "CosignVerification",
    "parse_cosign_rule",
]

OnUnsignedTag = Literal["deny", "lastSigned"]
ON_UNSIGNED_TAG: Final = ("deny", "lastSigned")
#: the core's keys (parsed by :func:`~.config.parse_rule_config`) and this module's
_POLICY_KEYS: Final = ("authorities", "threshold", "tlog", "remapIdentity")
RULE_KEYS: Final = (*_POLICY_KEYS, "onUnsignedTag", "attestations")
MAX_ATTESTATIONS: Final = 8


def _policy_fingerprint(policy: CosignPolicy) -> tuple[Hashable, ...]:
    """What makes two policies the same: keys by ID and hash, identities by their matches.
    (The key objects themselves are not hashable.)"""
    authorities: list[Hashable] = []
    for a in policy.authorities:
        if isinstance(a, KeyAuthority):
            authorities.append(("key", a.key.key_id, a.key.hash_name, a.name))
        else:
            assert isinstance(a, KeylessAuthority)
            authorities.append(("keyless", str(a.subject), str(a.issuer), a.name))
    return (tuple(authorities), policy.threshold, policy.tlog, policy.remap, policy.rule)


@dataclass(frozen=True, eq=False)
class CosignRule:
    """What the cosign source applies for one policy rule (hashable, compared by value)."""

    policy: CosignPolicy
    on_unsigned_tag: OnUnsignedTag = "deny"
    #: predicate types of attestations that must also verify (empty: signatures only)
    attestations: tuple[str, ...] = ()

    @property
    def _key(self) -> tuple[Hashable, ...]:
        return (_policy_fingerprint(self.policy), self.on_unsigned_tag, self.attestations)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CosignRule) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    @property
    def name(self) -> str:
        return self.policy.rule


@dataclass(frozen=True, eq=False)
class CosignVerification:
    """The rule's verification part as the policy model holds it."""

    rule: CosignRule

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CosignVerification) and self.rule == other.rule

    def __hash__(self) -> int:
        return hash(self.rule)

    def signing_rule(self, expiry_grace: timedelta) -> CosignRule:
        # allow.expires is a Notary metadata notion; cosign signatures have no expiry of
        # their own (certificate windows are checked at the signing time).
        return self.rule

    def explain(self) -> list[str]:
        p = self.rule.policy
        lines = [f"authority: {a.label}" for a in p.authorities]
        lines.append(
            f"threshold: {p.threshold} of {len(p.authorities)} authorities"
            f"; transparency log {p.tlog}"
        )
        lines.extend(f"remapIdentity: {prefix} accepts {signed}/…" for prefix, signed in p.remap)
        lines.extend(f"attestation required: {t}" for t in self.rule.attestations)
        lines.append(
            "unsigned tag: "
            + (
                "serve the digest it last had while signed"
                if self.rule.on_unsigned_tag == "lastSigned"
                else "refused"
            )
        )
        return lines

    def summary(self) -> list[str]:
        p = self.rule.policy
        parts = [f"cosign {p.threshold}/{len(p.authorities)}", f"tlog {p.tlog}"]
        if self.rule.on_unsigned_tag == "lastSigned":
            parts.append("lastSigned")
        if self.rule.attestations:
            parts.append(f"{len(self.rule.attestations)} attestation(s)")
        return parts


def _attestations(raw: Any, path: str) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise ConfigError(path, "must be a list of {predicateType: …}")
    if len(raw) > MAX_ATTESTATIONS:
        raise ConfigError(path, f"at most {MAX_ATTESTATIONS} attestations")
    out: list[str] = []
    for i, item in enumerate(raw):
        where = f"{path}[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(where, "must be a mapping with predicateType")
        for key in item:
            if key != "predicateType":
                raise ConfigError(f"{where}.{key}", "unknown key; known keys: predicateType")
        value = item.get("predicateType")
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}.predicateType", "must be a non-empty string")
        if value in out:
            raise ConfigError(f"{where}.predicateType", f"duplicates {value}")
        out.append(value)
    return tuple(out)


def parse_cosign_rule(data: dict[str, Any], path: str, base_dir: Any, *, rule: str) -> CosignRule:
    """The cosign part of a rule mapping (``data``: the whole rule; other keys ignored).

    Raises:
        ConfigError: naming the offending key under ``path``.
    """
    policy = parse_rule_config(
        {k: data[k] for k in _POLICY_KEYS if k in data}, path, base_dir, rule=rule
    )
    on_unsigned = data.get("onUnsignedTag", "deny")
    if on_unsigned not in ON_UNSIGNED_TAG:
        raise ConfigError(f"{path}.onUnsignedTag", f"must be one of {', '.join(ON_UNSIGNED_TAG)}")
    attestations = _attestations(data.get("attestations", []), f"{path}.attestations")
    return CosignRule(policy, on_unsigned, attestations)
