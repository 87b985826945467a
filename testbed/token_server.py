"""A Docker token server for tests, and real ``docker-registry`` processes behind auth.

:class:`TokenServer` implements the token endpoint of distribution's token protocol
(``docs/spec/auth/token.md``) in a thread (``http.server``): ``GET /token?service=&scope=``
with optional Basic credentials, answering ``{"token", "access_token", "expires_in",
"issued_at"}``. Tokens are ES256 JWTs whose header carries the signing certificate in
``x5c``; distribution 2.8 (``registry/auth/token/token.go``) verifies that chain against
``rootcertbundle``, then the raw ``r||s`` signature, ``iss``, ``aud`` (= service) and
``exp``/``nbf`` with 60 s of leeway. Every request is recorded so tests can assert caching.

:func:`start_token_registry` and :func:`start_htpasswd_registry` run ``docker-registry``
(CNCF distribution 2.8) with filesystem storage on a free loopback port.

Test bed only: users' passwords are plain strings here.
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import bcrypt
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from testbed.processes import Server, free_port, start_server
from testbed.tls import self_signed_certificate

__all__ = [
    "REGISTRY_BIN",
    "TokenRequest",
    "TokenServer",
    "start_htpasswd_registry",
    "start_token_registry",
    "write_htpasswd",
]

REGISTRY_BIN = "/usr/bin/docker-registry"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class TokenRequest:
    """One request the token server answered (or refused)."""

    service: str
    scopes: tuple[str, ...]
    account: str
    user: str | None  # authenticated user, None when anonymous
    status: int


@dataclass
class _Signer:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def generate(cls, issuer: str) -> _Signer:
        key = ec.generate_private_key(ec.SECP256R1())
        # distribution trusts the token's x5c chain when it ends in its rootcertbundle.
        cert = self_signed_certificate(key, issuer, lifetime=dt.timedelta(days=2), ca=True)
        return cls(key, cert)

    def sign_jwt(self, claims: Mapping[str, Any]) -> str:
        der = self.cert.public_bytes(serialization.Encoding.DER)
        # x5c is standard base64 (RFC 7515 §4.1.6), unlike the rest of the JWT.
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        r, s = decode_dss_signature(
            self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        )
        # JWS ES256 signatures are fixed-width r||s, not DER (RFC 7518 §3.4).
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return signing_input + "." + _b64url(signature)


def _parse_scope(text: str) -> tuple[str, str, list[str]] | None:
    first, last = text.find(":"), text.rfind(":")
    if first <= 0 or last == first:
        return None
    return text[:first], text[first + 1 : last], text[last + 1 :].split(",")


class TokenServer:
    """A token endpoint on ``127.0.0.1:<free port>``; use as a context manager or stop().

    ``users`` (name → password): when given, every request must carry valid Basic
    credentials (401 otherwise); when None, tokens are issued anonymously.
    ``grant_push`` lets the fixture's own pushes through; ``expires_in`` is what the
    response (and the JWT's exp) say.
    """

    def __init__(
        self,
        *,
        service: str = "testbed-registry",
        issuer: str = "trustproxy-testbed",
        users: Mapping[str, str] | None = None,
        expires_in: int = 300,
        grant_push: bool = True,
        cert_dir: Path,
    ) -> None:
        self.service = service
        self.issuer = issuer
        self.users = dict(users) if users is not None else None
        self.expires_in = expires_in
        self.grant_push = grant_push
        self._signer = _Signer.generate(issuer)
        cert_dir.mkdir(parents=True, exist_ok=True)
        self.cert_path = cert_dir / "token-rootcertbundle.pem"
        self.cert_path.write_bytes(self._signer.cert.public_bytes(serialization.Encoding.PEM))
        self._lock = threading.Lock()
        self._requests: list[TokenRequest] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="token-server", daemon=True
        )
        self._thread.start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    @property
    def requests(self) -> list[TokenRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def count(self) -> int:
        """Token requests answered with 200."""
        with self._lock:
            return sum(1 for r in self._requests if r.status == 200)

    def token(self, scopes: list[str], *, user: str | None = None) -> str:
        """A signed token for ``scopes`` without HTTP (for the fixture's pushes)."""
        return self._issue(scopes, user or "")

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> TokenServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _record(self, request: TokenRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _authenticate(self, header: str | None) -> tuple[bool, str | None]:
        """(allowed, user)."""
        if self.users is None:
            return True, None
        if not header or not header.lower().startswith("basic "):
            return False, None
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except ValueError:
            return False, None
        expected = self.users.get(user)
        if expected is None or not hmac.compare_digest(expected.encode(), password.encode()):
            return False, None
        return True, user

    def _issue(self, scopes: list[str], subject: str) -> str:
        access = []
        for scope in scopes:
            parsed = _parse_scope(scope)
            if parsed is None or parsed[0] != "repository":
                continue
            type_, name, actions = parsed
            allowed = {"pull", "push"} if self.grant_push else {"pull"}
            granted = [a for a in actions if a in allowed]
            if granted:
                access.append({"type": type_, "name": name, "actions": granted})
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + self.expires_in,
            "nbf": now - 5,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        return self._signer.sign_jwt(claims)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # tests read TokenServer.requests instead

            def _reply(self, status: int, body: Mapping[str, Any], **headers: str) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name.replace("_", "-"), value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                service = (query.get("service") or [""])[0]
                scopes = [s for value in query.get("scope", []) for s in value.split()]
                account = (query.get("account") or [""])[0]
                ok, user = server._authenticate(self.headers.get("Authorization"))

                def done(status: int) -> None:
                    server._record(TokenRequest(service, tuple(scopes), account, user, status))

                if url.path != "/token":
                    done(404)
                    self._reply(404, {"error": "not found"})
                elif not ok:
                    done(401)
                    self._reply(
                        401,
                        {"error": "unauthorized"},
                        WWW_Authenticate='Basic realm="testbed token server"',
                    )
                elif service != server.service:
                    done(400)
                    self._reply(400, {"error": f"unknown service {service!r}"})
                else:
                    token = server._issue(scopes, user or "")
                    done(200)
                    issued = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                    self._reply(
                        200,
                        {
                            "token": token,
                            "access_token": token,
                            "expires_in": server.expires_in,
                            "issued_at": issued,
                        },
                    )

        return Handler


def write_htpasswd(path: Path, users: Mapping[str, str]) -> Path:
    """An htpasswd file with bcrypt hashes (registry 2.8 accepts only bcrypt)."""
    lines = [
        f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(4, prefix=b'2a')).decode()}"
        for user, pw in users.items()
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _start_registry(name: str, auth: Mapping[str, Any], work_dir: Path, log_dir: Path) -> Server:
    port = free_port()
    work_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(work_dir / "storage")},
            "delete": {"enabled": True},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
        "auth": dict(auth),
    }
    config_path = work_dir / "config.yml"
    config_path.write_text(yaml.safe_dump(config))
    server = start_server(
        name, [REGISTRY_BIN, "serve", str(config_path)], log_dir=log_dir, port=port
    )
    server.extra["url"] = f"http://127.0.0.1:{port}"
    server.extra["config"] = str(config_path)
    return server


def start_token_registry(
    token_server: TokenServer, *, work_dir: Path, log_dir: Path, name: str = "registry-token"
) -> Server:
    """docker-registry trusting ``token_server``'s tokens; ``extra["url"]`` is its base."""
    auth = {
        "token": {
            "realm": token_server.realm,
            "service": token_server.service,
            "issuer": token_server.issuer,
            "rootcertbundle": str(token_server.cert_path),
        }
    }
    return _start_registry(name, auth, work_dir, log_dir)


def start_htpasswd_registry(
    htpasswd: Path,
    *,
    work_dir: Path,
    log_dir: Path,
    realm: str = "testbed-registry",
    name: str = "registry-htpasswd",
) -> Server:
    """docker-registry with Basic auth from a bcrypt ``htpasswd`` file."""
    auth = {"htpasswd": {"realm": realm, "path": str(htpasswd)}}
    return _start_registry(name, auth, work_dir, log_dir)
