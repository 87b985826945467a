"""CRLs fetched from a signing chain's distribution points (the I/O shell of revocation).

The URLs come from certificates in untrusted envelopes, so nothing is fetched unless the
operator named the URL's host (``crl_fetch_hosts``): without that allow-list an attacker's
certificate would make the proxy request any address it can reach (SSRF). Only ``http`` and
``https`` URLs, at most :data:`MAX_URLS` per chain, each response bounded by
:data:`~.revocation.MAX_CRL_BYTES`, no redirects, the proxy's timeouts.

What comes back is untrusted too: :mod:`.revocation` uses a CRL only when its issuer's key
verifies it, and only inside its validity. A CRL is kept until its ``nextUpdate`` (at most
``max_age``); a failed fetch (or an expired CRL) is remembered for :data:`RETRY_AFTER`
(at most ``max_age``): an unreachable distribution point is not asked on every request. A
CRL that could not be had leaves the certificate's status "unknown", which the trust
policy's level then enforces, logs or skips (``override: {revocation: …}``), as
notation-go does.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import httpx
from cryptography import x509

from proxy.sources.notation.revocation import MAX_CRL_BYTES

__all__ = [
    "MAX_URLS",
    "RETRY_AFTER",
    "CrlFetcher",
    "Get",
    "distribution_points",
    "http_get",
]

log = logging.getLogger(__name__)

MAX_URLS = 8
RETRY_AFTER = timedelta(seconds=30)
MAX_CACHED = 1024

#: ``get(url, max_bytes)`` -> the body of a 200 answer (None: any other answer). Raises
#: httpx.HTTPError / OSError / ValueError (too large) when it cannot be had.
Get = Callable[[str, int], Awaitable[bytes | None]]


def _host(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username:
        return None
    host = parts.hostname.lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{host}:{parts.port}" if parts.port else host


def distribution_points(
    chain: Sequence[x509.Certificate], hosts: frozenset[str]
) -> tuple[str, ...]:
    """The chain's CRL distribution point URLs whose host (``host`` or ``host:port``) the
    operator allows, in chain order, without repeats, at most :data:`MAX_URLS`."""
    found: list[str] = []
    for cert in chain:
        try:
            points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        except x509.ExtensionNotFound:
            continue
        for point in points:
            for name in point.full_name or ():
                if not isinstance(name, x509.UniformResourceIdentifier):
                    continue
                url = name.value
                host = _host(url)
                if host is None or host not in hosts or url in found:
                    continue
                found.append(url)
                if len(found) >= MAX_URLS:
                    return tuple(found)
    return tuple(found)


def _parse(data: bytes) -> x509.CertificateRevocationList | None:
    try:
        if b"-----BEGIN X509 CRL-----" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        return None


@dataclass
class CrlFetcher:
    """Fetched CRLs by URL, cached (see the module docstring)."""

    hosts: frozenset[str]
    get: Get
    max_age: timedelta = timedelta(hours=1)
    _cache: dict[str, tuple[datetime, x509.CertificateRevocationList | None]] = field(
        default_factory=dict
    )

    async def crls_for(
        self, chain: Sequence[x509.Certificate], now: datetime
    ) -> tuple[x509.CertificateRevocationList, ...]:
        out: list[x509.CertificateRevocationList] = []
        for url in distribution_points(chain, self.hosts):
            cached = self._cache.get(url)
            if cached is not None and now < cached[0]:
                crl = cached[1]
            else:
                crl = await self._fetch(url)
                retry = now + min(RETRY_AFTER, self.max_age)
                until = retry
                if crl is not None:
                    until = now + self.max_age
                    if crl.next_update_utc is not None and crl.next_update_utc < until:
                        # an expired CRL is asked for again no sooner than a failed fetch
                        until = max(retry, crl.next_update_utc)
                if len(self._cache) >= MAX_CACHED:
                    self._cache.clear()
                self._cache[url] = (until, crl)
            if crl is not None:
                out.append(crl)
        return tuple(out)

    async def _fetch(self, url: str) -> x509.CertificateRevocationList | None:
        try:
            data = await self.get(url, MAX_CRL_BYTES)
        except (httpx.HTTPError, OSError, ValueError) as e:
            log.warning("CRL %s could not be fetched: %s", url, e)
            return None
        if data is None:
            log.warning("CRL %s: the server did not answer 200", url)
            return None
        crl = _parse(data)
        if crl is None:
            log.warning("CRL %s: not a CRL (DER or PEM)", url)
        return crl


def http_get(client: httpx.AsyncClient) -> Get:
    """``get`` over ``client`` (the proxy's timeouts; no redirects): the body of a 200
    answer read up to ``max_bytes`` (more: ValueError), None for any other status."""

    async def get(url: str, max_bytes: int) -> bytes | None:
        async with client.stream("GET", url, follow_redirects=False) as resp:
            if resp.status_code != 200:
                return None
            body = bytearray()
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise ValueError(f"larger than {max_bytes} bytes")
            return bytes(body)

    return get
