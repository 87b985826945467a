"""Manifests by digest, kept in memory so that a warm pull needs no upstream round trip (pure).

A manifest addressed by digest never changes, so once its bytes have been hashed and found
to match, they can be served again without asking the upstream for them. Bounded by bytes,
least recently used out first (``limits.manifest_cache_bytes``; 0 turns the cache off).

What the key holds, and why:

* the **upstream** (by name): different upstreams are different trust domains, and a digest
  one registry serves says nothing about what another one has;
* the **repository** (as the upstream calls it): a registry answers a manifest by digest
  per repository (it may have it in ``a/x`` and not in ``b/y``, or the client may only be
  allowed to pull one of them); serving ``a/x``'s copy for ``b/y`` would change what the
  registry says exists. Keyed per repository, a digest pushed to N repositories costs N
  entries, which is the price of keeping the registry's semantics;
* the **digest**.

Only verified bytes go in: :meth:`ManifestCache.put` hashes them again and refuses (a
caller bug) bytes that do not match the digest, so an upstream that lies is never cached.
Whoever serves an entry still decides whether this client may have it (passthrough auth
asks the upstream first: see ``proxy/http/handlers.py``).

**Deletions.** The bytes of a digest never change, but the registry may stop having them
(``DELETE /v2/<repo>/manifests/<digest>``: a pulled-back vulnerable or malicious image).
So an entry is only served without asking for ``recheck_after`` seconds after the upstream
last said it has it (``limits.manifest_cache_recheck``); the first hit after that claims
the re-check (:meth:`ManifestCache.claim_recheck`), and the handler asks the upstream with
a HEAD (no body) and discards the entry when the upstream no longer has it. Other hits
meanwhile are served as before: one HEAD per entry and interval, never one per
request. A digest the registry deleted stops being served at most ``recheck_after`` (plus
one HEAD) after the deletion.

One event loop uses it: no locks, and no ``await`` anywhere in here, so every method runs
to completion without interleaving. The clock is passed in (monotonic seconds).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from proxy.digests import digest_of

__all__ = ["CachedManifest", "ManifestCache"]

# Bookkeeping per entry beyond its bytes (key strings, tuple, OrderedDict node), so that a
# flood of tiny manifests is bounded too. An estimate: CPython's real overhead is similar.
ENTRY_OVERHEAD = 256

# One entry may take at most this share of the cache: a single huge manifest must not
# evict everything else (mitmproxy's stream_large_bodies: big things are not buffered).
MAX_ENTRY_SHARE = 8


@dataclass(frozen=True)
class CachedManifest:
    """Verified bytes of a manifest and the upstream response headers that went with them
    (those ``proxy.http.relay.relayed_headers`` keeps), so a hit answers like the miss did."""

    body: bytes
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def media_type(self) -> str | None:
        for name, value in self.headers:
            if name.lower() == "content-type":
                return value
        return None

    @property
    def header_map(self) -> dict[str, str]:
        return dict(self.headers)

    @property
    def cost(self) -> int:
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers) + ENTRY_OVERHEAD


CacheKey = tuple[str, str, str]  # (upstream name, upstream repository name, digest)


class _Slot:
    """An entry and when the upstream must next be asked whether it still has it."""

    __slots__ = ("manifest", "recheck_at")

    def __init__(self, manifest: CachedManifest, recheck_at: float) -> None:
        self.manifest = manifest
        self.recheck_at = recheck_at


class ManifestCache:
    """An LRU map (upstream, repository, digest) → :class:`CachedManifest`, bounded in bytes.

    ``recheck_after``: seconds an entry is served without asking the upstream whether it
    still has the digest (0: ask on every hit). ``clock``: monotonic seconds.
    """

    def __init__(
        self,
        max_bytes: int,
        *,
        recheck_after: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, not {max_bytes}")
        if recheck_after < 0:
            raise ValueError(f"recheck_after must be >= 0, not {recheck_after}")
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_bytes // MAX_ENTRY_SHARE
        self.recheck_after = recheck_after
        self._clock = clock
        self._entries: OrderedDict[CacheKey, _Slot] = OrderedDict()
        self._bytes = 0
        # Plain counters for tests and debugging; Prometheus metrics live elsewhere.
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.rechecks = 0  # re-checks claimed
        self.discards = 0  # entries dropped because the upstream no longer has them

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def total_bytes(self) -> int:
        """What the entries cost, as counted against ``max_bytes``."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        # Membership without touching the LRU order (for tests and logs).
        return key in self._entries

    def get(self, upstream: str, repository: str, digest: str) -> CachedManifest | None:
        """The entry, made most recently used; None when there is none."""
        key = (upstream, repository, digest)
        slot = self._entries.get(key)
        if slot is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return slot.manifest

    def claim_recheck(self, upstream: str, repository: str, digest: str) -> bool:
        """True when the entry is due to be re-checked upstream; the caller then asks, and
        the next re-check is due ``recheck_after`` from now (so concurrent hits do not ask
        too). The caller discards the entry (:meth:`discard`) if the upstream no longer has
        it, or releases the claim (:meth:`release`) if it could not finish asking. False:
        not due, or no such entry."""
        slot = self._entries.get((upstream, repository, digest))
        if slot is None:
            return False
        now = self._clock()
        if now < slot.recheck_at:
            return False
        slot.recheck_at = now + self.recheck_after
        self.rechecks += 1
        return True

    def confirm(self, upstream: str, repository: str, digest: str) -> None:
        """The upstream just said it has the digest: next re-check ``recheck_after`` on."""
        slot = self._entries.get((upstream, repository, digest))
        if slot is not None:
            slot.recheck_at = self._clock() + self.recheck_after

    def release(self, upstream: str, repository: str, digest: str) -> None:
        """A claimed re-check did not finish (cancelled): the next hit asks again."""
        slot = self._entries.get((upstream, repository, digest))
        if slot is not None:
            slot.recheck_at = self._clock()

    def discard(self, upstream: str, repository: str, digest: str) -> bool:
        """Drop the entry (the upstream no longer has it); whether there was one."""
        slot = self._entries.pop((upstream, repository, digest), None)
        if slot is None:
            return False
        self._bytes -= slot.manifest.cost
        self.discards += 1
        return True

    def put(
        self,
        upstream: str,
        repository: str,
        digest: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
    ) -> bool:
        """Keep ``body`` (whose hash the caller has checked) under the key; returns whether
        it was kept (not when disabled or too big for one entry).

        Raises RuntimeError when ``body`` (to be kept) does not hash to ``digest``: callers put only
        verified bytes, and a bug that breaks this must not turn into serving wrong bytes.
        Raises InvalidDigestError for an algorithm other than sha256/sha512.
        """
        if not self.enabled:
            return False
        entry = CachedManifest(body, tuple((headers or {}).items()))
        if entry.cost > self.max_entry_bytes:
            return False
        algorithm = digest.partition(":")[0]
        if digest_of(body, algorithm) != digest:
            raise RuntimeError(f"refusing to cache bytes that do not hash to {digest}")
        key = (upstream, repository, digest)
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.manifest.cost
        # Just fetched from the upstream: that is the check.
        self._entries[key] = _Slot(entry, self._clock() + self.recheck_after)
        self._bytes += entry.cost
        while self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.manifest.cost
            self.evictions += 1
        return True

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0
