"""proxy.policy.explain: which rule applies and what it requires, in words."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from proxy.policy.explain import NO_RULE, explain, format_grace
from proxy.policy.loader import parse_policy
from proxy.policy.model import Policy

KEY_A = "a" * 64
ORG = "registry.example.com/myorg/*"


def _example(ca_dir: Path | None = None) -> Policy:
    raw = {
        "version": "2.0",
        "trust": {
            "repositories": {
                ORG: {
                    "source": "notary",
                    "rootKeys": [KEY_A],
                    "signers": [{"role": "security-team"}, {"role": "qa", "required": False}],
                    "thresholds": {"release-managers": 2},
                    "allow": {"paths": ["v*.*.*"], "expires": "15d"},
                    "digests": "signed",
                },
                "registry.example.com/tofu/*": {"trustOnFirstUse": True, "mode": "audit",
                                                "allowExpiredRootCert": True},
                "registry.example.com/ca/*": {"rootCA": "ca.pem"} if ca_dir else {"mode": "off"},
                "registry.example.com/certs/*": {"rootCerts": [KEY_A]},
                "*": {"requireSignatures": False},
            }
        },
    }  # fmt: skip
    return parse_policy(raw, base_dir=ca_dir or Path("/"), source_file=Path("/etc/p.yaml"))


def test_explain_the_issue_rule() -> None:
    lines = explain(_example(), "registry.example.com/myorg/app", "v1.2.3")
    assert lines == [
        "repository: registry.example.com/myorg/app, tag v1.2.3",
        f"rule: {ORG!r} (trust.repositories[{ORG!r}] in /etc/p.yaml)",
        "  also matches, less specific (not applied): '*'",
        "  nested repositories are NOT covered ('*' is one path segment): "
        "registry.example.com/myorg/team/app falls to '*' (off); "
        "'registry.example.com/myorg/**' covers every depth",
        "mode: enforce: only tags signed as below are served, at their signed digest; "
        "anything else is refused (404)",
        "source: notary",
        f"root of trust: pinned root keys: {KEY_A}",
        "signers: every required signer signs the tag at one digest (an optional signer "
        "that signs another digest makes the tag refused):",
        "  targets/security-team: required, 1 valid key",
        "  targets/qa: optional, 1 valid key",
        "  targets/release-managers: required, >= 2 distinct valid keys",
        "tags allowed: v*.*.* (tag v1.2.3 matches)",
        "digests: signed: pulls by digest are served only for signed digests (and manifests "
        "listed in a signed index)",
        "expiry grace: 15d: when the trust server cannot be reached, cached verified data is "
        "served up to this long past its expiry",
    ]


@pytest.mark.parametrize(
    ("repository", "tag", "expected"),
    [
        ("registry.example.com/myorg/app", "latest",
         "tags allowed: v*.*.* (tag latest does NOT match: refused whatever its signatures)"),
        ("registry.example.com/myorg/app", None, "tags allowed: v*.*.*"),
        ("registry.example.com/tofu/app", None, "root of trust: trust on first use (NOT pinned"),
        ("registry.example.com/tofu/app", None, "mode: audit: signed tags are served"),
        ("registry.example.com/tofu/app", None, "  allowExpiredRootCert: a root whose"),
        ("registry.example.com/tofu/app", None, "signers: Docker's rule: targets/releases, "
                                                "then targets"),
        ("registry.example.com/tofu/app", None, "source: (not named: the config must define "
                                                "exactly one)"),
        ("registry.example.com/tofu/app", None, "expiry grace: none: expired trust data is "
                                                "never served"),
        ("registry.example.com/tofu/app", None, "digests: allow: pulls by digest are served "
                                                "unchecked"),
        ("registry.example.com/certs/app", None, f"root of trust: pinned root certificates: "
                                                 f"{KEY_A}"),
        ("docker.io/library/alpine", "latest", "mode: off: served unchecked"),
        ("docker.io/library/alpine", "latest", "tag latest: served unchecked"),
    ],
    ids=["tag-refused-by-pattern", "no-tag", "tofu", "audit", "expired-root-cert",
         "docker-rule", "source-unnamed", "no-grace", "digests-allow", "root-certs",
         "off", "off-tag"],
)  # fmt: skip
def test_explain_lines(repository: str, tag: str | None, expected: str) -> None:
    lines = explain(_example(), repository, tag)
    assert any(line.startswith(expected) for line in lines), lines


def test_explain_root_ca(ca_pem: Path) -> None:
    lines = explain(_example(ca_pem.parent), "registry.example.com/ca/app", None)
    assert "root of trust: root certificate must chain to a CA: CN=policy test CA" in lines


def test_off_rule_says_nothing_about_trust() -> None:
    lines = explain(_example(), "docker.io/library/alpine", None)
    assert lines == [
        "repository: docker.io/library/alpine",
        "rule: '*' (trust.repositories['*'] in /etc/p.yaml)",
        "mode: off: served unchecked (no signature is looked at)",
    ]


def test_no_rule_matches() -> None:
    policy = parse_policy(
        {"version": "2", "trust": {"repositories": {ORG: {"mode": "off"}}}}, base_dir=Path("/")
    )
    assert explain(policy, "docker.io/library/alpine", "3") == [
        "repository: docker.io/library/alpine, tag 3",
        NO_RULE,
    ]
    assert NO_RULE == "no rule matches: refused (fail closed)"


@pytest.mark.parametrize(
    ("grace", "text"),
    [(timedelta(days=15), "15d"), (timedelta(days=14), "2w"), (timedelta(hours=36), "36h"),
     (timedelta(minutes=90), "90m"), (timedelta(seconds=61), "61s"), (timedelta(0), "0s")],
    ids=["days", "weeks", "hours", "minutes", "seconds", "zero"],
)  # fmt: skip
def test_format_grace(grace: timedelta, text: str) -> None:
    assert format_grace(grace) == text
