"""`trust inspect`: image references, flags, and the report over a simulated repository."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from proxy.cli import _UsageError, main, parse_image
from proxy.sources.notary.inspect_report import build_report, format_compact, format_pretty
from proxy.sources.notary.rules import SigningRule
from proxy.sources.notary.tuf import PinnedRootKeys, RoleRequirement, TrustedSet, TrustOnFirstUse
from tests.simulators.notary_repo import NotaryRepository
from tests.unit.sources.sim import GUN, SIM_TIME


@pytest.mark.parametrize(
    ("ref", "gun", "tag"),
    [
        ("alpine", "docker.io/library/alpine", None),
        ("alpine:3.20", "docker.io/library/alpine", "3.20"),
        ("docker.io/library/alpine:3", "docker.io/library/alpine", "3"),
        ("index.docker.io/team/app", "docker.io/team/app", None),
        ("team/app:v1", "docker.io/team/app", "v1"),
        ("registry.example:5000/team/app", "registry.example:5000/team/app", None),
        ("registry.example:5000/team/app:v1", "registry.example:5000/team/app", "v1"),
        ("localhost/app:x", "localhost/app", "x"),
    ],
)
def test_parse_image(ref: str, gun: str, tag: str | None) -> None:
    assert parse_image(ref) == (gun, tag)


@pytest.mark.parametrize("ref", ["a/b@sha256:" + "0" * 64, "a.b/Upper", "a.b/c:bad tag", "a.b/c:"])
def test_parse_image_refuses(ref: str) -> None:
    with pytest.raises(_UsageError):
        parse_image(ref)


@pytest.mark.parametrize(
    "args",
    [
        ["--tofu", "--root-key", "ab"],
        ["--root-key", "ab", "--root-cert", "cd"],
        ["--require-role", "releases"],
        ["--require-role", "targets/releases:x"],
        ["--require-role", "targets/releases:0"],
        ["--ca-file", "ca.pem", "--config", "x.yaml"],
        ["--json", "--pretty"],
        ["--source", "a", "--trust-server", "https://n.example"],
        ["--trust-server", "ftp://n.example"],
    ],
)
def test_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(["trust", "inspect", *args, "a.b/c:v1"])
    except SystemExit as e:  # argparse's own usage errors
        code = int(e.code or 0)
    assert code == 2
    assert capsys.readouterr().err


def test_missing_config_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trust", "inspect", "--config", str(tmp_path / "no.yaml"), "a.b/c"]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_config_without_notary_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "server:\n  listen: 127.0.0.1:8443\nupstreams:\n  - name: a\n"
        "    url: http://127.0.0.1:5000\n    registry: 127.0.0.1:5000\n"
    )
    assert main(["trust", "inspect", "--config", str(cfg), "a.b/c"]) == 2
    assert "no notary source" in capsys.readouterr().err


M1, M2, M3 = b"one", b"two", b"three"


def d(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def loaded(repo: NotaryRepository, rule: SigningRule) -> TrustedSet:
    from proxy.sources.notary.tuf import refresh

    ts = TrustedSet(
        repo.root_bytes(), gun=repo.gun, root_of_trust=rule.root_of_trust, reference_time=SIM_TIME
    )
    refresh(ts, repo.fetch)
    return ts


def sim_repo() -> NotaryRepository:
    repo = NotaryRepository(GUN)
    keys = repo.add_delegation("targets/releases")
    repo.add_delegation("targets/alice", keys)  # docker trust signer add alice
    repo.add_delegation("targets/qa")
    repo.add_target("v1", M1)
    repo.add_target("v1", M2, role="targets/releases")
    repo.add_target("qa-build", M3, role="targets/qa")
    repo.publish()
    return repo


def test_report_docker_rule() -> None:
    repo = sim_repo()
    rule = SigningRule(TrustOnFirstUse())
    ts = loaded(repo, rule)
    r = build_report(ts, gun=GUN, source="s", server="https://n", rule=rule, tag="v1")
    assert r["signed_tags"] == [
        {
            "tag": "v1",
            "digest": d(M2),
            "length": len(M2),
            "role": "targets/releases",
            "key_ids": [repo.delegations["targets/releases"].keys[0].key_id],
        }
    ]
    q = r["query"]
    assert q["acceptable"]
    assert "releases wins" in q["reason"]
    assert q["signers"] == ["alice"]  # named by the role that shares the key, as docker does
    qa = next(t for t in r["tags"] if t["tag"] == "qa-build")
    assert not qa["acceptable"]
    assert "signed only in targets/qa" in qa["reason"]
    root_key = repo.roles["root"].keys[0]
    assert r["root"]["keys"][0]["canonical_key_id"] == root_key.canonical_id
    pretty = format_pretty(r)
    assert f"Root Key:\t{root_key.canonical_id[:12]}" in pretty
    assert "alice" in pretty
    assert "TRUST ON FIRST USE" in pretty
    compact = format_compact(r)
    assert compact.startswith("v1: acceptable: " + d(M2))
    assert "qa-build\tNOT acceptable" in compact


def test_report_required_roles_and_pinned_root() -> None:
    repo = sim_repo()
    pinned = PinnedRootKeys([repo.roles["root"].keys[0].canonical_id])
    rule = SigningRule(pinned, (RoleRequirement("targets/qa"),))
    ts = loaded(repo, rule)
    r = build_report(ts, gun=GUN, source="s", server="https://n", rule=rule, tag="qa-build")
    assert r["query"]["acceptable"]
    assert [t["tag"] for t in r["acceptable_tags"]] == ["qa-build"]
    assert [t["tag"] for t in r["signed_tags"]] == ["v1"]  # always Docker's rule
    assert r["root_of_trust"]["pinned"] is True
    assert r["warnings"] == []
    assert "required roles targets/qa:1" in format_pretty(r)
