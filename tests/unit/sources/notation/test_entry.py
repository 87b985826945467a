"""``type: notation`` settings and policy rules through the project's loaders: the user's
trustpolicy.json and trust store read as they are, every invalid upstream document refused
at load with a path into it, rule keys and their errors, and the built source."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from proxy.errors import ConfigError
from proxy.policy.loader import parse_policy
from proxy.settings import CacheSettings, LimitSettings, parse_settings
from proxy.sources.notation.entry import NotationSettings
from proxy.sources.notation.rule import NotationRule, NotationVerification
from proxy.sources.notation.trustpolicy import Action, Check
from proxy.sources.registry import source_type
from proxy.sources.signed_digests import SignedDigestSource
from proxy.sources.store import MemoryTrustStateStore
from tests.unit.sources.notation.helpers import LOCALKEYS, POLICIES, needs_vectors

from .test_vectors import INVALID_POLICIES


def raw(source: dict[str, Any]) -> dict[str, Any]:
    return {
        "upstreams": [{"name": "r", "url": "http://127.0.0.1:5000"}],
        "trust": {"sources": {"notation": source}},
    }


def notation_dir(tmp_path: Path, policy: str = "trustpolicy.json") -> Path:
    """Notation's own layout: trustpolicy.json and truststore/x509/ca/e2e/e2e.crt."""
    store = tmp_path / "truststore" / "x509" / "ca" / "e2e"
    store.mkdir(parents=True)
    shutil.copy(LOCALKEYS / "e2e.crt", store / "e2e.crt")
    shutil.copy(POLICIES / policy, tmp_path / "trustpolicy.json")
    return tmp_path


SOURCE = {"type": "notation", "trust_policy": "trustpolicy.json", "trust_store": "truststore"}


@needs_vectors
def test_settings_read_notation_files_as_they_are(tmp_path: Path) -> None:
    notation_dir(tmp_path)
    settings = parse_settings(raw({**SOURCE, "max_signatures": 5}), base_dir=tmp_path)
    (src,) = settings.trust.sources
    assert isinstance(src, NotationSettings)
    assert src.notation.trust_store_dir == tmp_path / "truststore"
    assert src.notation.max_signatures == 5
    built = source_type("notation").build(
        src,
        LimitSettings(),
        MemoryTrustStateStore(),
        clock=lambda: datetime.now(UTC),
        cache=CacheSettings(),
    )
    assert isinstance(built, SignedDigestSource)
    assert built.judge.type_name == "notation"


@needs_vectors
@pytest.mark.parametrize("name", INVALID_POLICIES)
def test_every_invalid_upstream_document_is_refused_at_load(tmp_path: Path, name: str) -> None:
    notation_dir(tmp_path, name)
    with pytest.raises(ConfigError) as err:
        parse_settings(raw(SOURCE), base_dir=tmp_path)
    assert err.value.path == "trust.sources.notation.trust_policy"
    assert "trustpolicy.json" in err.value.message  # the path inside the document


@needs_vectors
def test_warnings_for_a_missing_store_and_weak_levels(tmp_path: Path) -> None:
    notation_dir(tmp_path, "audit_trustpolicy.json")
    shutil.rmtree(tmp_path / "truststore" / "x509" / "ca" / "e2e")
    settings = parse_settings(raw(SOURCE), base_dir=tmp_path)
    text = "\n".join(settings.warnings)
    assert "names ca:e2e, which cannot be used" in text
    assert "level audit" in text


@pytest.mark.parametrize(
    ("source", "where"),
    [
        ({"type": "notation", "trust_store": "s"}, "trust.sources.notation.trust_policy"),
        ({"type": "notation", "trust_policy": "p"}, "trust.sources.notation.trust_store"),
        ({**SOURCE, "max_signatures": 0}, "trust.sources.notation.max_signatures"),
        ({**SOURCE, "trustPolicy": "p"}, "trust.sources.notation.trustPolicy"),
        ({**SOURCE, "grace": "soon"}, "trust.sources.notation.grace"),
    ],
)
def test_settings_errors(tmp_path: Path, source: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings(raw(source), base_dir=tmp_path, check_files=False)
    assert err.value.path == where


def rule(body: dict[str, Any]) -> Any:
    policy = {"version": "2.0", "trust": {"repositories": {"r.test/**": body}}}
    return parse_policy(policy, base_dir=Path("."), known_sources={"notation": "notation"})


def test_policy_rules() -> None:
    (plain,) = rule({"source": "notation"}).rules
    assert plain.verification == NotationVerification(NotationRule())
    (last,) = rule({"source": "notation", "onUnsignedTag": "lastSigned"}).rules
    assert last.verification.signing_rule(plain.expiry_grace).on_unsigned_tag == "lastSigned"
    body = {
        "source": "notation",
        "level": "permissive",
        "override": {"expiry": "enforce"},
        "trustStores": ["ca:prod"],
        "trustedIdentities": ["x509.subject: C=US, ST=WA, O=Acme"],
        "annotations": {"build": "7"},
    }
    loaded = rule(body)
    (inline,) = loaded.rules
    r = inline.verification.signing_rule(inline.expiry_grace)
    assert r.inline.action(Check.EXPIRY) is Action.ENFORCE
    assert r.inline.action(Check.AUTHENTIC_TIMESTAMP) is Action.LOG
    assert dict(r.required_annotations) == {"build": "7"}
    assert hash(r) == hash(rule(body).rules[0].verification.signing_rule(inline.expiry_grace))
    assert r != NotationRule()
    assert any("permissive" in line for line in inline.verification.explain())
    audit = rule({**body, "level": "audit"})
    assert any("authenticity is only logged" in w for w in audit.warnings)


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"onUnsignedTag": "serve"}, ".onUnsignedTag"),
        ({"trustStores": ["ca:a"]}, ".level"),
        ({"level": "strict", "trustStores": ["ca:a"]}, ".trustedIdentities"),
        ({"level": "strict", "trustStores": ["ca"], "trustedIdentities": ["*"]}, ".trustStores[0]"),
        ({"level": "lenient", "trustStores": ["ca:a"], "trustedIdentities": ["*"]}, ".level"),
        ({"registryScopes": ["*"]}, ".registryScopes"),
        ({"rootKeys": ["a"]}, ".rootKeys"),  # Notary's keys mean nothing to Notation
        ({"annotations": {"a": 1}}, ".annotations"),
    ],
)
def test_policy_rule_errors(body: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError) as err:
        rule({"source": "notation", **body})
    assert err.value.path.endswith(where), err.value
