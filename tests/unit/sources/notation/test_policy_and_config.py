"""Table-driven trust policy and configuration inputs (no vectors needed)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.errors import ConfigError
from proxy.sources.notation.config import parse_rule_fields
from proxy.sources.notation.trustpolicy import (
    Action,
    Check,
    VerifyTimestamp,
    parse_distinguished_name,
    parse_trust_policy,
)


def doc(**statement: Any) -> bytes:
    base: dict[str, Any] = {
        "name": "s",
        "registryScopes": ["r.example/app"],
        "signatureVerification": {"level": "strict"},
        "trustStores": ["ca:a"],
        "trustedIdentities": ["*"],
    }
    base.update(statement)
    return json.dumps({"version": "1.0", "trustPolicies": [base]}).encode()


BAD_DOCUMENTS: dict[str, tuple[bytes, str, str]] = {
    "not JSON": (b"{", "trustpolicy.json", "malformed"),
    "duplicate key": (
        b'{"version":"1.0","version":"1.0","trustPolicies":[]}',
        "trustpolicy.json",
        "duplicate key",
    ),
    "version 2": (
        b'{"version":"2.0","trustPolicies":[]}',
        "trustpolicy.json.version",
        "unsupported",
    ),
    "no statements": (b'{"version":"1.0","trustPolicies":[]}', ".trustPolicies", "non-empty"),
    "unknown key": (doc(trustedIdentity=["*"]), ".trustedIdentity", "unknown key"),
    "no name": (doc(name=""), ".name", "non-empty"),
    "bad level": (doc(signatureVerification={"level": "lenient"}), ".level", "invalid"),
    "no level": (doc(signatureVerification={}), ".level", "required"),
    "override under skip": (
        doc(
            signatureVerification={"level": "skip", "override": {"expiry": "log"}},
            trustStores=[],
            trustedIdentities=[],
        ),
        ".override",
        "skip",
    ),
    "skip authenticity": (
        doc(signatureVerification={"level": "strict", "override": {"authenticity": "skip"}}),
        ".override.authenticity",
        "can not be skipped",
    ),
    "unknown check": (
        doc(signatureVerification={"level": "strict", "override": {"freshness": "log"}}),
        ".override.freshness",
        "not supported",
    ),
    "unknown action": (
        doc(signatureVerification={"level": "strict", "override": {"expiry": "warn"}}),
        ".override.expiry",
        "not supported",
    ),
    "bad verifyTimestamp": (
        doc(signatureVerification={"level": "strict", "verifyTimestamp": "never"}),
        ".verifyTimestamp",
        "afterCertExpiry",
    ),
    "skip with stores": (
        doc(signatureVerification={"level": "skip"}),
        "trustPolicies[0]",
        "skip signature verification",
    ),
    "store type": (doc(trustStores=["x509:a"]), ".trustStores[0]", "unsupported trust store type"),
    "store name": (doc(trustStores=["ca:a/b"]), ".trustStores[0]", "unsupported trust store name"),
    "identity prefix": (
        doc(trustedIdentities=["x509.san: a.example"]),
        ".trustedIdentities[0]",
        "not supported",
    ),
    "hex DN value": (
        doc(trustedIdentities=["x509.subject: C=US, ST=WA, O=#0403616263"]),
        ".trustedIdentities[0]",
        "=#",
    ),
    "multi-valued RDN": (
        doc(trustedIdentities=["x509.subject: C=US+ST=WA, O=x"]),
        ".trustedIdentities[0]",
        "multi-valued",
    ),
    "repeated RDN": (
        doc(trustedIdentities=["x509.subject: C=US, ST=WA, O=x, O=y"]),
        ".trustedIdentities[0]",
        "duplicate",
    ),
    "lower-case type": (
        doc(trustedIdentities=["x509.subject: c=US, ST=WA, O=x"]),
        ".trustedIdentities[0]",
        "'C'",
    ),
    "scope with tag": (doc(registryScopes=["r.example/app:v1"]), ".registryScopes[0]", "not valid"),
    "scope with scheme": (
        doc(registryScopes=["https://r.example/app"]),
        ".registryScopes[0]",
        "not valid",
    ),
    "scope glob": (doc(registryScopes=["r.example/*"]), ".registryScopes[0]", "wild card"),
    "scope without domain": (doc(registryScopes=["app"]), ".registryScopes[0]", "not valid"),
    "scope upper-case path": (
        doc(registryScopes=["r.example/App"]),
        ".registryScopes[0]",
        "not valid",
    ),
    "stores not a list": (doc(trustStores="ca:a"), ".trustStores", "list"),
    "huge": (b" " * (1 << 20) + b"{}", "trustpolicy.json", "exceeds"),
}


@pytest.mark.parametrize(
    ("data", "where", "message"), BAD_DOCUMENTS.values(), ids=list(BAD_DOCUMENTS)
)
def test_bad_documents(data: bytes, where: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_trust_policy(data)
    assert where in info.value.path, info.value
    assert message in str(info.value)


def test_override_and_verify_timestamp() -> None:
    st = parse_trust_policy(
        doc(
            signatureVerification={
                "level": "audit",
                "override": {"revocation": "skip", "authenticity": "enforce"},
                "verifyTimestamp": "afterCertExpiry",
            }
        )
    ).statement_for("r.example/app")
    assert st.action(Check.REVOCATION) is Action.SKIP
    assert st.action(Check.AUTHENTICITY) is Action.ENFORCE
    assert st.action(Check.EXPIRY) is Action.LOG
    assert st.verify_timestamp is VerifyTimestamp.AFTER_CERT_EXPIRY


@pytest.mark.parametrize(
    ("dn", "expected"),
    [
        ("C=US, ST=WA, O=Notary", {"C": "US", "ST": "WA", "O": "Notary"}),
        (r"C=US,ST=WA,O=A\, Inc.", {"C": "US", "ST": "WA", "O": "A, Inc."}),
        (r'C=US,ST=WA,O="A, Inc."', {"C": "US", "ST": "WA", "O": "A, Inc."}),
        (r"C=US,ST=WA,O=caf\C3\A9", {"C": "US", "ST": "WA", "O": "café"}),
        ("CN=x;C=US;ST=WA;O=y", {"CN": "x", "C": "US", "ST": "WA", "O": "y"}),
    ],
)
def test_distinguished_names(dn: str, expected: dict[str, str]) -> None:
    assert parse_distinguished_name(dn) == expected


def test_identity_is_a_subset_match() -> None:
    st = parse_trust_policy(
        doc(trustedIdentities=["x509.subject: C=US, ST=WA, O=Notary"])
    ).statement_for("r.example/app")
    (identity,) = st.trusted_identities
    assert identity.matches({"C": "US", "ST": "WA", "O": "Notary", "CN": "anything"})
    assert not identity.matches({"C": "US", "ST": "WA", "O": "Other"})


def test_rule_fields() -> None:
    assert parse_rule_fields(None, "rules[0].notation").statement is None
    only_meta = parse_rule_fields({"annotations": {"buildId": "1"}}, "rules[0].notation")
    assert only_meta.statement is None
    assert only_meta.required_annotations == {"buildId": "1"}
    inline = parse_rule_fields(
        {
            "level": "permissive",
            "override": {"expiry": "enforce"},
            "trustStores": ["ca:prod"],
            "trustedIdentities": ["x509.subject: C=US, ST=WA, O=Acme"],
        },
        "rules[0].notation",
    )
    assert inline.statement is not None
    assert inline.statement.action(Check.EXPIRY) is Action.ENFORCE
    assert inline.statement.action(Check.AUTHENTIC_TIMESTAMP) is Action.LOG


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        ("strict", "rules[0].notation"),
        ({"registryScopes": ["*"]}, "rules[0].notation.registryScopes"),
        ({"trustStores": ["ca:a"]}, "rules[0].notation.level"),
        ({"level": "strict", "trustStores": ["ca:a"]}, "rules[0].notation.trustedIdentities"),
        (
            {"level": "strict", "trustStores": ["ca"], "trustedIdentities": ["*"]},
            "rules[0].notation.trustStores[0]",
        ),
        ({"annotations": {"a": 1}}, "rules[0].notation.annotations"),
        ({"level": "lenient"}, "rules[0].notation.level"),
        (
            {"level": "strict", "override": {"integrity": "log"}},
            "rules[0].notation.override.integrity",
        ),
    ],
)
def test_rule_field_errors(raw: object, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rule_fields(raw, "rules[0].notation")
    assert info.value.path == where
