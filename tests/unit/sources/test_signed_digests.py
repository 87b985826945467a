"""The source for formats that sign digests: tags resolved upstream, verdicts per digest,
``onUnsignedTag: lastSigned`` with a shared (untrusted) tag memory, listings, outages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest

from proxy.errors import NotSignedError, TrustSourceUnavailableError, UpstreamUnavailableError
from proxy.sources.base import RegistryReads, TaggedManifest
from proxy.sources.signed_digests import (
    DigestSigned,
    DigestSourceSettings,
    SignedDigestSource,
)
from proxy.sources.store import MemoryTrustStateStore

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 12, 5, tzinfo=UTC)
A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
C = "sha256:" + "c" * 64


@dataclass(frozen=True)
class Rule:
    on_unsigned_tag: Literal["deny", "lastSigned"] = "deny"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Registry:
    """Tags -> digests as the upstream has them now; ``down`` fails every read."""

    tags: dict[str, str] = field(default_factory=dict)
    down: bool = False
    heads: int = 0

    def _check(self) -> None:
        if self.down:
            raise UpstreamUnavailableError("registry", "connection refused")

    async def manifest(self, digest: str) -> bytes | None:
        self._check()
        return None

    async def manifest_by_tag(self, tag: str) -> TaggedManifest | None:
        self._check()
        return None

    async def head_tag(self, tag: str) -> str | None:
        self._check()
        self.heads += 1
        return self.tags.get(tag)

    async def referrers(self, digest: str) -> list[Mapping[str, Any]]:
        self._check()
        return []

    async def blob(self, digest: str, max_bytes: int) -> bytes | None:
        self._check()
        return None


@dataclass
class Judge:
    """Signed digests and their signers; everything else is refused."""

    signed: dict[str, str] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    @property
    def type_name(self) -> str:
        return "fake"

    async def judge(
        self, registry: RegistryReads, repository: str, digest: str, rule: Any, now: datetime
    ) -> DigestSigned:
        self.calls.append(digest)
        await registry.referrers(digest)  # reads through the registry (fails when it is down)
        who = self.signed.get(digest)
        if who is None:
            raise NotSignedError(f"no fake signature for {digest}")
        return DigestSigned(digest, None, (who,), {"key_id": who})


def source(
    judge: Judge, clock: Clock, store: MemoryTrustStateStore | None = None
) -> SignedDigestSource:
    return SignedDigestSource(
        "fake-src",
        judge,
        store=store if store is not None else MemoryTrustStateStore(),
        clock=clock,
        settings=DigestSourceSettings(
            verdict_ttl=timedelta(seconds=30), tag_ttl=timedelta(seconds=30)
        ),
    )


async def test_a_signed_tag_answers_its_digest_and_verdicts_are_kept() -> None:
    judge, clock = Judge({A: "key 1"}), Clock()
    src, reg = source(judge, clock), Registry({"v1": A, "v1-again": A})
    got = await src.resolve("r/app", "v1", Rule(), registry=reg)
    assert (got.digest, got.signers) == (A, ("key 1",))
    await src.resolve("r/app", "v1", Rule(), registry=reg)
    await src.resolve("r/app", "v1-again", Rule(), registry=reg)
    assert judge.calls == [A]  # one judgement of A for both tags and both requests
    assert reg.heads == 2  # one resolution per tag within tag_ttl


async def test_an_unsigned_tag_is_refused_with_the_reason() -> None:
    src, reg = source(Judge(), Clock()), Registry({"v1": A})
    with pytest.raises(NotSignedError, match="no fake signature"):
        await src.resolve("r/app", "v1", Rule(), registry=reg)
    with pytest.raises(NotSignedError, match="does not exist"):
        await src.resolve("r/app", "gone", Rule(), registry=reg)


async def test_without_a_registry_the_source_is_unavailable() -> None:
    with pytest.raises(TrustSourceUnavailableError, match="read from the registry"):
        await source(Judge({A: "k"}), Clock()).resolve("r/app", "v1", Rule())


@pytest.mark.parametrize("policy", ["deny", "lastSigned"])
async def test_a_tag_moved_to_an_unsigned_digest(policy: Literal["deny", "lastSigned"]) -> None:
    clock = Clock()
    src, reg = source(Judge({A: "key 1"}), clock), Registry({"v1": A})
    rule = Rule(policy)
    await src.resolve("r/app", "v1", rule, registry=reg)
    reg.tags["v1"] = B  # moved upstream to an unsigned build
    clock.now += timedelta(seconds=31)
    if policy == "deny":
        with pytest.raises(NotSignedError, match=f"no fake signature for {B}"):
            await src.resolve("r/app", "v1", rule, registry=reg)
        return
    got = await src.resolve("r/app", "v1", rule, registry=reg)
    assert got.digest == A
    assert got.evidence["last_signed"] is True
    assert got.evidence["current_digest"] == B


async def test_last_signed_digest_whose_signature_is_gone_is_refused() -> None:
    clock, judge = Clock(), Judge({A: "key 1"})
    src, reg = source(judge, clock), Registry({"v1": A})
    await src.resolve("r/app", "v1", Rule("lastSigned"), registry=reg)
    reg.tags["v1"] = B
    del judge.signed[A]  # the signature of the remembered digest was deleted
    clock.now += timedelta(seconds=31)
    with pytest.raises(NotSignedError, match=f"last had while signed, {A}, is no longer"):
        await src.resolve("r/app", "v1", Rule("lastSigned"), registry=reg)


async def test_the_tag_memory_is_shared_and_never_trusted() -> None:
    clock, store = Clock(), MemoryTrustStateStore()
    a = source(Judge({A: "key 1"}), clock, store)
    await a.resolve("r/app", "v1", Rule("lastSigned"), registry=Registry({"v1": A}))
    b = source(Judge({A: "key 1"}), clock, store)  # another replica, same shared store
    got = await b.resolve("r/app", "v1", Rule("lastSigned"), registry=Registry({"v1": B}))
    assert got.digest == A
    # A writer of the store plants an unsigned digest, then garbage: neither is served.
    for planted in (b'{"digest": "' + C.encode() + b'"}', b"\xff" * 10, b"x" * 10_000):
        await store.save("r/app@last-signed/v2", planted)
        c = source(Judge({A: "key 1"}), clock, store)
        with pytest.raises(NotSignedError):
            await c.resolve("r/app", "v2", Rule("lastSigned"), registry=Registry({"v2": B}))


async def test_an_outage_serves_verdicts_within_grace_only() -> None:
    clock = Clock()
    src, reg = source(Judge({A: "key 1"}), clock), Registry({"v1": A})
    await src.resolve("r/app", "v1", Rule(), registry=reg)
    reg.down = True
    clock.now += timedelta(seconds=31)
    assert (await src.resolve("r/app", "v1", Rule(), registry=reg)).digest == A  # stale
    clock.now += timedelta(minutes=6)
    with pytest.raises(TrustSourceUnavailableError, match="could not resolve tag v1"):
        await src.resolve("r/app", "v1", Rule(), registry=reg)


async def test_listings_and_digest_pulls() -> None:
    judge = Judge({A: "key 1", C: "key 2"})
    src, reg = source(judge, Clock()), Registry({"v1": A, "v2": B, "v3": C})
    state = await src.signed_state("r/app", Rule(), registry=reg, tags=["v1", "v2", "v3"])
    assert set(state.tags) == {"v1", "v3"}
    assert state.digests == {A, C}  # judged recently: children of an index check these
    other = await src.signed_state("r/app", Rule(), registry=reg, tags=[], digests=[B, C])
    assert C in other.digests
    assert B not in other.digests
    assert state.info.key != (await src.signed_state("r/other", Rule(), registry=reg)).info.key


async def test_invalidate_judges_again() -> None:
    judge = Judge({A: "key 1"})
    src, reg = source(judge, Clock()), Registry({"v1": A})
    await src.resolve("r/app", "v1", Rule(), registry=reg)
    del judge.signed[A]
    src.invalidate("r/app")
    with pytest.raises(NotSignedError):
        await src.resolve("r/app", "v1", Rule(), registry=reg)
