"""Trust sources: who says which digest a tag is signed at, and by whom.

:mod:`proxy.sources.base` holds the interface (:class:`TrustSource`, :class:`SigningRule`,
the outcomes); :mod:`proxy.sources.notary` the Notary v1 implementation;
:mod:`proxy.sources.store` where verified state is kept between refreshes.
"""

from __future__ import annotations

from proxy.sources.base import (
    NoTrustDataError,
    SignedTarget,
    SigningRule,
    TrustSource,
)
from proxy.sources.store import MemoryTrustStateStore, StoreUnavailableError, TrustStateStore

__all__ = [
    "MemoryTrustStateStore",
    "NoTrustDataError",
    "SignedTarget",
    "SigningRule",
    "StoreUnavailableError",
    "TrustSource",
    "TrustStateStore",
]
