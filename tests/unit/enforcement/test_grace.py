"""``expiry_grace``: cached verified trust data past its expiry, only while the trust server
cannot be reached, only up to the grace; and the source's metrics."""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta

import httpx
import pytest

from proxy.enforcement.enforcing_gate import EnforcingGate
from proxy.errors import TrustSourceUnavailableError
from proxy.metrics import REGISTRY
from proxy.policy.model import Policy
from proxy.routing import Route
from proxy.settings import UpstreamSettings
from proxy.sources.notary.rules import SigningRule
from proxy.sources.notary.tuf import ExpiredError, TrustOnFirstUse
from proxy.trust_gate import RequestContext, ServeDigest
from tests.simulators.notary_repo import NotaryRepository
from tests.unit.enforcement.helpers import Recorder, fake_match_rule, fake_tag_allowed, rule
from tests.unit.sources.sim import GUN, SIM_TIME, Clock, SimServer, make_source

pytestmark = pytest.mark.anyio

M1 = b'{"m": 1}'
GRACE = timedelta(days=3)
# The simulator's timestamp expires 14 days after DEFAULT_NOW, i.e. 13 days after SIM_TIME.
TO_EXPIRY = timedelta(days=13)


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def server_with_repo() -> tuple[SimServer, NotaryRepository]:
    server = SimServer()
    repo = server.add(NotaryRepository(GUN))
    repo.add_target("v1", M1)
    repo.publish()
    return server, repo


def down(server: SimServer) -> None:
    server.down = lambda r: httpx.ConnectError("connection refused", request=r)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(
    ("after_expiry", "grace", "served"),
    [
        (timedelta(hours=-1), timedelta(0), True),  # before expiry: the plain outage path
        (timedelta(hours=1), timedelta(0), False),  # no grace: never past expiry
        (timedelta(hours=1), GRACE, True),  # within grace
        (GRACE - timedelta(minutes=1), GRACE, True),
        (GRACE + timedelta(minutes=1), GRACE, False),  # past grace
    ],
    ids=["unexpired", "no-grace", "within", "just-within", "past"],
)
async def test_outage_serves_expired_cache_only_within_grace(
    after_expiry: timedelta, grace: timedelta, served: bool, caplog: pytest.LogCaptureFixture
) -> None:
    server, _ = server_with_repo()
    clock = Clock()
    source = make_source(server, clock=clock)
    srule = SigningRule(TrustOnFirstUse(), expiry_grace=grace)
    try:
        assert (await source.resolve(GUN, "v1", srule)).digest == digest(M1)
        down(server)
        clock.now = SIM_TIME + TO_EXPIRY + after_expiry
        stale_before = sample("trustproxy_trust_cache_total", source="notary",
                              result="stale_served")  # fmt: skip
        if served:
            with caplog.at_level(logging.WARNING):
                assert (await source.resolve(GUN, "v1", srule)).digest == digest(M1)
            info = await source.trust_info(GUN, srule)
            assert info.stale
            assert sample("trustproxy_trust_cache_total", source="notary",
                          result="stale_served") == stale_before + 1  # fmt: skip
            if after_expiry > timedelta(0):
                assert "within expiry_grace" in caplog.text
            # Within retry_after the answer comes from memory: no request storm.
            server.reset()
            assert (await source.resolve(GUN, "v1", srule)).digest == digest(M1)
            assert server.requests == []
        else:
            with pytest.raises(TrustSourceUnavailableError, match="connection refused"):
                await source.resolve(GUN, "v1", srule)
    finally:
        await source.aclose()


async def test_grace_never_applies_when_the_server_answers() -> None:
    server, repo = server_with_repo()
    clock = Clock()
    source = make_source(server, clock=clock)
    srule = SigningRule(TrustOnFirstUse(), expiry_grace=GRACE)
    try:
        await source.resolve(GUN, "v1", srule)
        clock.now = SIM_TIME + TO_EXPIRY + timedelta(hours=1)
        # The server is up, and serves the same (now expired) timestamp: refused.
        with pytest.raises(ExpiredError):
            await source.resolve(GUN, "v1", srule)
    finally:
        await source.aclose()
    _ = repo


async def test_a_rule_without_grace_never_sees_what_a_graced_rule_accepted() -> None:
    server, _ = server_with_repo()
    clock = Clock()
    source = make_source(server, clock=clock)
    graced = SigningRule(TrustOnFirstUse(), expiry_grace=GRACE)
    strict = SigningRule(TrustOnFirstUse())
    try:
        await source.resolve(GUN, "v1", graced)
        await source.resolve(GUN, "v1", strict)
        down(server)
        clock.now = SIM_TIME + TO_EXPIRY + timedelta(hours=1)
        assert (await source.resolve(GUN, "v1", graced)).digest == digest(M1)
        with pytest.raises(TrustSourceUnavailableError):
            await source.resolve(GUN, "v1", strict)
    finally:
        await source.aclose()


async def test_gate_with_grace_serves_then_503() -> None:
    server, _ = server_with_repo()
    clock = Clock()
    source = make_source(server, clock=clock)
    route = Route(UpstreamSettings("up", "https://registry.example:5000", "registry.example:5000"),
                  "team/app", "team/app")  # fmt: skip
    rec = Recorder()
    gate = EnforcingGate(
        Policy((rule(pattern="registry.example:5000/team/*", expiry_grace=GRACE),)),
        {"notary": source},
        rec,
        match_rule=fake_match_rule,
        tag_allowed=fake_tag_allowed,
        clock=clock,
    )
    ctx = RequestContext()
    try:
        assert isinstance(await gate.decide_tag(route, "v1", ctx), ServeDigest)
        down(server)
        clock.now = SIM_TIME + TO_EXPIRY + timedelta(days=1)
        assert isinstance(await gate.decide_tag(route, "v1", ctx), ServeDigest)
        clock.now = SIM_TIME + TO_EXPIRY + GRACE + timedelta(days=1)
        with pytest.raises(TrustSourceUnavailableError):
            await gate.decide_tag(route, "v1", ctx)
    finally:
        await source.aclose()
    assert [d.outcome for d in rec.decisions] == ["served_signed", "served_signed", "unavailable"]


def test_negative_grace_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        SigningRule(TrustOnFirstUse(), expiry_grace=timedelta(seconds=-1))


async def test_refresh_and_cache_metrics() -> None:
    server, _ = server_with_repo()
    clock = Clock()
    source = make_source(server, clock=clock)
    srule = SigningRule(TrustOnFirstUse())

    def counts() -> tuple[float, ...]:
        return (
            sample("trustproxy_trust_refresh_seconds_count", source="notary", result="ok"),
            sample("trustproxy_trust_refresh_seconds_count", source="notary",
                   result="unavailable"),
            sample("trustproxy_trust_cache_total", source="notary", result="hit"),
            sample("trustproxy_trust_cache_total", source="notary", result="miss"),
        )  # fmt: skip

    try:
        ok, unavailable, hit, miss = counts()
        await source.resolve(GUN, "v1", srule)  # refresh
        await source.resolve(GUN, "v1", srule)  # hot
        await source.trust_info(GUN, srule)  # not a lookup of its own
        assert counts() == (ok + 1, unavailable, hit + 1, miss + 1)
        down(server)
        clock.advance(seconds=61)
        await source.resolve(GUN, "v1", srule)  # stale_served
        assert counts() == (ok + 1, unavailable + 1, hit + 1, miss + 1)
    finally:
        await source.aclose()
