"""Signer semantics end to end: EnforcingGate over a real NotarySource over the Notary
simulator (httpx.MockTransport). Docker's rule, required signers and thresholds, optional
signers that disagree, and the reasons users read."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import pytest

from proxy.enforcement.enforcing_gate import EnforcingGate
from proxy.errors import NotSignedError
from proxy.policy.model import Policy
from proxy.routing import Route
from proxy.settings import UpstreamSettings
from proxy.sources.notary.policy import SignerRequirement
from proxy.sources.notary.source import NotarySource
from proxy.trust_gate import RequestContext, ServeDigest
from tests.simulators.notary_repo import NotaryRepository, generate_key
from tests.unit.enforcement.helpers import Recorder, fake_match_rule, fake_tag_allowed, rule
from tests.unit.sources.sim import GUN, SimServer, make_source

pytestmark = pytest.mark.anyio

ROUTE = Route(UpstreamSettings("up", "https://registry.example:5000", "registry.example:5000"),
              "team/app", "team/app")  # fmt: skip
CTX = RequestContext(client="10.0.0.1", user_agent="containerd/2.0", method="HEAD")
M1, M2, M3 = b'{"m": 1}', b'{"m": 2}', b'{"m": 3}'
PATTERN = "registry.example:5000/team/*"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def repository() -> NotaryRepository:
    repo = NotaryRepository(GUN)
    k1, k2 = generate_key(), generate_key()
    repo.add_delegation("targets/releases")
    repo.add_delegation("targets/qa")
    repo.add_delegation("targets/security-team", keys=[k1, k2])
    repo.add_target("v1", M1)  # targets
    repo.add_target("v1", M2, role="targets/releases")  # Docker: releases wins
    repo.add_target("v1", M2, role="targets/security-team")
    repo.add_target("v1", M3, role="targets/qa")  # qa disagrees on v1
    repo.add_target("qa-build", M3, role="targets/qa")
    repo.add_target("v2", M2, role="targets/releases")
    repo.add_target("v2", M2, role="targets/qa")  # qa agrees on v2
    repo.publish()
    return repo


@pytest.fixture
async def source() -> AsyncIterator[NotarySource]:
    server = SimServer()
    server.add(repository())
    src = make_source(server)
    try:
        yield src
    finally:
        await src.aclose()


def gate(
    source: NotarySource, *signers: SignerRequirement, rec: Recorder | None = None
) -> EnforcingGate:
    return EnforcingGate(
        Policy((rule(pattern=PATTERN, signers=signers),)),
        {"notary": source},
        rec or Recorder(),
        match_rule=fake_match_rule,
        tag_allowed=fake_tag_allowed,
    )


def req(role: str, threshold: int = 1) -> SignerRequirement:
    return SignerRequirement(role, required=True, threshold=threshold)


def opt(role: str) -> SignerRequirement:
    return SignerRequirement(role, required=False)


CASES = [
    # (id, signers, tag, served digest or refusal reason)
    ("docker-releases-wins", (), "v1", digest(M2)),
    ("docker-unsigned", (), "qa-build",
     "tag qa-build is not signed by targets/releases or targets"),
    ("qa-only-accepted-when-named", (req("targets/qa"),), "qa-build", digest(M3)),
    ("required-missing", (req("targets/security-team"),), "v2",
     "tag v2 is not signed by targets/security-team"),
    ("required-unknown-role", (req("targets/nobody"),), "v1",
     "tag v1 is not signed by targets/nobody (no such role in the trust data)"),
    ("required-agree", (req("targets/releases"), req("targets/security-team")), "v1", digest(M2)),
    ("required-disagree", (req("targets/releases"), req("targets/qa")), "v1",
     f"signers disagree on tag v1: targets/releases signs {digest(M2)}, "
     f"targets/qa signs {digest(M3)}"),
    ("threshold-met", (req("targets/security-team", 2),), "v1", digest(M2)),
    ("threshold-not-met", (req("targets/releases", 2),), "v1",
     "tag v1 is signed by targets/releases with 1 valid signature(s), 2 required"),
    ("optional-disagrees", (req("targets/releases"), opt("targets/qa")), "v1",
     f"signers disagree on tag v1: targets/releases signs {digest(M2)}, "
     f"targets/qa signs {digest(M3)}"),
    ("optional-agrees", (req("targets/releases"), opt("targets/qa")), "v2", digest(M2)),
    ("optional-silent", (req("targets/releases"), opt("targets/security-team")), "v2",
     digest(M2)),
    ("docker-with-optional-veto", (opt("targets/qa"),), "v1",
     f"signers disagree on tag v1: targets/releases signs {digest(M2)}, "
     f"targets/qa signs {digest(M3)}"),
]  # fmt: skip


@pytest.mark.parametrize(("signers", "tag", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
async def test_signer_rules(
    source: NotarySource, signers: tuple[SignerRequirement, ...], tag: str, expected: str
) -> None:
    rec = Recorder()
    g = gate(source, *signers, rec=rec)
    if expected.startswith("sha256:"):
        got = await g.decide_tag(ROUTE, tag, CTX)
        assert isinstance(got, ServeDigest)
        assert got.digest == expected
        (d,) = rec.decisions
        assert d.outcome == "served_signed"
        assert d.evidence["key_ids"]  # who signed is in the record
        assert {"root", "timestamp", "snapshot", "targets"} <= set(d.evidence["metadata_versions"])
    else:
        with pytest.raises(NotSignedError) as ei:
            await g.decide_tag(ROUTE, tag, CTX)
        assert ei.value.reason == expected
        (d,) = rec.decisions
        assert (d.outcome, d.reason) == ("denied", ei.value.reason)


async def test_filter_tags_matches_decide_tag(source: NotarySource) -> None:
    tags = ["v1", "v2", "qa-build", "missing"]
    for signers in [c[1] for c in CASES]:
        g = gate(source, *signers)
        visible = await g.filter_tags(ROUTE, tags, CTX)
        one_by_one = []
        for tag in tags:
            try:
                await g.decide_tag(ROUTE, tag, CTX)
            except NotSignedError:
                continue
            one_by_one.append(tag)
        assert visible == one_by_one, signers


async def test_no_trust_data_reason(source: NotarySource) -> None:
    other = Route(ROUTE.upstream, "team/other", "team/other")
    with pytest.raises(NotSignedError) as ei:
        await gate(source).decide_tag(other, "v1", CTX)
    assert ei.value.reason == "no trust data for registry.example:5000/team/other"
