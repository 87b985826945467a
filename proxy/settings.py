"""Typed configuration: frozen dataclasses loaded from YAML, with environment overrides.

The YAML key names are a public contract (users and their automation write them).

Environment overrides: every value can be set by a variable named ``TRUSTPROXY_`` followed
by the key path in upper case with ``__`` between path segments, list items by index::

    TRUSTPROXY_SERVER__LISTEN=0.0.0.0:8443
    TRUSTPROXY_UPSTREAMS__0__AUTH__PASSWORD=s3cret
    TRUSTPROXY_TRUST__SOURCES__NOTARY__URL=https://notary.internal:4443
    TRUSTPROXY_CACHE__REDIS_URL=redis://redis:6379/0

Values are read as YAML scalars (``null``, ``true``, ``42``, ``4MiB`` all work). Mapping keys
match case-insensitively; an index one past the end of a list appends an item. This module
never reads the environment itself: the entry point passes it in.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

import yaml

from proxy.errors import ConfigError
from proxy.sources.registry import source_type, source_type_names
from proxy.upstream.redirects import HostPattern, default_redirect_hosts

ENV_PREFIX = "TRUSTPROXY_"

AuthMode = Literal["anonymous", "basic", "passthrough"]
RedirectMode = Literal["follow", "relay"]
BlobMode = Literal["stream", "redirect"]
LogFormat = Literal["json", "text"]
AuditSink = Literal["stdout", "file", "off"]

KiB = 1024
MiB = 1024 * KiB
DEFAULT_STATE_DIR = Path("/var/lib/trustproxy")
MAX_WORKERS = 256


@dataclass(frozen=True)
class ClientAuthSettings:
    """How clients authenticate to the proxy itself (both may be set)."""

    htpasswd_file: Path | None = None  # Basic auth against bcrypt hashes (htpasswd -B)
    client_ca_file: Path | None = None  # mTLS: client certificates must chain to this CA

    @property
    def enabled(self) -> bool:
        return self.htpasswd_file is not None or self.client_ca_file is not None


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8443
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    client_auth: ClientAuthSettings = field(default_factory=ClientAuthSettings)
    metrics_enabled: bool = True  # GET /metrics (Prometheus) on the proxy's own listener
    # Client connections (proxy/http/server_protocol.py): with no request in progress, a
    # complete request head within header_timeout seconds and max_header_bytes (slowloris,
    # huge headers); idle keep-alive connections are closed after keep_alive_timeout.
    header_timeout: float = 30.0
    max_header_bytes: int = 64 * KiB
    keep_alive_timeout: float = 5.0  # uvicorn's default
    # --- workers (README "Workers"): processes serving the one port; None ("auto"): as many
    # as CPUs this process may run on (os.sched_getaffinity), resolved by `serve`.
    workers: int | None = None

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def loopback_only(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True)
class CredentialSettings:
    """Basic credentials; the password may come from the config, the environment or a file."""

    username: str | None = None
    password: str | None = None

    @property
    def present(self) -> bool:
        return self.username is not None and self.password is not None


@dataclass(frozen=True)
class UpstreamAuthSettings:
    # anonymous: the proxy follows Bearer challenges without credentials.
    # basic: the proxy uses its own credentials (Basic, or Bearer with Basic to the realm).
    # passthrough: the client's Authorization goes upstream; nothing is shared between clients.
    mode: AuthMode = "anonymous"
    credentials: CredentialSettings = field(default_factory=CredentialSettings)


@dataclass(frozen=True)
class UpstreamSettings:
    name: str
    url: str  # scheme://host[:port], no path
    registry: str  # the registry name in repository names and policy patterns (docker.io for Hub)
    prefix: str | None = None  # /v2/<prefix>/<repo>/... routes here, as <repo>
    ca_file: Path | None = None
    auth: UpstreamAuthSettings = field(default_factory=UpstreamAuthSettings)
    redirects: RedirectMode = "follow"  # blob 3xx from the registry: follow here or relay
    # Where a followed redirect may lead besides the upstream's own origin (host, host:port,
    # *.domain, *: proxy/upstream/redirects.py). None: the documented storage hosts of a
    # known registry (Docker Hub), else none (see :attr:`allowed_redirect_hosts`).
    redirect_hosts: tuple[str, ...] | None = None
    # Follow https -> http redirects (signed storage URLs readable on the wire). Unsafe:
    # named so, and logged on every such hop.
    insecure_redirect_to_http: bool = False
    # Hash whole blobs on the way through and cut one that does not match its digest before
    # its last chunk (clients verify too; this keeps a complete bad blob from ever leaving
    # the proxy). Costs ~0.6 CPU s/GB (sha256): off for raw throughput.
    verify_blobs: bool = True
    # Blob GETs: "stream" them through here (hash-checked when verify_blobs), or "redirect"
    # the client to where the upstream serves them (its storage redirect, else its own blob
    # URL): no blob bytes pass through the proxy, so it no longer checks them (clients
    # still do), and clients must reach, and be allowed to read, that place (README).
    blobs: BlobMode = "stream"

    @property
    def allowed_redirect_hosts(self) -> tuple[str, ...]:
        """``redirect_hosts``, or the default for this upstream's URL when not set."""
        if self.redirect_hosts is not None:
            return self.redirect_hosts
        return default_redirect_hosts(self.url)


@dataclass(frozen=True)
class ChangefeedSettings:
    """A trust source's change feed (``trust.sources.<name>.changefeed``): one replica at a
    time polls it and every replica drops its cached state of the repositories it names, so a
    revocation reaches clients within about ``interval`` instead of the refresh interval."""

    enabled: bool = True
    interval: float = 1.0  # seconds between two polls of the feed (by whichever replica)


@dataclass(frozen=True)
class TrustSourceSettings:
    name: str
    type: str  # a proxy.sources.registry type name
    url: str
    ca_file: Path | None = None
    credentials: CredentialSettings = field(default_factory=CredentialSettings)
    # How long verified trust data is used before a request refreshes it: the longest a
    # revocation (a signature removed and published) takes to reach clients. None: use
    # ``cache.refresh_seconds`` (see :meth:`fresh_for`).
    refresh_interval: float | None = None
    # After a failed refresh (outage, bad data), how long before the next attempt.
    retry_interval: float = 10.0
    # The source's change feed, for sources whose server has one (Notary v1).
    changefeed: ChangefeedSettings = field(default_factory=ChangefeedSettings)

    def fresh_for(self, cache: CacheSettings) -> float:
        """Seconds between timestamp re-checks: this source's own ``refresh_interval`` when
        set, else ``cache.refresh_seconds``."""
        return self.refresh_interval if self.refresh_interval is not None else cache.refresh_seconds


@dataclass(frozen=True)
class TrustSettings:
    sources: tuple[TrustSourceSettings, ...] = ()


@dataclass(frozen=True)
class CacheSettings:
    """Where trust state lives (``cache:``): in process, or shared by replicas in Redis."""

    redis_url: str | None = None  # None: in-process memory (one replica only)
    # A repository's timestamp is re-checked at most this often: the longest a revoked tag
    # stays visible (a trust source's own refresh_interval overrides it).
    refresh_seconds: float = 30.0
    key_prefix: str = "trustproxy:"
    # Cross-replica refresh lock: a crashed holder blocks the others at most this long.
    lock_timeout: float = 30.0
    # Socket timeouts: a slow Redis must not stall requests (it is treated as down).
    redis_timeout: float = 1.0
    # --- the host's state file (proxy/sources/sqlite_store.py): trust state shared by the
    # workers (without Redis: records and refresh lock too) and kept across restarts.
    # None (``state_dir: memory``): per-process memory, one worker only, forgotten on restart.
    state_dir: Path | None = DEFAULT_STATE_DIR


@dataclass(frozen=True)
class LimitSettings:
    manifest_max_bytes: int = 4 * MiB  # OCI's recommended manifest limit
    # one trust metadata file a source fetches from its server (10,000 tags ~ 2 MiB)
    metadata_max_bytes: int = 16 * MiB
    tag_list_max_bytes: int = 8 * MiB
    token_max_bytes: int = 64 * KiB
    error_body_max_bytes: int = 64 * KiB
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_redirects: int = 5
    max_connections: int = 200  # per upstream
    # The whole upstream exchange, from sending the request to the last byte of a size-
    # bounded body (manifest, tag list, token, error body), and to the response headers of
    # every request (blobs too). read_timeout is per socket read: a registry that trickles a
    # byte every few seconds never trips it. None: twice read_timeout.
    request_timeout: float | None = None
    # A streamed body (blob, referrers) that averages fewer bytes per second than this,
    # counting only the time spent waiting for the upstream, after read_timeout of grace, is
    # cut (slowloris). 0: off.
    min_upstream_rate: int = 1 * KiB
    # Verified manifests by digest kept in memory (proxy/manifest_cache.py); 0 disables.
    manifest_cache_bytes: int = 64 * MiB
    # A cached manifest is served without asking the upstream for this long after the
    # upstream last said it has the digest; then one HEAD asks again, and a digest it no
    # longer has (deleted) is dropped: the longest a deleted manifest is still served.
    # 0: ask on every hit.
    manifest_cache_recheck: float = 30.0

    @property
    def request_deadline(self) -> float:
        """Seconds an upstream exchange may take in all (``request_timeout`` or its default)."""
        return self.request_timeout if self.request_timeout is not None else 2 * self.read_timeout


@dataclass(frozen=True)
class LoggingSettings:
    level: str = "info"
    format: LogFormat = "json"
    access_log: bool = True


@dataclass(frozen=True)
class AuditSettings:
    """Where the audit records (one JSON line per enforcement decision) go."""

    sink: AuditSink = "stdout"
    path: Path | None = None  # sink "file" only: appended to, reopened on SIGHUP (logrotate)


@dataclass(frozen=True)
class Settings:
    server: ServerSettings
    upstreams: tuple[UpstreamSettings, ...]
    trust: TrustSettings = field(default_factory=TrustSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    policy_file: Path | None = None
    source_file: Path | None = None  # where the config came from, for messages
    # Problems that do not stop the proxy from starting but make it refuse to serve what
    # they concern (fail closed); `config check` prints them, `serve` logs them.
    warnings: tuple[str, ...] = ()


# --------------------------------------------------------------------------- loading


def load_settings(
    path: Path, environ: Mapping[str, str] | None = None, *, check_files: bool = True
) -> Settings:
    """Load ``path`` (YAML), apply ``TRUSTPROXY_*`` overrides from ``environ``, validate.

    Relative file paths are resolved against the config file's folder.
    Raises ConfigError naming the offending key path.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(path), f"cannot read: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(str(path), f"not UTF-8 text: {e.reason}") from e
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(str(path), f"not valid YAML: {e}") from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("", "the config must be a mapping at the top level")
    apply_env_overrides(raw, environ or {})
    return parse_settings(
        raw, base_dir=path.resolve().parent, source_file=path, check_files=check_files
    )


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Apply ``TRUSTPROXY_A__B__0__C=value`` to the raw config tree, in place."""
    # Numeric segments sort as numbers so that list items are appended in order
    # (UPSTREAMS__2 before UPSTREAMS__10).
    for name in sorted(environ, key=_env_sort_key):
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX:
            continue
        segments = [s.lower() for s in name[len(ENV_PREFIX) :].split("__")]
        if any(not s for s in segments):
            raise ConfigError(name, "empty key segment in environment override")
        _set_path(raw, segments, _env_value(environ[name]), name)


_YAML_NULLS = ("null", "Null", "NULL", "~")


def _env_value(text: str) -> Any:
    """A YAML scalar from an environment value, but never a silently different string.

    YAML 1.1 reads ``0123`` as 83 and ``#x`` as null, and a value cannot be quoted in the
    environment: a password like that must arrive as written. Numbers are kept only when
    they read back as the same text; mappings, lists and dates are not scalars we take.
    """
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text
    if value is None:
        return None if text.strip() in _YAML_NULLS else text
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int | float) and str(value) == text.strip():
        return value
    return text


def _env_sort_key(name: str) -> list[tuple[int, int, str]]:
    return [(0, int(seg), "") if seg.isascii() and seg.isdigit() else (1, 0, seg)
            for seg in name.split("__")]  # fmt: skip


def _set_path(node: Any, segments: list[str], value: Any, env_name: str) -> None:
    *parents, last = segments
    for i, seg in enumerate(parents):
        nxt = segments[i + 1]
        child_default: Any = [] if nxt.isdigit() else {}
        node = _child(node, seg, child_default, env_name)
    _assign(node, last, value, env_name)


def _child(node: Any, seg: str, default: Any, env_name: str) -> Any:
    if isinstance(node, list):
        index = _list_index(node, seg, env_name)
        if index == len(node):
            node.append(default)
        return node[index]
    if isinstance(node, dict):
        key = _match_key(node, seg)
        if key not in node or node[key] is None:
            node[key] = default
        return node[key]
    raise ConfigError(env_name, f"cannot descend into a {type(node).__name__} at '{seg}'")


def _assign(node: Any, seg: str, value: Any, env_name: str) -> None:
    if isinstance(node, list):
        index = _list_index(node, seg, env_name)
        if index == len(node):
            node.append(value)
        else:
            node[index] = value
    elif isinstance(node, dict):
        node[_match_key(node, seg)] = value
    else:
        raise ConfigError(env_name, f"cannot set '{seg}' inside a {type(node).__name__}")


def _list_index(node: list[Any], seg: str, env_name: str) -> int:
    if not (seg.isascii() and seg.isdigit()) or int(seg) > len(node):
        raise ConfigError(env_name, f"'{seg}' is not a list index in 0..{len(node)}")
    return int(seg)


def _match_key(node: dict[str, Any], seg: str) -> str:
    for key in node:
        if isinstance(key, str) and key.lower() == seg:
            return key
    return seg


# --------------------------------------------------------------------------- parsing

T = TypeVar("T")

_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB|k|K|M|G)?\s*$")
_SIZE_UNITS = {
    None: 1, "B": 1, "KiB": KiB, "MiB": MiB, "GiB": 1024 * MiB,
    "KB": 1000, "MB": 1000**2, "GB": 1000**3, "k": KiB, "K": KiB, "M": MiB, "G": 1024 * MiB,
}  # fmt: skip
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_REPO_PREFIX = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")


class _Section:
    """A mapping in the config with its key path, for precise messages and unknown-key checks."""

    def __init__(self, data: Any, path: str, base_dir: Path, check_files: bool = True) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(path, f"must be a mapping, not {_kind(data)}")
        self.data: dict[str, Any] = data
        self.path = path
        self.base_dir = base_dir
        self.check_files = check_files
        self.used: set[str] = set()

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str) -> Any:
        self.used.add(key)
        return self.data.get(key)

    def section(self, key: str) -> _Section:
        return _Section(self.get(key), self.sub(key), self.base_dir, self.check_files)

    def value(self, key: str, parse: Callable[[Any, str], T], default: T) -> T:
        raw = self.get(key)
        return default if raw is None else parse(raw, self.sub(key))

    def required(self, key: str, parse: Callable[[Any, str], T]) -> T:
        raw = self.get(key)
        if raw is None:
            raise ConfigError(self.sub(key), "is required")
        return parse(raw, self.sub(key))

    def path_value(self, key: str) -> Path | None:
        raw = self.get(key)
        if raw is None:
            return None
        text = _str(raw, self.sub(key))
        p = Path(text).expanduser()
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    def existing_file(self, key: str) -> Path | None:
        """A path that must name an existing file (unless file checks are off)."""
        p = self.path_value(key)
        if p is not None and self.check_files and not p.is_file():
            raise ConfigError(self.sub(key), f"file not found: {p}")
        return p

    def finish(self) -> None:
        unknown = sorted(str(k) for k in self.data if k not in self.used)
        if unknown:
            raise ConfigError(self.sub(unknown[0]), "unknown key")


def _kind(v: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(v), type(v).__name__
    )


def _str(v: Any, path: str) -> str:
    if isinstance(v, bool) or not isinstance(v, str | int | float):
        raise ConfigError(path, f"must be a string, not {_kind(v)}")
    return str(v)


def _bool(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(path, f"must be true or false, not {v!r}")
    return v


def _size(v: Any, path: str) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        n = v
    elif isinstance(v, str) and (m := _SIZE.match(v)):
        n = int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    else:
        raise ConfigError(path, f"not a size (use bytes or e.g. 4MiB): {v!r}")
    if n <= 0:
        raise ConfigError(path, "must be greater than zero")
    return n


def _duration(v: Any, path: str) -> float:
    if isinstance(v, int | float) and not isinstance(v, bool):
        d = float(v)
    elif isinstance(v, str) and (m := _DURATION.match(v)):
        d = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ConfigError(path, f"not a duration (seconds, or e.g. 500ms, 5s, 1m): {v!r}")
    if not math.isfinite(d):  # YAML .nan/.inf: NaN passes "<= 0" and breaks every timeout
        raise ConfigError(path, f"not a duration (seconds, or e.g. 500ms, 5s, 1m): {v!r}")
    if d <= 0:
        raise ConfigError(path, "must be greater than zero")
    return d


def _count(v: Any, path: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ConfigError(path, f"must be a whole number >= 0, not {v!r}")
    return v


def _url(v: Any, path: str) -> str:
    text = _str(v, path).strip()
    try:
        parts = urlsplit(text)
    except ValueError as e:  # e.g. "http://[::1" (unclosed IPv6 bracket)
        raise ConfigError(path, f"not a URL: {text!r} ({e})") from e
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(path, f"not a URL (expected http:// or https://host[:port]): {text!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise ConfigError(path, f"not a URL: bad port in {text!r}") from e
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(path, f"must be scheme://host[:port] without a path: {text!r}")
    return f"{parts.scheme}://{parts.netloc}"


def _scheme(url: str) -> str:
    try:
        return urlsplit(url).scheme
    except ValueError:  # an unclosed IPv6 bracket: not a URL at all
        return ""


def _choice(*options: str) -> Callable[[Any, str], Any]:
    def parse(v: Any, path: str) -> Any:
        text = _str(v, path)
        if text not in options:
            raise ConfigError(path, f"must be one of {', '.join(options)}, not {text!r}")
        return text

    return parse


def _listen(v: Any, path: str) -> tuple[str, int]:
    text = _str(v, path).strip()
    m = re.match(r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d{1,5})$", text)
    if not m or not 0 < int(m.group("port")) < 65536:
        raise ConfigError(path, f"must be host:port (e.g. 0.0.0.0:8443 or [::1]:8443): {text!r}")
    return (m.group("v6") or m.group("host")), int(m.group("port"))


def _registry_name(v: Any, path: str) -> str:
    text = _str(v, path).strip().lower()
    if not re.match(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:\d{1,5})?$", text):
        raise ConfigError(path, f"not a registry host name (host[:port]): {text!r}")
    return registry_for_host(text)


#: Docker Hub's host names. Its repositories are docker.io/<repo> in trust data, in
#: policy patterns and in Docker's own reference normalisation (index.docker.io is
#: docker.io), whichever host the API is reached at.
DOCKER_HUB_HOSTS = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)


def registry_for_host(host: str) -> str:
    """The registry part of repository names for ``host`` (host[:port], lower case):
    ``docker.io`` for Docker Hub (also at :443), the host itself otherwise. Without it, an
    upstream whose url is https://registry-1.docker.io and whose ``registry`` is left out named its
    repositories registry-1.docker.io/..., which no docker.io/... rule matches (and missed
    the library/ prefix of official images)."""
    name, _, port = host.partition(":")
    if name in DOCKER_HUB_HOSTS and port in ("", "443"):
        return "docker.io"
    return host


def _credentials(sec: _Section) -> CredentialSettings:
    username = sec.value("username", _str, None)
    password = sec.value("password", _str, None)
    password_file = sec.path_value("password_file")
    if password is not None and password_file is not None:
        raise ConfigError(sec.sub("password_file"), "set either password or password_file")
    if password_file is not None and not sec.check_files:
        password = ""  # not read: only the config's shape is being checked
    elif password_file is not None:
        try:
            password = password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as e:
            raise ConfigError(sec.sub("password_file"), f"cannot read: {e.strerror}") from e
        except UnicodeDecodeError as e:
            raise ConfigError(sec.sub("password_file"), f"not UTF-8 text: {e.reason}") from e
    if (username is None) != (password is None):
        missing = "password" if password is None else "username"
        raise ConfigError(sec.sub(missing), "is required when the other credential is set")
    return CredentialSettings(username=username, password=password)


def _parse_server(sec: _Section) -> ServerSettings:
    host, port = sec.value("listen", _listen, ("127.0.0.1", 8443))
    cert = sec.existing_file("tls_cert_file")
    key = sec.existing_file("tls_key_file")
    if (cert is None) != (key is None):
        raise ConfigError(sec.sub("tls_key_file" if key is None else "tls_cert_file"),
                          "tls_cert_file and tls_key_file go together")  # fmt: skip
    ca = sec.section("client_auth")
    htpasswd = ca.existing_file("htpasswd_file")
    client_ca = ca.existing_file("client_ca_file")
    ca.finish()
    if client_ca is not None and cert is None:
        raise ConfigError(ca.sub("client_ca_file"), "mTLS needs server.tls_cert_file/key_file")
    metrics = sec.value("metrics", _bool, True)
    d = ServerSettings()
    header_timeout = sec.value("header_timeout", _duration, d.header_timeout)
    max_header_bytes = sec.value("max_header_bytes", _size, d.max_header_bytes)
    keep_alive_timeout = sec.value("keep_alive_timeout", _duration, d.keep_alive_timeout)
    workers = sec.value("workers", _workers, d.workers)
    sec.finish()
    return ServerSettings(
        host=host,
        port=port,
        tls_cert_file=cert,
        tls_key_file=key,
        client_auth=ClientAuthSettings(htpasswd_file=htpasswd, client_ca_file=client_ca),
        metrics_enabled=metrics,
        header_timeout=header_timeout,
        max_header_bytes=max_header_bytes,
        keep_alive_timeout=keep_alive_timeout,
        workers=workers,
    )


def _workers(v: Any, path: str) -> int | None:
    if v == "auto":
        return None
    n = _count(v, path)
    if not 1 <= n <= MAX_WORKERS:
        raise ConfigError(path, f"must be auto or 1..{MAX_WORKERS}, not {n}")
    return n


def _parse_upstream(sec: _Section) -> UpstreamSettings:
    name = sec.required("name", _str)
    if not _NAME.match(name):
        raise ConfigError(sec.sub("name"), f"use letters, digits, '.', '_', '-': {name!r}")
    url = sec.required("url", _url)
    registry = sec.value(
        "registry", _registry_name, registry_for_host(urlsplit(url).netloc.lower())
    )
    prefix = sec.value("prefix", _str, None)
    if prefix is not None:
        prefix = prefix.strip("/")
        if not all(_REPO_PREFIX.match(part) for part in prefix.split("/")):
            raise ConfigError(sec.sub("prefix"), f"not a repository path component: {prefix!r}")
    ca_file = sec.existing_file("ca_file")
    auth_sec = sec.section("auth")
    mode = cast(
        AuthMode, auth_sec.value("mode", _choice("anonymous", "basic", "passthrough"), "anonymous")
    )
    creds = _credentials(auth_sec)
    auth_sec.finish()
    if mode == "basic" and not creds.present:
        raise ConfigError(auth_sec.sub("username"), "mode basic needs username and password")
    if mode != "basic" and creds.present:
        raise ConfigError(auth_sec.sub("mode"), "credentials are set: use mode basic")
    redirects = cast(RedirectMode, sec.value("redirects", _choice("follow", "relay"), "follow"))
    redirect_hosts = sec.value("redirect_hosts", _host_patterns, None)
    insecure_http = sec.value("insecure_redirect_to_http", _bool, False)
    verify_blobs = sec.value("verify_blobs", _bool, True)
    blobs = cast(BlobMode, sec.value("blobs", _choice("stream", "redirect"), "stream"))
    sec.finish()
    return UpstreamSettings(
        name=name,
        url=url,
        registry=registry,
        prefix=prefix,
        ca_file=ca_file,
        auth=UpstreamAuthSettings(mode=mode, credentials=creds),
        redirects=redirects,
        redirect_hosts=redirect_hosts,
        insecure_redirect_to_http=insecure_http,
        verify_blobs=verify_blobs,
        blobs=blobs,
    )


def _host_patterns(v: Any, path: str) -> tuple[str, ...]:
    """``redirect_hosts``: a list of host patterns (proxy/upstream/redirects.py HostPattern)."""
    if not isinstance(v, list):
        raise ConfigError(path, f"must be a list of host patterns, not {_kind(v)}")
    out: list[str] = []
    for i, item in enumerate(v):
        text = _str(item, f"{path}[{i}]").strip().lower()
        try:
            HostPattern.parse(text)
        except ValueError as e:
            raise ConfigError(f"{path}[{i}]", f"{e}: {text!r}") from e
        out.append(text)
    return tuple(out)


def _parse_upstreams(raw: Any, base_dir: Path, check_files: bool) -> tuple[UpstreamSettings, ...]:
    if raw is None or raw == []:
        raise ConfigError("upstreams", "at least one upstream is required")
    if not isinstance(raw, list):
        raise ConfigError("upstreams", f"must be a list, not {_kind(raw)}")
    ups = tuple(_parse_upstream(_Section(item, f"upstreams[{i}]", base_dir, check_files))
                for i, item in enumerate(raw))  # fmt: skip
    seen_names: set[str] = set()
    seen_prefixes: set[str | None] = set()
    for i, up in enumerate(ups):
        if up.name in seen_names:
            raise ConfigError(f"upstreams[{i}].name", f"duplicate upstream name {up.name!r}")
        if up.prefix in seen_prefixes:
            what = f"prefix {up.prefix!r}" if up.prefix else "no prefix (the default route)"
            raise ConfigError(f"upstreams[{i}].prefix", f"another upstream already has {what}")
        seen_names.add(up.name)
        seen_prefixes.add(up.prefix)
    return ups


def _parse_trust(sec: _Section, warnings: list[str]) -> TrustSettings:
    src_raw = sec.get("sources")
    sources: list[TrustSourceSettings] = []
    if src_raw is not None:
        if not isinstance(src_raw, dict):
            raise ConfigError(sec.sub("sources"), f"must be a mapping, not {_kind(src_raw)}")
        for name in src_raw:
            path = f"{sec.sub('sources')}.{name}"
            s = _Section(src_raw[name], path, sec.base_dir, sec.check_files)
            if not _NAME.match(str(name)):
                raise ConfigError(path, "source names use letters, digits, '.', '_', '-'")
            # The type's own entry parses the rest of its section (proxy/sources/registry.py).
            typ = s.required("type", _choice(*source_type_names()))
            sources.append(source_type(typ).parse_settings(s, str(name), warnings))
    sec.finish()
    return TrustSettings(sources=tuple(sources))


_REDIS_SCHEMES = ("redis", "rediss", "unix")


def _redis_url(v: Any, path: str) -> str:
    url = _str(v, path).strip()
    scheme = _scheme(url)
    if scheme.startswith("redis+sentinel") or scheme == "sentinel":
        # redis-py has no Sentinel URL form (Sentinel needs a list of sentinels and a
        # service name): accepting one would silently talk to the wrong server.
        raise ConfigError(
            path,
            "Redis Sentinel URLs are not supported (redis-py has no sentinel URL form); "
            "point redis_url at the current master through a stable name (e.g. a "
            "Sentinel-aware proxy or a Kubernetes service) instead",
        )
    if scheme not in _REDIS_SCHEMES:
        raise ConfigError(path, f"not a redis URL (redis://, rediss:// or unix://): {url!r}")
    try:
        host = urlsplit(url).hostname
    except ValueError as e:
        raise ConfigError(path, f"not a redis URL: {url!r} ({e})") from e
    if scheme != "unix" and not host:
        raise ConfigError(path, f"not a redis URL (no host): {url!r}")
    return url


def _parse_cache(sec: _Section) -> CacheSettings:
    d = CacheSettings()
    if sec.get("redis_cluster") is not None:
        # Cluster mode would spread a repository's state and its lock over shards with
        # other failover semantics; not supported (yet): say so rather than "unknown key".
        raise ConfigError(
            sec.sub("redis_cluster"),
            "Redis Cluster is not supported; use a standalone Redis (or a primary with "
            "replicas behind one address)",
        )
    prefix = sec.value("key_prefix", _str, d.key_prefix)
    if not prefix or any(c.isspace() for c in prefix):
        raise ConfigError(sec.sub("key_prefix"), "must be non-empty, without spaces")
    cache = CacheSettings(
        redis_url=sec.value("redis_url", _redis_url, None),
        refresh_seconds=sec.value("refresh_seconds", _duration, d.refresh_seconds),
        key_prefix=prefix,
        lock_timeout=sec.value("lock_timeout", _duration, d.lock_timeout),
        redis_timeout=sec.value("redis_timeout", _duration, d.redis_timeout),
        state_dir=None if sec.get("state_dir") == "memory" else
        sec.path_value("state_dir") or d.state_dir,
    )  # fmt: skip
    sec.finish()
    return cache


def _parse_limits(sec: _Section) -> LimitSettings:
    d = LimitSettings()
    limits = LimitSettings(
        manifest_max_bytes=sec.value("manifest_max_bytes", _size, d.manifest_max_bytes),
        metadata_max_bytes=sec.value("metadata_max_bytes", _size, d.metadata_max_bytes),
        tag_list_max_bytes=sec.value("tag_list_max_bytes", _size, d.tag_list_max_bytes),
        token_max_bytes=sec.value("token_max_bytes", _size, d.token_max_bytes),
        error_body_max_bytes=sec.value("error_body_max_bytes", _size, d.error_body_max_bytes),
        connect_timeout=sec.value("connect_timeout", _duration, d.connect_timeout),
        read_timeout=sec.value("read_timeout", _duration, d.read_timeout),
        max_redirects=sec.value("max_redirects", _count, d.max_redirects),
        max_connections=sec.value("max_connections", _count, d.max_connections),
        request_timeout=sec.value("request_timeout", _duration, d.request_timeout),
        min_upstream_rate=sec.value("min_upstream_rate", _size_or_zero, d.min_upstream_rate),
        manifest_cache_bytes=sec.value(
            "manifest_cache_bytes", _size_or_zero, d.manifest_cache_bytes
        ),
        manifest_cache_recheck=sec.value(
            "manifest_cache_recheck", _duration_or_zero, d.manifest_cache_recheck
        ),
    )
    sec.finish()
    return limits


def _duration_or_zero(v: Any, path: str) -> float:
    # manifest_cache_recheck: 0 (or "0s") means every time; every other duration as
    # _duration reads it.
    if isinstance(v, str) and (m := _DURATION.match(v)) and float(m.group(1)) == 0:
        return 0.0
    return 0.0 if v == 0 and not isinstance(v, bool) else _duration(v, path)


def _size_or_zero(v: Any, path: str) -> int:
    # manifest_cache_bytes (no cache), min_upstream_rate (no check): 0 means off; every
    # other size as _size reads it.
    return 0 if v == 0 and not isinstance(v, bool) else _size(v, path)


def _parse_logging(sec: _Section) -> LoggingSettings:
    level = sec.value("level", _choice("debug", "info", "warning", "error"), "info")
    fmt = cast(LogFormat, sec.value("format", _choice("json", "text"), "json"))
    access = sec.value("access_log", _bool, True)
    sec.finish()
    return LoggingSettings(level=level, format=fmt, access_log=access)


def _parse_audit(sec: _Section) -> AuditSettings:
    sink = cast(AuditSink, sec.value("sink", _choice("stdout", "file", "off"), "stdout"))
    path = sec.path_value("path")
    if sink == "file" and path is None:
        raise ConfigError(sec.sub("path"), "is required when sink is file")
    if sink != "file" and path is not None:
        raise ConfigError(sec.sub("path"), f"only goes with sink: file (sink is {sink})")
    if path is not None and sec.check_files and not path.parent.is_dir():
        # The file itself is created on first start; a missing folder is a typo.
        raise ConfigError(sec.sub("path"), f"folder not found: {path.parent}")
    sec.finish()
    return AuditSettings(sink=sink, path=path)


def parse_settings(
    raw: dict[str, Any],
    *,
    base_dir: Path,
    source_file: Path | None = None,
    check_files: bool = True,
) -> Settings:
    """Validate a raw config tree (already env-overridden). Raises ConfigError.

    ``check_files=False`` validates everything but the existence of referenced files
    (for checking a config on a machine other than the one that will run it).
    """
    top = _Section(raw, "", base_dir, check_files)
    warnings: list[str] = []
    server = _parse_server(top.section("server"))
    upstreams = _parse_upstreams(top.get("upstreams"), base_dir, check_files)
    trust = _parse_trust(top.section("trust"), warnings)
    cache = _parse_cache(top.section("cache"))
    if cache.state_dir is None and server.workers != 1:
        # Per-process memory is not shared: several workers would each keep their own
        # rollback floors and pins, a weaker check than one process.
        raise ConfigError("cache.state_dir", "memory needs server.workers: 1")
    passthrough = [u.name for u in upstreams if u.auth.mode == "passthrough"]
    if server.client_auth.htpasswd_file is not None and passthrough:
        # Both would use the client's Authorization header; it cannot mean two things.
        raise ConfigError(
            "server.client_auth.htpasswd_file",
            f"cannot be combined with passthrough auth (upstream {passthrough[0]}); "
            "use client_ca_file (mTLS) to authenticate clients instead",
        )
    limits = _parse_limits(top.section("limits"))
    logging = _parse_logging(top.section("logging"))
    audit = _parse_audit(top.section("audit"))
    policy_file = top.path_value("policy_file")
    if policy_file is not None and check_files and not policy_file.is_file():
        warnings.append(f"policy_file: file not found: {policy_file}")
    top.finish()
    return Settings(
        server=server,
        upstreams=upstreams,
        trust=trust,
        cache=cache,
        limits=limits,
        logging=logging,
        audit=audit,
        policy_file=policy_file,
        source_file=source_file,
        warnings=tuple(warnings),
    )


# For the trust source types' own settings parsers (proxy/sources/<type>/entry.py): the
# section reader and the value parsers every section uses, so messages read the same.
ConfigSection = _Section
parse_url = _url
parse_duration = _duration
parse_bool = _bool
parse_credentials = _credentials


def restart_needed(old: Settings, new: Settings) -> list[str]:
    """Config keys whose change only takes effect after a restart (uvicorn owns the
    listening socket and its TLS context; logging is configured once by the entry point)."""
    a, b = old.server, new.server
    keys = []
    if (a.host, a.port) != (b.host, b.port):
        keys.append("server.listen")
    if a.tls_cert_file != b.tls_cert_file:
        keys.append("server.tls_cert_file")
    if a.tls_key_file != b.tls_key_file:
        keys.append("server.tls_key_file")
    if a.client_auth.client_ca_file != b.client_auth.client_ca_file:
        keys.append("server.client_auth.client_ca_file")
    if a.metrics_enabled != b.metrics_enabled:
        keys.append("server.metrics")
    # The request-head guard and uvicorn's keep-alive are set when the server starts.
    for key in ("header_timeout", "max_header_bytes", "keep_alive_timeout"):
        if getattr(a, key) != getattr(b, key):
            keys.append(f"server.{key}")
    if old.logging != new.logging:
        keys.append("logging")
    # Workers are started by the master; the state file is opened once per process.
    if a.workers != b.workers:
        keys.append("server.workers")
    if old.cache.state_dir != new.cache.state_dir:
        keys.append("cache.state_dir")
    return keys
