"""proxy.sources.registry: settings and enforcement find a source's code through its type."""

from __future__ import annotations

import types
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from proxy.decisions import NullRecorder
from proxy.enforcement.build import build_enforcement
from proxy.errors import ConfigError
from proxy.policy.loader import parse_policy
from proxy.policy.model import Policy
from proxy.settings import (
    CacheSettings,
    ConfigSection,
    LimitSettings,
    TrustSourceSettings,
    parse_settings,
    parse_url,
)
from proxy.sources import registry
from proxy.sources.base import TrustSource
from proxy.sources.registry import SourceType, source_type, source_type_names
from proxy.sources.store import TrustStateStore


def raw_config(source: dict[str, Any]) -> dict[str, Any]:
    return {
        "upstreams": [{"name": "r", "url": "http://127.0.0.1:5000"}],
        "trust": {"sources": {"s1": source}},
    }


def test_every_registered_type_loads_under_its_own_name() -> None:
    assert source_type_names()[0] == "notary"  # the first entry
    for name in source_type_names():
        entry = source_type(name)
        assert entry.name == name
        assert entry.title


def test_unknown_type_is_refused_with_its_key_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings(raw_config({"type": "nope", "url": "https://x"}), base_dir=tmp_path)
    assert err.value.path == "trust.sources.s1.type"
    assert "must be one of notary" in err.value.message


def test_unknown_key_of_a_type_is_refused_with_its_key_path(tmp_path: Path) -> None:
    raw = raw_config({"type": "notary", "url": "https://x", "rootKeys": []})
    with pytest.raises(ConfigError) as err:
        parse_settings(raw, base_dir=tmp_path)
    assert err.value.path.startswith("trust.sources.s1.rootKeys")


class _Built:
    def __init__(self, name: str) -> None:
        self.name = name

    async def aclose(self) -> None:
        return None


@pytest.fixture
def fake_type(monkeypatch: pytest.MonkeyPatch) -> list[TrustSourceSettings]:
    """A second type, ``fake``, registered the way a new package would be."""
    built: list[TrustSourceSettings] = []

    def parse(s: ConfigSection, name: str, warnings: list[str]) -> TrustSourceSettings:
        url = s.required("url", parse_url)
        s.finish()
        return TrustSourceSettings(name, "fake", url)

    def build(
        settings: TrustSourceSettings,
        limits: LimitSettings,
        store: TrustStateStore,
        *,
        clock: Callable[[], datetime],
        cache: CacheSettings,
    ) -> TrustSource:
        built.append(settings)
        return _Built(settings.name)  # type: ignore[return-value]  # build is all it needs

    module = types.ModuleType("fake_source_entry")
    module.SOURCE_TYPE = SourceType("fake", "a fake", parse, (), lambda _n, _m, _c: None, build)  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__("sys").modules, "fake_source_entry", module)
    monkeypatch.setitem(registry.SOURCE_TYPES, "fake", "fake_source_entry")
    monkeypatch.setattr(registry, "_loaded", {})
    return built


def test_a_new_type_is_one_entry_settings_and_building_ask_it(
    tmp_path: Path, fake_type: list[TrustSourceSettings]
) -> None:
    settings = parse_settings(
        raw_config({"type": "fake", "url": "https://fake.test"}), base_dir=tmp_path
    )
    (src,) = settings.trust.sources
    assert (src.name, src.type, src.url) == ("s1", "fake", "https://fake.test")
    enforcement = build_enforcement(settings, Policy(rules=()), recorder=NullRecorder())
    assert [s.name for s in fake_type] == ["s1"]
    assert enforcement.sources["s1"].name == "s1"


def test_an_entry_naming_another_type_is_a_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("wrong_entry")
    module.SOURCE_TYPE = source_type("notary")  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__("sys").modules, "wrong_entry", module)
    monkeypatch.setitem(registry.SOURCE_TYPES, "other", "wrong_entry")
    monkeypatch.setattr(registry, "_loaded", {})
    with pytest.raises(RuntimeError, match="does not describe 'other'"):
        source_type("other")


POLICY = {
    "version": "2.0",
    "trust": {"repositories": {"r.test/**": {"source": "s1", "rootKeys": ["a" * 64]}}},
}


def test_a_rules_verification_keys_are_its_source_types(
    tmp_path: Path, fake_type: list[TrustSourceSettings]
) -> None:
    """The same rule is a Notary rule under a notary source and refused under a type that
    has no ``rootKeys`` (the unknown-key error names the key path and that type's keys)."""
    (rule,) = parse_policy(POLICY, base_dir=tmp_path, known_sources={"s1": "notary"}).rules
    assert rule.verification is not None
    assert rule.verification.summary() == ["pinned root keys", "Docker's rule"]
    with pytest.raises(ConfigError) as err:
        parse_policy(POLICY, base_dir=tmp_path, known_sources={"s1": "fake"})
    assert err.value.path == "trust.repositories['r.test/**'].rootKeys"
    assert "known keys: requireSignatures, mode, source, allow, digests" in err.value.message


def test_names_only_read_rules_as_the_first_type(tmp_path: Path) -> None:
    """Policy files checked without a config (or with names only) mean what they meant
    before there were several types: Notary v1 rules."""
    (rule,) = parse_policy(POLICY, base_dir=tmp_path, known_sources=["s1"]).rules
    assert rule.verification is not None
    assert rule.verification.explain()[0].startswith("root of trust: pinned root keys")
