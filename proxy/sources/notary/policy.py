"""The verification part of a policy rule for Notary v1 sources: which root of trust, which
roles must sign (``rootKeys | rootCerts | rootCA | trustOnFirstUse``, ``allowExpiredRootCert``,
``signers``, ``thresholds``; docs/policy.md), parsed, explained and turned into the
:class:`~proxy.sources.base.SigningRule` the source applies.

The policy loader reads a rule's common keys (mode, source, allow, digests) and hands the
rest to this module through the source registry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

from proxy.errors import ConfigError
from proxy.policy.loader import RuleContext, RuleSection, kind_of, parse_bool, parse_list, parse_str
from proxy.policy.model import Mode
from proxy.sources.notary.rules import SigningRule
from proxy.sources.notary.tuf import (
    PinnedRootCerts,
    PinnedRootKeys,
    RoleRequirement,
    RootCA,
    RootOfTrust,
    TrustOnFirstUse,
)
from proxy.sources.notary.tuf.metadata import is_delegation_name

__all__ = [
    "DOCKER_RULE",
    "RULE_KEYS",
    "TOFU_WARNING",
    "NotaryVerification",
    "SignerRequirement",
    "describe_root",
    "parse_rule",
    "role_name",
    "root_kind",
]

MAX_CA_BYTES: Final = 1024 * 1024

TOFU_WARNING: Final = (
    "trust on first use: the first root seen for each repository is trusted, whoever signed "
    "it; fine for trying things out, real deployments pin rootKeys, rootCerts or rootCA"
)
DOCKER_RULE = "Docker's rule: targets/releases, then targets"

#: the keys of a policy rule this source type reads, in the order docs/policy.md lists them
RULE_KEYS: Final = (
    "rootKeys",
    "rootCerts",
    "rootCA",
    "trustOnFirstUse",
    "allowExpiredRootCert",
    "signers",
    "thresholds",
)
_SIGNER_KEYS = ("role", "required")
_ROOT_KEYS = ("rootKeys", "rootCerts", "rootCA", "trustOnFirstUse")
_KEY_ID = re.compile(r"^[0-9a-fA-F]{64}\Z")  # hex SHA-256: notary's key and certificate IDs
# Top-level roles other than targets never list targets: naming one as a signer is a mistake.
_NOT_SIGNERS = ("root", "snapshot", "timestamp")


@dataclass(frozen=True)
class SignerRequirement:
    role: str  # full role name: "targets/security-team" (YAML "security-team"), or "targets"
    required: bool = True
    threshold: int = 1  # distinct valid keys of this role that must sign


@dataclass(frozen=True)
class NotaryVerification:
    """What a rule asks of Notary v1 signatures. ``signers`` empty: Docker's rule
    (``targets/releases``, then ``targets``); otherwise every required signer must sign the
    tag at one digest with at least its threshold of distinct valid keys, and an optional
    signer that signs another digest makes the tag refused."""

    root_of_trust: RootOfTrust
    signers: tuple[SignerRequirement, ...] = ()
    allow_expired_root_cert: bool = False  # legacy repositories; logged on every use

    def signing_rule(self, expiry_grace: timedelta) -> SigningRule:
        """The rule the source applies (``expiry_grace`` from the policy rule's ``allow``)."""
        required = tuple(RoleRequirement(s.role, s.threshold) for s in self.signers if s.required)
        optional = tuple(s.role for s in self.signers if not s.required)
        return SigningRule(
            self.root_of_trust,
            required_roles=required or None,
            allow_expired_root_cert=self.allow_expired_root_cert,
            optional_roles=optional,
            expiry_grace=expiry_grace,
        )

    def explain(self) -> list[str]:
        """``policy explain`` lines: the root of trust and the signers."""
        lines = [f"root of trust: {describe_root(self.root_of_trust)}"]
        if self.allow_expired_root_cert:
            lines.append(
                "  allowExpiredRootCert: a root whose certificate expired is accepted "
                "(unsafe, logged on every use)"
            )
        if not self.signers:
            return [*lines, f"signers: {DOCKER_RULE}"]
        lines.append(
            "signers: every required signer signs the tag at one digest (an optional signer "
            "that signs another digest makes the tag refused):"
        )
        for s in self.signers:
            keys = "1 valid key" if s.threshold == 1 else f">= {s.threshold} distinct valid keys"
            lines.append(f"  {s.role}: {'required' if s.required else 'optional'}, {keys}")
        return lines

    def summary(self) -> list[str]:
        """``policy check`` one-line parts."""
        parts = [root_kind(self.root_of_trust)]
        if not self.signers:
            return [*parts, "Docker's rule"]
        described = (
            s.role
            + ("" if s.required else " (optional)")
            + (f" x{s.threshold}" if s.threshold > 1 else "")
            for s in self.signers
        )
        return [*parts, "signers " + ", ".join(described)]


def parse_rule(node: RuleSection, mode: Mode, ctx: RuleContext) -> NotaryVerification | None:
    """The Notary part of one policy rule (None: mode off without a root of trust).
    Raises ConfigError with the key path."""
    root = _root_of_trust(node, mode, ctx)
    allow_expired = node.value("allowExpiredRootCert", parse_bool, False)
    if allow_expired and mode != "off":
        ctx.warnings.append(
            f"{node.sub('allowExpiredRootCert')}: roots whose certificate "
            "expired are accepted (unsafe; logged on every use)"
        )
    signers = _signers(node)
    if root is None:
        return None
    return NotaryVerification(root, signers, allow_expired)


def role_name(v: Any, path: str) -> str:
    """A signer role as written (``security-team``, ``targets/x``, ``targets``) -> the full
    Notary role name (``targets/security-team``). Raises ConfigError on a bad name."""
    text = parse_str(v, path)
    if text in _NOT_SIGNERS:
        raise ConfigError(path, f"{text!r} is a top-level role that never signs tags")
    full = text if text == "targets" or text.startswith("targets/") else f"targets/{text}"
    # notary's data.IsDelegation: lower-case letters, digits, '-', '_', '/', no '..'.
    if full != "targets" and not is_delegation_name(full):
        raise ConfigError(
            path,
            f"not a role name: {text!r} (use lower-case letters, digits, '-', '_' and '/', "
            "e.g. security-team or targets/releases)",
        )
    return full


def describe_root(root: RootOfTrust) -> str:
    """One line naming the kind of root of trust and its IDs."""
    if isinstance(root, PinnedRootKeys):
        return f"pinned root keys: {', '.join(sorted(root.key_ids))}"
    if isinstance(root, PinnedRootCerts):
        return f"pinned root certificates: {', '.join(sorted(root.cert_ids))}"
    if isinstance(root, RootCA):
        subjects = "; ".join(ca.subject.rfc4514_string() or "(empty subject)" for ca in root.cas)
        return f"root certificate must chain to a CA: {subjects}"
    if isinstance(root, TrustOnFirstUse):
        return (
            "trust on first use (NOT pinned: the first root seen is trusted; for trying things out)"
        )
    raise RuntimeError(f"unknown root of trust {root!r}")


def root_kind(root: RootOfTrust) -> str:
    """A short name for the kind of root of trust (for one-line summaries)."""
    if isinstance(root, PinnedRootKeys):
        return "pinned root keys"
    if isinstance(root, PinnedRootCerts):
        return "pinned root certificates"
    if isinstance(root, RootCA):
        return "root CA"
    return "trust on first use"


def _threshold(v: Any, path: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(path, f"must be a whole number >= 1, not {v!r}")
    return v


def _key_ids(v: Any, path: str) -> list[str]:
    items = parse_list(v, path)
    if not items:
        raise ConfigError(path, "must list at least one ID")
    ids: list[str] = []
    for i, item in enumerate(items):
        text = parse_str(item, f"{path}[{i}]").strip()
        if not _KEY_ID.match(text):
            raise ConfigError(f"{path}[{i}]", f"not a key ID (64 hex digits): {text!r}")
        ids.append(text.lower())
    return ids


def _read_ca(v: Any, path: str, base_dir: Path) -> RootCA:
    file = Path(parse_str(v, path)).expanduser()
    if not file.is_absolute():
        file = (base_dir / file).resolve()
    try:
        with file.open("rb") as f:
            pem = f.read(MAX_CA_BYTES + 1)
    except OSError as e:
        raise ConfigError(path, f"cannot read {file}: {e.strerror or e}") from e
    if len(pem) > MAX_CA_BYTES:
        raise ConfigError(path, f"{file} is larger than {MAX_CA_BYTES} bytes")
    try:
        return RootCA(pem)
    except ValueError as e:
        raise ConfigError(path, f"{file}: no PEM certificates ({e})") from e


def _root_of_trust(node: RuleSection, mode: Mode, ctx: RuleContext) -> RootOfTrust | None:
    # trustOnFirstUse: false is the same as not choosing it.
    tofu = node.value("trustOnFirstUse", parse_bool, False)
    chosen = [k for k in _ROOT_KEYS if node.has(k) and (k != "trustOnFirstUse" or tofu)]
    if len(chosen) > 1:
        raise ConfigError(node.sub(chosen[1]), f"choose one root of trust: {chosen[0]} is also set")
    if not chosen:
        if mode == "off":
            return None
        raise ConfigError(
            node.path,
            f"mode {mode} needs a root of trust: set rootKeys, rootCerts, rootCA or "
            "trustOnFirstUse: true",
        )
    # Validated even when the mode is off, so that switching a rule back on cannot fail;
    # the enforcement layer ignores it while off.
    key = chosen[0]
    path = node.sub(key)
    if key == "rootKeys":
        return PinnedRootKeys(_key_ids(node.data[key], path))
    if key == "rootCerts":
        return PinnedRootCerts(_key_ids(node.data[key], path))
    if key == "rootCA":
        return _read_ca(node.data[key], path, ctx.base_dir)
    if mode != "off":
        ctx.warnings.append(f"{path}: {TOFU_WARNING}")
    return TrustOnFirstUse()


def _signers(node: RuleSection) -> tuple[SignerRequirement, ...]:
    # Ordered, with the YAML path that introduced each role (for duplicate messages).
    found: dict[str, tuple[bool, int, str]] = {}
    items: list[Any] = node.value("signers", parse_list, [])
    for i, item in enumerate(items):
        s = RuleSection(item, f"{node.sub('signers')}[{i}]", _SIGNER_KEYS)
        role = s.required("role", role_name)
        required = s.value("required", parse_bool, True)
        if role in found:
            raise ConfigError(s.sub("role"), f"{role} is already listed at {found[role][2]}")
        found[role] = (required, 1, s.sub("role"))
    thresholds = node.data.get("thresholds")
    if thresholds is not None:
        if not isinstance(thresholds, dict):
            raise ConfigError(
                node.sub("thresholds"),
                f"must be a mapping of role -> number, not {kind_of(thresholds)}",
            )
        seen: dict[str, str] = {}
        for name, value in thresholds.items():
            path = f"{node.sub('thresholds')}[{name!r}]"
            role = role_name(name, path)
            if role in seen:
                raise ConfigError(path, f"{role} already has a threshold at {seen[role]}")
            seen[role] = path
            n = _threshold(value, path)
            required, _, where = found.get(role, (True, 1, path))
            # A role with a threshold but not listed as a signer is a required signer:
            # "release-managers: 2" means two of its keys must sign.
            found[role] = (required, n, where)
    signers = tuple(SignerRequirement(role, req, n) for role, (req, n, _) in found.items())
    if signers and not any(s.required for s in signers):
        raise ConfigError(
            node.sub("signers"),
            "at least one signer must be required (optional signers can only refuse a tag, "
            "never accept one); remove signers for Docker's rule",
        )
    return signers
