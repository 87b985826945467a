"""Which upstream redirects the proxy follows (pure: no I/O, no clock).

``redirects: follow`` makes the proxy fetch whatever URL a registry's ``Location`` names, so
a hostile or compromised registry could point it at ``http://169.254.169.254/`` (cloud
metadata), ``http://127.0.0.1:6379/`` or an internal service and have the answer streamed
to the client as a "blob" (SSRF). The rules, checked on every hop before it is sent:

1. only ``http`` and ``https``; no credentials in the URL (``user:pass@host``);
2. ``https`` → ``http`` is refused unless ``insecure_redirect_to_http`` is set (a CDN URL
   carries a signed query that is then readable on the wire);
3. the upstream's own origin (the configured ``url``: scheme, host, port) is always allowed;
4. another host only when a ``redirect_hosts`` pattern allows it (:class:`HostPattern`);
5. loopback, link-local, private, unspecified, multicast and other non-global addresses,
   and ``localhost`` names, only when an **exact** pattern names them: ``*`` and
   ``*.example.com`` never reach them. A host allowed only by a wildcard must also resolve
   to global addresses only, and the address the connection really went to is checked
   again before the answer is read (see ``proxy/upstream/client.py``).

:class:`RedirectPolicy.check` answers for one hop; the client does the resolving, the
connecting and the counting.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from proxy.errors import UpstreamContentError, UpstreamUnavailableError

__all__ = [
    "DEFAULT_PORTS",
    "METADATA_KINDS",
    "HostPattern",
    "RedirectPolicy",
    "RedirectRefusedError",
    "Verdict",
    "address_kind",
    "default_redirect_hosts",
    "display_host",
    "host_kind",
    "resolve_location",
]

DEFAULT_PORTS = {"http": 80, "https": 443}

# Docker Hub answers blob GETs with 307s to its CDN and storage. Docker's own firewall
# allowlist (docs.docker.com, "Allowlist for Docker Desktop") names these hosts for pulls;
# anonymous and personal-plan pulls go to the R2 bucket, paid plans to the CDNs.
DOCKER_HUB_STORAGE = (
    "production.cloudflare.docker.com",
    "production.cloudfront.docker.com",
    "docker-images-prod.6aa30f8b08e16409b46e0173d6de2f56.r2.cloudflarestorage.com",
)
_KNOWN_STORAGE = {
    "registry-1.docker.io": DOCKER_HUB_STORAGE,
    "index.docker.io": DOCKER_HUB_STORAGE,
}

# RFC 6761 §6.3: "localhost." and names below it are loopback, whatever DNS says.
_LOCALHOST = "localhost"
# RFC 6052 NAT64 prefixes: on a NAT64 network 64:ff9b::a00:1 *is* 10.0.0.1.
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class RedirectRefusedError(UpstreamUnavailableError):
    """The upstream redirected somewhere the config does not let the proxy go.

    ``host`` is the refused ``host[:port]`` (never the full URL: a storage URL carries a
    signed query), ``reason`` a short phrase. Answered as a 502 naming the upstream.
    """

    def __init__(
        self, upstream: str, host: str, reason: str, *, what: str = "follow a redirect to"
    ) -> None:
        self.host = host
        self.reason = reason
        where = f"{what} {host}" if host else what.removesuffix(" to").removesuffix(" at")
        super().__init__(upstream, f"refused to {where}: {reason}")


def default_redirect_hosts(url: str) -> tuple[str, ...]:
    """``redirect_hosts`` when the config does not set it: the storage hosts of the few
    registries whose redirects are documented (Docker Hub), nothing for any other."""
    try:
        host = httpx.URL(url).host.lower()
    except httpx.InvalidURL:
        return ()
    return _KNOWN_STORAGE.get(host, ())


def resolve_location(base: httpx.URL, location: str) -> httpx.URL:
    """``location`` made absolute against ``base``. Raises UpstreamContentError when it is not
    a URL (an unclosed IPv6 bracket, a bad port...): an upstream bug, never a 500 here."""
    try:
        return base.join(location)
    except (httpx.InvalidURL, ValueError) as e:
        raise UpstreamContentError("upstream sent a malformed redirect Location") from e


def display_host(url: httpx.URL) -> str:
    """``host[:port]`` for messages and logs (port only when not the scheme's default)."""
    host = _host(url)
    shown = f"[{host}]" if ":" in host else host
    port = url.port
    if port is not None and port != DEFAULT_PORTS.get(url.scheme):
        shown = f"{shown}:{port}"
    if url.scheme not in DEFAULT_PORTS:  # file:, gopher:...: say which
        return f"{url.scheme}://{shown}" if shown else f"a {url.scheme or 'schemeless'}: URL"
    return shown or "(no host)"


def _host(url: httpx.URL) -> str:
    # raw_host is what httpx connects to (IDNA-encoded, lower case); strip the root dot
    # so "localhost." and "example.com." compare like their usual spellings.
    return url.raw_host.decode("ascii", "replace").lower().rstrip(".")


def _port(url: httpx.URL) -> int:
    return url.port if url.port is not None else DEFAULT_PORTS.get(url.scheme, 0)


def _literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` as an IP address if the resolver would take it as one.

    Besides the canonical forms, glibc's resolver reads the legacy IPv4 spellings
    (``127.1``, ``2130706433``, ``0x7f.1``, ``0177.0.0.1``) through inet_aton: a URL host
    like that connects to 127.0.0.1 without any DNS, so it is judged as that address.
    """
    bare = host.split("%", 1)[0]  # an IPv6 zone id (fe80::1%eth0) is not part of the address
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    if bare and all(c in "0123456789abcdefx." for c in bare):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(bare))
        except OSError:
            return None
    return None


#: Instance metadata services outside link-local space (AWS IPv6 on Nitro, Alibaba Cloud);
#: the others (169.254.169.254, ECS's 169.254.170.2) are link-local anyway.
_METADATA = frozenset(
    {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}
)
#: Address kinds a token realm may never lead to, whatever the name.
METADATA_KINDS = frozenset({"cloud metadata", "link-local", "unspecified", "multicast"})


def address_kind(address: ipaddress.IPv4Address | ipaddress.IPv6Address | str) -> str | None:
    """Why an address is not a public one ("loopback", "link-local", ...), or None when it is
    globally routable. Unparseable text counts as "not an IP address"."""
    if isinstance(address, str):
        try:
            address = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return "not an IP address"
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is None and any(address in net for net in _NAT64):
            mapped = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if mapped is not None:
            return address_kind(mapped)
    if address in _METADATA:
        return "cloud metadata"
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private"
    if address.is_reserved or not address.is_global:
        return "not globally routable"
    return None


def host_kind(host: str) -> str | None:
    """Why a URL host (name or literal) is not a public destination, or None when nothing
    is known against it without resolving it."""
    host = host.lower().rstrip(".")
    if host == _LOCALHOST or host.endswith("." + _LOCALHOST):
        return "loopback (localhost)"
    literal = _literal_address(host)
    if literal is not None:
        kind = address_kind(literal)
        return f"{kind} address" if kind else None
    return None


@dataclass(frozen=True)
class HostPattern:
    """One ``redirect_hosts`` entry.

    ``host`` or ``host:port``; ``*.example.com`` (any name below example.com, at any depth,
    not example.com itself); ``*`` (any host). IPv6 literals in brackets. Without a port
    a pattern allows the redirect scheme's default port only (443 for https, 80 for http).
    Only an exact pattern (no ``*``) lets a redirect reach a non-public address.
    """

    host: str  # lower case; the suffix without "*." for a wildcard; "" for "*"
    port: int | None
    kind: str  # "exact", "subdomains" or "any"

    @classmethod
    def parse(cls, text: str) -> HostPattern:
        """Raises ValueError with a message for the config error."""
        raw = text.strip().lower()
        if not raw or "/" in raw or "@" in raw or any(c.isspace() for c in raw):
            raise ValueError("expected host, host:port, *.domain or * (no scheme or path)")
        host, port = _split_port(raw)
        if host == "*":
            return cls("", port, "any")
        if host.startswith("*."):
            suffix = host[2:].rstrip(".")
            if "*" in suffix or not _is_hostname(suffix):
                raise ValueError("a wildcard is '*.' followed by a domain name")
            return cls(suffix, port, "subdomains")
        if "*" in host:
            raise ValueError("'*' is only allowed as '*' or a leading '*.'")
        host = host.rstrip(".")
        if host.startswith("[") and host.endswith("]"):
            inner = host[1:-1]
            try:
                return cls(str(ipaddress.IPv6Address(inner)), port, "exact")
            except ValueError as e:
                raise ValueError(f"not an IPv6 address: {inner!r}") from e
        if _literal_address(host) is None and not _is_hostname(host):
            raise ValueError(f"not a host name or IP address: {host!r}")
        literal = _literal_address(host)
        return cls(str(literal) if literal is not None else host, port, "exact")

    @property
    def exact(self) -> bool:
        return self.kind == "exact"

    def matches(self, host: str, port: int, scheme: str) -> bool:
        wanted = self.port if self.port is not None else DEFAULT_PORTS.get(scheme)
        if port != wanted:
            return False
        if self.kind == "any":
            return True
        if self.kind == "subdomains":
            return host.endswith("." + self.host)
        literal = _literal_address(host)
        return (str(literal) if literal is not None else host) == self.host


def _split_port(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("unclosed '[' in an IPv6 address")
        host, rest = text[: end + 1], text[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ValueError("expected ':port' after ']'")
        return host, _port_number(rest[1:])
    if text.count(":") > 1:
        raise ValueError("write IPv6 addresses in brackets: [fd00::1]:9000")
    host, sep, port = text.partition(":")
    return host, _port_number(port) if sep else None


def _port_number(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"not a port number: {text!r}")
    return int(text)


def _is_hostname(host: str) -> bool:
    labels = host.split(".")
    return len(host) <= 253 and all(
        0 < len(label) <= 63
        and all(c.isalnum() or c in "-_" for c in label)
        and label.isascii()
        and not label.startswith("-")
        and not label.endswith("-")
        for label in labels
    )


@dataclass(frozen=True)
class Verdict:
    """The answer for one hop. ``vet_addresses``: the host was allowed by a wildcard only,
    so the addresses it resolves to (and the one connected to) must all be global."""

    allowed: bool
    reason: str = ""
    vet_addresses: bool = False


@dataclass(frozen=True)
class RedirectPolicy:
    """Where one upstream's redirects may lead (built from its settings)."""

    origin: tuple[str, str, int]  # the upstream's own (scheme, host, port)
    hosts: tuple[HostPattern, ...] = ()
    allow_http_downgrade: bool = False

    @classmethod
    def build(
        cls, url: str, patterns: Iterable[str], *, allow_http_downgrade: bool = False
    ) -> RedirectPolicy:
        """Raises ValueError for a bad pattern (the config layer checked them already)."""
        base = httpx.URL(url)
        return cls(
            origin=(base.scheme, _host(base), _port(base)),
            hosts=tuple(HostPattern.parse(p) for p in patterns),
            allow_http_downgrade=allow_http_downgrade,
        )

    def check(self, source: httpx.URL, target: httpx.URL) -> Verdict:
        """May the proxy follow a redirect from ``source`` (the hop that answered 3xx) to
        ``target`` (already absolute)?"""
        refused = _unusable(target)
        if refused is not None:
            return refused
        scheme, host = target.scheme, _host(target)
        if source.scheme == "https" and scheme == "http" and not self.allow_http_downgrade:
            return Verdict(False, "https to http downgrade (insecure_redirect_to_http is off)")
        port = _port(target)
        if (scheme, host, port) == self.origin:
            return Verdict(True)
        matching = [p for p in self.hosts if p.matches(host, port, scheme)]
        if not matching:
            return Verdict(False, "not in redirect_hosts")
        if any(p.exact for p in matching):
            return Verdict(True)  # the operator named this very host
        kind = host_kind(host)
        if kind is not None:
            return Verdict(False, f"{kind} (a wildcard never allows it; list it exactly)")
        literal = _literal_address(host)
        return Verdict(True, vet_addresses=literal is None)

    def check_realm(self, target: httpx.URL) -> Verdict:
        """May the proxy fetch the token realm the upstream named, for a client (passthrough
        token relay, whose answer goes back to the client)?

        Token services often live on another host or port of the registry's domain, so the
        rule is looser than for redirects: the upstream's own host (any port), a host a
        ``redirect_hosts`` pattern names exactly, or any host that is not a literal
        non-public address or ``localhost``. A name is resolved and refused if it leads to
        a link-local, unspecified or multicast address (cloud metadata services: never a
        token service); internal token services on private addresses keep working.
        """
        refused = _unusable(target)
        if refused is not None:
            return refused
        scheme, host = target.scheme, _host(target)
        if scheme == "http" and self.origin[0] == "https":
            return Verdict(False, "a plain http token service for an https registry")
        if host == self.origin[1] or any(
            p.exact and p.matches(host, p.port or _port(target), scheme) for p in self.hosts
        ):
            return Verdict(True)
        kind = host_kind(host)
        if kind is not None:
            return Verdict(False, f"{kind} (list it in redirect_hosts to allow)")
        return Verdict(True, vet_addresses=_literal_address(host) is None)


def _unusable(target: httpx.URL) -> Verdict | None:
    """The refusal every target gets, whoever asks: not http(s), no host, or userinfo."""
    if target.scheme not in DEFAULT_PORTS:
        return Verdict(False, f"scheme {target.scheme or '(none)'!r} is not http or https")
    if not _host(target):
        return Verdict(False, "no host")
    if target.userinfo:
        return Verdict(False, "credentials in the URL")
    return None
