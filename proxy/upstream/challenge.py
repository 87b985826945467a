"""Parse, format and rewrite ``WWW-Authenticate`` challenges (pure, no I/O).

Grammar (RFC 7235 §2.1, §4.1; RFC 7230 §3.2.6 for token and quoted-string)::

    WWW-Authenticate = 1#challenge
    challenge   = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
    auth-param  = token BWS "=" BWS ( token / quoted-string )
    token68     = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="

A comma separates both challenges and the auth-params of one challenge, so after a comma
the parser looks ahead: ``name =`` continues the current challenge, anything else starts
a new one.

Registries add the Docker token protocol on top: a ``Bearer`` challenge carries ``realm``
(the token endpoint), ``service`` and ``scope``; ``scope`` holds one or more
space-separated ``type[(class)]:name:action[,action]`` items
(distribution ``docs/spec/auth/scope.md``).

Every malformed input raises :class:`proxy.errors.BadDataError`: these headers come
from upstream registries and clients, never from us.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from proxy.errors import BadDataError

__all__ = [
    "MAX_HEADER_LENGTH",
    "Challenge",
    "Scope",
    "format_challenge",
    "format_scopes",
    "format_www_authenticate",
    "map_scope_repositories",
    "parse_scope",
    "parse_scopes",
    "parse_www_authenticate",
    "rewrite_bearer_challenge",
    "rewrite_client_scope",
]

# Real challenges are a few hundred bytes; the bound keeps a hostile upstream from making
# us parse megabytes (and bounds the number of challenges/params as a side effect).
MAX_HEADER_LENGTH = 16 * 1024

_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_TOKEN68_CHAR = frozenset("-._~+/0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_WS = " \t"


def _is_vchar(c: str) -> bool:
    # VCHAR plus obs-text (%x80-FF): httpx/Starlette decode header bytes as latin-1.
    o = ord(c)
    return 0x21 <= o <= 0x7E or 0x80 <= o <= 0xFF


def _is_lenient_value_char(c: str) -> bool:
    # RFC 7235 allows only tchar in an unquoted value, but some servers send URLs such as
    # realm=https://auth.example/token unquoted; accept any VCHAR that cannot end or
    # open something else.
    return _is_vchar(c) and c not in ',"\\'


@dataclass(frozen=True)
class Challenge:
    """One challenge. ``scheme`` keeps its spelling; compare with :meth:`is_scheme`.

    ``params`` keeps the order of the header; names are lower-cased (they are
    case-insensitive, RFC 7235 §2.1). A challenge has either ``token68`` or params.
    """

    scheme: str
    params: tuple[tuple[str, str], ...] = ()
    token68: str | None = None

    def is_scheme(self, scheme: str) -> bool:
        return self.scheme.lower() == scheme.lower()

    def get(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.params:
            if key == name:
                return value
        return None

    @property
    def realm(self) -> str | None:
        return self.get("realm")

    @property
    def service(self) -> str | None:
        return self.get("service")

    @property
    def scopes(self) -> tuple[str, ...]:
        """The space-separated items of ``scope`` (empty when absent)."""
        return tuple((self.get("scope") or "").split())

    def replace_params(self, updates: Mapping[str, str | None]) -> Challenge:
        """A copy with params set (appended when new) or removed (value ``None``)."""
        lowered = {k.lower(): v for k, v in updates.items()}
        params: list[tuple[str, str]] = []
        for key, value in self.params:
            if key in lowered:
                new = lowered.pop(key)
                if new is not None:
                    params.append((key, new))
            else:
                params.append((key, value))
        params.extend((k, v) for k, v in lowered.items() if v is not None)
        return Challenge(self.scheme, tuple(params), self.token68)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str) -> BadDataError:
        return BadDataError(f"malformed WWW-Authenticate header at offset {self.pos}: {message}")

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_ws(self) -> None:
        while self.peek() and self.peek() in _WS:
            self.pos += 1

    def skip_list_separators(self) -> None:
        # "1#element" allows empty elements: ", ,Basic realm=x" is legal (RFC 7230 §7).
        while self.peek() and self.peek() in _WS + ",":
            self.pos += 1

    def token_at(self, pos: int) -> int:
        end = pos
        while end < len(self.text) and self.text[end] in _TCHAR:
            end += 1
        return end

    def read_token(self, what: str) -> str:
        end = self.token_at(self.pos)
        if end == self.pos:
            found = repr(self.peek()) if self.peek() else "end of header"
            raise self.error(f"expected {what}, found {found}")
        token = self.text[self.pos : end]
        self.pos = end
        return token

    def read_quoted(self) -> str:
        self.pos += 1  # opening quote
        out: list[str] = []
        while True:
            c = self.peek()
            if not c:
                raise self.error("unterminated quoted string")
            if c == '"':
                self.pos += 1
                return "".join(out)
            if c == "\\":
                nxt = self.text[self.pos + 1 : self.pos + 2]
                if not nxt or not (nxt in _WS or _is_vchar(nxt)):
                    raise self.error("bad escape in quoted string")
                out.append(nxt)
                self.pos += 2
                continue
            if not (c in _WS or _is_vchar(c)):
                raise self.error(f"control character {c!r} in quoted string")
            out.append(c)
            self.pos += 1

    def read_value(self) -> str:
        if self.peek() == '"':
            return self.read_quoted()
        start = self.pos
        while self.peek() and _is_lenient_value_char(self.peek()):
            self.pos += 1
        if self.pos == start:
            raise self.error("expected a token or quoted string after '='")
        return self.text[start : self.pos]

    def param_follows(self) -> bool:
        """True when ``name BWS =`` starts at pos: an auth-param, not a new challenge."""
        end = self.token_at(self.pos)
        if end == self.pos:
            return False
        while end < len(self.text) and self.text[end] in _WS:
            end += 1
        return self.text[end : end + 1] == "="

    def try_token68(self) -> str | None:
        """A token68 that fills the rest of this list element, else None (pos unchanged)."""
        end = self.pos
        while end < len(self.text) and self.text[end] in _TOKEN68_CHAR:
            end += 1
        if end == self.pos:
            return None
        while end < len(self.text) and self.text[end] == "=":
            end += 1
        after = end
        while after < len(self.text) and self.text[after] in _WS:
            after += 1
        if after < len(self.text) and self.text[after] != ",":
            return None
        # "a=" alone is a token68, but "a=b" is a param: only a run of '=' ends token68.
        value = self.text[self.pos : end]
        self.pos = end
        return value

    def challenge(self) -> Challenge:
        scheme = self.read_token("an auth scheme")
        if not self.peek() or self.peek() == ",":
            return Challenge(scheme)
        if self.peek() not in _WS:
            raise self.error(f"expected a space after scheme {scheme!r}")
        self.skip_ws()
        if not self.peek() or self.peek() == ",":
            return Challenge(scheme)
        # token68 first: "abc==" must not read as the param abc with the value "=".
        token68 = self.try_token68()
        if token68 is not None:
            return Challenge(scheme, token68=token68)
        if not self.param_follows():
            raise self.error(f"expected auth-params or token68 after {scheme!r}")
        params: list[tuple[str, str]] = []
        seen: set[str] = set()
        while True:
            name = self.read_token("a parameter name").lower()
            self.skip_ws()
            self.pos += 1  # '=' (checked by param_follows)
            self.skip_ws()
            value = self.read_value()
            if name in seen:
                # RFC 7235 §2.1: each parameter name MUST only occur once per challenge;
                # two realms would be a choice between two token endpoints.
                raise self.error(f"duplicate parameter {name!r}")
            seen.add(name)
            params.append((name, value))
            self.skip_ws()
            if not self.peek():
                break
            if self.peek() != ",":
                raise self.error(f"expected ',' after parameter {name!r}")
            mark = self.pos
            self.skip_list_separators()
            if not self.param_follows():
                self.pos = mark
                break
        return Challenge(scheme, tuple(params))


def parse_www_authenticate(header: str) -> tuple[Challenge, ...]:
    """All challenges of one header value (join repeated header lines with ``", "``).

    Raises BadDataError for anything that is not a well-formed, non-empty challenge list.
    """
    if not isinstance(header, str):
        raise TypeError("header must be str")
    if len(header) > MAX_HEADER_LENGTH:
        raise BadDataError(f"WWW-Authenticate header longer than {MAX_HEADER_LENGTH} characters")
    parser = _Parser(header)
    challenges: list[Challenge] = []
    parser.skip_list_separators()
    while parser.peek():
        challenges.append(parser.challenge())
        parser.skip_ws()
        if parser.peek() and parser.peek() != ",":
            raise parser.error("expected ',' between challenges")
        parser.skip_list_separators()
    if not challenges:
        raise BadDataError("empty WWW-Authenticate header")
    return tuple(challenges)


def _quote(value: str) -> str:
    for c in value:
        # A CR/LF here would be header injection; parsed values can never contain one,
        # so meeting one is a caller bug.
        if not (c in _WS or _is_vchar(c)):
            raise ValueError(f"control character {c!r} in challenge parameter")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_challenge(challenge: Challenge) -> str:
    """Serialise one challenge; values are always quoted, which every client accepts."""
    if not challenge.scheme or any(c not in _TCHAR for c in challenge.scheme):
        raise ValueError(f"invalid auth scheme {challenge.scheme!r}")
    if challenge.token68 is not None:
        return f"{challenge.scheme} {challenge.token68}"
    if not challenge.params:
        return challenge.scheme
    parts = []
    for name, value in challenge.params:
        if not name or any(c not in _TCHAR for c in name):
            raise ValueError(f"invalid parameter name {name!r}")
        parts.append(f"{name}={_quote(value)}")
    return f"{challenge.scheme} " + ",".join(parts)


def format_www_authenticate(challenges: Iterable[Challenge]) -> str:
    return ", ".join(format_challenge(c) for c in challenges)


@dataclass(frozen=True)
class Scope:
    """``type[(class)]:name:action[,action]``, e.g. ``repository:library/alpine:pull``."""

    type: str
    name: str
    actions: tuple[str, ...]

    @property
    def is_repository(self) -> bool:
        # "repository(plugin)" is still a repository (scope.md "resource class").
        return self.type.split("(", 1)[0] == "repository"

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


def parse_scope(text: str) -> Scope:
    """One scope item. The name may itself hold ':' (``host:5000/repo``), so the type
    ends at the first colon and the actions start after the last one, as Docker does.

    Raises BadDataError.
    """
    first = text.find(":")
    last = text.rfind(":")
    if first <= 0 or last == first or any(c in _WS or not _is_vchar(c) for c in text):
        raise BadDataError(f"malformed scope {text!r}: expected type:name:actions")
    type_, name, actions = text[:first], text[first + 1 : last], text[last + 1 :]
    if not name or not actions or any(not a for a in actions.split(",")):
        raise BadDataError(f"malformed scope {text!r}: expected type:name:actions")
    return Scope(type_, name, tuple(actions.split(",")))


def parse_scopes(text: str) -> tuple[Scope, ...]:
    """Space-separated scope items (empty string → no scopes). Raises BadDataError."""
    return tuple(parse_scope(item) for item in text.split())


def format_scopes(scopes: Iterable[Scope]) -> str:
    return " ".join(str(s) for s in scopes)


def map_scope_repositories(text: str, repo_map: Callable[[str], str]) -> str:
    """Apply ``repo_map`` to the name of each repository scope; others pass unchanged."""
    out = []
    for scope in parse_scopes(text):
        if scope.is_repository:
            scope = Scope(scope.type, repo_map(scope.name), scope.actions)
        out.append(scope)
    return format_scopes(out)


def rewrite_bearer_challenge(
    header: str,
    *,
    realm: str,
    repo_map: Callable[[str], str],
    service: str | None = None,
) -> str:
    """An upstream's challenge as the proxy shows it to its clients (passthrough mode).

    In each ``Bearer`` challenge the realm becomes the proxy's token endpoint, repository
    names in ``scope`` go through ``repo_map`` (upstream name → client-visible name) and
    ``service`` is replaced when given. Other params (``error="insufficient_scope"``) stay;
    non-Bearer challenges are kept as they are. Exceptions from ``repo_map`` propagate
    (e.g. a name the client may not see).

    Raises BadDataError when the header or a scope in it is malformed.
    """
    out = []
    for challenge in parse_www_authenticate(header):
        if challenge.is_scheme("bearer"):
            if challenge.token68 is not None:
                # Grammatical (RFC 7235) but meaningless for the token protocol, and a
                # realm cannot be added to a token68 challenge.
                raise BadDataError("Bearer challenge carries token68 instead of auth-params")
            updates: dict[str, str | None] = {"realm": realm}
            if service is not None:
                updates["service"] = service
            scope = challenge.get("scope")
            if scope is not None:
                updates["scope"] = map_scope_repositories(scope, repo_map)
            challenge = challenge.replace_params(updates)
        out.append(challenge)
    return format_www_authenticate(out)


def rewrite_client_scope(
    text: str,
    *,
    repo_map: Callable[[str], str],
    allowed_actions: frozenset[str] = frozenset({"pull"}),
) -> str:
    """A scope a client sent to the proxy's token endpoint, as asked of the upstream.

    The inverse of :func:`rewrite_bearer_challenge`: ``repo_map`` maps client-visible
    names to upstream names. The proxy is read-only, so it fails closed: actions outside
    ``allowed_actions`` are dropped, a scope left without actions is dropped, and
    non-repository scopes (``registry:catalog:*``) are dropped.

    Raises BadDataError when a scope is malformed.
    """
    out = []
    for scope in parse_scopes(text):
        if not scope.is_repository:
            continue
        actions = tuple(a for a in scope.actions if a in allowed_actions)
        if actions:
            out.append(Scope(scope.type, repo_map(scope.name), actions))
    return format_scopes(out)
