"""A trust source for formats that sign digests, not tags (Cosign, Notation).

Such signatures live in the registry beside the image (a ``sha256-<hex>.sig`` tag,
referrers): the format's package supplies a :class:`DigestJudge` (read the signatures of one
digest through the request's :class:`~proxy.sources.base.RegistryReads`, verify them under
a rule) and this module makes a :class:`~proxy.sources.base.TrustSource` of it:

- **a tag** is resolved upstream (``HEAD``: the digest is a hint, since the handler fetches
  and serves exactly those bytes, hash-checked), its digest judged, and answered if
  signed; with ``onUnsignedTag: lastSigned`` a tag whose current digest is not acceptable
  answers the digest it last had while signed, judged again like any digest;
- **verdicts** (signed or refused, with the reason) are kept per (repository, digest, rule)
  for ``verdict_ttl`` (a deleted signature or a moved tag is seen within it, like any
  source's refresh interval), with single flight and stale-within-grace
  (:class:`~proxy.sources.answer_cache.AnswerCache`): a listing of N tags costs at most N
  ``HEAD`` requests and one signature lookup per new digest;
- **tag memory** for ``lastSigned`` is shared through the source's state store (Redis
  across replicas, the state file across workers). What comes back from it is untrusted:
  a digest read there is only a candidate, served after its signatures verify again now.

What a store writer can do, then, is choose among digests that are signed today for the
rule (a rollback to an older signed build of the tag, while the tag's current digest is not
signed): documented in docs/policy.md as the limit of ``lastSigned``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Literal, Protocol

from prometheus_client import Counter

from proxy.errors import (
    BadDataError,
    FetchError,
    NotSignedError,
    TrustproxyError,
    TrustSourceUnavailableError,
)
from proxy.metrics import REGISTRY
from proxy.reference import validate_digest
from proxy.sources.answer_cache import AnswerCache, Cached
from proxy.sources.base import (
    RegistryReads,
    SignedAnswer,
    SignedState,
    TrustInfo,
)
from proxy.sources.store import StoreUnavailableError, TrustStateStore

__all__ = [
    "DigestJudge",
    "DigestRule",
    "DigestSigned",
    "DigestSourceSettings",
    "SignedDigestSource",
]

log = logging.getLogger(__name__)

SIGNATURE_VERDICTS = Counter(
    "trustproxy_signature_verdicts_total",
    "Digests judged by sources that sign digests (Cosign, Notation), by source, type and "
    "result (signed, refused, unavailable).",
    ["source", "type", "result"],
    registry=REGISTRY,
)
LAST_SIGNED_SERVED = Counter(
    "trustproxy_last_signed_served_total",
    "Tags answered with the digest they last had while signed (onUnsignedTag: lastSigned).",
    ["source"],
    registry=REGISTRY,
)

#: A remembered tag record is a digest and a time: anything larger is not ours.
_MEMORY_MAX_BYTES = 512


@dataclass(frozen=True)
class DigestSigned:
    """A digest whose signatures verified under a rule (a ``SignedAnswer``)."""

    digest: str
    length: int | None = None
    #: who signed, as people name them ("key 3f2a…", an identity and its issuer, a subject)
    signers: tuple[str, ...] = ()
    #: the format's facts for the audit record (key IDs, log indexes, fingerprints)
    evidence: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


class DigestRule(Protocol):
    """What a format's rule must offer (and it must be hashable: verdicts are keyed on it)."""

    @property
    def on_unsigned_tag(self) -> Literal["deny", "lastSigned"]: ...


class DigestJudge(Protocol):
    """The format's part: find and verify the signatures of one digest."""

    @property
    def type_name(self) -> str:
        """The format (``cosign``, ``notation``): metrics label and messages."""
        ...

    async def judge(
        self,
        registry: RegistryReads,
        repository: str,
        digest: str,
        rule: Any,
        now: datetime,
    ) -> DigestSigned:
        """The signers of ``digest`` acceptable under ``rule``.

        Raises NotSignedError (the reason in users' words) when nothing acceptable is found,
        bad or forged signature data included; what ``registry`` raises when it cannot be
        read (the source answers 503 unless a verdict is kept within grace).
        """
        ...


@dataclass(frozen=True)
class DigestSourceSettings:
    """How long verdicts answer, how much a listing may cost."""

    #: a verdict (signed or refused) answers this long before the digest is judged again
    verdict_ttl: timedelta = timedelta(seconds=30)
    #: a tag's resolution upstream answers this long (a moved tag is seen within it)
    tag_ttl: timedelta = timedelta(seconds=30)
    #: past a failed re-judgement (registry unreachable), the last verdict answers this long
    grace: timedelta = timedelta(minutes=5)
    max_entries: int = 50_000
    #: digests judged at once for one tag listing
    tag_concurrency: int = 8
    #: tags judged per listing; the rest are hidden (and logged)
    max_tags: int = 1000


@dataclass(frozen=True)
class _Refused:
    """A verdict of "not acceptable", kept like a signed one (it costs as much to reach)."""

    reason: str


_Verdict = DigestSigned | _Refused


class SignedDigestSource:
    """A :class:`~proxy.sources.base.TrustSource` over a :class:`DigestJudge`."""

    def __init__(
        self,
        name: str,
        judge: DigestJudge,
        *,
        store: TrustStateStore,
        clock: Callable[[], datetime],
        settings: DigestSourceSettings | None = None,
    ) -> None:
        self._name = name
        self.judge = judge
        self.store = store
        self._clock = clock
        self.settings = s = settings or DigestSourceSettings()
        self._verdicts: AnswerCache[tuple[str, str, Any], _Verdict] = AnswerCache(
            name, clock=clock, fresh_for=s.verdict_ttl, grace=s.grace, max_entries=s.max_entries
        )
        self._tags: AnswerCache[tuple[str, str, Any], _Verdict] = AnswerCache(
            name, clock=clock, fresh_for=s.tag_ttl, grace=s.grace, max_entries=s.max_entries
        )
        #: what this process last wrote to the tag memory (skips rewriting the same digest)
        self._remembered: dict[tuple[str, str], str] = {}

    @property
    def name(self) -> str:
        return self._name

    async def aclose(self) -> None:
        self._verdicts.cancel_all()
        self._tags.cancel_all()
        # A judge may hold connections of its own (Notation: CRL distribution points).
        close = getattr(self.judge, "aclose", None)
        if close is not None:
            await close()

    def invalidate(self, repository: str) -> None:
        """Forget every verdict and tag resolution of ``repository`` (its signatures
        changed): the next request judges again."""
        self._verdicts.invalidate_where(lambda k: k[0] == repository)
        self._tags.invalidate_where(lambda k: k[0] == repository)

    # --- the TrustSource interface -----------------------------------------------------

    async def resolve(
        self,
        repository: str,
        tag: str,
        rule: DigestRule,
        /,
        *,
        registry: RegistryReads | None = None,
    ) -> DigestSigned:
        reads = self._need(registry)
        cached = await self._tags.get(
            (repository, tag, rule), lambda: self._resolve_tag(reads, repository, tag, rule)
        )
        verdict = cached.value
        if isinstance(verdict, _Refused):
            raise NotSignedError(verdict.reason)
        return verdict

    async def signed_tags(
        self,
        repository: str,
        rule: DigestRule,
        /,
        *,
        registry: RegistryReads | None = None,
        tags: Sequence[str] | None = None,
    ) -> Mapping[str, SignedAnswer]:
        return (await self.signed_state(repository, rule, registry=registry, tags=tags)).tags

    async def trust_info(self, repository: str, rule: DigestRule, /) -> TrustInfo:
        signed = self._recent_digests(repository, rule)
        return TrustInfo(state_key=(self._name, repository, signed))

    async def signed_state(
        self,
        repository: str,
        rule: DigestRule,
        /,
        *,
        registry: RegistryReads | None = None,
        tags: Sequence[str] | None = None,
        digests: Sequence[str] = (),
    ) -> SignedState:
        reads = self._need(registry)
        if tags is None:  # what this process resolved recently
            tags = [
                k[1] for k, _ in self._tags.fresh_items() if k[0] == repository and k[2] == rule
            ]
        if len(tags) > self.settings.max_tags:
            log.warning(
                "%s: %d tags listed for %s; judging the first %d, hiding the rest",
                self._name,
                len(tags),
                repository,
                self.settings.max_tags,
            )
            tags = tags[: self.settings.max_tags]
        limit = asyncio.Semaphore(self.settings.tag_concurrency)

        async def one_tag(tag: str) -> tuple[str, DigestSigned | None]:
            async with limit:
                try:
                    return tag, await self.resolve(repository, tag, rule, registry=reads)
                except NotSignedError:
                    return tag, None

        async def one_digest(digest: str) -> DigestSigned | None:
            async with limit:
                verdict = (await self._verdict(reads, repository, digest, rule)).value
                return verdict if isinstance(verdict, DigestSigned) else None

        found = await asyncio.gather(*(one_tag(t) for t in tags))
        asked = await asyncio.gather(*(one_digest(d) for d in digests))
        signed_tags = {tag: answer for tag, answer in found if answer is not None}
        signed_digests = frozenset(a.digest for a in asked if a is not None)
        recent = self._recent_digests(repository, rule)
        info = TrustInfo(
            state_key=(
                self._name,
                repository,
                frozenset((t, a.digest) for t, a in signed_tags.items()),
                recent | signed_digests,
            )
        )
        return SignedState(MappingProxyType(signed_tags), info, recent | signed_digests)

    # --- tags ----------------------------------------------------------------------------

    def _need(self, registry: RegistryReads | None) -> RegistryReads:
        if registry is None:
            raise TrustSourceUnavailableError(
                self._name,
                f"{self.judge.type_name} signatures are read from the registry, and no "
                "registry reader was given",
            )
        return registry

    async def _resolve_tag(
        self, reads: RegistryReads, repository: str, tag: str, rule: DigestRule
    ) -> _Verdict:
        try:
            digest = await reads.head_tag(tag)
            if digest is None:  # not there, or the upstream does not say: read it
                tagged = await reads.manifest_by_tag(tag)
                digest = tagged.digest if tagged is not None else None
        except (FetchError, BadDataError) as e:
            raise self._unavailable(f"could not resolve tag {tag} of {repository}: {e}") from e
        if digest is None:
            current: _Verdict = _Refused(f"tag {tag} does not exist in {repository}")
        else:
            current = (await self._verdict(reads, repository, digest, rule)).value
        if isinstance(current, DigestSigned):
            await self._remember(repository, tag, current.digest)
            return current
        if rule.on_unsigned_tag != "lastSigned":
            return current
        last = await self._recall(repository, tag)
        if last is None or last == digest:
            return current
        before = (await self._verdict(reads, repository, last, rule)).value
        if isinstance(before, _Refused):
            return _Refused(
                f"{current.reason}; the digest it last had while signed, {last}, is no "
                f"longer acceptable either: {before.reason}"
            )
        LAST_SIGNED_SERVED.labels(self._name).inc()
        evidence = dict(before.evidence)
        evidence.update(last_signed=True, current_digest=digest, current_refusal=current.reason)
        return DigestSigned(before.digest, before.length, before.signers, evidence)

    # --- verdicts ------------------------------------------------------------------------

    async def _verdict(
        self, reads: RegistryReads, repository: str, digest: str, rule: DigestRule
    ) -> Cached[_Verdict]:
        async def compute() -> _Verdict:
            try:
                signed = await self.judge.judge(reads, repository, digest, rule, self._clock())
            except NotSignedError as e:
                SIGNATURE_VERDICTS.labels(self._name, self.judge.type_name, "refused").inc()
                return _Refused(e.reason)
            except (FetchError, BadDataError) as e:
                SIGNATURE_VERDICTS.labels(self._name, self.judge.type_name, "unavailable").inc()
                if isinstance(e, TrustSourceUnavailableError):
                    raise
                raise self._unavailable(f"could not read the signatures of {digest}: {e}") from e
            if signed.digest != digest:  # a judge bug must not turn into an allow
                raise RuntimeError(f"{self.judge.type_name} judged {signed.digest} for {digest}")
            SIGNATURE_VERDICTS.labels(self._name, self.judge.type_name, "signed").inc()
            return signed

        return await self._verdicts.get((repository, digest, rule), compute)

    def _recent_digests(self, repository: str, rule: DigestRule) -> frozenset[str]:
        """Digests judged signed under ``rule`` within ``verdict_ttl`` (children of a signed
        index pulled by digest are checked against these by the gate)."""
        return frozenset(
            v.digest
            for (repo, _, of_rule), v in self._verdicts.fresh_items()
            if isinstance(v, DigestSigned) and repo == repository and of_rule == rule
        )

    def _unavailable(self, message: str) -> TrustSourceUnavailableError:
        return TrustSourceUnavailableError(self._name, message)

    # --- the shared tag memory (lastSigned) ----------------------------------------------

    @staticmethod
    def _memory_key(repository: str, tag: str) -> str:
        # Tags cannot contain "/" and repositories cannot contain "@": one key per tag.
        return f"{repository}@last-signed/{tag}"

    async def _remember(self, repository: str, tag: str, digest: str) -> None:
        if self._remembered.get((repository, tag)) == digest:
            return
        record = json.dumps({"digest": digest, "at": self._clock().isoformat()}).encode()
        try:
            await self.store.save(self._memory_key(repository, tag), record)
        except StoreUnavailableError as e:
            log.warning(
                "%s: could not remember %s:%s -> %s: %s", self._name, repository, tag, digest, e
            )
            return
        if len(self._remembered) >= self.settings.max_entries:
            self._remembered.clear()
        self._remembered[(repository, tag)] = digest

    async def _recall(self, repository: str, tag: str) -> str | None:
        """The digest the shared memory says ``tag`` last had while signed: a candidate
        only (untrusted bytes: bounded, validated; the caller judges it again)."""
        try:
            data = await self.store.load(self._memory_key(repository, tag))
        except StoreUnavailableError as e:
            log.warning("%s: tag memory unavailable for %s:%s: %s", self._name, repository, tag, e)
            return self._remembered.get((repository, tag))
        if data is None or len(data) > _MEMORY_MAX_BYTES:
            return self._remembered.get((repository, tag))
        try:
            digest = json.loads(data)["digest"]
            if not isinstance(digest, str):
                raise TypeError("not a string")
            validate_digest(digest)
        except (ValueError, KeyError, TypeError, TrustproxyError):
            log.warning(
                "%s: ignoring a malformed tag memory for %s:%s", self._name, repository, tag
            )
            return self._remembered.get((repository, tag))
        return digest
