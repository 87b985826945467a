"""registries.conf as podman, CRI-O, buildah and skopeo read it: which files, in which order,
and where a pull of a given name goes (pure: file texts in, routes out).

The rules follow containers/image ``pkg/sysregistriesv2`` (5.23, Debian 12's podman 4.3 and
skopeo 1.9; unchanged in later releases):

- The main file is ``$HOME/.config/containers/registries.conf`` when it exists, and then the
  system file **and the system drop-in folder are not read at all**; otherwise
  ``/etc/containers/registries.conf``.
- Drop-ins: ``*.conf`` in ``/etc/containers/registries.conf.d`` (unless a per-user main file
  exists), then in ``$HOME/.config/containers/registries.conf.d``; each folder in lexical
  order. Each file replaces, per ``prefix``, the whole ``[[registry]]`` entry of earlier files
  (mirrors included): ``51-mirror.conf`` overrides ``50-trustproxy.conf``, and any per-user
  drop-in overrides every system one.
- A name goes to the entry with the longest matching prefix (on a ``/``, ``:`` or ``@``
  boundary; ``*.example.com`` matches subdomains). A tag pull tries the mirrors in order
  (not those restricted to digests), then ``location``, moving on after any error: a proxy
  as a mirror falls back on its refusals; a proxy as ``location`` replaces the registry.
- ``unqualified-search-registries`` and ``short-name-mode``: the last file that sets them
  wins; aliases merge per name.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

MAX_ENTRIES = 100  # [[registry]] entries (and mirrors per entry) looked at per file

Route = Literal["enforcing", "falls-back", "direct", "fails", "blocked"]


class RegistriesConfError(ValueError):
    """A file podman would refuse to load (bad TOML, a URL scheme in a location, ...)."""


@dataclass(frozen=True)
class Endpoint:
    location: str
    insecure: bool = False
    pull_from_mirror: str = ""  # "", "all", "digest-only", "tag-only" (mirrors only)


@dataclass(frozen=True)
class Entry:
    prefix: str
    endpoint: Endpoint
    mirrors: tuple[Endpoint, ...] = ()
    blocked: bool = False
    mirror_by_digest_only: bool = False
    source: str = ""  # the file it came from, as displayed

    @property
    def location(self) -> str:
        return self.endpoint.location


@dataclass(frozen=True)
class FileConfig:
    """One parsed file. ``search`` is None when the file does not set it (it then keeps the
    value of earlier files, as containers/image does)."""

    name: str
    entries: tuple[Entry, ...] = ()
    search: tuple[str, ...] | None = None
    aliases: tuple[tuple[str, str], ...] = ()
    v1: bool = False


@dataclass
class Effective:
    """The merged configuration plus what was overridden on the way."""

    entries: dict[str, Entry] = field(default_factory=dict)
    #: (entry, the later entry with the same prefix that replaced it)
    overridden: list[tuple[Entry, Entry]] = field(default_factory=list)
    search: tuple[str, ...] = ()
    search_origin: str | None = None
    aliases: dict[str, str] = field(default_factory=dict)


def _location(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise RegistriesConfError(f"{what} is not a string")
    trimmed = value.rstrip("/")
    if trimmed.startswith(("http://", "https://")):
        raise RegistriesConfError(f"invalid {what} {value!r}: URI schemes are not supported")
    return trimmed


def parse_file(name: str, text: str) -> FileConfig:
    """Parse one registries.conf (v2 format). Raises RegistriesConfError for input podman
    refuses. A v1 file (``[registries.search]``) is returned with ``v1=True``, unanalysed."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RegistriesConfError(f"not valid TOML ({e})") from e
    if "registries" in doc:
        return FileConfig(name, v1=True)
    raw = doc.get("registry", [])
    if not isinstance(raw, list):
        raise RegistriesConfError("[[registry]] is not an array of tables")
    entries: list[Entry] = []
    for item in raw[:MAX_ENTRIES]:
        if not isinstance(item, dict):
            raise RegistriesConfError("a [[registry]] entry is not a table")
        location = _location(item.get("location", ""), "location")
        prefix = _location(item.get("prefix", ""), "prefix") or location
        if not prefix:
            raise RegistriesConfError("both location and prefix are unset")
        if not location and not prefix.startswith("*."):
            raise RegistriesConfError(f"[{prefix}]: location is unset")
        mirrors = []
        for m in (item.get("mirror") or [])[:MAX_ENTRIES]:
            if not isinstance(m, dict):
                raise RegistriesConfError(f"[{prefix}]: a mirror is not a table")
            where = _location(m.get("location", ""), "mirror location")
            if not where:
                raise RegistriesConfError(f"[{prefix}]: mirror location is unset")
            mirrors.append(
                Endpoint(where, m.get("insecure") is True, str(m.get("pull-from-mirror", "")))
            )
        entries.append(
            Entry(
                prefix=prefix,
                endpoint=Endpoint(location, item.get("insecure") is True),
                mirrors=tuple(mirrors),
                blocked=item.get("blocked") is True,
                mirror_by_digest_only=item.get("mirror-by-digest-only") is True,
                source=name,
            )
        )
    search_raw = doc.get("unqualified-search-registries")
    search = tuple(str(s) for s in search_raw) if isinstance(search_raw, list) else None
    aliases_raw = doc.get("aliases")
    aliases = (
        tuple((str(k), str(v)) for k, v in aliases_raw.items())
        if isinstance(aliases_raw, dict)
        else ()
    )
    return FileConfig(name, tuple(entries), search, aliases)


def merge(files: Iterable[FileConfig]) -> Effective:
    """Merge in reading order (main file first, then drop-ins): later files replace earlier
    entries per prefix (containers/image ``updateWithConfigurationFrom``)."""
    out = Effective()
    for f in files:
        for entry in f.entries:
            earlier = out.entries.get(entry.prefix)
            if earlier is not None and earlier.source != entry.source:
                out.overridden.append((earlier, entry))
            out.entries[entry.prefix] = entry
        if f.search is not None:
            out.search, out.search_origin = f.search, f.name
        out.aliases.update(dict(f.aliases))
    return out


def matching_prefix_length(name: str, prefix: str) -> int:
    """containers/image ``refMatchingPrefix``: the length of ``prefix`` in ``name`` when it
    matches on a boundary, else -1."""
    if prefix.startswith("*."):
        index = name.find(prefix[1:])
        if index == -1 or "/" in name[:index]:
            return -1
        end = index + len(prefix) - 1
    elif name.startswith(prefix):
        end = len(prefix)
    else:
        return -1
    if end == len(name) or name[end] in ":/@":
        return end
    return -1


def find(effective: Effective, name: str) -> Entry | None:
    """The entry a fully qualified ``name`` (``host[:port]/repo[:tag|@digest]``) uses."""
    best: Entry | None = None
    best_len = 0
    for entry in effective.entries.values():
        if matching_prefix_length(name, entry.prefix) != -1 and len(entry.prefix) > best_len:
            best, best_len = entry, len(entry.prefix)
    return best


def host_of(location: str) -> str:
    return location.split("/", 1)[0].lower()


def pull_sources(entry: Entry, *, by_digest: bool) -> list[Endpoint]:
    """Endpoints in the order a pull tries them (``PullSourcesFromReference``)."""
    sources: list[Endpoint] = []
    if entry.mirror_by_digest_only:
        if by_digest:
            sources.extend(entry.mirrors)
    else:
        for m in entry.mirrors:
            if (m.pull_from_mirror == "digest-only" and not by_digest) or (
                m.pull_from_mirror == "tag-only" and by_digest
            ):
                continue
            sources.append(m)
    sources.append(entry.endpoint)
    return sources


def route(
    entry: Entry | None,
    is_proxy: Callable[[str], bool],
    *,
    proxy_plain_http: bool = False,
    by_digest: bool = False,
    name: str = "",
) -> tuple[Route, str]:
    """Where a pull of ``name`` through ``entry`` goes, and what that means for enforcement,
    with a why. ``is_proxy(location)``: does that location name the proxy. A plain-HTTP proxy
    is unusable for an endpoint without ``insecure = true`` (every request fails; the command
    line's ``--tls-verify=false`` overrides that, which no file shows)."""
    if entry is None:
        where = host_of(name) if name else "the registry it names"
        return "direct", f"no [[registry]] entry: pulled from {where} itself"
    if entry.blocked:
        return "blocked", f"blocked: pulls of {entry.prefix} are refused"
    sources = pull_sources(entry, by_digest=by_digest)

    def proxy(e: Endpoint) -> bool:
        return is_proxy(e.location)

    usable = [e for e in sources if not (proxy(e) and proxy_plain_http and not e.insecure)]
    if not usable:
        return "fails", (
            "the proxy speaks plain HTTP and the entry lacks `insecure = true`: every pull "
            "fails (TLS to a plain-HTTP server)"
        )
    first = usable[0]
    if not proxy(first):
        if any(proxy(e) for e in usable):
            return (
                "direct",
                f"{first.location} is tried before the proxy: what it serves is not checked",
            )
        return "direct", f"pulled from {first.location}, not the proxy"
    later = [e.location for e in usable[1:] if not proxy(e)]
    if later:
        return "falls-back", (
            f"the proxy is tried first, then {', '.join(later)} after any error: "
            "tags the proxy refuses are pulled from there"
        )
    return "enforcing", "only the proxy is used (no fallback)"


def order_dropins(names: Sequence[str]) -> list[str]:
    """``*.conf`` file names of one folder in the order they are read (lexical)."""
    return sorted(n for n in names if n.endswith(".conf"))
