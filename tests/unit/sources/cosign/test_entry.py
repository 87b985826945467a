"""``type: cosign`` in the config and in policy rules: typed settings, rule parts, and
path-qualified errors for everything malformed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.errors import ConfigError
from proxy.policy.loader import parse_policy
from proxy.settings import parse_settings
from proxy.sources.cosign.entry import CosignSettings
from proxy.sources.cosign.rule import RULE_KEYS, CosignRule, CosignVerification
from proxy.sources.registry import source_type
from tests.simulators.sigstore_instance import SigstoreInstance

RULE = "registry.test/org/**"
WHERE = f"trust.repositories[{RULE!r}]"


def raw(source: dict[str, Any]) -> dict[str, Any]:
    return {
        "upstreams": [{"name": "r", "url": "http://127.0.0.1:5000", "registry": "registry.test"}],
        "trust": {"sources": {"sigs": source}},
    }


def write_key(tmp_path: Path, name: str = "release.pub") -> Path:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    path = tmp_path / name
    path.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def test_settings(tmp_path: Path) -> None:
    (tmp_path / "root.json").write_bytes(SigstoreInstance().trusted_root())
    settings = parse_settings(
        raw({"type": "cosign", "trusted_root": "root.json",
             "signature_repository": "registry.test/org/sigs", "max_signature_layers": 8,
             "refresh_interval": "10s", "grace": "1m", "max_tags": 50, "tag_concurrency": 4}),
        base_dir=tmp_path,
    )  # fmt: skip
    (src,) = settings.trust.sources
    assert isinstance(src, CosignSettings)
    assert src.cosign.trusted_root == (tmp_path / "root.json").resolve()
    assert src.cosign.signature_repository == "registry.test/org/sigs"
    assert src.cosign.limits.max_layers == 8
    assert (src.refresh_interval, src.grace, src.max_tags, src.tag_concurrency) == (10, 60, 50, 4)
    assert src.url.startswith("cosign:file://")

    public = parse_settings(raw({"type": "cosign", "trusted_root": "sigstore-public-good"}),
                            base_dir=tmp_path).trust.sources[0]  # fmt: skip
    assert isinstance(public, CosignSettings)
    assert public.cosign.public_good
    keys_only = parse_settings(raw({"type": "cosign"}), base_dir=tmp_path)
    assert any("key-based signatures only" in w for w in keys_only.warnings)


@pytest.mark.parametrize(
    ("source", "path", "message"),
    [
        ({"trusted_roots": "x"}, "trust.sources.sigs.trusted_roots", "unknown key"),
        ({"trusted_root": "missing.json"}, "trust.sources.sigs.trusted_root", "file not found"),
        ({"trusted_root": "bad.json"}, "trust.sources.sigs.trusted_root", ""),
        ({"signature_repository": "a/b:tag"}, "trust.sources.sigs.signature_repository",
         "without a tag"),
        ({"max_signature_layers": 0}, "trust.sources.sigs.max_signature_layers", "from 1"),
        ({"tag_concurrency": 1000}, "trust.sources.sigs.tag_concurrency", "from 1 to 64"),
        ({"insecure_ignore_sct": "yes"}, "trust.sources.sigs.insecure_ignore_sct", "true or"),
    ],
)  # fmt: skip
def test_bad_settings(tmp_path: Path, source: dict[str, Any], path: str, message: str) -> None:
    (tmp_path / "bad.json").write_text('{"mediaType": "nope"}')
    with pytest.raises(ConfigError) as err:
        parse_settings(raw({"type": "cosign", **source}), base_dir=tmp_path)
    assert err.value.path.startswith(path)
    assert message in err.value.message


def policy(rule: dict[str, Any]) -> dict[str, Any]:
    return {"version": "2.0", "trust": {"repositories": {RULE: {"source": "sigs", **rule}}}}


def load(tmp_path: Path, rule: dict[str, Any]) -> CosignRule:
    (parsed,) = parse_policy(
        policy(rule), base_dir=tmp_path, known_sources={"sigs": "cosign"}
    ).rules
    assert isinstance(parsed.verification, CosignVerification)
    result = parsed.verification.signing_rule(parsed.expiry_grace)
    assert isinstance(result, CosignRule)
    return result


def test_rule(tmp_path: Path) -> None:
    write_key(tmp_path)
    rule = load(tmp_path, {
        "authorities": [
            {"key": "release.pub", "name": "release"},
            {"keyless": {"issuer": "https://token.actions.githubusercontent.com",
                         "subjectRegExp": "^https://github\\.com/myorg/"}},
        ],
        "threshold": 2, "tlog": "optional", "onUnsignedTag": "lastSigned",
        "attestations": [{"predicateType": "https://slsa.dev/provenance/v1"}],
        "remapIdentity": [{"prefix": "registry.test/org", "signedPrefix": "ghcr.io/org"}],
        "digests": "signed",
    })  # fmt: skip
    assert rule.on_unsigned_tag == "lastSigned"
    assert rule.attestations == ("https://slsa.dev/provenance/v1",)
    assert rule.policy.threshold == 2
    assert rule.policy.tlog == "optional"
    assert rule.policy.rule == RULE
    assert rule.policy.remap == (("registry.test/org", "ghcr.io/org"),)
    # Hashable and compared by value: the same file loaded twice is the same rule.
    again = load(tmp_path, {
        "authorities": [
            {"key": "release.pub", "name": "release"},
            {"keyless": {"issuer": "https://token.actions.githubusercontent.com",
                         "subjectRegExp": "^https://github\\.com/myorg/"}},
        ],
        "threshold": 2, "tlog": "optional", "onUnsignedTag": "lastSigned",
        "attestations": [{"predicateType": "https://slsa.dev/provenance/v1"}],
        "remapIdentity": [{"prefix": "registry.test/org", "signedPrefix": "ghcr.io/org"}],
    })  # fmt: skip
    assert again == rule
    assert hash(again) == hash(rule)
    assert load(tmp_path, {"authorities": [{"key": "release.pub"}]}).on_unsigned_tag == "deny"
    assert again != load(tmp_path, {"authorities": [{"key": "release.pub"}]})


@pytest.mark.parametrize(
    ("rule", "path", "message"),
    [
        ({}, ".authorities", "non-empty list"),
        ({"authorities": [{"key": "release.pub"}], "threshold": 2}, ".threshold", "exceeds"),
        ({"authorities": [{"key": "release.pub"}], "tlog": "maybe"}, ".tlog", "one of"),
        ({"authorities": [{"key": "release.pub"}], "onUnsignedTag": "keep"}, ".onUnsignedTag",
         "deny, lastSigned"),
        ({"authorities": [{"key": "release.pub"}], "attestations": [{"type": "x"}]},
         ".attestations[0].type", "unknown key"),
        ({"authorities": [{"key": "nope.pub"}]}, ".authorities[0].key", "cannot read"),
        ({"authorities": [{"keyless": {"issuer": "x", "subjectRegExp": "("}}]},
         ".authorities[0].keyless.subjectRegExp", "not a regular expression"),
        ({"authorities": [{"key": "release.pub"}], "rootKeys": ["a"]}, ".rootKeys",
         "unknown key"),
    ],
)  # fmt: skip
def test_bad_rules(tmp_path: Path, rule: dict[str, Any], path: str, message: str) -> None:
    write_key(tmp_path)
    with pytest.raises(ConfigError) as err:
        load(tmp_path, rule)
    assert err.value.path == WHERE + path
    assert message in err.value.message


def test_registered() -> None:
    entry = source_type("cosign")
    assert {"authorities", "threshold", "tlog", "onUnsignedTag", "attestations",
            "remapIdentity"} == set(entry.rule_keys)  # fmt: skip
    assert set(entry.evidence_fields) == {"key_ids", "identities", "log_indexes"}


def test_the_documented_examples_load(tmp_path: Path) -> None:
    """docs/policy.md, "Cosign": its source section and its rule, as written."""
    doc = (Path(__file__).resolve().parents[4] / "docs" / "policy.md").read_text()
    section = doc[doc.index("\n## Cosign\n") :]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    source_doc, policy_doc = (yaml.safe_load(b) for b in blocks[:2])
    settings = parse_settings(
        {"upstreams": [{"name": "ghcr", "url": "https://ghcr.io", "registry": "ghcr.io"}],
         **source_doc},
        base_dir=tmp_path,
    )  # fmt: skip
    (src,) = settings.trust.sources
    assert isinstance(src, CosignSettings)
    assert src.cosign.public_good
    (tmp_path / "keys").mkdir()
    write_key(tmp_path / "keys")
    (rule,) = parse_policy(policy_doc, base_dir=tmp_path, known_sources={src.name: "cosign"}).rules
    assert isinstance(rule.verification, CosignVerification)
    cosign = rule.verification.rule
    documented = set(re.findall(r"^\| `(\w+)` \|", section, re.M))
    assert set(RULE_KEYS) <= documented
    assert {"trusted_root", "signature_repository", "refresh_interval", "grace"} <= documented
    assert cosign.on_unsigned_tag == "lastSigned"
    assert rule.digests == "signed"
