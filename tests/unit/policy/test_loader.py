"""proxy.policy.loader: the issue's example means what it says; every bad input is refused
with the key path that is wrong."""

from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from proxy.errors import ConfigError
from proxy.policy.loader import MAX_POLICY_BYTES, load_policy, parse_policy
from proxy.policy.model import RepositoryRule
from proxy.sources.notary.policy import NotaryVerification, SignerRequirement, role_name
from proxy.sources.notary.tuf import PinnedRootCerts, PinnedRootKeys, RootCA, TrustOnFirstUse
from tests.unit.notary_rules import notary

CONFIG_DIR = Path(__file__).resolve().parents[3] / "config"
KEY_A = "a" * 64
KEY_B = "B" * 64
ORG = "registry.example.com/myorg/*"
R = f"trust.repositories[{ORG!r}]"

# The issue's example verbatim; only the placeholder key ID is replaced.
ISSUE_EXAMPLE = (
    (Path(__file__).parent / "issue_example.yaml")
    .read_text(encoding="utf-8")
    .replace("<canonical root key id>", KEY_A)
)


def _write(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _policy(rule: dict[str, Any] | None = None, **extra_rules: Any) -> dict[str, Any]:
    rules: dict[str, Any] = {ORG: rule if rule is not None else {"rootKeys": [KEY_A]}}
    rules.update(extra_rules)
    return {"version": "2.0", "trust": {"repositories": rules}}


def _parse(raw: Any, known: tuple[str, ...] | None = ("notary",), base: Path = Path("/")) -> Any:
    return parse_policy(raw, base_dir=base, known_sources=known)


# --------------------------------------------------------------------------- good


def test_issue_example_loads_and_means_what_it_says(tmp_path: Path) -> None:
    path = _write(tmp_path, ISSUE_EXAMPLE)
    policy = load_policy(path, known_sources=["notary"])
    assert policy.version == "2.0"
    assert policy.source_file == path
    # The issue's own example has the one-segment pitfall: myorg/team/app falls to "*" (off).
    assert policy.warnings == (
        "trust.repositories['registry.example.com/myorg/*']: '*' matches one path segment: "
        "registry.example.com/myorg/team/app is not covered and falls to '*' (off); "
        "did you mean 'registry.example.com/myorg/**'?",
    )
    org, catch_all = policy.rules
    assert org == RepositoryRule(
        pattern="registry.example.com/myorg/*",
        mode="enforce",
        source="notary",
        verification=NotaryVerification(
            PinnedRootKeys([KEY_A]),
            signers=(
                SignerRequirement("targets/security-team", required=True, threshold=1),
                SignerRequirement("targets/developer", required=True, threshold=1),
                SignerRequirement("targets/release-managers", required=True, threshold=2),
            ),
            allow_expired_root_cert=False,
        ),
        tag_patterns=("v*.*.*",),
        expiry_grace=timedelta(days=15),
        digests="allow",
        path="trust.repositories['registry.example.com/myorg/*']",
    )
    assert org.enforced
    assert catch_all == RepositoryRule(pattern="*", mode="off", path="trust.repositories['*']")
    assert not catch_all.enforced


def test_shipped_example_and_demo_policy_load() -> None:
    example = load_policy(CONFIG_DIR / "policy-example.yaml", known_sources=["notary"])
    # The shipped example leads with "**": no one-segment warning.
    assert [r.pattern for r in example.rules] == ["registry.example.com/myorg/**", "*"]
    assert example.warnings == ()
    demo = load_policy(CONFIG_DIR / "policy.yaml", known_sources=["notary"])
    enforced, catch_all = demo.rules
    assert (enforced.pattern, enforced.mode, enforced.source) == (
        "127.0.0.1:5000/**", "enforce", "notary"
    )  # fmt: skip
    assert isinstance(notary(enforced).root_of_trust, TrustOnFirstUse)
    assert catch_all.mode == "off"
    assert any("trust on first use" in w for w in demo.warnings)


@pytest.mark.parametrize(
    ("rule", "field", "expected"),
    [
        ({"rootKeys": [KEY_A]}, "mode", "enforce"),
        ({"rootKeys": [KEY_A], "requireSignatures": True}, "mode", "enforce"),
        ({"rootKeys": [KEY_A], "mode": "audit"}, "mode", "audit"),
        ({"mode": "off"}, "mode", "off"),
        ({"mode": False}, "mode", "off"),  # YAML 1.1: unquoted `off` is false
        ({"requireSignatures": False, "mode": "off"}, "mode", "off"),
        ({"rootKeys": [KEY_A]}, "digests", "allow"),
        ({"rootKeys": [KEY_A], "digests": "signed"}, "digests", "signed"),
        ({"rootKeys": [KEY_A]}, "expiry_grace", timedelta(0)),
        ({"rootKeys": [KEY_A], "allow": {"expires": 0}}, "expiry_grace", timedelta(0)),
        ({"rootKeys": [KEY_A], "allow": {"expires": "90s"}}, "expiry_grace", timedelta(seconds=90)),
        ({"rootKeys": [KEY_A], "allow": {"expires": "15m"}}, "expiry_grace", timedelta(minutes=15)),
        ({"rootKeys": [KEY_A], "allow": {"expires": "12h"}}, "expiry_grace", timedelta(hours=12)),
        ({"rootKeys": [KEY_A], "allow": {"expires": "2w"}}, "expiry_grace", timedelta(days=14)),
        ({"rootKeys": [KEY_A]}, "tag_patterns", ()),
        ({"rootKeys": [KEY_A]}, "signers", ()),  # Docker's rule
        ({"rootKeys": [KEY_A], "signers": []}, "signers", ()),
        ({"rootKeys": [KEY_A]}, "source", "notary"),  # the only known source
        ({"mode": "off"}, "source", None),
        ({"mode": "off"}, "root_of_trust", None),
        ({"rootKeys": [KEY_A, KEY_B]}, "root_of_trust", PinnedRootKeys([KEY_A, KEY_B.lower()])),
        ({"rootCerts": [KEY_B]}, "root_of_trust", PinnedRootCerts([KEY_B.lower()])),
        ({"trustOnFirstUse": True}, "root_of_trust", TrustOnFirstUse()),
        ({"trustOnFirstUse": False, "rootKeys": [KEY_A]}, "root_of_trust", PinnedRootKeys([KEY_A])),
        ({"mode": "off", "rootKeys": [KEY_A]}, "root_of_trust", PinnedRootKeys([KEY_A])),
        ({"rootKeys": [KEY_A], "allowExpiredRootCert": True}, "allow_expired_root_cert", True),
        (
            {"rootKeys": [KEY_A], "signers": [{"role": "targets"}, {"role": "releases",
                                                                    "required": False}]},
            "signers",
            (SignerRequirement("targets"), SignerRequirement("targets/releases", required=False)),
        ),
        (
            {"rootKeys": [KEY_A], "signers": [{"role": "targets/a/b"}], "thresholds": {"a/b": 3}},
            "signers",
            (SignerRequirement("targets/a/b", threshold=3),),
        ),
        (
            {"rootKeys": [KEY_A], "thresholds": {"release-managers": 2}},
            "signers",
            (SignerRequirement("targets/release-managers", threshold=2),),
        ),
    ],
    ids=[
        "default-mode-enforce", "require-true-enforce", "audit", "off", "yaml-off-is-false",
        "require-false-and-off", "digests-default-allow", "digests-signed", "grace-default-0",
        "grace-0", "grace-seconds", "grace-minutes", "grace-hours", "grace-weeks",
        "tags-default-any", "no-signers-docker-rule", "empty-signers-docker-rule",
        "single-source-default", "off-no-source", "off-no-root", "root-keys",
        "root-certs-lowered", "tofu", "tofu-false-is-unset", "off-keeps-root",
        "allow-expired-root-cert", "targets-and-optional-releases", "threshold-on-signer",
        "threshold-adds-required-signer",
    ],
)  # fmt: skip
def test_rule_fields(rule: dict[str, Any], field: str, expected: Any) -> None:
    (parsed,) = _parse(_policy(rule)).rules
    # The Notary fields live in the rule's verification part (None: mode off, no root).
    part = parsed.verification if field in _NOTARY_FIELDS else parsed
    assert getattr(part, field, None) == expected


_NOTARY_FIELDS = ("root_of_trust", "signers", "allow_expired_root_cert")


@pytest.mark.parametrize("version", ["2.0", "2", 2, 2.0], ids=["str-2.0", "str-2", "int", "float"])
def test_versions(version: Any) -> None:
    raw = _policy()
    raw["version"] = version
    assert _parse(raw).version == "2.0"


def test_root_ca_is_read_relative_to_the_policy_file(tmp_path: Path, ca_pem: Path) -> None:
    path = _write(tmp_path, f'version: "2.0"\ntrust:\n  repositories:\n    "{ORG}":\n'
                            f"      rootCA: {ca_pem.name}\n")  # fmt: skip
    (rule,) = load_policy(path).rules
    root = notary(rule).root_of_trust
    assert isinstance(root, RootCA)
    assert root.pem == ca_pem.read_bytes()
    assert rule.source is None  # no known sources: not resolved, not checked


def test_source_is_required_when_several_are_known() -> None:
    with pytest.raises(ConfigError) as info:
        _parse(_policy(), known=("a", "b"))
    assert info.value.path == f"{R}.source"
    assert "several trust sources (a, b)" in info.value.message
    (rule,) = _parse(_policy({"rootKeys": [KEY_A], "source": "b"}), known=("a", "b")).rules
    assert rule.source == "b"


@pytest.mark.parametrize(
    ("rule", "warning"),
    [
        ({"trustOnFirstUse": True}, "trust on first use"),
        ({"rootKeys": [KEY_A], "allowExpiredRootCert": True}, "expired are accepted"),
        ({"requireSignatures": True, "mode": "off"}, "has no effect"),
    ],
    ids=["tofu", "expired-root-cert", "require-true-but-off"],
)
def test_warnings(rule: dict[str, Any], warning: str) -> None:
    (text,) = _parse(_policy(rule)).warnings
    assert warning in text
    assert text.startswith(R)


def test_empty_repositories_is_a_warning_not_an_error() -> None:
    policy = _parse({"version": "2.0", "trust": {"repositories": {}}})
    assert policy.rules == ()
    assert "every repository is refused" in policy.warnings[0]


def test_tofu_when_off_does_not_warn() -> None:
    assert _parse(_policy({"mode": "off", "trustOnFirstUse": True})).warnings == ()


# --------------------------------------------------------------------------- bad


def _with(rule_changes: dict[str, Any], *, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    rule: dict[str, Any] = {"rootKeys": [KEY_A]}
    rule.update(rule_changes)
    for key in drop:
        del rule[key]
    return _policy(rule)


def _top(**changes: Any) -> dict[str, Any]:
    raw = _policy()
    raw.update(changes)
    return raw


_TRUST_EXTRA = copy.deepcopy(_policy())
_TRUST_EXTRA["trust"]["keys"] = {}

BAD: list[tuple[str, Any, str, str]] = [
    # id, raw, path, message fragment
    ("not-a-mapping", ["a"], "", "mapping at the top level"),
    ("empty", None, "", "mapping at the top level, not empty"),
    ("no-version", {"trust": {"repositories": {}}}, "version", "is required"),
    ("bad-version", _top(version="1.0"), "version", "unsupported policy version"),
    ("unknown-top-key", _top(repositories={}), "repositories", "unknown key"),
    ("unknown-trust-key", _TRUST_EXTRA, "trust.keys", "unknown key"),
    ("no-repositories", {"version": "2.0", "trust": {}}, "trust.repositories", "is required"),
    ("repositories-list", {"version": "2.0", "trust": {"repositories": []}},
     "trust.repositories", "must be a mapping"),
    ("unknown-rule-key", _with({"requireSignature": False}), f"{R}.requireSignature",
     "did you mean requireSignatures?"),
    ("rule-not-mapping", _policy("enforce"),  # type: ignore[arg-type]
     R, "must be a mapping"),
    ("unknown-signer-key", _with({"signers": [{"role": "a", "threshold": 2}]}),
     f"{R}.signers[0].threshold", "unknown key"),
    ("unknown-allow-key", _with({"allow": {"tags": ["v*"]}}), f"{R}.allow.tags", "unknown key"),
    ("bad-mode", _with({"mode": "strict"}), f"{R}.mode", "enforce, audit, off"),
    ("mode-true", _with({"mode": True}), f"{R}.mode", "enforce, audit, off"),
    ("require-not-bool", _with({"requireSignatures": "yes"}), f"{R}.requireSignatures",
     "true or false"),
    ("require-false-and-enforce", _with({"requireSignatures": False, "mode": "enforce"}),
     f"{R}.mode", "contradicts requireSignatures: false"),
    ("require-false-and-audit", _with({"requireSignatures": False, "mode": "audit"}),
     f"{R}.mode", "contradicts"),
    ("enforce-without-root", _with({}, drop=("rootKeys",)), R, "needs a root of trust"),
    ("audit-without-root", _with({"mode": "audit"}, drop=("rootKeys",)), R,
     "needs a root of trust"),
    ("tofu-false-without-root", _with({"trustOnFirstUse": False}, drop=("rootKeys",)), R,
     "needs a root of trust"),
    ("two-roots", _with({"trustOnFirstUse": True}), f"{R}.trustOnFirstUse",
     "choose one root of trust: rootKeys is also set"),
    ("keys-and-certs", _with({"rootCerts": [KEY_A]}), f"{R}.rootCerts", "choose one"),
    ("root-keys-empty", _with({"rootKeys": []}), f"{R}.rootKeys", "at least one"),
    ("root-keys-not-list", _with({"rootKeys": KEY_A}), f"{R}.rootKeys", "must be a list"),
    ("root-key-short", _with({"rootKeys": [KEY_A, "abc"]}), f"{R}.rootKeys[1]",
     "64 hex digits"),
    ("root-cert-not-hex", _with({"rootCerts": ["z" * 64]}, drop=("rootKeys",)),
     f"{R}.rootCerts[0]", "64 hex digits"),
    ("root-ca-missing", _with({"rootCA": "nope.pem"}, drop=("rootKeys",)), f"{R}.rootCA",
     "cannot read"),
    ("tofu-not-bool", _with({"trustOnFirstUse": "true"}, drop=("rootKeys",)),
     f"{R}.trustOnFirstUse", "true or false"),
    ("signers-not-list", _with({"signers": {"role": "a"}}), f"{R}.signers", "must be a list"),
    ("signer-not-mapping", _with({"signers": ["a"]}), f"{R}.signers[0]", "must be a mapping"),
    ("signer-no-role", _with({"signers": [{"required": True}]}), f"{R}.signers[0].role",
     "is required"),
    ("bad-role-upper", _with({"signers": [{"role": "a"}, {"role": "Security"}]}),
     f"{R}.signers[1].role", "not a role name"),
    ("bad-role-dotdot", _with({"signers": [{"role": "targets/../x"}]}),
     f"{R}.signers[0].role", "not a role name"),
    ("bad-role-trailing-slash", _with({"signers": [{"role": "a/"}]}),
     f"{R}.signers[0].role", "not a role name"),
    ("role-root", _with({"signers": [{"role": "root"}]}), f"{R}.signers[0].role",
     "never signs tags"),
    ("role-not-string", _with({"signers": [{"role": 7}]}), f"{R}.signers[0].role",
     "must be a string"),
    ("duplicate-signer", _with({"signers": [{"role": "a"}, {"role": "targets/a"}]}),
     f"{R}.signers[1].role", "already listed"),
    ("required-not-bool", _with({"signers": [{"role": "a", "required": "no"}]}),
     f"{R}.signers[0].required", "true or false"),
    ("no-required-signer", _with({"signers": [{"role": "a", "required": False}]}),
     f"{R}.signers", "at least one signer must be required"),
    ("threshold-zero", _with({"thresholds": {"a": 0}}), f"{R}.thresholds['a']", ">= 1"),
    ("threshold-negative", _with({"thresholds": {"a": -1}}), f"{R}.thresholds['a']", ">= 1"),
    ("threshold-string", _with({"thresholds": {"a": "2"}}), f"{R}.thresholds['a']", ">= 1"),
    ("threshold-float", _with({"thresholds": {"a": 1.5}}), f"{R}.thresholds['a']", ">= 1"),
    ("threshold-bool", _with({"thresholds": {"a": True}}), f"{R}.thresholds['a']", ">= 1"),
    ("threshold-bad-role", _with({"thresholds": {"A B": 2}}), f"{R}.thresholds['A B']",
     "not a role name"),
    ("threshold-twice", _with({"thresholds": {"a": 2, "targets/a": 3}}),
     f"{R}.thresholds['targets/a']", "already has a threshold"),
    ("thresholds-list", _with({"thresholds": [2]}), f"{R}.thresholds", "mapping of role"),
    ("expires-no-unit", _with({"allow": {"expires": 15}}), f"{R}.allow.expires",
     "not a duration"),
    ("expires-bad-unit", _with({"allow": {"expires": "15y"}}), f"{R}.allow.expires",
     "not a duration"),
    ("expires-negative", _with({"allow": {"expires": "-1d"}}), f"{R}.allow.expires",
     "not a duration"),
    ("expires-fraction", _with({"allow": {"expires": "1.5d"}}), f"{R}.allow.expires",
     "not a duration"),
    ("expires-too-long", _with({"allow": {"expires": "366d"}}), f"{R}.allow.expires",
     "at most 365d"),
    ("expires-bool", _with({"allow": {"expires": False}}), f"{R}.allow.expires",
     "not a duration"),
    ("allow-not-mapping", _with({"allow": ["v*"]}), f"{R}.allow", "must be a mapping"),
    ("paths-not-list", _with({"allow": {"paths": "v*"}}), f"{R}.allow.paths", "must be a list"),
    ("path-bad-chars", _with({"allow": {"paths": ["v*", "v/1"]}}), f"{R}.allow.paths[1]",
     "not a tag pattern"),
    ("path-empty", _with({"allow": {"paths": [""]}}), f"{R}.allow.paths[0]", "empty"),
    ("path-not-string", _with({"allow": {"paths": [1]}}), f"{R}.allow.paths[0]",
     "must be a string"),
    ("bad-digests", _with({"digests": "deny"}), f"{R}.digests", "allow or signed"),
    ("unknown-source", _with({"source": "notray"}), f"{R}.source",
     "unknown trust source 'notray'"),
    ("bad-source-name", _with({"source": "no tary"}), f"{R}.source", "not a trust source name"),
    ("pattern-not-string", {"version": "2.0", "trust": {"repositories": {1: {}}}},
     "trust.repositories[1]", "must be a string"),
    ("pattern-no-registry", _policy(**{"myorg/*": {"mode": "off"}}),
     "trust.repositories['myorg/*']", "registry host"),
    ("pattern-upper", _policy(**{"Registry.example.com/x": {"mode": "off"}}),
     "trust.repositories['Registry.example.com/x']", "lower case"),
    ("pattern-registry-only", _policy(**{"registry.example.com": {"mode": "off"}}),
     "trust.repositories['registry.example.com']", "<registry>/<repository>"),
    ("pattern-partial-doublestar", _policy(**{"registry.example.com/a**": {"mode": "off"}}),
     "trust.repositories['registry.example.com/a**']", "whole path segment"),
    ("pattern-trailing-slash", _policy(**{"registry.example.com/a/": {"mode": "off"}}),
     "trust.repositories['registry.example.com/a/']", "empty path segment"),
    ("pattern-never-matches", _policy(**{"registry.example.com/-a": {"mode": "off"}}),
     "trust.repositories['registry.example.com/-a']", "can never match"),
    ("pattern-bad-chars", _policy(**{"registry.example.com/a b": {"mode": "off"}}),
     "trust.repositories['registry.example.com/a b']", "not a repository path segment"),
    ("ambiguous-patterns", _policy(**{"registry.example.com/myorg/a*": {"mode": "off"},
                                      "registry.example.com/myorg/*b": {"mode": "off"}}),
     "trust.repositories['registry.example.com/myorg/*b']",
     "as specific as 'registry.example.com/myorg/a*' and both match e.g. "
     "'registry.example.com/myorg/ab'"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "path", "fragment"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])  # fmt: skip
def test_bad_input_names_the_key(raw: Any, path: str, fragment: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _parse(raw, base=tmp_path)
    assert info.value.path == path
    assert fragment in info.value.message


def test_unknown_source_without_any_configured() -> None:
    with pytest.raises(ConfigError) as info:
        _parse(_policy(), known=())
    assert info.value.path == f"{R}.source"
    assert "no trust.sources" in info.value.message


def test_equally_specific_patterns_that_cannot_overlap_are_fine() -> None:
    raw = _policy(**{"registry.example.com/myorg/a*": {"mode": "off"},
                     "registry.example.com/myorg/*b/c": {"mode": "off"},
                     "registry.example.com/other/*": {"mode": "off"}})  # fmt: skip
    assert len(_parse(raw).rules) == 4


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("version: [", "not valid YAML"),
        ("- a\n- b\n", "mapping at the top level"),
        ("just a string", "mapping at the top level"),
        ("", "mapping at the top level, not empty"),
        (
            f'version: "2.0"\ntrust:\n  repositories:\n    "{ORG}": {{mode: off}}\n'
            f'    "{ORG}": {{mode: enforce}}\n',
            "line 5: duplicate key 'registry.example.com/myorg/*' (first on line 4)",
        ),
        ('version: "2.0"\nversion: "2"\n', "line 2: duplicate key 'version' (first on line 1)"),
    ],
    ids=["not-yaml", "list", "scalar", "empty-file", "duplicate-pattern", "duplicate-top-key"],
)
def test_bad_files(text: str, fragment: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_policy(_write(tmp_path, text))
    assert info.value.path == ""
    assert fragment in info.value.message


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    text = 'version: "2.0"\nbase: &base {mode: off}\ntrust: {repositories: {}}\n'
    # "base" is an unknown key: proves the file parsed, and merges are not duplicates below.
    with pytest.raises(ConfigError, match="base: unknown key"):
        load_policy(_write(tmp_path, text))
    text = (f'version: "2.0"\ntrust:\n  repositories:\n    "{ORG}": &r {{mode: off}}\n'
            f'    "registry.example.com/x/*":\n      <<: *r\n      mode: off\n')  # fmt: skip
    assert len(load_policy(_write(tmp_path, text)).rules) == 2


def test_unquoted_off_means_off(tmp_path: Path) -> None:
    text = f'version: "2.0"\ntrust:\n  repositories:\n    "{ORG}":\n      mode: off\n'
    (rule,) = load_policy(_write(tmp_path, text)).rules
    assert rule.mode == "off"


def test_file_too_large(tmp_path: Path) -> None:
    path = _write(tmp_path, "#" * (MAX_POLICY_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than"):
        load_policy(path)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert info.value.path == str(path)
    assert "cannot read" in info.value.message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(b"version: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_policy(path)


def test_root_ca_not_pem(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate")
    raw = _policy({"rootCA": "ca.pem"})
    with pytest.raises(ConfigError) as info:
        _parse(raw, base=tmp_path)
    assert info.value.path == f"{R}.rootCA"
    assert "no PEM certificates" in info.value.message


@pytest.mark.parametrize(
    ("written", "full"),
    [("security-team", "targets/security-team"), ("targets", "targets"),
     ("targets/releases", "targets/releases"), ("a/b_c-1", "targets/a/b_c-1")],
    ids=["short", "targets", "full", "nested"],
)  # fmt: skip
def test_role_names(written: str, full: str) -> None:
    assert role_name(written, "x") == full
