"""The Notation part of a policy rule: what ``type: notation`` sources judge under.

Rule keys (``docs/policy.md``, "Notation"):

- ``onUnsignedTag``: ``deny`` (default) or ``lastSigned`` (a tag whose current digest is not
  signed answers the digest it last had while signed, if that still verifies now);
- inline trust policy fields, Notation's own vocabulary (:func:`.config.parse_rule_fields`):
  ``level``, ``override``, ``verifyTimestamp``, ``trustStores``, ``trustedIdentities``. With
  them the rule is its own trust policy statement, scoped by the rule's repository pattern;
  without them the source's ``trustpolicy.json`` decides (the statement whose
  ``registryScopes`` names the repository, else ``"*"``), as ``notation verify`` would;
- ``annotations``: signed metadata that must be present with these values (Notation's
  ``--user-metadata``).
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final, Literal

from proxy.errors import ConfigError
from proxy.policy.loader import RuleContext, RuleSection
from proxy.policy.model import Mode
from proxy.sources.notation.config import parse_rule_fields
from proxy.sources.notation.trustpolicy import Action, Check, Level, TrustPolicyStatement

__all__ = ["RULE_KEYS", "NotationRule", "NotationVerification", "describe_statement", "parse_rule"]

OnUnsignedTag = Literal["deny", "lastSigned"]
_INLINE_KEYS: Final = (
    "level",
    "override",
    "verifyTimestamp",
    "trustStores",
    "trustedIdentities",
    "annotations",
)
RULE_KEYS: Final = ("onUnsignedTag", *_INLINE_KEYS)


def _statement_key(statement: TrustPolicyStatement | None) -> Hashable:
    """What makes two inline statements the same (the statement holds a mapping, which is
    not hashable): every field that changes a verdict."""
    if statement is None:
        return None
    return (
        statement.level.value,
        tuple(sorted((c.value, a.value) for c, a in statement.enforcement.items())),
        statement.verify_timestamp.value,
        tuple(str(s) for s in statement.trust_stores),
        tuple(i.raw for i in statement.trusted_identities),
        statement.any_identity,
    )


@dataclass(frozen=True, eq=False)
class NotationRule:
    """What a Notation source judges under (hashable: verdicts are cached per rule).

    ``inline`` None: the source's trust policy document picks the statement by repository.
    """

    on_unsigned_tag: OnUnsignedTag = "deny"
    inline: TrustPolicyStatement | None = None
    required_annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def _key(self) -> Hashable:
        return (
            self.on_unsigned_tag,
            _statement_key(self.inline),
            tuple(sorted(self.required_annotations.items())),
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NotationRule) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)


def describe_statement(statement: TrustPolicyStatement) -> list[str]:
    """A statement as ``policy explain`` and ``trust inspect`` show it."""
    if statement.skips:
        return [f"level skip: signatures are not looked at (statement {statement.name!r})"]
    logged = [c.value for c in Check if statement.action(c) is Action.LOG]
    skipped = [c.value for c in Check if statement.action(c) is Action.SKIP]
    lines = [f"level {statement.level.value}, verifyTimestamp {statement.verify_timestamp.value}"]
    if logged:
        lines.append(f"  logged only (not enforced): {', '.join(logged)}")
    if skipped:
        lines.append(f"  skipped: {', '.join(skipped)}")
    lines.append(f"  trustStores: {', '.join(str(s) for s in statement.trust_stores)}")
    identities = (
        "* (any signer the trust stores anchor)"
        if statement.any_identity
        else "; ".join(i.raw for i in statement.trusted_identities)
    )
    lines.append(f"  trustedIdentities: {identities}")
    return lines


@dataclass(frozen=True, eq=False)
class NotationVerification:
    """A rule over a Notation source (a :class:`~proxy.policy.model.Verification`)."""

    rule: NotationRule

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NotationVerification) and self.rule == other.rule

    def __hash__(self) -> int:
        return hash((NotationVerification, self.rule))

    def signing_rule(self, expiry_grace: timedelta) -> NotationRule:
        # Notation signatures carry their own expiry, judged by the trust policy's level.
        return self.rule

    def explain(self) -> list[str]:
        r = self.rule
        if r.inline is None:
            lines = [
                "notation: the source's trustpolicy.json statement whose registryScopes "
                "names the repository (else '*')"
            ]
        else:
            lines = ["notation: the rule's own trust policy statement:"]
            lines += ["  " + line for line in describe_statement(r.inline)]
        if r.required_annotations:
            pairs = ", ".join(f"{k}={v}" for k, v in sorted(r.required_annotations.items()))
            lines.append(f"  signed annotations required: {pairs}")
        lines.append(
            "  a tag whose digest is not signed: "
            + (
                "serve the digest it last had while signed"
                if r.on_unsigned_tag == "lastSigned"
                else "refused"
            )
        )
        return lines

    def summary(self) -> list[str]:
        r = self.rule
        parts = ["notation " + ("trustpolicy.json" if r.inline is None else r.inline.level.value)]
        if r.required_annotations:
            parts.append(f"{len(r.required_annotations)} annotation(s)")
        if r.on_unsigned_tag == "lastSigned":
            parts.append("lastSigned")
        return parts


def _on_unsigned_tag(v: Any, path: str) -> OnUnsignedTag:
    if v == "deny":
        return "deny"
    if v == "lastSigned":
        return "lastSigned"
    raise ConfigError(path, f"must be deny or lastSigned, not {v!r}")


def parse_rule(node: RuleSection, mode: Mode, ctx: RuleContext) -> NotationVerification:
    """The Notation part of one policy rule. Raises ConfigError with the key path (an
    invalid inline statement names the offending key, as the trust policy document's)."""
    on_unsigned: OnUnsignedTag = node.value("onUnsignedTag", _on_unsigned_tag, "deny")
    inline = {k: node.data[k] for k in _INLINE_KEYS if node.data.get(k) is not None}
    # Round-trip through JSON: the trust policy parser takes what json.loads gives (a YAML
    # date or a tuple would otherwise reach it).
    try:
        inline = json.loads(json.dumps(inline))
    except (TypeError, ValueError) as e:
        raise ConfigError(node.path, f"inline Notation fields are not plain data: {e}") from e
    fields = parse_rule_fields(inline or None, node.path)
    statement = fields.statement
    if statement is not None and mode != "off":
        if statement.level is Level.SKIP:
            ctx.warnings.append(
                f"{node.sub('level')}: skip: images are served without looking at signatures"
            )
        elif statement.level is Level.AUDIT:
            ctx.warnings.append(
                f"{node.sub('level')}: audit: signatures from signers that are not trusted "
                "are accepted (authenticity is only logged)"
            )
    return NotationVerification(
        NotationRule(on_unsigned, statement, dict(fields.required_annotations))
    )
