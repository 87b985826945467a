"""Test doubles for the enforcement tests: a scripted trust source, a recording recorder,
a tiny stand-in matcher (the real one is ``proxy.policy.matcher``), and the real app over
the fake registry of ``tests/unit/test_handlers.py``."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

import httpx
from starlette.exceptions import StarletteDeprecationWarning

from proxy.decisions import Decision
from proxy.enforcement.enforcing_gate import EnforcingGate
from proxy.errors import TrustproxyError
from proxy.http.app import create_app
from proxy.policy.model import Mode, Policy, RepositoryRule
from proxy.sources.base import RegistryReads, SignedState, TrustInfo
from proxy.sources.notary.policy import NotaryVerification, SignerRequirement
from proxy.sources.notary.rules import NotSignedByError, SigningRule
from proxy.sources.notary.source import trust_info_of
from proxy.sources.notary.tuf import SignedTarget, TrustOnFirstUse
from proxy.trust_gate import TrustGate
from tests.unit.test_handlers import REPO, FakeRegistry, make_settings

with warnings.catch_warnings():
    # As in test_handlers: Starlette 1.x prefers httpx2 for its TestClient.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

GUN = f"registry.test/{REPO}"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def manifest(label: str) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "label": label}).encode()


def index(*children: bytes) -> bytes:
    entries = [{"mediaType": OCI_MANIFEST, "digest": sha256(c), "size": len(c)} for c in children]
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()


def target(tag: str, body: bytes, role: str = "targets/releases") -> SignedTarget:
    return SignedTarget(tag, sha256(body), len(body), role, ("key1",), (role,))


@dataclass
class FakeSource:
    """Answers from a tag -> target table; or raises ``error`` for everything."""

    targets: dict[str, SignedTarget] = field(default_factory=dict)
    error: TrustproxyError | None = None
    version: int = 1
    calls: list[str] = field(default_factory=list)
    rules: list[SigningRule] = field(default_factory=list)
    closed: bool = False

    @property
    def name(self) -> str:
        return "notary"

    async def resolve(
        self, gun: str, tag: str, rule: SigningRule, *, registry: RegistryReads | None = None
    ) -> SignedTarget:
        self.calls.append(f"resolve {gun}:{tag}")
        self.rules.append(rule)
        if self.error is not None:
            raise self.error
        found = self.targets.get(tag)
        if found is None:
            raise NotSignedByError(tag, tuple(rule.role_names))
        return found

    async def signed_tags(
        self, gun: str, rule: SigningRule, **_: object
    ) -> dict[str, SignedTarget]:
        self.calls.append(f"signed_tags {gun}")
        self.rules.append(rule)
        if self.error is not None:
            raise self.error
        return dict(self.targets)

    async def trust_info(self, gun: str, rule: SigningRule) -> TrustInfo:
        if self.error is not None:
            raise self.error
        return trust_info_of({"root": 1, "targets": self.version})

    async def signed_state(self, gun: str, rule: SigningRule, **_: object) -> SignedState:
        self.calls.append(f"signed_state {gun}")
        self.rules.append(rule)
        if self.error is not None:
            raise self.error
        info = trust_info_of({"root": 1, "targets": self.version})
        return SignedState(MappingProxyType(dict(self.targets)), info)

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class Recorder:
    decisions: list[Decision] = field(default_factory=list)

    def record(self, decision: Decision) -> None:
        self.decisions.append(decision)

    @property
    def outcomes(self) -> list[tuple[str, str]]:
        return [(d.kind, d.outcome) for d in self.decisions]


def fake_match_rule(policy: Policy, repository: str) -> RepositoryRule | None:
    """First rule whose fnmatch pattern matches (a stand-in, not the policy's grammar)."""
    return next((r for r in policy.rules if fnmatch.fnmatchcase(repository, r.pattern)), None)


def fake_tag_allowed(rule: RepositoryRule, tag: str) -> bool:
    return any(fnmatch.fnmatchcase(tag, p) for p in rule.tag_patterns)


def rule(
    mode: Mode = "enforce",
    *,
    pattern: str = "registry.test/team/*",
    signers: tuple[SignerRequirement, ...] = (),
    tag_patterns: tuple[str, ...] = (),
    digests: str = "allow",
    expiry_grace: timedelta = timedelta(0),
    source: str | None = "notary",
) -> RepositoryRule:
    return RepositoryRule(
        pattern=pattern,
        mode=mode,
        source=source,
        verification=NotaryVerification(TrustOnFirstUse(), signers=signers),
        tag_patterns=tag_patterns,
        expiry_grace=expiry_grace,
        digests="signed" if digests == "signed" else "allow",
    )


def make_gate(
    source: FakeSource | object, recorder: Recorder, *rules: RepositoryRule
) -> EnforcingGate:
    return EnforcingGate(
        Policy(rules=rules),
        {"notary": source},  # type: ignore[dict-item]
        recorder,
        match_rule=fake_match_rule,
        tag_allowed=fake_tag_allowed,
        clock=lambda: NOW,
    )


@contextmanager
def serve(registry: FakeRegistry, gate: TrustGate) -> Iterator[TestClient]:
    app = create_app(make_settings(), gate=gate)
    for client in app.state.proxy.clients.values():
        client._http = httpx.AsyncClient(transport=httpx.MockTransport(registry))
    with TestClient(app) as tc:
        yield tc
