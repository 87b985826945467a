"""Notary v1 / Docker Content Trust as a trust source: fetch over HTTP, verify in
:mod:`proxy.trust`, keep state in a :class:`~proxy.sources.store.TrustStateStore`."""

from __future__ import annotations

from proxy.sources.notary.fetcher import NotaryFetcher, role_of
from proxy.sources.notary.source import (
    NotarySource,
    NotarySourceOptions,
    acceptable_tags,
    decode_record,
    encode_record,
)

__all__ = [
    "NotaryFetcher",
    "NotarySource",
    "NotarySourceOptions",
    "acceptable_tags",
    "decode_record",
    "encode_record",
    "role_of",
]
