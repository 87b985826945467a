"""The static source's pure parts: the pins file and its settings section."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.errors import ConfigError
from proxy.policy.loader import parse_policy
from proxy.settings import parse_settings
from proxy.sources.static.entry import StaticVerification
from proxy.sources.static.pins import PinsFormatError, parse_pins

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64


def test_a_pins_file_in_yaml_or_json() -> None:
    doc = {"r.test/app": {"tags": {"v1": D1, "v2": {"digest": D2, "length": 7}}, "digests": [D2]}}
    yaml_pins = parse_pins(yaml.safe_dump({"repositories": doc}).encode(), name="pins.yaml")
    json_pins = parse_pins(json.dumps({"repositories": doc}).encode(), name="pins.json")
    for pins in (yaml_pins, json_pins):
        repo = pins.repositories["r.test/app"]
        assert (repo.tags["v1"].digest, repo.tags["v1"].length) == (D1, None)
        assert (repo.tags["v2"].digest, repo.tags["v2"].length) == (D2, 7)
        assert repo.digests == {D2}
    assert yaml_pins.file_digest != json_pins.file_digest  # the state key is the bytes


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[]", "a mapping with one key"),
        ("repositories: {}\nextra: 1", "a mapping with one key"),
        ("repositories: {r: {tags: {v1: nope}}}", "tags.v1: not a digest"),
        ("repositories: {r: {tags: {v1: {digest: 'sha256:" + "a" * 64 + "', length: -1}}}}",
         "length"),
        ("repositories: {r: {digests: ['md5:00']}}", "digests[0]: not a digest"),
        ("repositories: {r: {tags: [v1]}}", "tags is a mapping"),
        ("repositories: {r: {mirrors: {}}}", "a mapping with tags and/or digests"),
        ("repositories: {r: {tags: {v1: {digest: 'sha256:" + "a" * 64 + "', by: me}}}}",
         "a digest, or a mapping"),
        ("{", "not YAML or JSON"),
    ],
    ids=["list", "extra-key", "bad-digest", "bad-length", "md5", "tags-list", "unknown-key",
         "unknown-pin-key", "not-yaml"],
)  # fmt: skip
def test_anything_malformed_refuses_the_whole_file(text: str, where: str) -> None:
    with pytest.raises(PinsFormatError, match=where.replace("[", r"\[").replace("]", r"\]")):
        parse_pins(text.encode(), name="pins.yaml")


def raw(source: dict[str, Any]) -> dict[str, Any]:
    return {
        "upstreams": [{"name": "r", "url": "http://127.0.0.1:5000"}],
        "trust": {"sources": {"pins": source}},
    }


def test_settings_and_a_policy_rule_over_a_static_source(tmp_path: Path) -> None:
    pins = tmp_path / "pins.yaml"
    pins.write_text("repositories: {}\n", encoding="utf-8")
    settings = parse_settings(raw({"type": "static", "file": "pins.yaml"}), base_dir=tmp_path)
    (src,) = settings.trust.sources
    assert (src.type, src.url) == ("static", pins.resolve().as_uri())
    policy = {"version": "2.0", "trust": {"repositories": {"r.test/**": {"source": "pins"}}}}
    (rule,) = parse_policy(policy, base_dir=tmp_path, known_sources={"pins": "static"}).rules
    assert rule.verification == StaticVerification()
    policy["trust"]["repositories"]["r.test/**"]["trustOnFirstUse"] = True  # type: ignore[index]
    with pytest.raises(ConfigError) as err:  # Notary's keys mean nothing to a pins file
        parse_policy(policy, base_dir=tmp_path, known_sources={"pins": "static"})
    assert err.value.path.endswith(".trustOnFirstUse")


def test_a_static_source_needs_its_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings(raw({"type": "static"}), base_dir=tmp_path)
    assert err.value.path == "trust.sources.pins.file"
