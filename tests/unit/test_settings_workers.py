"""The settings of several workers and the host's state file (server.workers,
cache.state_dir)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.errors import ConfigError
from proxy.settings import DEFAULT_STATE_DIR, Settings, load_settings, restart_needed


def load(tmp_path: Path, server: dict[str, Any], cache: dict[str, Any] | None = None) -> Settings:
    data: dict[str, Any] = {"server": server, "upstreams": [{"name": "a", "url": "http://a"}]}
    if cache is not None:
        data["cache"] = cache
    path = tmp_path / "trustproxy.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_settings(path)


@pytest.mark.parametrize(
    ("value", "workers"), [(None, None), ("auto", None), (1, 1), (8, 8)], ids=str
)
def test_workers(tmp_path: Path, value: object, workers: int | None) -> None:
    server = {} if value is None else {"workers": value}
    assert load(tmp_path, server).server.workers == workers


@pytest.mark.parametrize(
    ("value", "message"),
    [(0, "must be auto or 1..256"), (257, "must be auto or 1..256"), ("two", "whole number"),
     (True, "whole number"), (-1, "whole number")],
    ids=["zero", "too-many", "word", "bool", "negative"],
)  # fmt: skip
def test_bad_workers(tmp_path: Path, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        load(tmp_path, {"workers": value})
    assert e.value.path == "server.workers"


def test_state_dir_default_relative_and_memory(tmp_path: Path) -> None:
    assert load(tmp_path, {}).cache.state_dir == DEFAULT_STATE_DIR
    relative = load(tmp_path, {}, {"state_dir": "state"}).cache.state_dir
    assert relative == tmp_path / "state"  # relative to the config file, as every path
    assert load(tmp_path, {"workers": 1}, {"state_dir": "memory"}).cache.state_dir is None


@pytest.mark.parametrize("workers", [None, 2], ids=["auto", "two"])
def test_memory_state_needs_one_worker(tmp_path: Path, workers: int | None) -> None:
    server = {} if workers is None else {"workers": workers}
    with pytest.raises(ConfigError, match=r"memory needs server\.workers: 1") as e:
        load(tmp_path, server, {"state_dir": "memory"})
    assert e.value.path == "cache.state_dir"


def test_workers_and_state_dir_need_a_restart(tmp_path: Path) -> None:
    old = load(tmp_path, {"workers": 2}, {"state_dir": "a"})
    new = load(tmp_path, {"workers": 3}, {"state_dir": "b"})
    assert restart_needed(old, new) == ["server.workers", "cache.state_dir"]
    assert restart_needed(old, old) == []
