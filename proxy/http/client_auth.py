"""Clients authenticating to the proxy with HTTP Basic against an htpasswd file.

Only bcrypt hashes (``htpasswd -B``: ``$2y$``, also ``$2a$``/``$2b$``) are accepted, like
distribution's own htpasswd auth: MD5-crypt, SHA1 and crypt(3) entries are fast to brute
force, so a file holding one is a configuration error, not a weaker login.

bcrypt costs tens to hundreds of milliseconds per check by design, and a pull is dozens
of requests each carrying the same credentials, so a successful check is remembered for
a short time, keyed by the user and a keyed hash of the password (never the password).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

import bcrypt

from proxy.errors import ConfigError, UnauthorizedError
from proxy.upstream.challenge import Challenge, format_challenge

__all__ = ["Htpasswd", "challenge_header"]

# $2y$ (Apache) and $2a$/$2b$ (OpenBSD, Go) name the same algorithm for our purposes;
# cost two digits, 22 chars of salt and 31 of hash in bcrypt's base64 alphabet.
_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
# bcrypt reads at most 72 bytes; the bcrypt package refuses longer passwords and Go's
# x/crypto/bcrypt (distribution) rejects them, so they never match here either.
_BCRYPT_MAX_PASSWORD = 72
_MAX_HEADER = 4096

_REJECTED = "invalid username or password"


def challenge_header(realm: str) -> str:
    """The ``WWW-Authenticate`` value of the proxy's own 401: ``Basic realm="<realm>"``."""
    return format_challenge(Challenge("Basic", (("realm", realm),)))


class Htpasswd:
    """Users and bcrypt hashes from an htpasswd file, with a short cache of good checks.

    ``clock`` returns monotonic seconds; ``cache_ttl`` (seconds) and ``cache_size``
    bound the cache of successful checks (0 disables it).
    """

    def __init__(
        self,
        users: Mapping[str, bytes],
        *,
        clock: Callable[[], float] = time.monotonic,
        cache_ttl: float = 60.0,
        cache_size: int = 1024,
    ) -> None:
        self._users = dict(users)
        self._clock = clock
        self._cache_ttl = cache_ttl
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple[str, bytes], float] = OrderedDict()
        # Per-instance key: the cache holds HMACs, so a memory dump does not give
        # unsalted password hashes to crack.
        self._cache_key = secrets.token_bytes(32)
        # Unknown users are checked against a hash of the same cost as the real ones, so
        # the answer time does not tell which user names exist.
        cost = min((h[4:6] for h in self._users.values()), default=b"05").decode()
        self._dummy_hash = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(int(cost)))

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        cache_ttl: float = 60.0,
        cache_size: int = 1024,
    ) -> Htpasswd:
        """Read an htpasswd file. Raises ConfigError(path, "line N: ...")."""
        where = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(where, f"cannot read htpasswd file: {e.__class__.__name__}") from e
        users: dict[str, bytes] = {}
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, hashed = line.partition(":")
            if not sep or not user:
                raise ConfigError(where, f"line {number}: expected user:hash")
            if not _BCRYPT.fullmatch(hashed):
                # The message never quotes the line: it holds a password hash.
                raise ConfigError(
                    where, f"line {number}: only bcrypt hashes are supported (htpasswd -B)"
                )
            if user in users:
                raise ConfigError(where, f"line {number}: duplicate user {user!r}")
            users[user] = hashed.encode("ascii")
        return cls(users, clock=clock, cache_ttl=cache_ttl, cache_size=cache_size)

    @property
    def users(self) -> frozenset[str]:
        return frozenset(self._users)

    def check(self, authorization_header: str | None) -> str:
        """The authenticated user name for a request's ``Authorization`` header.

        Raises UnauthorizedError when the header is missing, not Basic, malformed, or
        the credentials do not match (one message for unknown user and wrong password).
        """
        user, password = _parse_basic(authorization_header)
        key = (user, hmac.digest(self._cache_key, password, hashlib.sha256))
        now = self._clock()
        expires = self._cache.get(key)
        if expires is not None:
            if now < expires:
                return user
            del self._cache[key]
        hashed = self._users.get(user)
        if len(password) > _BCRYPT_MAX_PASSWORD:
            raise UnauthorizedError(_REJECTED)
        if hashed is None:
            bcrypt.checkpw(password, self._dummy_hash)
            raise UnauthorizedError(_REJECTED)
        if not bcrypt.checkpw(password, hashed):
            raise UnauthorizedError(_REJECTED)
        if self._cache_ttl > 0 and self._cache_size > 0:
            self._cache[key] = now + self._cache_ttl
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return user


def _parse_basic(header: str | None) -> tuple[str, bytes]:
    if not header:
        raise UnauthorizedError("authentication required")
    if len(header) > _MAX_HEADER:
        raise UnauthorizedError("malformed Authorization header")
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise UnauthorizedError("only Basic authentication is supported")
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True)
        text = decoded.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError) as e:
        raise UnauthorizedError("malformed Basic credentials") from e
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise UnauthorizedError("malformed Basic credentials")
    return user, password.encode("utf-8")
