"""The simulator serves what notary-server serves."""

from __future__ import annotations

import hashlib
import json

from tests.simulators.notary_repo import NotaryRepository


def test_server_names() -> None:
    repo = NotaryRepository("registry.example.com:5000/team/app")
    repo.add_delegation("targets/releases")
    repo.publish()
    repo.rotate_root()
    repo.publish()
    assert repo.fetch("1.root.json") != repo.fetch("2.root.json")
    assert repo.fetch("root.json") == repo.fetch("2.root.json")
    assert repo.fetch("root.2.json") is None
    assert repo.fetch("3.root.json") is None
    for role in ("snapshot", "targets", "targets/releases"):
        raw = repo.current[role]
        assert repo.fetch(f"{role}.{hashlib.sha256(raw).hexdigest()}.json") == raw
        assert repo.fetch(f"{role}.json") == raw


def test_wire_format() -> None:
    repo = NotaryRepository()
    repo.add_target("v1", b"m")
    repo.publish()
    doc = json.loads(repo.current["timestamp"])
    assert list(doc) == ["signed", "signatures"]
    assert doc["signed"]["_type"] == "Timestamp"
    assert doc["signed"]["expires"].endswith("123Z")
    assert list(doc["signatures"][0]) == ["keyid", "method", "sig"]
    targets = json.loads(repo.current["targets"])["signed"]
    assert targets["targets"]["v1"]["hashes"]["sha256"].endswith("=")  # base64, not hex
    assert targets["delegations"] == {"keys": {}, "roles": []}
    root = json.loads(repo.current["root"])["signed"]
    assert root["consistent_snapshot"] is False
    (root_key,) = root["roles"]["root"]["keyids"]
    assert root["keys"][root_key]["keytype"] == "ecdsa-x509"
