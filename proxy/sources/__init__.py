"""Trust sources: who says which digest a tag is signed at, and by whom.

:mod:`proxy.sources.base` holds the interface (:class:`TrustSource`, the shared answer
types, the outcomes); :mod:`proxy.sources.registry` the table of source types, each one
package under ``proxy/sources/<type>/``;
:mod:`proxy.sources.store` where verified state is kept between refreshes.
"""

from __future__ import annotations

from proxy.sources.base import NoTrustDataError, TrustSource
from proxy.sources.store import MemoryTrustStateStore, StoreUnavailableError, TrustStateStore

__all__ = [
    "MemoryTrustStateStore",
    "NoTrustDataError",
    "StoreUnavailableError",
    "TrustSource",
    "TrustStateStore",
]
