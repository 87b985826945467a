"""Which digests may be pulled under ``digests: signed``.

Allowed: the digests of signed, acceptable tags, and the manifests a signed index (OCI
index / Docker manifest list) lists in ``manifests[].digest`` (one level: what a
multi-arch pull resolves to). Everything else is refused.

Two bounded LRU caches:

* children per index digest: content-addressed, so an entry never goes stale;
* the whole allowlist per (repository, signing rule, tag patterns, trust state), so a repeat
  request costs one set lookup until the trust data changes.

Fail closed: an index that cannot be fetched (upstream down) raises, so the pull is not
allowed; one whose bytes do not hash to the signed digest, or that is not JSON, adds no
children (and the list is not cached, so a repaired upstream is seen). More signed
manifests than ``max_fetches`` to look into: the rest add nothing (refused, with a reason).
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Collection, Hashable
from dataclasses import dataclass
from typing import Any

from proxy.errors import BadDataError, InvalidDigestError, UpstreamContentError
from proxy.reference import validate_digest
from proxy.trust_gate import FetchVerifiedManifest

__all__ = ["AllowlistAnswer", "DigestAllowlist", "index_children"]

log = logging.getLogger("trustproxy.enforcement")


@dataclass(frozen=True)
class AllowlistAnswer:
    allowed: bool
    #: allowed: why; refused: a suffix for the refusal ("" or " (...)")
    reason: str


def index_children(body: bytes, *, max_children: int) -> tuple[str, ...]:
    """``manifests[].digest`` of an index / manifest list; () for any other manifest.

    Raises:
        UpstreamContentError: not JSON, malformed ``manifests``, bad digests, or more than
            ``max_children`` entries.
    """
    try:
        doc: Any = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise UpstreamContentError("signed manifest is not JSON") from e
    if not isinstance(doc, dict) or "manifests" not in doc:
        return ()
    entries = doc["manifests"]
    if not isinstance(entries, list):
        raise UpstreamContentError("signed index: manifests is not a list")
    if len(entries) > max_children:
        raise UpstreamContentError(f"signed index lists more than {max_children} manifests")
    out: list[str] = []
    for entry in entries:
        digest = entry.get("digest") if isinstance(entry, dict) else None
        if not isinstance(digest, str):
            raise UpstreamContentError("signed index: an entry has no digest")
        try:
            validate_digest(digest)
        except InvalidDigestError as e:
            raise UpstreamContentError(f"signed index: {e}") from e
        out.append(digest)
    return tuple(out)


class DigestAllowlist:
    def __init__(
        self,
        *,
        max_lists: int = 256,
        max_indexes: int = 4096,
        max_fetches: int = 256,
        max_children: int = 1024,
    ) -> None:
        self.max_lists = max_lists
        self.max_indexes = max_indexes
        self.max_fetches = max_fetches
        self.max_children = max_children
        self._lists: OrderedDict[Hashable, frozenset[str]] = OrderedDict()
        self._children: OrderedDict[str, tuple[str, ...]] = OrderedDict()

    async def check(
        self,
        key: Hashable,
        signed: Collection[str],
        digest: str,
        fetch: FetchVerifiedManifest | None,
    ) -> AllowlistAnswer:
        """Whether ``digest`` is one of ``signed`` or a child of one of them.

        ``key`` identifies ``signed`` (it must change when the trust data does).

        Raises:
            UpstreamUnavailableError: a signed index could not be fetched.
        """
        if digest in signed:
            return AllowlistAnswer(True, f"digest {digest} is a signed target")
        cached = self._lists.get(key)
        if cached is not None:
            self._lists.move_to_end(key)
            return self._answer(cached, digest, "")
        allowed, incomplete = await self._build(signed, fetch)
        if not incomplete:
            self._lists[key] = allowed
            while len(self._lists) > self.max_lists:
                self._lists.popitem(last=False)
        return self._answer(allowed, digest, incomplete)

    @staticmethod
    def _answer(allowed: frozenset[str], digest: str, incomplete: str) -> AllowlistAnswer:
        if digest in allowed:
            return AllowlistAnswer(True, f"digest {digest} is listed in a signed index")
        suffix = f" ({incomplete})" if incomplete else ""
        return AllowlistAnswer(False, suffix)

    async def _build(
        self, signed: Collection[str], fetch: FetchVerifiedManifest | None
    ) -> tuple[frozenset[str], str]:
        """The allowlist, and why it may be incomplete ("" when it is complete)."""
        allowed = set(signed)
        incomplete = ""
        fetches = 0
        for parent in sorted(signed):
            children = self._children.get(parent)
            if children is not None:
                self._children.move_to_end(parent)
                allowed.update(children)
                continue
            if fetch is None:
                incomplete = "signed indexes could not be read"
                continue
            if fetches >= self.max_fetches:
                incomplete = f"only {self.max_fetches} signed manifests were read"
                continue
            fetches += 1
            try:
                # UpstreamUnavailableError propagates: the pull fails (closed), uncached.
                body = await fetch(parent)
                if body is None:
                    incomplete = f"signed manifest {parent} is missing upstream"
                    continue
                children = index_children(body, max_children=self.max_children)
            except BadDataError as e:  # wrong bytes for the digest, oversize, not an index
                log.warning("enforcement: signed manifest %s: %s", parent, e)
                incomplete = f"signed manifest {parent} is not usable"
                continue
            self._children[parent] = children
            while len(self._children) > self.max_indexes:
                self._children.popitem(last=False)
            allowed.update(children)
        return frozenset(allowed), incomplete
