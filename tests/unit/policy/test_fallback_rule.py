"""``fallback: <source>`` in a policy rule: a source that is its own authority (a signed
trust snapshot, ``type: static``), other than the rule's, configured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.errors import ConfigError
from proxy.policy.explain import explain
from proxy.policy.loader import parse_policy
from proxy.sources.static.entry import StaticVerification

ORG = "registry.example.com/myorg/**"
R = f"trust.repositories[{ORG!r}]"
TYPES = {"notary": "notary", "archive": "static", "other-notary": "notary"}


def _rule(**extra: Any) -> dict[str, Any]:
    return {
        "version": "2.0",
        "trust": {"repositories": {ORG: {"source": "notary", "rootKeys": ["a" * 64], **extra}}},
    }


def _parse(raw: Any, known: Any = TYPES) -> Any:
    return parse_policy(raw, base_dir=Path("/"), known_sources=known)


def test_fallback_names_a_snapshot_source() -> None:
    (rule,) = _parse(_rule(fallback="archive")).rules
    assert rule.fallback == "archive"
    assert rule.fallback_verification == StaticVerification()
    lines = explain(_parse(_rule(fallback="archive")), "registry.example.com/myorg/app", None)
    assert any(line.startswith("fallback: archive") for line in lines)


def test_without_the_config_the_name_is_kept_unchecked() -> None:
    (rule,) = _parse(_rule(fallback="archive"), known=None).rules
    assert (rule.fallback, rule.fallback_verification) == ("archive", None)


@pytest.mark.parametrize(
    ("fallback", "message"),
    [
        ("notary", "is the rule's own source"),
        ("nowhere", "unknown trust source 'nowhere'"),
        ("other-notary", "a fallback must be a source that is its own authority"),
        (["archive"], "must be a string"),
    ],
    ids=["itself", "unknown", "needs-keys", "not-a-name"],
)
def test_bad_fallbacks(fallback: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _parse(_rule(fallback=fallback))
    assert info.value.path == f"{R}.fallback"
    assert message in info.value.message


def test_fallback_under_mode_off_warns() -> None:
    raw = {
        "version": "2.0",
        "trust": {
            "repositories": {ORG: {"source": "notary", "mode": "off", "fallback": "archive"}}
        },
    }
    assert any("never asked" in w for w in _parse(raw).warnings)
