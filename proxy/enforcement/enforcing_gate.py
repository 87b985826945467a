"""The enforcing gate: policy rule + trust source answer → what the client gets.

Every public method works in three steps::

    rule  = match_rule(policy, repository)                 no rule: refused (fail closed)
    ev    = Evaluation(finding, reason, target)     what the rule and the source say
    v     = decide(mode, ev.finding, ev.reason)     THE decision: outcome + action, by mode
    record(Decision(...)); return / raise per v.action

``decide`` is the one place where the mode (enforce / audit / off) changes anything; the
evaluation never looks at the mode (except to skip the source entirely under ``off``), and
exceptions from the source are turned into findings before the mode is applied (style
habit 9). Reasons are worded for users, and reach them in the 404's ``detail.reason``.

A rule's ``fallback`` (a signed trust snapshot) is asked only when the rule's source says
"no trust data" for the repository or cannot be reached with nothing valid cached (past the
rule's expiry grace): never when it says "not signed" or its data is bad, which stand. What
the fallback answers carries a ``fallback`` evidence field, is counted
(``trustproxy_fallback_answers_total``) and the repository is listed by
:meth:`EnforcingGate.fallback_repositories` (``/readyz``) until its own source answers again.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from proxy.decisions import Decision, DecisionRecorder, Outcome
from proxy.enforcement.digest_allowlist import DigestAllowlist
from proxy.errors import (
    BadDataError,
    FetchError,
    NotSignedError,
    TrustDataError,
    TrustproxyError,
    TrustSourceUnavailableError,
)
from proxy.metrics import FALLBACK_ANSWERS
from proxy.policy.model import Mode, Policy, RepositoryRule
from proxy.routing import Route
from proxy.sources.base import (
    NoTrustDataError,
    SignedAnswer,
    SignedState,
    SourceRule,
    TrustInfo,
    TrustSource,
)
from proxy.trust_gate import ListingKind, PassThrough, RequestContext, ServeDigest, TagDecision

__all__ = [
    "Action",
    "EnforcingGate",
    "Evaluation",
    "Finding",
    "MatchRule",
    "TagAllowed",
    "Verdict",
    "decide",
    "signing_rule_for",
]

log = logging.getLogger("trustproxy.enforcement")

MatchRule = Callable[[Policy, str], RepositoryRule | None]
TagAllowed = Callable[[RepositoryRule, str], bool]
Clock = Callable[[], datetime]
DecisionKind = Literal["manifest", "digest", "tags", "referrers"]

#: What the rule and the trust source say, before the mode is applied.
#: ``allowed``: the policy lets it through unchecked (``digests: allow``).
Finding = Literal["signed", "allowed", "refused", "unavailable", "bad_trust_data"]
#: What the caller does: serve the verified answer, pass the upstream's through, refuse
#: (404 with the reason), or fail with the evaluation's error (503; 502 for the upstream).
Action = Literal["serve_signed", "pass_through", "refuse", "fail"]


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    action: Action
    reason: str


def decide(mode: Mode | None, finding: Finding, reason: str) -> Verdict:
    """THE decision: map a finding to an outcome and an action under ``mode``.

    ``mode`` None means no rule matched: treated as ``enforce`` (fail closed).
    """
    if mode == "off":
        return Verdict("passed_through", "pass_through", f"policy mode off: {reason}")
    if finding == "signed":
        return Verdict("served_signed", "serve_signed", reason)
    if finding == "allowed":
        return Verdict("passed_through", "pass_through", reason)
    if mode == "audit":
        # Audit serves what enforce would serve where it can; otherwise the upstream's
        # answer, and the record says enforce would not have served it.
        return Verdict("audit_would_deny", "pass_through", reason)
    if finding == "refused":
        return Verdict("denied", "refuse", reason)
    if finding == "unavailable":
        return Verdict("unavailable", "fail", reason)
    return Verdict("bad_trust_data", "fail", reason)


@dataclass(frozen=True)
class Evaluation:
    finding: Finding
    reason: str
    target: SignedAnswer | None = None
    #: what enforce raises for ``unavailable`` / ``bad_trust_data``
    error: TrustproxyError | None = None
    info: TrustInfo | None = None
    #: tag lists: the tags a client may see (enforce), when the source answered
    visible: list[str] = field(default_factory=list)
    #: set when the rule's fallback answered: which, instead of which source, and why
    fallback: Mapping[str, str] | None = None


#: The most repositories ``fallback_repositories`` remembers (least recently used out).
MAX_FALLBACK_ENTRIES = 10_000


@dataclass(frozen=True)
class _Answered:
    """A signed state and the source rule it was read under (the rule's source's, or its
    fallback's), with the fallback marker when the fallback answered."""

    state: SignedState
    srule: SourceRule
    fallback: Mapping[str, str] | None = None


def _fallback_cause(e: Exception) -> str | None:
    """Why the fallback may answer after the primary raised ``e``, or None when it may not.

    "No trust data" and "unreachable, nothing valid cached" only: a "not signed" or bad
    trust data is the primary's answer, and a fallback must not overrule it.
    """
    if isinstance(e, NoTrustDataError):
        return "no_trust_data"
    if isinstance(e, TrustSourceUnavailableError):
        return "unavailable"
    return None


def signing_rule_for(rule: RepositoryRule) -> SourceRule:
    """The signing rule a policy rule's trust source applies (its verification part, read
    by the source's type, with the rule's expiry grace).

    Raises:
        ValueError: the rule has no verification part (the loader refuses such rules).
    """
    if rule.verification is None:
        raise ValueError(f"policy rule {rule.pattern!r} says nothing to verify")
    return rule.verification.signing_rule(rule.expiry_grace)


def _default_match_rule(policy: Policy, repository: str) -> RepositoryRule | None:
    from proxy.policy.matcher import match_rule

    return match_rule(policy, repository)


def _default_tag_allowed(rule: RepositoryRule, tag: str) -> bool:
    from proxy.policy.matcher import tag_allowed

    return tag_allowed(rule, tag)


def utc_now() -> datetime:
    return datetime.now(UTC)


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


class EnforcingGate:
    """A :class:`~proxy.trust_gate.TrustGate` that enforces a :class:`Policy`.

    ``sources`` by ``trust.sources`` name; ``match_rule`` / ``tag_allowed`` default to
    ``proxy.policy.matcher`` (tests inject their own); ``clock`` stamps the records.
    """

    def __init__(
        self,
        policy: Policy,
        sources: Mapping[str, TrustSource],
        recorder: DecisionRecorder,
        *,
        match_rule: MatchRule | None = None,
        tag_allowed: TagAllowed | None = None,
        clock: Clock = utc_now,
        allowlist: DigestAllowlist | None = None,
    ) -> None:
        self.policy = policy
        self.sources = dict(sources)
        self.recorder = recorder
        self._match_rule = match_rule or _default_match_rule
        self._tag_allowed = tag_allowed or _default_tag_allowed
        self._clock = clock
        self.allowlist = allowlist or DigestAllowlist()
        # Policy rules are few and immutable: one source rule each, so sources' caches
        # keyed on it stay hot.
        self._signing_rules: dict[RepositoryRule, SourceRule] = {}
        self._fallback_rules: dict[RepositoryRule, SourceRule] = {}
        # repository -> what its last fallback answer was (for /readyz)
        self._on_fallback: OrderedDict[str, dict[str, str]] = OrderedDict()

    def fallback_repositories(self) -> dict[str, dict[str, str]]:
        """The repositories whose last answer came from their rule's fallback (by this
        process), each with the fallback, the primary source, why and since when."""
        return {repo: dict(v) for repo, v in self._on_fallback.items()}

    # --- the TrustGate interface -------------------------------------------------------

    async def decide_tag(self, route: Route, tag: str, ctx: RequestContext) -> TagDecision:
        repository = route.repository
        rule = self._match_rule(self.policy, repository)
        if rule is None:
            ev = Evaluation("refused", f"no policy rule matches {repository}")
        elif rule.mode == "off":
            ev = Evaluation("allowed", "not checked")
        else:
            ev = await self._evaluate_tag(repository, tag, rule, ctx)
        v = decide(rule.mode if rule else None, ev.finding, ev.reason)
        self._record("manifest", repository, tag, rule, v, ev, ctx)
        if v.action == "serve_signed" and ev.target is not None:
            t = ev.target
            return ServeDigest(t.digest, t.length, signers=t.signers)
        if v.action == "pass_through":
            return PassThrough(v.reason)
        raise self._error(v, ev)

    async def decide_digest(self, route: Route, digest: str, ctx: RequestContext) -> None:
        repository = route.repository
        rule = self._match_rule(self.policy, repository)
        if rule is None:
            ev = Evaluation("refused", f"no policy rule matches {repository}")
        elif rule.mode == "off":
            ev = Evaluation("allowed", "not checked")
        elif rule.digests == "allow":
            # Docker's behaviour: an explicit digest always works (the client pinned the
            # content; the bytes are still checked against the digest by the handler).
            ev = Evaluation("allowed", "pulls by digest are allowed (digests: allow)")
        else:
            ev = await self._evaluate_digest(repository, digest, rule, ctx)
        v = decide(rule.mode if rule else None, ev.finding, ev.reason)
        self._record("digest", repository, digest, rule, v, ev, ctx)
        if v.action in ("serve_signed", "pass_through"):
            return None
        raise self._error(v, ev)

    async def filter_tags(self, route: Route, tags: list[str], ctx: RequestContext) -> list[str]:
        repository = route.repository
        rule = self._match_rule(self.policy, repository)
        if rule is None:
            ev = Evaluation("refused", f"no policy rule matches {repository}")
        elif rule.mode == "off":
            ev = Evaluation("allowed", "not checked", visible=list(tags))
        else:
            ev = await self._evaluate_tags(repository, tags, rule, ctx)
        v = decide(rule.mode if rule else None, ev.finding, ev.reason)
        self._record("tags", repository, "", rule, v, ev, ctx)
        if v.action == "pass_through":
            return tags
        if v.action == "fail":
            raise self._error(v, ev)
        # A refused list is not an error page: the client sees the tags it may pull (none,
        # for a repository without trust data or without a rule), pagination intact.
        return ev.visible

    async def admit_listing(
        self, route: Route, kind: ListingKind, reference: str, ctx: RequestContext
    ) -> bool:
        # Only "no rule" is decided here: under a rule the tag list is filtered once the
        # upstream has answered (filter_tags), and referrers are descriptors whose
        # manifests go through decide_digest when pulled.
        repository = route.repository
        if self._match_rule(self.policy, repository) is not None:
            return True
        ev = Evaluation("refused", f"no policy rule matches {repository}")
        self._record(
            kind, repository, reference, None, decide(None, ev.finding, ev.reason), ev, ctx
        )
        return False

    def report_mismatch(
        self, route: Route, tag: str, expected: str, actual: str, ctx: RequestContext
    ) -> None:
        try:
            rule = self._match_rule(self.policy, route.repository)
        except Exception:  # must not raise: the handler is already answering 502
            rule = None
        reason = f"upstream sent bytes with digest {actual} for tag {tag}, signed at {expected}"
        self._emit(
            Decision(
                time=rfc3339(self._clock()),
                kind="manifest",
                outcome="upstream_mismatch",
                repository=route.repository,
                reference=tag,
                reason=reason,
                rule=rule.pattern if rule else None,
                mode=rule.mode if rule else None,
                client=ctx.client,
                user_agent=ctx.user_agent,
                user=ctx.user,
                method=ctx.method,
            )
        )

    # --- evaluations: what rule + source say (no mode here) ----------------------------

    def _signing_rule(self, rule: RepositoryRule) -> SourceRule:
        srule = self._signing_rules.get(rule)
        if srule is None:
            srule = self._signing_rules[rule] = signing_rule_for(rule)
        return srule

    def _source(self, rule: RepositoryRule) -> tuple[TrustSource, SourceRule] | Evaluation:
        """The rule's source and signing rule, or an ``unavailable`` evaluation (a
        misconfiguration the loader should have caught: fail closed, loudly)."""
        name = rule.source
        if name is None and len(self.sources) == 1:
            name = next(iter(self.sources))  # one configured source: the obvious one
        source = self.sources.get(name) if name is not None else None
        problem = None
        if source is None:
            problem = (
                f"policy rule {rule.pattern!r} names no trust source"
                if name is None
                else f"trust source {name!r} is not configured"
            )
        elif rule.verification is None:
            problem = f"policy rule {rule.pattern!r} says nothing to verify"
        if problem is not None or source is None:
            log.error("enforcement: %s: refusing its repositories", problem)
            err = TrustSourceUnavailableError(name or "none", problem or "not configured")
            return Evaluation("unavailable", str(err), error=err)
        return source, self._signing_rule(rule)

    def _pattern_refusal(self, rule: RepositoryRule, tag: str) -> str | None:
        if not rule.tag_patterns or self._tag_allowed(rule, tag):
            return None
        if len(rule.tag_patterns) == 1:
            return f"tag {tag} does not match allowed pattern {rule.tag_patterns[0]}"
        return f"tag {tag} does not match allowed patterns {', '.join(rule.tag_patterns)}"

    @staticmethod
    def _failure(repository: str, e: TrustproxyError) -> Evaluation:
        """A source's refusal or failure as a finding (never a decision)."""
        if isinstance(e, NoTrustDataError):
            return Evaluation("refused", f"no trust data for {repository}")
        if isinstance(e, NotSignedError):
            return Evaluation("refused", e.reason)
        if isinstance(e, TrustSourceUnavailableError):
            return Evaluation("unavailable", str(e), error=e)
        if isinstance(e, TrustDataError):
            return Evaluation(
                "bad_trust_data", f"trust data for {repository} is not valid: {e}", error=e
            )
        # The gate's own fetches (signed index children): upstream failures fail closed.
        return Evaluation("unavailable", str(e), error=e)

    async def _evaluate_tag(
        self, repository: str, tag: str, rule: RepositoryRule, ctx: RequestContext
    ) -> Evaluation:
        # The pattern first: it is cheap and needs no trust data.
        if (why := self._pattern_refusal(rule, tag)) is not None:
            return Evaluation("refused", why)
        found = self._source(rule)
        if isinstance(found, Evaluation):
            return found
        source, srule = found
        try:
            target = await source.resolve(repository, tag, srule, registry=ctx.registry)
            info = await source.trust_info(repository, srule)
        except (NotSignedError, TrustSourceUnavailableError, TrustDataError) as e:
            ev = self._failure(repository, e)
            cause = _fallback_cause(e)
            if cause is not None and rule.fallback is not None:
                return await self._fallback_tag(repository, tag, rule, ctx, ev, cause)
            self._primary_answered(repository)
            if ev.finding == "refused" and not isinstance(e, NoTrustDataError):
                # Which trust data refused it belongs in the audit record too.
                ev = Evaluation(ev.finding, ev.reason, info=await _info(source, repository, srule))
            return ev
        self._primary_answered(repository)
        reason = f"tag {tag} is signed by {', '.join(target.signers)}"
        return Evaluation("signed", reason, target=target, info=info)

    async def _fallback_tag(
        self,
        repository: str,
        tag: str,
        rule: RepositoryRule,
        ctx: RequestContext,
        primary: Evaluation,
        cause: str,
    ) -> Evaluation:
        found = self._fallback_source(rule)
        if found is None:
            return primary
        source, srule, marker = found
        name = marker["source"]
        marker = {**marker, "because": primary.reason}
        try:
            target = await source.resolve(repository, tag, srule, registry=ctx.registry)
            info = await source.trust_info(repository, srule)
        except NoTrustDataError:
            # The fallback knows nothing of it either: the primary's answer stands.
            reason = f"{primary.reason}; fallback {name} has no trust data for it either"
            return Evaluation(primary.finding, reason, info=primary.info, error=primary.error)
        except (NotSignedError, TrustSourceUnavailableError, TrustDataError) as e:
            ev = self._failure(repository, e)
            self._note_fallback(repository, marker, cause)
            reason = f"{ev.reason} (from fallback {name}: {primary.reason})"
            return Evaluation(ev.finding, reason, error=ev.error, fallback=marker)
        self._note_fallback(repository, marker, cause)
        reason = (
            f"tag {tag} is signed by {', '.join(target.signers)} "
            f"(from fallback {name}: {primary.reason})"
        )
        return Evaluation("signed", reason, target=target, info=info, fallback=marker)

    def _fallback_source(
        self, rule: RepositoryRule
    ) -> tuple[TrustSource, SourceRule, dict[str, str]] | None:
        """The rule's fallback, its source rule, and the marker its answers carry; None
        (logged) when it cannot be used: the primary's answer then stands (fail closed)."""
        name = rule.fallback
        source = self.sources.get(name) if name is not None else None
        if source is None or rule.fallback_verification is None:
            log.error(
                "enforcement: policy rule %r: fallback %r is not a configured trust source "
                "that can answer; the primary's answer stands", rule.pattern, name,
            )  # fmt: skip
            return None
        srule = self._fallback_rules.get(rule)
        if srule is None:
            srule = self._fallback_rules[rule] = rule.fallback_verification.signing_rule(
                rule.expiry_grace
            )
        primary = rule.source or (next(iter(self.sources)) if len(self.sources) == 1 else "")
        return source, srule, {"source": source.name, "primary": primary}

    def _note_fallback(self, repository: str, marker: Mapping[str, str], cause: str) -> None:
        entry = self._on_fallback.get(repository)
        if entry is None or entry.get("fallback") != marker["source"]:
            log.warning(
                "enforcement: %s runs on fallback %s (%s: %s)",
                repository, marker["source"], marker["primary"], marker.get("because", cause),
            )  # fmt: skip
            entry = {"fallback": marker["source"], "primary": marker["primary"],
                     "since": rfc3339(self._clock())}  # fmt: skip
        entry["cause"] = cause
        entry["reason"] = marker.get("because", "")
        self._on_fallback[repository] = entry
        self._on_fallback.move_to_end(repository)
        while len(self._on_fallback) > MAX_FALLBACK_ENTRIES:
            self._on_fallback.popitem(last=False)

    def _primary_answered(self, repository: str) -> None:
        if self._on_fallback.pop(repository, None) is not None:
            log.warning("enforcement: %s is answered by its own trust source again", repository)

    async def _signed_state(
        self,
        repository: str,
        rule: RepositoryRule,
        ctx: RequestContext,
        *,
        tags: Sequence[str] | None = None,
        digests: Sequence[str] = (),
    ) -> _Answered | Evaluation:
        """The rule's source's signed state, or its fallback's where that may answer, or
        the failure as an evaluation."""
        found = self._source(rule)
        if isinstance(found, Evaluation):
            return found
        source, srule = found
        try:
            state = await source.signed_state(
                repository, srule, registry=ctx.registry, tags=tags, digests=digests
            )
        except (NotSignedError, TrustSourceUnavailableError, TrustDataError) as e:
            ev = self._failure(repository, e)
            if _fallback_cause(e) is None or rule.fallback is None:
                self._primary_answered(repository)
                return ev
            return await self._fallback_state(
                repository, rule, ctx, ev, _fallback_cause(e) or "", tags=tags, digests=digests
            )
        self._primary_answered(repository)
        return _Answered(state, srule)

    async def _fallback_state(
        self,
        repository: str,
        rule: RepositoryRule,
        ctx: RequestContext,
        primary: Evaluation,
        cause: str,
        *,
        tags: Sequence[str] | None,
        digests: Sequence[str],
    ) -> _Answered | Evaluation:
        found = self._fallback_source(rule)
        if found is None:
            return primary
        source, srule, marker = found
        name = marker["source"]
        marker = {**marker, "because": primary.reason}
        try:
            state = await source.signed_state(
                repository, srule, registry=ctx.registry, tags=tags, digests=digests
            )
        except NoTrustDataError:
            reason = f"{primary.reason}; fallback {name} has no trust data for it either"
            return Evaluation(primary.finding, reason, info=primary.info, error=primary.error)
        except (NotSignedError, TrustSourceUnavailableError, TrustDataError) as e:
            ev = self._failure(repository, e)
            self._note_fallback(repository, marker, cause)
            reason = f"{ev.reason} (from fallback {name}: {primary.reason})"
            return Evaluation(ev.finding, reason, error=ev.error, fallback=marker)
        self._note_fallback(repository, marker, cause)
        return _Answered(state, srule, marker)

    async def _evaluate_tags(
        self, repository: str, tags: list[str], rule: RepositoryRule, ctx: RequestContext
    ) -> Evaluation:
        # One call per listing, not one per tag, and one state: the record's versions are
        # those of the set the list was filtered by.
        got = await self._signed_state(repository, rule, ctx, tags=tags)
        if isinstance(got, Evaluation):
            return got
        signed, info, fb = got.state.tags, got.state.info, got.fallback
        visible = [t for t in tags if t in signed and self._pattern_refusal(rule, t) is None]
        hidden = len(tags) - len(visible)
        where = f" (from fallback {fb['source']})" if fb is not None else ""
        if hidden:
            reason = f"{hidden} of {len(tags)} tags are not signed or not allowed{where}"
            return Evaluation("refused", reason, info=info, visible=visible, fallback=fb)
        reason = f"all {len(tags)} tags are signed{where}"
        return Evaluation("signed", reason, info=info, visible=visible, fallback=fb)

    async def _evaluate_digest(
        self, repository: str, digest: str, rule: RepositoryRule, ctx: RequestContext
    ) -> Evaluation:
        # One snapshot: the allowlist is cached under info.key, so the signed set and the
        # key must come from the same trust state. Read apart, a refresh between the two
        # reads cached the old state's allowed set (a revoked index and its children) under
        # the new state's key, until the trust data changed again.
        got = await self._signed_state(repository, rule, ctx, digests=(digest,))
        if isinstance(got, Evaluation):
            return got
        state, fb = got.state, got.fallback
        signed, info = state.tags, state.info
        try:
            acceptable = {
                t.digest for tag, t in signed.items() if self._pattern_refusal(rule, tag) is None
            } | state.digests
            key = (repository, got.srule, rule.tag_patterns, info.key)
            answer = await self.allowlist.check(
                key, acceptable, digest, ctx.registry.manifest if ctx.registry else None
            )
        except (FetchError, BadDataError) as e:  # the upstream, fetching a signed index
            return self._failure(repository, e)
        where = f" (from fallback {fb['source']})" if fb is not None else ""
        if answer.allowed:
            return Evaluation("signed", answer.reason + where, info=info, fallback=fb)
        return Evaluation(
            "refused",
            f"digest {digest} is not signed for {repository}{answer.reason}{where}",
            fallback=fb,
        )

    # --- records -----------------------------------------------------------------------

    @staticmethod
    def _error(v: Verdict, ev: Evaluation) -> TrustproxyError:
        if v.action == "refuse":
            return NotSignedError(v.reason)
        if ev.error is not None:
            return ev.error
        return TrustSourceUnavailableError("none", v.reason)  # pragma: no cover - defensive

    def _record(
        self,
        kind: DecisionKind,
        repository: str,
        reference: str,
        rule: RepositoryRule | None,
        v: Verdict,
        ev: Evaluation,
        ctx: RequestContext,
    ) -> None:
        t = ev.target
        evidence: dict[str, Any] = {
            **(ev.info.evidence if ev.info is not None else {}),
            **(t.evidence if t is not None else {}),
        }
        if ev.fallback is not None:
            evidence["fallback"] = dict(ev.fallback)
            FALLBACK_ANSWERS.labels(
                fallback=ev.fallback["source"], primary=ev.fallback["primary"],
                kind=kind, outcome=v.outcome,
            ).inc()  # fmt: skip
        self._emit(
            Decision(
                time=rfc3339(self._clock()),
                kind=kind,
                outcome=v.outcome,
                repository=repository,
                reference=reference,
                reason=v.reason,
                rule=rule.pattern if rule else None,
                mode=rule.mode if rule else None,
                served_digest=_served_digest(kind, reference, v, t),
                signers=t.signers if t is not None else (),
                evidence=evidence,
                client=ctx.client,
                user_agent=ctx.user_agent,
                user=ctx.user,
                method=ctx.method,
            )
        )

    def _emit(self, decision: Decision) -> None:
        try:
            self.recorder.record(decision)
        except Exception:  # a recorder must not raise; if it does, the answer still stands
            log.exception("decision recorder failed")


def _served_digest(
    kind: DecisionKind, reference: str, v: Verdict, target: SignedAnswer | None
) -> str | None:
    if v.action == "serve_signed" and target is not None:
        return target.digest
    if kind == "digest" and v.action in ("serve_signed", "pass_through"):
        return reference  # the handler serves exactly these bytes or nothing
    return None  # refused, or the upstream's answer under a tag (not known here)


async def _info(source: TrustSource, repository: str, rule: SourceRule) -> TrustInfo | None:
    try:
        return await source.trust_info(repository, rule)
    except TrustproxyError:
        return None
