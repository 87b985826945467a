"""``trustproxy trust inspect`` against the real notary bed: JSON contract, exit codes,
pretty output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from proxy.cli import main
from testbed.notary_server import NotaryBed
from testbed.trust_scenarios import Scenario

pytestmark = pytest.mark.integration

LIVE = ["targets", "releases", "both-roles", "qa-only", "root-rotation", "targets-rotation",
        "revoked"]  # fmt: skip


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("TRUSTPROXY_"):
            monkeypatch.delenv(name)


def server_args(bed: NotaryBed) -> list[str]:
    return ["--trust-server", bed.url, "--ca-file", str(bed.ca_file)]


def inspect(capsys: pytest.CaptureFixture[str], bed: NotaryBed, *args: str) -> tuple[int, str, str]:
    code = main(["trust", "inspect", *server_args(bed), *args])
    out, err = capsys.readouterr()
    return code, out, err


def as_json(out: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(out)
    return doc


@pytest.mark.parametrize("name", LIVE)
def test_json_signed_tags_match_docker(
    name: str,
    notary_bed: NotaryBed,
    notary_bed_scenarios: dict[str, Scenario],
    capsys: pytest.CaptureFixture[str],
) -> None:
    sc = notary_bed_scenarios[name]
    code, out, err = inspect(capsys, notary_bed, "--json", sc.gun)
    assert code == 0, err
    doc = as_json(out)
    assert doc["gun"] == sc.gun
    assert doc["verified"] is True
    assert sorted(doc["signed_tags"], key=lambda t: t["tag"]) == [
        {
            "tag": tag,
            "digest": f"sha256:{e.sha256}",
            "length": e.length,
            "role": e.role,
            "key_ids": doc_key_ids(doc, tag),
        }
        for tag, e in sorted(sc.expected.items())
    ]
    assert all(t["key_ids"] for t in doc["signed_tags"])
    assert sc.keys is not None
    assert [k["key_id"] for k in doc["root"]["keys"]] == list(sc.keys.root)
    assert [k["canonical_key_id"] for k in doc["root"]["keys"]] == list(sc.keys.root_canonical)
    assert doc["repository_keys"]["key_ids"] == list(sc.keys.targets)
    assert "trust on first use: the root is NOT pinned" in err
    for tag, e in sc.expected.items():
        code, out, _ = inspect(capsys, notary_bed, "--json", f"{sc.gun}:{tag}")
        assert code == 0
        q = as_json(out)["query"]
        assert (q["acceptable"], q["digest"], q["role"]) == (True, f"sha256:{e.sha256}", e.role)
    for tag in sc.unacceptable:
        code, out, _ = inspect(capsys, notary_bed, "--json", f"{sc.gun}:{tag}")
        assert code == 1
        assert as_json(out)["query"]["acceptable"] is False


def doc_key_ids(doc: dict[str, Any], tag: str) -> list[str]:
    return next(t["key_ids"] for t in doc["signed_tags"] if t["tag"] == tag)


def test_qa_only_explains_why(
    notary_bed: NotaryBed,
    notary_bed_scenarios: dict[str, Scenario],
    capsys: pytest.CaptureFixture[str],
) -> None:
    sc = notary_bed_scenarios["qa-only"]
    code, out, _ = inspect(capsys, notary_bed, f"{sc.gun}:qa-build")
    assert code == 1
    assert "qa-build: NOT acceptable" in out
    assert "targets/qa" in out
    # the qa role satisfies a required-roles rule
    code, out, _ = inspect(
        capsys, notary_bed, "--require-role", "targets/qa:1", f"{sc.gun}:qa-build"
    )
    assert code == 0, out
    assert "qa-build: acceptable" in out


def test_pretty_shows_signers_and_root_key(
    notary_bed: NotaryBed,
    notary_bed_scenarios: dict[str, Scenario],
    capsys: pytest.CaptureFixture[str],
) -> None:
    sc = notary_bed_scenarios["releases"]
    assert sc.keys is not None
    code, out, _ = inspect(capsys, notary_bed, "--pretty", sc.gun)
    assert code == 0
    assert f"Signatures for {sc.gun}" in out
    assert f"List of signers and their keys for {sc.gun}" in out
    assert f"Root Key:\t{sc.keys.root_canonical[0][:12]}" in out
    assert f"Repository Key:\t{sc.keys.targets[0][:12]}" in out
    for key in sc.delegation_keys.values():
        assert key.key_id[:12] in out
    for tag, e in sc.expected.items():
        assert any(line.startswith(tag) and e.sha256 in line for line in out.splitlines())


def test_pinned_root_key(
    notary_bed: NotaryBed,
    notary_bed_scenarios: dict[str, Scenario],
    capsys: pytest.CaptureFixture[str],
) -> None:
    sc = notary_bed_scenarios["root-rotation"]
    other = notary_bed_scenarios["targets"]
    assert sc.keys is not None
    assert other.keys is not None
    code, out, err = inspect(
        capsys, notary_bed, "--root-key", sc.keys.root_canonical[0], f"{sc.gun}:v2"
    )
    assert code == 0, err
    assert "NOT pinned" not in err + out
    code, out, err = inspect(
        capsys, notary_bed, "--json", "--root-key", other.keys.root_canonical[0], sc.gun
    )
    assert code == 1
    assert as_json(out)["error"]["kind"] == "verification-failed"
    assert "failed verification" in err


def test_deleted_repository(
    notary_bed: NotaryBed,
    notary_bed_scenarios: dict[str, Scenario],
    capsys: pytest.CaptureFixture[str],
) -> None:
    sc = notary_bed_scenarios["deleted"]
    code, out, err = inspect(capsys, notary_bed, "--json", f"{sc.gun}:v1")
    assert code == 1
    assert f"does not have trust data for {sc.gun}" in err
    doc = as_json(out)
    assert doc["error"]["kind"] == "no-trust-data"
    assert doc["signed_tags"] == []
    code, _, _ = inspect(capsys, notary_bed, sc.gun)
    assert code == 1


def test_source_from_config(
    notary_bed: NotaryBed,
    notary_bed_scenarios: dict[str, Scenario],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    sc = notary_bed_scenarios["targets"]
    config = tmp_path / "trustproxy.yaml"
    config.write_text(
        "server:\n  listen: 127.0.0.1:8443\n"
        "upstreams:\n  - name: internal\n    url: http://127.0.0.1:5000\n"
        "    registry: 127.0.0.1:5000\n"
        f"trust:\n  sources:\n    bed:\n      type: notary\n      url: {notary_bed.url}\n"
        f"      ca_file: {notary_bed.ca_file}\n"
    )
    code = main(["trust", "inspect", "--config", str(config), "--json", f"{sc.gun}:v1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert as_json(out)["source"] == "bed"
    code = main(["trust", "inspect", "--config", str(config), "--source", "nope", sc.gun])
    assert code == 2
    assert "no notary source named 'nope'" in capsys.readouterr().err


def test_unreachable_server(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from testbed.processes import free_port

    code = main(
        ["trust", "inspect", "--trust-server", f"https://127.0.0.1:{free_port()}", "a.b/c:v1"]
    )
    assert code == 1
    assert "unreachable" in capsys.readouterr().err
