"""What answers when nothing can be decided: every answer is a 503 naming the reason.

:class:`FailClosedGate` stands in for the whole gate while a configured policy cannot be
loaded (until a reload fixes it); :class:`UnavailableSource` stands in for one trust source
that could not be built (its repositories get 503s, the others are served).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Literal

from proxy.decisions import Decision, DecisionRecorder, NullRecorder
from proxy.enforcement.enforcing_gate import Clock, rfc3339, utc_now
from proxy.errors import FetchError, TrustSourceUnavailableError
from proxy.routing import Route
from proxy.sources.base import SignedAnswer, SignedState, SourceRule, TrustInfo
from proxy.trust_gate import ListingKind, RequestContext, TagDecision

__all__ = ["FailClosedGate", "PolicyUnavailableError", "UnavailableSource"]

log = logging.getLogger("trustproxy.enforcement")


class PolicyUnavailableError(TrustSourceUnavailableError):
    """The policy could not be loaded: nothing can be decided, so nothing is served (503)."""

    def __init__(self, reason: str) -> None:
        self.source = "policy"
        self.reason = reason
        FetchError.__init__(self, reason)


_DECISION_KINDS: dict[str, Literal["tags", "digest", "referrers"]] = {
    "tags": "tags",
    "digest": "digest",
    "referrers": "referrers",
}


class FailClosedGate:
    """Refuses every decision with 503 (``reason`` says why). Blobs stay reachable: they
    are content-addressed and only found through a manifest."""

    def __init__(self, reason: str, recorder: DecisionRecorder | None = None) -> None:
        self.reason = reason
        self.recorder = recorder or NullRecorder()
        self._clock: Clock = utc_now

    def _refuse(
        self, kind: str, route: Route, reference: str, ctx: RequestContext
    ) -> PolicyUnavailableError:
        decision = Decision(
            time=rfc3339(self._clock()),
            kind=_DECISION_KINDS.get(kind, "manifest"),
            outcome="unavailable",
            repository=route.repository,
            reference=reference,
            reason=self.reason,
            client=ctx.client,
            user_agent=ctx.user_agent,
            user=ctx.user,
            method=ctx.method,
        )
        try:
            self.recorder.record(decision)
        except Exception:
            log.exception("decision recorder failed")
        return PolicyUnavailableError(self.reason)

    async def decide_tag(self, route: Route, tag: str, ctx: RequestContext) -> TagDecision:
        raise self._refuse("manifest", route, tag, ctx)

    async def decide_digest(self, route: Route, digest: str, ctx: RequestContext) -> None:
        raise self._refuse("digest", route, digest, ctx)

    async def filter_tags(self, route: Route, tags: list[str], ctx: RequestContext) -> list[str]:
        raise self._refuse("tags", route, "", ctx)

    async def admit_listing(
        self, route: Route, kind: ListingKind, reference: str, ctx: RequestContext
    ) -> bool:
        raise self._refuse(kind, route, reference, ctx)  # before the upstream is asked

    def report_mismatch(
        self, route: Route, tag: str, expected: str, actual: str, ctx: RequestContext
    ) -> None:
        return None  # never reached: nothing is served


class UnavailableSource:
    """A configured trust source that could not be built: every answer is a 503."""

    def __init__(self, name: str, reason: str) -> None:
        self._name = name
        self.reason = reason

    @property
    def name(self) -> str:
        return self._name

    def _error(self) -> TrustSourceUnavailableError:
        return TrustSourceUnavailableError(self._name, self.reason)

    async def resolve(
        self, repository: str, tag: str, rule: SourceRule, **_: object
    ) -> SignedAnswer:
        raise self._error()

    async def signed_tags(
        self, repository: str, rule: SourceRule, **_: object
    ) -> Mapping[str, SignedAnswer]:
        raise self._error()

    async def trust_info(self, repository: str, rule: SourceRule) -> TrustInfo:
        raise self._error()

    async def signed_state(self, repository: str, rule: SourceRule, **_: object) -> SignedState:
        raise self._error()

    async def aclose(self) -> None:
        return None
