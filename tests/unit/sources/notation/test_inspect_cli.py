"""``trust inspect`` routing: a Notation repository's report, every other one to the type
that registered the command first (the report itself runs against the real registry in
tests/integration/test_notation.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from proxy.sources.notation import inspect_cli


def config(tmp_path: Path) -> Path:
    (tmp_path / "trustpolicy.json").write_text(
        '{"version": "1.0", "trustPolicies": [{"name": "a", "registryScopes": ["*"],'
        ' "signatureVerification": {"level": "skip"}}]}'
    )
    (tmp_path / "truststore").mkdir()
    policy = {
        "version": "2.0",
        "trust": {
            "repositories": {
                "r.test/signed/**": {"source": "notation"},
                "r.test/dct/**": {"source": "dct", "trustOnFirstUse": True},
            }
        },
    }
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    main = {
        "upstreams": [{"name": "r", "url": "http://127.0.0.1:5000", "registry": "r.test"}],
        "trust": {
            "sources": {
                "notation": {"type": "notation", "trust_policy": "trustpolicy.json",
                             "trust_store": "truststore"},
                "dct": {"type": "notary", "url": "https://127.0.0.1:4443"},
            }
        },
        "policy_file": "policy.yaml",
    }  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(main))
    return tmp_path / "config.yaml"


def args(path: Path, image: str, **extra: object) -> argparse.Namespace:
    return argparse.Namespace(config=path, image=image, source=None, trust_server=None, **extra)


def test_the_rule_or_source_decides_which_report(tmp_path: Path) -> None:
    path = config(tmp_path)
    found = inspect_cli.notation_source_for(args(path, "r.test/signed/app:v1"))
    assert found is not None
    assert found.name == "notation"
    assert inspect_cli.notation_source_for(args(path, "r.test/dct/app:v1")) is None
    named = args(path, "r.test/dct/app:v1")
    named.source = "notation"
    assert inspect_cli.notation_source_for(named) is not None
    server = args(path, "r.test/signed/app:v1")
    server.trust_server = "https://notary.example"
    assert inspect_cli.notation_source_for(server) is None
    assert inspect_cli.notation_source_for(args(tmp_path / "none.yaml", "r.test/x:v1")) is None


def test_alone_it_registers_the_command() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    inspect_cli.add_cli(sub)
    parsed = parser.parse_args(["inspect", "r.test/a:v1", "--json"])
    assert parsed.handler is inspect_cli.cmd_notation_inspect


def test_beside_another_type_it_routes(tmp_path: Path) -> None:
    calls: list[str] = []
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    other = sub.add_parser("inspect")
    other.add_argument("image")
    other.add_argument("--config", type=Path)
    for flag in ("--source", "--trust-server"):
        other.add_argument(flag)
    other.add_argument("--json", action="store_true")

    def handler(a: argparse.Namespace) -> int:
        calls.append(a.image)
        return 7

    other.set_defaults(handler=handler)
    inspect_cli.add_cli(sub)
    path = str(config(tmp_path))
    parsed = parser.parse_args(["inspect", "--config", path, "r.test/dct/app:v1"])
    assert parsed.handler(parsed) == 7
    assert calls == ["r.test/dct/app:v1"]
    parsed = parser.parse_args(["inspect", "--config", path, "r.test/signed/app"])
    assert parsed.handler(parsed) == 1  # routed here: no tag, so an error (exit 1)
    assert calls == ["r.test/dct/app:v1"]


def test_the_report_as_text() -> None:
    report = {
        "repository": "r.test/a", "tag": "v1", "digest": "sha256:" + "a" * 64,
        "source": "notation", "trust_policy": "p", "policy": ["level strict"],
        "acceptable": False,
        "signatures": [
            {"signature_manifest": "sha256:" + "b" * 64, "envelope_media_type": "",
             "passed": False, "reason": "integrity validation failed: x", "checks": [],
             "signer_subject": "", "cert_fingerprint": "", "trust_store": "",
             "timestamp": None},
        ],
    }  # fmt: skip
    text = inspect_cli._format(report)
    assert "REFUSED: integrity validation failed: x" in text
    assert text.endswith("NOT acceptable\n")
