"""``trustproxy trust snapshot verify|inspect|export``: exit codes and what they print
(export against real servers: tests/integration/test_trust_snapshot.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from proxy.cli import main
from proxy.sources.static.snapshot import (
    SnapshotRepository,
    SnapshotTag,
    sign_snapshot,
    statement_bytes,
)
from proxy.sources.static.snapshot_keys import SigningKey, load_private_key

REG = "registry.example.com"
REPO = f"{REG}/team/app"
DIGEST = "sha256:" + "a" * 64


def _key(folder: Path, name: str) -> tuple[SigningKey, Path, Path]:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key = load_private_key(pem)
    priv, pub = folder / f"{name}.key", folder / f"{name}.pub"
    priv.write_bytes(pem)
    pub.write_bytes(key.public.pem)
    return key, priv, pub


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path, Path]:
    key, _, pub = _key(tmp_path, "signer")
    _, _, other = _key(tmp_path, "other")
    tag = SnapshotTag("v1", DIGEST, 10, ("targets",), "2026-12-01T00:00:00Z", {})
    repo = SnapshotRepository(
        REPO, "notary", "notary", "2026-12-01T00:00:00Z", {}, {"v1": tag}, frozenset()
    )
    snap = tmp_path / "snap.json"
    snap.write_bytes(sign_snapshot(statement_bytes([repo], datetime(2026, 12, 1, tzinfo=UTC)), key))
    return snap, pub, other


def test_verify(files: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    snap, pub, other = files
    assert main(["trust", "snapshot", "verify", str(snap), "--key", str(pub)]) == 0
    assert "OK: signed by" in capsys.readouterr().out
    assert main(["trust", "snapshot", "verify", str(snap), "--key", str(other)]) == 1
    assert "not signed by a pinned key" in capsys.readouterr().err
    args = ["trust", "snapshot", "verify", str(snap), "--key", str(pub), "--registry", "other.io"]
    assert main(args) == 1
    assert f"a snapshot of {REG}" in capsys.readouterr().err
    assert main(["trust", "snapshot", "verify", str(snap) + ".missing", "--key", str(pub)]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_inspect(files: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    snap, pub, other = files
    assert main(["trust", "snapshot", "inspect", str(snap)]) == 0
    out = capsys.readouterr().out
    assert "signature NOT checked" in out
    assert DIGEST in out
    assert main(["trust", "snapshot", "inspect", str(snap), "--key", str(pub), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["repositories"][REPO]["tags"]["v1"]["digest"] == DIGEST
    assert doc["signature"].startswith("signature verified")
    assert main(["trust", "snapshot", "inspect", str(snap), "--key", str(other)]) == 1


def test_export_refuses_keys_it_cannot_sign_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rsa_pem = rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "rsa.key").write_bytes(rsa_pem)
    base = [
        "trust",
        "snapshot",
        "export",
        "--config",
        str(tmp_path / "c.yaml"),
        "-o",
        str(tmp_path / "out.json"),
    ]
    assert main([*base, "--key", str(tmp_path / "rsa.key")]) == 2
    assert "use ECDSA P-256 or ed25519" in capsys.readouterr().err
    assert main([*base, "--key", str(tmp_path / "none.key")]) == 2
    assert "cannot read" in capsys.readouterr().err
    _, priv, _ = _key(tmp_path, "ok")
    assert main([*base, "--key", str(priv), "--key-password-env", "NO_SUCH_VARIABLE_X"]) == 2
    assert not (tmp_path / "out.json").exists()


def test_export_needs_a_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, priv, _ = _key(tmp_path, "ok")
    config = tmp_path / "c.yaml"
    config.write_text(
        "upstreams: [{name: u, url: 'http://127.0.0.1:9', registry: '127.0.0.1:9'}]\n"
    )
    args = [
        "trust",
        "snapshot",
        "export",
        "--config",
        str(config),
        "--key",
        str(priv),
        "-o",
        str(tmp_path / "out.json"),
        "--repos",
        "127.0.0.1:9/team/app",
    ]
    assert main(args) == 1
    assert "no policy_file" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


def test_export_from_a_pins_source_in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Export drives the rule's source as serve does (here a pins file: no server needed),
    keeps only tags the rule allows, lists repositories without data, and writes a snapshot
    that verifies with the public key."""
    key, priv, pub = _key(tmp_path, "ok")
    other = "sha256:" + "b" * 64
    (tmp_path / "pins.yaml").write_text(
        f"repositories:\n  {REPO}:\n    tags:\n      v1: {{digest: '{DIGEST}', length: 7}}\n"
        f"      dev: '{other}'\n    digests: ['{other}']\n"
    )
    (tmp_path / "policy.yaml").write_text(
        f'version: "2.0"\ntrust:\n  repositories:\n    "{REG}/**":\n'
        "      allow: {paths: ['v*']}\n"
    )
    config = tmp_path / "c.yaml"
    config.write_text(
        f"upstreams: [{{name: u, url: 'http://{REG}', registry: '{REG}'}}]\n"
        "trust: {sources: {pins: {type: static, file: pins.yaml}}}\npolicy_file: policy.yaml\n"
    )
    out = tmp_path / "out.json"
    args = [
        "trust",
        "snapshot",
        "export",
        "--config",
        str(config),
        "--key",
        str(priv),
        "-o",
        str(out),
        "--repos",
        REPO,
        f"{REG}/team/none",
    ]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "1 repository, 1 tag" in captured.out
    assert f"left out: {REG}/team/none" in captured.err
    assert main(["trust", "snapshot", "inspect", str(out), "--key", str(pub), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    repo = doc["repositories"][REPO]
    assert repo["source"] == "pins"
    assert repo["source_type"] == "static"
    assert repo["tags"] == {
        "v1": {
            "digest": DIGEST,
            "length": 7,
            "signers": ["pinned in pins.yaml"],
            "verified_at": repo["verified_at"],
        }
    }
    assert repo["digests"] == [other]
    assert key.public.key_id in doc["signature"]
