"""The example configs in config/ stay valid, their policies load against them, and the
minimal one runs as is."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.policy.loader import load_policy
from proxy.policy.model import Policy
from proxy.settings import Settings, load_settings
from proxy.sources.notary.tuf import PinnedRootKeys, RootCA, TrustOnFirstUse
from testbed.processes import free_port
from testbed.tls import self_signed_certificate
from tests.unit.notary_rules import notary

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
# Main configs; the policy examples (policy*.yaml) are checked by tests/unit/policy.
EXAMPLES = sorted(p for p in CONFIG_DIR.glob("*.yaml") if not p.name.startswith("policy"))


def test_there_are_examples_for_each_use() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"trustproxy.yaml", "docker-hub.yaml", "internal-registry.yaml",
            "local-demo.yaml", "audit-first.yaml"} <= names  # fmt: skip


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_valid(path: Path) -> None:
    settings = load_settings(path, {}, check_files=False)
    assert settings.upstreams


def test_minimal_example_loads_with_relative_paths_resolved() -> None:
    settings = load_settings(CONFIG_DIR / "trustproxy.yaml", {})
    (source,) = settings.trust.sources
    assert source.ca_file == CONFIG_DIR / "notary-ca.crt"
    assert settings.policy_file == CONFIG_DIR / "policy.yaml"
    assert settings.cache.redis_url is None


def test_minimal_example_runs_as_is() -> None:
    port = free_port()
    env = dict(os.environ, TRUSTPROXY_SERVER__LISTEN=f"127.0.0.1:{port}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--config", str(CONFIG_DIR / "trustproxy.yaml")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.communicate()[0].decode()
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "proxy did not start"
                time.sleep(0.1)
        assert r.status_code == 200
    finally:
        proc.terminate()
        output = proc.communicate(timeout=10)[0].decode()
    assert "trustproxy listening" in output


# ------------------------------------------------------------------ policies of the examples

# Main configs whose policy_file ships in config/ (local-demo's is written by `make demo`).
WITH_POLICY = [p for p in EXAMPLES if p.name != "local-demo.yaml"]
POLICIES = sorted(CONFIG_DIR.glob("policy*.yaml"))


def _settings(path: Path) -> Settings:
    return load_settings(path, {}, check_files=False)


def _load_policy_for(policy_file: Path, settings: Settings | None, tmp_path: Path) -> Policy:
    """load_policy against the config's source names. `rootCA` files belong to the machine
    that runs the proxy: a copy of the policy gets a throwaway CA at each such path."""
    raw = yaml.safe_load(policy_file.read_text(encoding="utf-8"))
    ca_files = [rule["rootCA"] for rule in (raw["trust"]["repositories"] or {}).values()
                if isinstance(rule, dict) and "rootCA" in rule]  # fmt: skip
    if ca_files:
        tmp_path.mkdir(parents=True, exist_ok=True)
        copy = tmp_path / policy_file.name
        copy.write_bytes(policy_file.read_bytes())
        cert = self_signed_certificate(ec.generate_private_key(ec.SECP256R1()), "CA", ca=True)
        for name in ca_files:
            assert not Path(name).is_absolute(), "example rootCA paths are relative"
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        policy_file = copy
    # Name -> type, as the proxy loads it (a rule's keys depend on its source's type).
    sources = None if settings is None else {s.name: s.type for s in settings.trust.sources}
    return load_policy(policy_file, known_sources=sources)


@pytest.mark.parametrize("path", WITH_POLICY, ids=[p.name for p in WITH_POLICY])
def test_example_policy_loads_against_its_config(path: Path, tmp_path: Path) -> None:
    settings = _settings(path)
    assert settings.policy_file is not None
    assert settings.policy_file.parent == CONFIG_DIR, "the policy ships next to the config"
    policy = _load_policy_for(settings.policy_file, settings, tmp_path)
    registries = {u.registry for u in settings.upstreams}
    patterns = [r.pattern for r in policy.rules]
    # Every rule names one of the config's registries (else it never applies) and every
    # registry is covered by a rule (else everything from it is refused, unnoticed).
    for pattern in patterns:
        assert pattern == "*" or pattern.split("/", 1)[0] in registries, pattern
    for registry in registries:
        assert "*" in patterns or any(p.startswith(f"{registry}/") for p in patterns), registry


def test_every_shipped_policy_is_used_or_loads_on_its_own(tmp_path: Path) -> None:
    used = {_settings(p).policy_file: p for p in WITH_POLICY}
    for policy_file in POLICIES:
        config = used.get(policy_file)
        settings = None if config is None else _settings(config)
        _load_policy_for(policy_file, settings, tmp_path / policy_file.stem)
    assert {CONFIG_DIR / n for n in ("policy-docker-hub.yaml", "policy-internal.yaml",
                                     "policy-audit-first.yaml")} <= set(used)  # fmt: skip


def test_docker_hub_front_enforces_pinned_official_images_and_refuses_the_rest(
    tmp_path: Path,
) -> None:
    settings = _settings(CONFIG_DIR / "docker-hub.yaml")
    assert [u.registry for u in settings.upstreams] == ["docker.io"]
    assert settings.policy_file is not None
    policy = _load_policy_for(settings.policy_file, settings, tmp_path)
    assert policy.rules
    assert all(r.pattern.startswith("docker.io/library/") for r in policy.rules)
    assert all(r.mode == "enforce" and isinstance(notary(r).root_of_trust, PinnedRootKeys)
               for r in policy.rules)  # fmt: skip
    assert "*" not in [r.pattern for r in policy.rules]  # everything else is refused
    assert not policy.warnings


def test_internal_registry_enforces_everything_with_signers(tmp_path: Path) -> None:
    settings = _settings(CONFIG_DIR / "internal-registry.yaml")
    assert settings.policy_file is not None
    policy = _load_policy_for(settings.policy_file, settings, tmp_path)
    assert {type(notary(r).root_of_trust) for r in policy.rules} == {RootCA, PinnedRootKeys}
    for rule in policy.rules:
        assert rule.mode == "enforce"
        assert notary(rule).signers
        assert all(s.required for s in notary(rule).signers)
        assert rule.digests == "signed"
    assert not policy.warnings
    assert settings.server.client_auth.client_ca_file is not None  # nodes need mTLS


def test_audit_first_audits_everything_to_a_file(tmp_path: Path) -> None:
    settings = _settings(CONFIG_DIR / "audit-first.yaml")
    assert settings.audit.sink == "file"
    assert settings.audit.path is not None
    assert settings.policy_file is not None
    policy = _load_policy_for(settings.policy_file, settings, tmp_path)
    assert policy.rules
    assert {r.mode for r in policy.rules} == {"audit"}
    assert {r.source for r in policy.rules} == {s.name for s in settings.trust.sources}
    # Trust on first use is only acceptable because audit refuses nothing; it is warned.
    assert all(isinstance(notary(r).root_of_trust, TrustOnFirstUse) for r in policy.rules)
    assert len(policy.warnings) == len(policy.rules)


def test_notation_example_reads_notations_own_files(tmp_path: Path) -> None:
    """notation.yaml: its trustpolicy.json is a valid Notation document (checked at load);
    the trust store folder is the operator's (missing here: a warning, not an error)."""
    settings = load_settings(CONFIG_DIR / "notation.yaml", {})
    (source,) = settings.trust.sources
    assert source.type == "notation"
    assert any("truststore" in w for w in settings.warnings)
    assert settings.policy_file is not None
    policy = _load_policy_for(settings.policy_file, settings, tmp_path)
    assert {r.source for r in policy.rules} == {"notation"}
    assert not policy.warnings
