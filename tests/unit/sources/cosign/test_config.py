"""The cosign source section and a rule's cosign part: typed objects, path-qualified errors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from proxy.errors import ConfigError
from proxy.sources.cosign import (
    KeyAuthority,
    KeylessAuthority,
    load_trusted_root,
    parse_rule_config,
    parse_source_config,
)
from proxy.sources.cosign.config import CosignSourceConfig
from tests.simulators.sigstore_instance import SigstoreInstance

P = 'rules["ghcr.io/myorg/**"]'


def pem(key: Any) -> str:
    text: bytes = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return text.decode()


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "release.pub").write_text(pem(ec.generate_private_key(ec.SECP256R1())))
    (tmp_path / "keys" / "p384.pub").write_text(pem(ec.generate_private_key(ec.SECP384R1())))
    (tmp_path / "keys" / "rsa.pub").write_text(pem(rsa.generate_private_key(65537, 2048)))
    (tmp_path / "keys" / "ed.pub").write_text(pem(ed25519.Ed25519PrivateKey.generate()))
    (tmp_path / "keys" / "junk.pub").write_text("not a key")
    (tmp_path / "trusted_root.json").write_bytes(SigstoreInstance().trusted_root())
    (tmp_path / "bad_root.json").write_text(json.dumps({"mediaType": "x"}))
    return tmp_path


def test_rule_like_the_issue_example(keys_dir: Path) -> None:
    raw = {
        "authorities": [
            {"key": "keys/release.pub"},
            {"key": "keys/p384.pub", "hashAlgorithm": "sha384", "name": "p384"},
            {"key": str(keys_dir / "keys" / "rsa.pub")},
            {"keyData": (keys_dir / "keys" / "ed.pub").read_text()},
            {"keyless": {"issuer": "https://token.actions.githubusercontent.com",
                         "subjectRegExp": r"^https://github\.com/myorg/app/"}},
        ],
        "threshold": 2,
        "tlog": "optional",
        "remapIdentity": [{"prefix": "registry.local/myorg", "signedPrefix": "ghcr.io/myorg"}],
    }  # fmt: skip
    policy = parse_rule_config(raw, P, keys_dir, rule="ghcr.io/myorg/**")
    assert policy.threshold == 2
    assert policy.tlog == "optional"
    assert policy.remap == (("registry.local/myorg", "ghcr.io/myorg"),)
    assert [type(a) for a in policy.authorities] == [KeyAuthority] * 4 + [KeylessAuthority]
    assert policy.authorities[1].label == "p384"
    assert len(policy.keys) == 4
    keyless = policy.authorities[4]
    assert isinstance(keyless, KeylessAuthority)
    assert keyless.subject.matches("https://github.com/myorg/app/.github/workflows/x.yml@v1")
    assert not keyless.subject.matches("https://github.com/evil/https://github.com/myorg/app/")
    defaults = parse_rule_config({"authorities": [{"key": "keys/release.pub"}]}, P, keys_dir)
    assert (defaults.threshold, defaults.tlog, defaults.remap) == (1, "required", ())


BAD_RULES: list[tuple[str, dict[str, Any], str, str]] = [
    ("no-authorities", {}, f"{P}.authorities", "must be a non-empty list"),
    ("empty-authorities", {"authorities": []}, f"{P}.authorities", "non-empty list"),
    ("unknown-key", {"authorities": [{"key": "keys/release.pub"}], "treshold": 1},
     f"{P}.treshold", "unknown key"),
    ("two-kinds", {"authorities": [{"key": "keys/release.pub", "keyless": {}}]},
     f"{P}.authorities[0]", "exactly one of key, keyData and keyless"),
    ("missing-file", {"authorities": [{"key": "keys/none.pub"}]},
     f"{P}.authorities[0].key", "cannot read"),
    ("not-a-key", {"authorities": [{"key": "keys/junk.pub"}]},
     f"{P}.authorities[0].key", "not a PEM public key"),
    ("bad-hash", {"authorities": [{"key": "keys/release.pub", "hashAlgorithm": "md5"}]},
     f"{P}.authorities[0].hashAlgorithm", "must be one of sha256, sha384, sha512"),
    ("subject-and-regexp", {"authorities": [{"keyless": {"issuer": "i", "subject": "s",
     "subjectRegExp": "s"}}]}, f"{P}.authorities[0].keyless",
     "exactly one of subject and subjectRegExp"),
    ("no-issuer", {"authorities": [{"keyless": {"subject": "s"}}]},
     f"{P}.authorities[0].keyless", "exactly one of issuer and issuerRegExp"),
    ("bad-regexp", {"authorities": [{"keyless": {"issuer": "i", "subjectRegExp": "("}}]},
     f"{P}.authorities[0].keyless.subjectRegExp", "not a regular expression"),
    ("keyless-unknown", {"authorities": [{"keyless": {"issuer": "i", "subject": "s",
     "email": "x"}}]}, f"{P}.authorities[0].keyless.email", "unknown key"),
    ("threshold-too-high", {"authorities": [{"key": "keys/release.pub"}], "threshold": 2},
     f"{P}.threshold", "exceeds the 1 authorities"),
    ("threshold-zero", {"authorities": [{"key": "keys/release.pub"}], "threshold": 0},
     f"{P}.threshold", "whole number >= 1"),
    ("bad-tlog", {"authorities": [{"key": "keys/release.pub"}], "tlog": "skip"},
     f"{P}.tlog", "must be one of required, optional"),
    ("duplicate-authority", {"authorities": [{"key": "keys/release.pub"},
     {"key": "keys/release.pub"}]}, f"{P}.authorities[1]", "duplicates key"),
    ("remap-tag", {"authorities": [{"key": "keys/release.pub"}],
     "remapIdentity": [{"prefix": "ghcr.io/a:latest", "signedPrefix": "ghcr.io/b"}]},
     f"{P}.remapIdentity[0].prefix", "without a tag"),
    ("remap-missing", {"authorities": [{"key": "keys/release.pub"}],
     "remapIdentity": [{"prefix": "ghcr.io/a"}]},
     f"{P}.remapIdentity[0].signedPrefix", "non-empty string"),
    ("not-a-mapping", [], P, "must be a mapping"),  # type: ignore[list-item]
]  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "path", "message"), [c[1:] for c in BAD_RULES], ids=[c[0] for c in BAD_RULES]
)
def test_bad_rule_names_the_key(keys_dir: Path, raw: Any, path: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rule_config(raw, P, keys_dir)
    assert info.value.path == path
    assert message in info.value.message


def test_source_config(keys_dir: Path) -> None:
    config = parse_source_config(
        {"type": "cosign", "trustedRoot": "trusted_root.json",
         "signatureRepository": "ghcr.io/myorg/signatures", "maxSignatureLayers": 8},
        "sources.cosign", keys_dir,
    )  # fmt: skip
    assert config.trusted_root == keys_dir / "trusted_root.json"
    assert config.signature_repository == "ghcr.io/myorg/signatures"
    assert config.limits.max_layers == 8
    assert not config.insecure_ignore_sct
    root = load_trusted_root(config)
    assert root is not None
    assert len(root.tlogs) == 1
    public = parse_source_config({"trustedRoot": "sigstore-public-good"}, "s", keys_dir)
    public_root = load_trusted_root(public)
    assert public_root is not None
    assert public_root.tlog("c0d23d6ad406973f9559f3ba2d1ca01f84147d8ffc5b8445c224f98b9591801d")
    assert load_trusted_root(parse_source_config({}, "s", keys_dir)) is None
    hub = parse_source_config({"signatureRepository": "myorg/sigs"}, "s", keys_dir)
    assert hub.signature_repository == "docker.io/myorg/sigs"


BAD_SOURCES: list[tuple[str, Any, str, str]] = [
    ("wrong-type", {"type": "notary"}, "s.type", "must be cosign"),
    ("unknown", {"trustRoot": "x"}, "s.trustRoot", "unknown key"),
    ("missing-root", {"trustedRoot": "none.json"}, "s.trustedRoot", "file not found"),
    ("bad-repo", {"signatureRepository": "UPPER/Case"}, "s.signatureRepository",
     "not a repository name"),
    ("bad-bool", {"insecureIgnoreSCT": "yes"}, "s.insecureIgnoreSCT", "true or false"),
    ("bad-layers", {"maxSignatureLayers": 0}, "s.maxSignatureLayers", "whole number >= 1"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "path", "message"), [c[1:] for c in BAD_SOURCES], ids=[c[0] for c in BAD_SOURCES]
)
def test_bad_source_names_the_key(keys_dir: Path, raw: Any, path: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_source_config(raw, "s", keys_dir)
    assert info.value.path == path
    assert message in info.value.message


def test_invalid_trusted_root_file_names_the_field(keys_dir: Path) -> None:
    config = CosignSourceConfig(trusted_root=keys_dir / "bad_root.json")
    with pytest.raises(ConfigError, match=re.escape("sources.cosign.trustedRoot: mediaType")):
        load_trusted_root(config, "sources.cosign.trustedRoot")
    gone = CosignSourceConfig(trusted_root=keys_dir / "gone.json")
    with pytest.raises(ConfigError, match="cannot read"):
        load_trusted_root(gone)
