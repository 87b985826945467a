"""``trustproxy doctor``: run on a client host, say whether the proxy can be bypassed.

Enforcement holds only if clients cannot reach the upstream registry themselves: Docker's
``registry-mirrors`` and containerd/podman mirrors fall back to the upstream on *any* error
from the proxy (an unsigned tag's 404 included). So the doctor checks, from where it runs:

- the proxy: ``GET /v2/`` answers (status, TLS verified), ``/healthz``, ``/readyz``, and
  optionally ``HEAD`` of a signed image's manifest (status and ``Docker-Content-Digest``);
- each upstream: a TCP connect and ``GET /v2/``; **any** HTTP answer means a client here can
  pull from it directly, i.e. the proxy can be bypassed;
- each upstream again through dockerd's egress proxy when dockerd has one (its systemd
  drop-ins' ``HTTPS_PROXY``, daemon.json ``proxies``): that is the way dockerd goes, whatever
  the firewall does to direct connections;
- the client configuration files it finds (``/etc/docker/daemon.json``,
  ``/etc/containerd/certs.d/*/hosts.toml``, ``/etc/containers/registries.conf``): mirror
  setups that fall back are flagged. registries.conf is merged as podman/CRI-O/skopeo merge
  it (drop-in order, per-user files: ``proxy.containers_registries``).

Exit 0 only if the proxy answers AND no upstream is directly reachable (and the image, when
given, is served); 1 otherwise; 2 for usage errors. Reads are bounded, nothing secret is
printed (URLs lose their user:password part; headers from config files are never shown).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import tomllib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

import httpx

from proxy import containers_registries as registries_conf
from proxy.reference import DIGEST_RE, NAME_RE, TAG_RE

DEFAULT_UPSTREAM = "https://registry-1.docker.io"
DEFAULT_TIMEOUT = 5.0
MAX_BODY_BYTES = 64 * 1024  # error bodies, /readyz, tokens
MAX_FILE_BYTES = 1024 * 1024  # one client config file
MAX_FILES = 100  # hosts.toml folders, registries.conf.d drop-ins
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

MANIFEST_ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)

# Docker Hub serves from more names than registry-1.docker.io; blocking that one is enough
# to stop manifest pulls, the others are listed so a firewall rule can be complete.
HUB_HOSTS = (
    "registry-1.docker.io",
    "index.docker.io",
    "auth.docker.io",
    "production.cloudflare.docker.com",
)

Status = Literal["pass", "fail", "warn", "info"]
Group = Literal["proxy", "upstream", "client-config"]
MARKS: dict[Status, str] = {"pass": "✓", "fail": "✗", "warn": "!", "info": "·"}
GROUP_TITLES: dict[Group, str] = {
    "proxy": "Proxy (must answer)",
    "upstream": "Upstream registries (must NOT be reachable from here)",
    "client-config": "Client configuration on this host",
}

TcpConnect = Callable[[str, int, float], Awaitable[None]]

HELP = "on a client host: does the proxy answer, and can it be bypassed?"
DESCRIPTION = (
    "Run on a client host (a node, a build machine). Checks that the proxy answers "
    "(GET /v2/, TLS, /healthz, /readyz; with --image, HEAD of a signed image's manifest) and "
    "that each upstream registry is NOT directly reachable: any HTTP answer from it means "
    "clients here can pull around the proxy (registry-mirrors and containerd/podman mirrors "
    "fall back to it on any error). Also reports what the dockerd, containerd and "
    "podman/CRI-O config files here do with the proxy. Exit 0 only if the proxy answers and "
    "no upstream is reachable (and --image is served); 1 otherwise; 2 for usage errors. "
    "See docs/clients.md."
)


class UsageError(Exception):
    """A bad option (exit 2)."""


@dataclass
class Check:
    group: Group
    name: str
    status: Status
    summary: str
    details: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Options:
    proxy: str  # scheme://host[:port]
    upstreams: tuple[str, ...] = (DEFAULT_UPSTREAM,)
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    creds: tuple[str, str] | None = None  # never printed
    image: tuple[str, str] | None = None  # (name on the proxy, tag or digest)
    timeout: float = DEFAULT_TIMEOUT
    host_root: Path | None = Path("/")  # None: do not read client config files


@dataclass
class Report:
    options: Options
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return not any(c.status == "fail" for c in self.checks)

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.ok else EXIT_FAIL

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "exit_code": self.exit_code,
            "proxy": self.options.proxy,
            "upstreams": list(self.options.upstreams),
            "checks": [asdict(c) for c in self.checks],
        }


# --------------------------------------------------------------------------- arguments


def normalise_url(text: str, what: str) -> str:
    """``scheme://host[:port]`` (no path, no credentials) or UsageError."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError as e:
        raise UsageError(f"{what}: not a URL: {text!r} ({e})") from e
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{what}: expected http(s)://host[:port], not {text!r}")
    if parts.username is not None or parts.password is not None:
        raise UsageError(f"{what}: no user:password in the URL (use --creds-file)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UsageError(f"{what}: expected http(s)://host[:port] without a path: {text!r}")
    host = parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def parse_image(ref: str, proxy: str) -> tuple[str, str]:
    """``[PROXYHOST[:PORT]/]NAME[:TAG|@DIGEST]`` -> (name on the proxy, reference).

    The image is fetched through the proxy, so a registry part must be the proxy's own.
    """
    rest, reference = ref.strip(), "latest"
    if "@" in rest:
        rest, reference = rest.split("@", 1)
        if not DIGEST_RE.match(reference):
            raise UsageError(f"--image: not a sha256/sha512 digest: {reference!r}")
    else:
        slash, colon = rest.rfind("/"), rest.rfind(":")
        if colon > slash:
            rest, reference = rest[:colon], rest[colon + 1 :]
            if not TAG_RE.match(reference):
                raise UsageError(f"--image: not a tag: {reference!r}")
    first, sep, path = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        if hostport(first) != hostport(proxy):
            raise UsageError(
                f"--image: {first} is not the proxy ({urlsplit(proxy).netloc}): name the "
                "image as clients pull it through the proxy, e.g. library/alpine:3.20"
            )
        rest = path
    if not NAME_RE.match(rest):
        raise UsageError(f"--image: not a repository name: {rest!r}")
    return rest, reference


def read_creds(path: Path) -> tuple[str, str]:
    try:
        with path.open("rb") as f:
            data = f.read(4097)
    except OSError as e:
        raise UsageError(f"--creds-file {path}: cannot read: {e.strerror or e}") from e
    text = data[:4096].decode("utf-8", "replace").strip()
    user, sep, password = text.partition(":")
    if not sep or not user or "\n" in text:
        raise UsageError(f"--creds-file {path}: expected one line USER:PASSWORD")
    return user, password


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--proxy",
        required=True,
        metavar="URL",
        help="the proxy as clients reach it, e.g. https://proxy.example.com:8443",
    )
    p.add_argument(
        "--upstream",
        action="append",
        default=None,
        metavar="URL",
        help="a registry that must NOT be reachable from here (repeatable); "
        f"default: {DEFAULT_UPSTREAM}",
    )
    p.add_argument(
        "--ca-file",
        type=Path,
        metavar="FILE",
        help="CA certificate(s) for the proxy's TLS (added to the public ones)",
    )
    p.add_argument(
        "--client-cert",
        type=Path,
        metavar="FILE",
        help="client certificate for a proxy that requires mTLS (with --client-key)",
    )
    p.add_argument("--client-key", type=Path, metavar="FILE", help="its private key")
    p.add_argument(
        "--creds-file",
        type=Path,
        metavar="FILE",
        help="a file with one line USER:PASSWORD for a proxy with client auth (never printed)",
    )
    p.add_argument(
        "--image",
        metavar="REF",
        help="a signed image through the proxy, e.g. library/alpine:3.20: HEAD its "
        "manifest, report status and Docker-Content-Digest",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"per check (default {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument(
        "--host-root",
        type=Path,
        default=Path("/"),
        metavar="DIR",
        help="read client config files under DIR (e.g. /host in a pod that mounts "
        "the node's /); default /",
    )
    p.add_argument(
        "--no-client-config",
        action="store_true",
        help="do not read dockerd/containerd/podman config files",
    )
    p.add_argument("--json", action="store_true", help="one JSON object, for scripts")


def options_from_args(args: argparse.Namespace) -> Options:
    proxy = normalise_url(args.proxy, "--proxy")
    upstreams = tuple(normalise_url(u, "--upstream") for u in (args.upstream or [DEFAULT_UPSTREAM]))
    if (args.client_cert is None) != (args.client_key is None):
        raise UsageError("--client-cert and --client-key go together")
    if not args.timeout > 0:
        raise UsageError("--timeout must be greater than zero")
    return Options(
        proxy=proxy,
        upstreams=upstreams,
        ca_file=args.ca_file,
        client_cert=args.client_cert,
        client_key=args.client_key,
        creds=read_creds(args.creds_file) if args.creds_file is not None else None,
        image=parse_image(args.image, proxy) if args.image else None,
        timeout=args.timeout,
        host_root=None if args.no_client_config else args.host_root,
    )


def cmd_doctor(args: argparse.Namespace) -> int:
    try:
        options = options_from_args(args)
        verify = proxy_ssl_context(options)
    except UsageError as e:
        print(f"trustproxy doctor: {e}", file=sys.stderr)
        return EXIT_USAGE
    report = asyncio.run(run_checks(options, verify=verify))
    if args.json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        print(format_report(report), end="")
    return report.exit_code


def proxy_ssl_context(options: Options) -> ssl.SSLContext:
    from proxy.upstream.client import ssl_context

    try:
        ctx = ssl_context(str(options.ca_file) if options.ca_file else None)
        if options.client_cert is not None and options.client_key is not None:
            ctx.load_cert_chain(options.client_cert, options.client_key)
    except (OSError, ssl.SSLError) as e:
        raise UsageError(f"TLS files: {e}") from e
    return ctx


# --------------------------------------------------------------------------- running


async def run_checks(
    options: Options,
    *,
    verify: ssl.SSLContext | bool = True,
    transport: httpx.AsyncBaseTransport | None = None,
    tcp_connect: TcpConnect | None = None,
) -> Report:
    """Every check, concurrently. ``transport``/``tcp_connect`` replace the network in tests."""
    connect = tcp_connect or _tcp_connect
    timeout = httpx.Timeout(options.timeout)
    proxy_client = httpx.AsyncClient(
        verify=verify, timeout=timeout, trust_env=False, follow_redirects=False, transport=transport
    )
    # Only reachability is probed upstream: an answer with a certificate this host does not
    # trust still means a client that trusts it (or skips TLS checks) gets through.
    probe_client = httpx.AsyncClient(
        verify=False,  # noqa: S501 - a reachability probe, see above
        timeout=timeout,
        trust_env=False,
        follow_redirects=False,
        transport=transport,
    )
    async with proxy_client, probe_client:
        proxy_checks, upstream_checks = await asyncio.gather(
            _proxy_checks(proxy_client, options),
            asyncio.gather(
                *(
                    _check_upstream(probe_client, url, connect, options.timeout)
                    for url in options.upstreams
                )
            ),
        )
    checks = [*proxy_checks, *upstream_checks]
    if options.host_root is not None:
        checks.extend(await dockerd_egress_checks(options.host_root, options))
        checks.extend(client_config_checks(options.host_root, options.proxy))
    return Report(options, checks)


async def _tcp_connect(host: str, port: int, seconds: float) -> None:
    _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), seconds)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _get_bounded(
    client: httpx.AsyncClient, method: str, url: str, headers: dict[str, str] | None = None
) -> tuple[httpx.Response, bytes]:
    async with client.stream(method, url, headers=headers) as response:
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                del body[MAX_BODY_BYTES:]
                break
        return response, bytes(body)


def _describe_error(e: Exception, timeout: float) -> tuple[str, bool]:
    """A short reason for a failed request, and whether TLS was the problem."""
    if isinstance(e, httpx.TimeoutException):
        return f"no answer within {timeout:g}s", False
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            reason = getattr(cause, "verify_message", None) or cause.reason or str(cause)
            return f"TLS: {reason}", True
        cause = cause.__cause__ or cause.__context__
    text = str(e).strip()
    return (f"{type(e).__name__}: {text}" if text else type(e).__name__), False


def _tls_advice(reason: str, base: str) -> str:
    """What a certificate verification failure means, by name."""
    text = reason.lower()
    if "self-signed" in text or "issuer" in text or "unknown ca" in text:
        return (
            "unknown CA: the proxy's certificate is issued by a CA this host does not trust; "
            "give it to this check with --ca-file, and to the clients as docs/clients.md shows "
            "(containerd hosts.toml `ca`, dockerd certs.d/<proxy>/ca.crt, ...)"
        )
    if "mismatch" in text:
        return (
            f"the proxy's certificate is not issued for {urlsplit(base).hostname}: reach it by "
            "a name (or IP address) its certificate lists"
        )
    if "expired" in text or "not yet valid" in text:
        return "the proxy's certificate has expired or is not yet valid (or this clock is wrong)"
    return (
        "install the proxy's CA for this check with --ca-file, and for "
        "the clients as docs/clients.md shows"
    )


def _asks_for_client_certificate(options: Options) -> bool | None:
    """Whether the proxy's TLS handshake asks for a client certificate (CertificateRequest);
    None when that cannot be told (no handshake, no message hook in this Python)."""
    parts = urlsplit(options.proxy)
    requested: list[bool] = []

    def hook(conn: Any, direction: str, version: Any, kind: Any, msg: Any, data: Any) -> None:
        if direction == "read" and kind == 22 and msg == 13:  # handshake, CertificateRequest
            requested.append(True)

    try:
        ctx = proxy_ssl_context(options)
        if not hasattr(ctx, "_msg_callback"):
            return None
        ctx._msg_callback = hook  # OpenSSL's message callback (CPython's ssl, undocumented)
        with (
            socket.create_connection(
                (parts.hostname or "", parts.port or 443), timeout=options.timeout
            ) as raw,
            ctx.wrap_socket(raw, server_hostname=parts.hostname) as tls,
        ):
            tls.do_handshake()
    except (OSError, UsageError, ValueError):
        pass  # a handshake cut short still shows whether the request came
    return bool(requested)


def _auth_schemes(response: httpx.Response) -> list[str]:
    from proxy.upstream.challenge import parse_www_authenticate

    header = response.headers.get("www-authenticate", "")
    try:
        return [c.scheme for c in parse_www_authenticate(header)] if header else []
    except ValueError:
        return ["(unparsable WWW-Authenticate)"]


async def _authorization(
    client: httpx.AsyncClient, response: httpx.Response, options: Options, scope: str | None
) -> str | None:
    """An Authorization header answering a 401 (Basic, or a Bearer token from the realm).

    Credentials go only to the proxy itself: a realm on another origin is asked anonymously.
    """
    from proxy.upstream.auth import basic_header
    from proxy.upstream.challenge import parse_www_authenticate

    try:
        challenges = parse_www_authenticate(response.headers.get("www-authenticate", ""))
    except ValueError:
        return None
    for ch in challenges:
        if ch.is_scheme("basic") and options.creds is not None:
            return basic_header(*options.creds)
        if ch.is_scheme("bearer") and ch.realm:
            params = {k: v for k, v in (("service", ch.service), ("scope", scope)) if v}
            realm = ch.realm + ("&" if "?" in ch.realm else "?") + urlencode(params)
            if urlsplit(realm).scheme not in ("http", "https"):
                return None
            headers = {}
            if options.creds is not None and hostport(realm) == hostport(options.proxy):
                headers["Authorization"] = basic_header(*options.creds)
            try:
                token_response, body = await _get_bounded(client, "GET", realm, headers)
                token = json.loads(body) if token_response.status_code == 200 else {}
            except (httpx.HTTPError, ValueError):
                return None
            value = (
                (token.get("token") or token.get("access_token"))
                if isinstance(token, dict)
                else None
            )
            return f"Bearer {value}" if isinstance(value, str) and value else None
    return None


async def _proxy_checks(client: httpx.AsyncClient, options: Options) -> list[Check]:
    base = options.proxy
    checks: list[Check] = []
    scheme = urlsplit(base).scheme
    v2 = Check("proxy", "proxy /v2/", "fail", "")
    checks.append(v2)
    try:
        response, _ = await _get_bounded(client, "GET", f"{base}/v2/")
        if response.status_code == 401 and options.creds is not None:
            auth = await _authorization(client, response, options, None)
            if auth:
                response, _ = await _get_bounded(
                    client, "GET", f"{base}/v2/", {"Authorization": auth}
                )
    except (httpx.HTTPError, httpx.InvalidURL) as e:  # InvalidURL: a 3xx to "javascript:x"
        reason, tls = _describe_error(e, options.timeout)
        client_cert = None
        if (
            not tls
            and scheme == "https"
            and isinstance(e, httpx.NetworkError | httpx.ProtocolError)
        ):
            # A TLS 1.3 server checks the client certificate after the handshake and just
            # closes the connection: ask the handshake itself whether it wanted one.
            client_cert = await asyncio.to_thread(_asks_for_client_certificate, options)
        if client_cert:
            tls = True
            given = options.client_cert is not None
            reason = (
                "TLS: the proxy refused this client certificate"
                if given
                else "TLS: the proxy requires a client certificate (mTLS) and none was given"
            )
            v2.details.append(
                "the certificate given with --client-cert is not issued by the proxy's client "
                "CA (server.client_auth.client_ca_file), has expired, or is not for client "
                "authentication"
                if given
                else "give this check one with --client-cert/--client-key; every client needs "
                "its own (containerd hosts.toml `client`, dockerd certs.d client.cert/.key, "
                "podman/CRI-O certs.d): docs/clients.md"
            )
        elif tls:
            v2.details.append(_tls_advice(reason, base))
        else:
            v2.details.append(
                "the proxy does not answer from here: check its address, port, DNS and firewall"
            )
        v2.summary = f"GET {base}/v2/: {reason}"
        v2.data = {"error": reason, "tls_error": tls}
        if client_cert:
            v2.data["client_certificate"] = (
                "rejected" if options.client_cert is not None else "required"
            )
    else:
        status = response.status_code
        tls_text = "TLS verified" if scheme == "https" else "plain HTTP"
        v2.data = {
            "status": status,
            "tls": scheme == "https",
            "api_version": response.headers.get("docker-distribution-api-version"),
        }
        if status < 500:
            v2.status = "pass"
            v2.summary = f"GET {base}/v2/ → {status} ({tls_text})"
            if status == 401:
                schemes = _auth_schemes(response)
                v2.data["auth"] = schemes
                v2.details.append(
                    f"the proxy requires authentication ({', '.join(schemes) or '?'}): clients "
                    "need credentials for it"
                    + ("" if options.creds else " (--creds-file to test them)")
                )
        else:
            v2.summary = f"GET {base}/v2/ → {status}: the proxy answers with a server error"
        if scheme == "http":
            checks.append(
                Check(
                    "proxy",
                    "proxy TLS",
                    "warn",
                    "plain HTTP: clients must list the proxy as insecure "
                    "(insecure-registries, --tls-verify=false): for tests only",
                )
            )
    checks.append(await _health_check(client, base, "/healthz", options.timeout))
    checks.append(await _health_check(client, base, "/readyz", options.timeout))
    if options.image is not None:
        checks.append(await _image_check(client, options))
    return checks


async def _health_check(client: httpx.AsyncClient, base: str, path: str, seconds: float) -> Check:
    check = Check("proxy", f"proxy {path}", "warn", "")
    try:
        response, body = await _get_bounded(client, "GET", base + path)
    except (httpx.HTTPError, httpx.InvalidURL) as e:  # InvalidURL: a 3xx to "javascript:x"
        check.summary = f"GET {path}: {_describe_error(e, seconds)[0]}"
        return check
    check.data = {"status": response.status_code}
    check.summary = f"GET {path} → {response.status_code}"
    if response.status_code == 200:
        check.status = "pass"
    if path == "/readyz":
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            ups = doc.get("upstreams")
            if isinstance(ups, dict):
                check.data["upstreams"] = {str(k): str(v)[:200] for k, v in ups.items()}
                bad = [f"{k}: {v}" for k, v in check.data["upstreams"].items() if v != "ok"]
                if bad:
                    check.details.append("the proxy cannot reach: " + "; ".join(bad))
            store = doc.get("trust_store")
            if isinstance(store, str):
                check.data["trust_store"] = store
                check.summary += f" (trust store: {store})"
            _changefeed_details(check, doc.get("changefeeds"))
    return check


def _changefeed_details(check: Check, feeds: Any) -> None:
    """Each trust source's change feed as the answering process sees it: one that does
    not work leaves revocations at the refresh interval (README "Revocation")."""
    if not isinstance(feeds, dict):
        return
    states: dict[str, str] = {}
    for name, feed in list(feeds.items())[:32]:
        if not isinstance(feed, dict):
            continue
        state = str(feed.get("state", "?"))[:32]
        states[str(name)[:64]] = state
        if state in ("unsupported", "unavailable", "bad data"):
            detail = str(feed.get("detail", ""))[:300]
            check.details.append(
                f"change feed of trust source {str(name)[:64]}: {state}"
                + (f" ({detail})" if detail else "")
                + "; revocations take up to the refresh interval"
            )
    if states:
        check.data["changefeeds"] = states


async def _image_check(client: httpx.AsyncClient, options: Options) -> Check:
    assert options.image is not None
    name, reference = options.image
    url = f"{options.proxy}/v2/{name}/manifests/{reference}"
    check = Check("proxy", "image", "fail", "", data={"image": f"{name}:{reference}"})
    headers = {"Accept": MANIFEST_ACCEPT}
    try:
        response, _ = await _get_bounded(client, "HEAD", url, headers)
        if response.status_code == 401:
            auth = await _authorization(client, response, options, f"repository:{name}:pull")
            if auth:
                headers["Authorization"] = auth
                response, _ = await _get_bounded(client, "HEAD", url, headers)
        status = response.status_code
        body = b""
        if status != 200:  # HEAD has no body: GET once for the error message (why refused)
            response, body = await _get_bounded(client, "GET", url, headers)
    except (httpx.HTTPError, httpx.InvalidURL) as e:  # InvalidURL: a 3xx to "javascript:x"
        check.summary = (
            f"HEAD /v2/{name}/manifests/{reference}: {_describe_error(e, options.timeout)[0]}"
        )
        return check
    digest = response.headers.get("docker-content-digest")
    check.data.update(status=status, digest=digest, media_type=response.headers.get("content-type"))
    check.summary = f"HEAD /v2/{name}/manifests/{reference} → {status}"
    if status == 200:
        check.status = "pass"
        check.summary += f", Docker-Content-Digest: {digest or '(none)'}"
    else:
        message = _oci_error(body)
        if message:
            check.data["error"] = message
            check.details.append(f"the proxy says: {message}")
        if status == 404:
            check.details.append(
                "404 for a tag means: not signed under the policy, refused by "
                "allow.paths, or no trust data (trustproxy policy explain / "
                "trust inspect say which)"
            )
    return check


def _oci_error(body: bytes) -> str | None:
    try:
        doc = json.loads(body)
        first = doc["errors"][0]
        return f"{first.get('code', '?')}: {str(first.get('message', ''))[:300]}"
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


async def _check_upstream(
    client: httpx.AsyncClient, url: str, connect: TcpConnect, seconds: float
) -> Check:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    check = Check("upstream", url, "pass", "", data={"host": host, "port": port})
    try:
        await connect(host, port, seconds)
    except socket.gaierror:
        check.summary = f"{url}: not reachable: {host} does not resolve here"
        check.data["reachable"] = False
        check.details.append(
            "blocked by name resolution only: a client with another resolver, "
            "an /etc/hosts entry or the IP address may still get through; "
            "block the egress too"
        )
        return check
    except (TimeoutError, OSError) as e:
        reason = (
            "timed out (filtered)"
            if isinstance(e, TimeoutError)
            else (e.strerror or type(e).__name__)
        )
        check.summary = f"{url}: not reachable: TCP connect to {host}:{port}: {reason}"
        check.data["reachable"] = False
        return check
    try:
        response, _ = await _get_bounded(client, "GET", f"{url}/v2/")
    except (httpx.HTTPError, httpx.InvalidURL) as e:  # InvalidURL: a 3xx to "javascript:x"
        reason = _describe_error(e, seconds)[0]
        check.status = "warn"
        check.summary = f"{url}: TCP port {port} is open, but no registry answer ({reason})"
        check.data["reachable"] = False
        check.data["tcp_open"] = True
        check.details.append(
            "something between here and the registry interferes above TCP; "
            "registry clients cannot pull from it now, but blocking the "
            "port is the robust fix"
        )
        return check
    check.status = "fail"
    check.data.update(reachable=True, status=response.status_code)
    check.summary = (
        f"{url}: REACHABLE (GET /v2/ → {response.status_code}): the proxy can be bypassed"
    )
    check.details.extend(_bypass_help(host, port))
    return check


def _bypass_help(host: str, port: int) -> list[str]:
    lines = [
        "any client on this host (dockerd, containerd, podman, CRI-O, skopeo, kubelet) can pull "
        f"from {host} directly; registry-mirrors and containerd/podman mirrors fall back to it "
        "on ANY error from the proxy, so an unsigned tag refused by the proxy (404) is pulled "
        "from here instead",
        f"to enforce: block egress from this host to {host}:{port} (firewall, egress proxy, "
        "Kubernetes NetworkPolicy / cloud egress rules for the nodes), or make sure every "
        "client names the proxy itself (docs/clients.md)",
    ]
    if host in HUB_HOSTS or host.endswith(".docker.io"):
        lines.append(
            "Docker Hub: block " + ", ".join(HUB_HOSTS) + " (blocking "
            "registry-1.docker.io alone already stops manifest pulls)"
        )
    return lines


def _tty_safe(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


def format_report(report: Report) -> str:
    lines = [f"trustproxy doctor: proxy {report.options.proxy}, from {socket.gethostname()}"]
    for group, title in GROUP_TITLES.items():
        checks = [c for c in report.checks if c.group == group]
        if not checks:
            continue
        lines += ["", title]
        for c in checks:
            lines.append(f"  {MARKS[c.status]} {_tty_safe(c.summary)}")
            lines.extend(f"      {_tty_safe(d)}" for d in c.details)
    proxy_ok = any(c.name == "proxy /v2/" and c.status == "pass" for c in report.checks)
    reachable = [c.name for c in report.checks if c.group == "upstream" and c.status == "fail"]
    lines.append("")
    if report.ok:
        lines.append("OK: the proxy answers and no upstream is directly reachable from here.")
    else:
        why = []
        if not proxy_ok:
            why.append("the proxy does not answer")
        if reachable:
            why.append(f"{', '.join(reachable)} reachable directly: the proxy can be bypassed")
        if any(c.name == "image" and c.status == "fail" for c in report.checks):
            why.append("the image is not served")
        lines.append("FAIL: " + "; ".join(why) + ".")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- client config files


def hostport(text: str) -> str:
    """``host:port`` of a URL or a registries.conf location (``host[:port][/path]``), with the
    default port of the scheme (https when there is none), lower case."""
    t = text.strip()
    if "://" not in t:
        t = "https://" + t
    try:
        parts = urlsplit(t)
        port = parts.port
    except ValueError:
        return t.lower()
    host = (parts.hostname or "").lower()
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port or (80 if parts.scheme == 'http' else 443)}"


def safe_url(text: str) -> str:
    """A URL or location for printing: without user:password, bounded, printable."""
    t = _tty_safe(str(text).strip()[:300])
    scheme, sep, rest = t.rpartition("://")
    netloc, slash, path = rest.partition("/")
    netloc = netloc.rpartition("@")[2]
    return f"{scheme}{sep}{netloc}{slash}{path}"


def _read(path: Path) -> tuple[bytes | None, str | None]:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        return None, f"cannot read: {e.strerror or e}"
    if len(data) > MAX_FILE_BYTES:
        return None, f"larger than {MAX_FILE_BYTES} bytes: not read"
    return data, None


def _display(root: Path, path: Path) -> str:
    return "/" + str(path.relative_to(root)) if root != Path("/") else str(path)


def client_config_checks(root: Path, proxy: str) -> list[Check]:
    """What the client config files under ``root`` do with the proxy (informational)."""
    proxy_hp = hostport(proxy)
    checks: list[Check] = []
    checks.extend(_docker_checks(root, proxy_hp))
    checks.extend(_containerd_checks(root, proxy_hp))
    checks.extend(_containers_checks(root, proxy))
    if not checks:
        checks.append(
            Check(
                "client-config",
                "none",
                "info",
                "no dockerd, containerd or podman/CRI-O config files found",
            )
        )
    return checks


def _docker_checks(root: Path, proxy_hp: str) -> list[Check]:
    path = root / "etc/docker/daemon.json"
    if not path.is_file():
        return []
    name = _display(root, path)
    data, error = _read(path)
    doc: Any = None
    if data is not None:
        try:
            doc = json.loads(data)
        except ValueError as e:
            error = f"not valid JSON ({e})"
    if error is not None or not isinstance(doc, dict):
        return [Check("client-config", name, "warn", f"{name}: {error or 'not a JSON object'}")]
    checks: list[Check] = []
    mirrors = [m for m in doc.get("registry-mirrors") or [] if isinstance(m, str)]
    for m in mirrors:
        if hostport(m) == proxy_hp:
            checks.append(
                Check(
                    "client-config",
                    name,
                    "warn",
                    f"{name}: registry-mirrors has the proxy ({safe_url(m)})",
                    [
                        "dockerd falls back to Docker Hub on ANY error from a mirror (an unsigned "
                        "tag's 404 included): this enforces nothing unless egress to Docker Hub is "
                        "blocked; or pull <proxy>/library/alpine:3.20 by the proxy's name"
                    ],
                    {"mirror": safe_url(m), "is_proxy": True},
                )
            )
        else:
            checks.append(
                Check(
                    "client-config",
                    name,
                    "warn",
                    f"{name}: registry-mirrors has {safe_url(m)}, not the proxy: "
                    "Hub images pulled through it are not checked",
                    data={"mirror": safe_url(m), "is_proxy": False},
                )
            )
    if not mirrors:
        checks.append(
            Check(
                "client-config",
                name,
                "info",
                f"{name}: no registry-mirrors: Hub images go to Docker Hub unless "
                "clients name the proxy",
            )
        )
    insecure = [r for r in doc.get("insecure-registries") or [] if isinstance(r, str)]
    if any(hostport(r) == proxy_hp or hostport("http://" + r) == proxy_hp for r in insecure):
        checks.append(
            Check(
                "client-config",
                name,
                "warn",
                f"{name}: the proxy is in insecure-registries: its TLS is not "
                "verified (tests only)",
            )
        )
    ca = root / "etc/docker/certs.d" / proxy_hp.removesuffix(":443") / "ca.crt"
    if ca.is_file():
        checks.append(
            Check(
                "client-config",
                "docker ca",
                "info",
                f"{_display(root, ca)}: the proxy's CA for dockerd is installed",
            )
        )
    return checks


# dockerd reaches registries through an HTTP(S) proxy when one is set for it: dockerd 20.10
# reads HTTPS_PROXY/NO_PROXY from its environment (a systemd drop-in), dockerd 23+ also
# daemon.json "proxies". The upstream checks above try direct egress only, so with such a
# proxy a blocked port proves nothing for dockerd: its registry-mirrors fallback goes through
# the proxy (observed with dockerd 20.10.24, tests/integration/test_client_dockerd.py).
DOCKERD_DROPINS = "etc/systemd/system/docker.service.d"


@dataclass(frozen=True)
class EgressProxy:
    """dockerd's egress proxy settings and where they were found."""

    https_proxy: str | None
    http_proxy: str | None
    no_proxy: tuple[str, ...]
    source: str

    def for_url(self, url: str) -> str | None:
        """The proxy dockerd uses for ``url`` (Go's net/http rules), or None."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        proxy = self.https_proxy if parts.scheme == "https" else self.http_proxy
        if not proxy or host == "localhost" or _is_loopback(host):
            return None  # Go never proxies loopback
        for entry in self.no_proxy:
            e = entry.strip().lower()
            if e == "*":
                return None
            e = e.rpartition(":")[0] if e.count(":") == 1 else e  # host:port -> host
            if e and (host == e.lstrip(".") or host.endswith("." + e.lstrip("."))):
                return None
        return proxy


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _systemd_environment(text: str) -> dict[str, str]:
    """``Environment=`` assignments of a systemd unit file (later ones win)."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep or key.strip() != "Environment":
            continue
        try:
            words = shlex.split(value)
        except ValueError:
            continue
        for word in words:
            name, eq, val = word.partition("=")
            if eq:
                env[name] = val
    return env


def dockerd_egress_proxy(root: Path) -> EgressProxy | None:
    """dockerd's proxy settings under ``root``: daemon.json ``proxies`` (dockerd 23+) win
    over the environment its systemd unit sets; None when there are none."""
    data, _ = _read(root / "etc/docker/daemon.json")
    doc: Any = None
    if data is not None:
        with contextlib.suppress(ValueError):
            doc = json.loads(data)
    proxies = doc.get("proxies") if isinstance(doc, dict) else None
    if isinstance(proxies, dict) and (proxies.get("https-proxy") or proxies.get("http-proxy")):
        no_proxy = str(proxies.get("no-proxy") or "")
        return EgressProxy(
            str(proxies.get("https-proxy") or "") or None,
            str(proxies.get("http-proxy") or "") or None,
            tuple(n for n in no_proxy.split(",") if n.strip()),
            _display(root, root / "etc/docker/daemon.json") + " proxies",
        )
    folder = root / DOCKERD_DROPINS
    env: dict[str, str] = {}
    sources: list[str] = []
    if folder.is_dir():
        for path in sorted(folder.glob("*.conf"))[:MAX_FILES]:
            text, error = _read(path)
            if text is None or error is not None:
                continue
            found = _systemd_environment(text.decode("utf-8", "replace"))
            if any(k.lower() in ("https_proxy", "http_proxy") for k in found):
                sources.append(_display(root, path))
            env.update(found)

    def var(name: str) -> str | None:  # Go: the upper-case name first
        return env.get(name.upper()) or env.get(name.lower()) or None

    if not (var("https_proxy") or var("http_proxy")):
        return None
    no_proxy = var("no_proxy") or ""
    return EgressProxy(
        var("https_proxy"),
        var("http_proxy"),
        tuple(n for n in no_proxy.split(",") if n.strip()),
        ", ".join(sources),
    )


async def dockerd_egress_checks(root: Path, options: Options) -> list[Check]:
    """Each upstream probed the way dockerd reaches it: through its egress proxy."""
    proxy = dockerd_egress_proxy(root)
    if proxy is None:
        return []
    checks: list[Check] = []
    for url in options.upstreams:
        via = proxy.for_url(url)
        if via is None:
            continue
        shown = safe_url(via)
        check = Check(
            "upstream",
            f"{url} via dockerd's egress proxy",
            "pass",
            "",
            data={"egress_proxy": shown, "source": proxy.source},
        )
        client = httpx.AsyncClient(
            proxy=via,
            verify=False,  # noqa: S501 - a reachability probe, as for the direct one
            timeout=httpx.Timeout(options.timeout),
            trust_env=False,
            follow_redirects=False,
        )
        try:
            async with client:
                response, _ = await _get_bounded(client, "GET", f"{url}/v2/")
        except httpx.ProxyError as e:
            check.summary = (
                f"{url}: not reachable for dockerd: its egress proxy {shown} refuses it ({e})"
            )
            check.data["reachable"] = False
        except (httpx.HTTPError, httpx.InvalidURL) as e:
            check.status = "warn"
            check.summary = (
                f"{url}: dockerd's egress proxy {shown} ({proxy.source}) did not answer "
                f"from here ({_describe_error(e, options.timeout)[0]}): dockerd's way to the "
                "upstream is not checked"
            )
            check.data["reachable"] = False
        else:
            check.status = "fail"
            check.data.update(reachable=True, status=response.status_code)
            check.summary = (
                f"{url}: REACHABLE for dockerd through its egress proxy {shown} "
                f"({proxy.source}; GET /v2/ → {response.status_code}): the proxy can be bypassed"
            )
            check.details.append(
                "dockerd sends registry traffic to this proxy, so blocking the upstream at the "
                "firewall does not stop it: its registry-mirrors fallback (after the proxy's "
                "404 for an unsigned tag) and pulls of names that are not the proxy's go "
                f"through {shown}: make that proxy refuse the upstream (as the firewall does)"
            )
        checks.append(check)
    return checks


def _containerd_checks(root: Path, proxy_hp: str) -> list[Check]:
    checks: list[Check] = []
    config = root / "etc/containerd/config.toml"
    config_paths: list[str] = []
    if config.is_file():
        name = _display(root, config)
        data, error = _read(config)
        doc: Any = None
        if data is not None:
            try:
                doc = tomllib.loads(data.decode("utf-8", "replace"))
            except tomllib.TOMLDecodeError as e:
                error = f"not valid TOML ({e})"
        if error is not None:
            checks.append(Check("client-config", name, "warn", f"{name}: {error}"))
        else:
            paths = list(_find_key(doc, "config_path"))
            config_paths = [p for p in map(str, paths) if p]
            summary = (
                f"{name}: registry config_path = {', '.join(map(str, paths))}"
                if paths
                else f"{name}: no registry config_path: containerd 1.x (CRI) then ignores "
                "certs.d/*/hosts.toml; containerd 2.x defaults to "
                "/etc/containerd/certs.d:/etc/docker/certs.d"
            )
            checks.append(
                Check(
                    "client-config",
                    name,
                    "info",
                    summary,
                    data={"config_path": [str(p) for p in paths]},
                )
            )
    # The hosts directories the CRI plugin reads (config_path may list several, ':'-separated);
    # ctr reads the one given with --hosts-dir, by convention the same.
    dirs = [d for p in config_paths for d in p.split(":") if d] or ["/etc/containerd/certs.d"]
    folders: list[Path] = []
    for d in dict.fromkeys(dirs):
        certs_d = root / d.lstrip("/")
        if not certs_d.is_dir():
            continue
        try:
            folders.extend(sorted(p for p in certs_d.iterdir() if (p / "hosts.toml").is_file()))
        except OSError:
            continue
    if not folders:
        return checks
    version_text, version = detect_containerd_version(root)
    for folder in folders[:MAX_FILES]:
        checks.append(
            _hosts_toml_check(
                root, folder / "hosts.toml", containerd_namespace(folder.name), proxy_hp,
                version, version_text,
            )
        )  # fmt: skip
    return checks


# -- how containerd reads hosts.toml (remotes/docker/config/hosts.go), version by version ------

ContainerdVersion = tuple[int, int, int]
_CONTAINERD_VERSION_RE = re.compile(r"\bv?(\d+)\.(\d+)\.(\d+)")
#: containerd before this parses a hosts.toml without any [host] table as an error ("invalid
#: `host` tree", go-toml v1's tree lookup), logs "failed to decode hosts.toml" and ignores the
#: file. Every 1.6 release (1.6.20 tested: the unsigned tag came straight from the registry)
#: and 1.7 up to 1.7.31 do; 1.7.32 fixed it, 2.x parses with go-toml v2 and never had it.
CONTAINERD_NO_HOST_TABLE_FIXED: ContainerdVersion = (1, 7, 32)
_CAPABILITIES = frozenset({"pull", "resolve", "push"})


def parse_containerd_version(text: str) -> ContainerdVersion | None:
    """(major, minor, patch) from ``containerd --version`` (``containerd
    github.com/containerd/containerd 1.6.20~ds1 <revision>``, ``... v2.1.4 <commit>``)."""
    found = _CONTAINERD_VERSION_RE.search(text.split("containerd/containerd", 1)[-1])
    return (int(found[1]), int(found[2]), int(found[3])) if found else None


def detect_containerd_version(root: Path) -> tuple[str | None, ContainerdVersion | None]:
    """``containerd --version`` of the containerd under ``root`` (for ``/``: the one on
    PATH); (None, None) when there is none or it does not answer."""
    if root == Path("/"):
        found = shutil.which("containerd")
        candidates = [Path(found)] if found else []
    else:
        candidates = [root / d / "containerd" for d in ("usr/bin", "usr/local/bin", "bin")]
    for binary in candidates:
        if not binary.is_file():
            continue
        try:
            done = subprocess.run(
                [str(binary), "--version"], capture_output=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            continue
        text = done.stdout[:1000].decode("utf-8", "replace").strip()
        version = parse_containerd_version(text)
        if version is not None:
            return _tty_safe(text.splitlines()[0][:200]), version
    return None, None


def containerd_namespace(folder: str) -> str:
    """The registry host a certs.d folder is for: containerd also accepts ``host_port_`` for
    ``host:port`` (a name without ':' for file systems that cannot have one)."""
    if folder.endswith("_") and "_" in folder[:-1]:
        host, _, port = folder[:-1].rpartition("_")
        if port.isdigit() and host:
            return f"{host}:{port}"
    return folder


def containerd_default_host(namespace: str) -> str:
    """The host containerd uses for a namespace when nothing else is configured."""
    if namespace == "docker.io":
        return "https://registry-1.docker.io"
    host = namespace.rsplit(":", 1)[0].strip("[]")
    # containerd 1.6+: localhost and loopback addresses default to plain HTTP.
    if host == "localhost" or host.startswith("127.") or host == "::1":
        return f"http://{namespace}"
    return f"https://{namespace}"


@dataclass(frozen=True)
class ContainerdHosts:
    """What containerd makes of one hosts.toml: the hosts it tries, in order."""

    hosts: tuple[str, ...]  # URLs; the last one may be the default host containerd appended
    default_appended: bool  # the last host is the namespace's default (no `server`)
    ignored: str | None = None  # why containerd ignored the whole file (then: default host)


def containerd_hosts(
    namespace: str, doc: dict[str, Any] | None, error: str | None, version: ContainerdVersion
) -> ContainerdHosts:
    """The hosts containerd ``version`` tries for ``namespace``, as it reads this hosts.toml
    (``doc``; None with ``error`` when it is no valid TOML). A file containerd cannot read is
    logged and ignored: then only the default host is left (``loadHostDir``'s fallback)."""
    default = containerd_default_host(namespace)
    if doc is None:
        return ContainerdHosts((default,), True, error or "not valid TOML")
    table = doc.get("host")
    if table is None and version < CONTAINERD_NO_HOST_TABLE_FIXED:
        return ContainerdHosts(
            (default,),
            True,
            "invalid `host` tree: no [host] table, which containerd before 1.7.32 cannot parse",
        )
    if table is not None and not isinstance(table, dict):
        return ContainerdHosts((default,), True, "`host` is not a table")
    entries: list[tuple[str, Any]] = [(str(k), v) for k, v in (table or {}).items()]
    entries.append((doc["server"] if isinstance(doc.get("server"), str) else "", doc))
    hosts: list[str] = []
    for index, (url, entry) in enumerate(entries):
        caps = entry.get("capabilities") if isinstance(entry, dict) else None
        if caps is not None:
            if not isinstance(caps, list):  # a []string in containerd: anything else fails
                return ContainerdHosts((default,), True, "capabilities is not a list")
            listed = caps
            bad = [c for c in listed if str(c).lower() not in _CAPABILITIES]
            if bad:
                return ContainerdHosts((default,), True, f"unknown capability {bad[0]!r}")
            if not {str(c).lower() for c in listed} & {"pull", "resolve"}:
                continue  # push only: never pulled from
        last = index == len(entries) - 1
        if last and not url:
            hosts.append(default)
            return ContainerdHosts(tuple(hosts), True)
        hosts.append(url if "://" in url else f"https://{url}")
    return ContainerdHosts(tuple(hosts), False)


def _find_key(node: Any, key: str, depth: int = 0) -> Iterable[Any]:
    if depth > 8 or not isinstance(node, dict):
        return
    for k, v in node.items():
        if k == key:
            yield v
        else:
            yield from _find_key(v, key, depth + 1)


def _read_toml(root: Path, path: Path) -> tuple[str, dict[str, Any] | None, str | None]:
    """(display name, the TOML document or None, why not) for a client config file."""
    name = _display(root, path)
    data, error = _read(path)
    doc: Any = None
    if data is not None:
        try:
            doc = tomllib.loads(data.decode("utf-8", "replace"))
        except tomllib.TOMLDecodeError as e:
            error = f"not valid TOML ({e})"
    if error is not None or not isinstance(doc, dict):
        return name, None, error or "not a TOML table"
    return name, doc, None


def _hosts_toml_check(
    root: Path,
    path: Path,
    namespace: str,
    proxy_hp: str,
    version: ContainerdVersion | None,
    version_text: str | None,
) -> Check:
    name, doc, error = _read_toml(root, path)
    label = f"{name} ({namespace})"
    if doc is None and error is not None and not error.startswith("not valid TOML"):
        return Check("client-config", name, "warn", f"{name}: {error}")
    if version is None:
        # Unknown here: judge it as the oldest and the newest containerd would; when they
        # disagree, say so (a [host] table for the proxy makes both agree).
        old = _hosts_toml_verdict(label, namespace, doc, error, proxy_hp, (1, 6, 0))
        new = _hosts_toml_verdict(
            label, namespace, doc, error, proxy_hp, CONTAINERD_NO_HOST_TABLE_FIXED
        )
        check = new if old.status == new.status else old
        if old.status != new.status:
            check.summary += (
                " (containerd 1.6 and 1.7 before 1.7.32; containerd's version is unknown "
                "here: on 1.7.32+ and 2.x: " + new.summary.removeprefix(f"{label}: ") + ")"
            )
        check.data["containerd_version"] = None
        return check
    check = _hosts_toml_verdict(label, namespace, doc, error, proxy_hp, version)
    check.data["containerd_version"] = ".".join(map(str, version))
    if version_text:
        check.details.append(f"as read by {version_text}")
    return check


def _hosts_toml_verdict(
    label: str,
    namespace: str,
    doc: dict[str, Any] | None,
    error: str | None,
    proxy_hp: str,
    version: ContainerdVersion,
) -> Check:
    """Enforcing only if every host containerd ``version`` would try is the proxy."""
    name = label.rsplit(" (", 1)[0]
    seen = containerd_hosts(namespace, doc, error, version)
    is_proxy = [hostport(h) == proxy_hp for h in seen.hosts]
    server = doc.get("server") if doc is not None and isinstance(doc.get("server"), str) else None
    table = doc.get("host") if doc is not None else None
    data_out = {
        "namespace": namespace,
        "server": safe_url(server) if server else None,
        "hosts": [safe_url(h) for h in (table if isinstance(table, dict) else {})],
        "tried": [safe_url(h) for h in seen.hosts],
        "enforcing": all(is_proxy),
    }
    mentions_proxy = (server is not None and hostport(server) == proxy_hp) or any(
        hostport(str(h)) == proxy_hp for h in (table if isinstance(table, dict) else {})
    )
    others = [safe_url(h) for h, p in zip(seen.hosts, is_proxy, strict=True) if not p]
    if seen.ignored is not None:
        if all(is_proxy):  # the namespace is the proxy itself (images name the proxy)
            return Check(
                "client-config",
                name,
                "warn",
                f"{label}: containerd cannot use this file ({seen.ignored}): pulls still go "
                "only to the proxy (its own name), but the file's ca/client settings are not "
                "applied",
                ['add a [host."<proxy>"] table with the same settings (docs/clients.md)'],
                data_out,
            )
        if not mentions_proxy:
            return Check("client-config", name, "warn" if doc is None else "info",
                         f"{label}: containerd cannot use this file ({seen.ignored})",
                         data=data_out)  # fmt: skip
        return Check(
            "client-config",
            name,
            "warn",
            f"{label}: NOT enforcing: containerd cannot use this file ({seen.ignored}), "
            f'logs "failed to decode hosts.toml" and pulls from {others[0]} directly',
            [
                f'add a [host."{safe_url(server or "https://<proxy>")}"] table with the same '
                "settings as `server` (docs/clients.md: the enforcing hosts.toml)"
            ],
            data_out,
        )
    if not any(is_proxy):
        return Check("client-config", name, "info",
                     f"{label}: does not use the proxy ({', '.join(others)})",
                     data=data_out)  # fmt: skip
    if all(is_proxy):
        how = "server is the proxy" + (", and the only [host]" if data_out["hosts"] else "")
        return Check("client-config", name, "pass",
                     f"{label}: {how}: enforcing (no fallback)", data=data_out)  # fmt: skip
    if seen.default_appended:
        return Check(
            "client-config",
            name,
            "warn",
            f"{label}: NOT enforcing: no `server`, so containerd appends the default host "
            f"{others[-1]} after the proxy and falls back to it on any error (a refused tag's "
            "404 included)",
            ["set `server` to the proxy too (docs/clients.md: the enforcing hosts.toml)"],
            data_out,
        )
    if server is not None and hostport(server) != proxy_hp:
        return Check(
            "client-config",
            name,
            "warn",
            f"{label}: the proxy is a mirror host; containerd falls back to "
            f"{safe_url(server)} (server) on any error: not enforcing unless egress "
            "to it is blocked",
            ["make the proxy the `server` and remove the fallback host entries (docs/clients.md)"],
            data_out,
        )
    return Check(
        "client-config",
        name,
        "warn",
        f"{label}: the proxy is used, but {', '.join(others)} are tried too: what they serve "
        "is not checked",
        data=data_out,
    )


def _containers_home(root: Path) -> Path:
    # The per-user files of whoever runs the doctor; on a mounted node root, root's (CRI-O and
    # root podman), which is also where the test bed lays out its client's home.
    return Path.home() if root == Path("/") else root / "root"


def _containers_files(root: Path) -> tuple[list[Path], Path | None]:
    """The registries.conf files podman/CRI-O/skopeo read, in reading order, and the per-user
    main file when it exists (it hides the system file and system drop-ins)."""
    home = _containers_home(root)
    user_main = home / ".config/containers/registries.conf"
    user_dir = home / ".config/containers/registries.conf.d"
    if user_main.is_file():
        main, dirs, hiding = user_main, [user_dir], user_main
    else:
        main = root / "etc/containers/registries.conf"
        dirs, hiding = [root / "etc/containers/registries.conf.d", user_dir], None
    files = [main] if main.is_file() else []
    for d in dirs:
        if not d.is_dir():
            continue
        with contextlib.suppress(OSError):
            names = registries_conf.order_dropins([p.name for p in d.iterdir() if p.is_file()])
            files.extend(d / n for n in names[:MAX_FILES])
    return files, hiding


def _hidden_proxy_entries(root: Path, proxy_hp: str) -> list[str]:
    """System-wide entries that use the proxy (shown as ``file [prefix]``): a per-user main
    file hides them."""
    system = root / "etc/containers"
    paths = [system / "registries.conf"]
    with contextlib.suppress(OSError):
        d = system / "registries.conf.d"
        names = [p.name for p in d.iterdir() if p.is_file()] if d.is_dir() else []
        paths.extend(d / n for n in registries_conf.order_dropins(names)[:MAX_FILES])
    out = []
    for path in paths:
        if not path.is_file():
            continue
        name, text, _ = _read_text(root, path)
        with contextlib.suppress(registries_conf.RegistriesConfError):
            for e in registries_conf.parse_file(name, text or "").entries:
                locations = [e.location, *(m.location for m in e.mirrors)]
                if any(loc and hostport(loc) == proxy_hp for loc in locations):
                    out.append(f"{name} [{safe_url(e.prefix)}]")
    return out


def _containers_checks(root: Path, proxy: str) -> list[Check]:
    """The effective registries.conf (every file, merged as the clients merge them) and where
    each entry that involves the proxy sends a tag pull."""
    proxy_hp = hostport(proxy)
    plain_http = proxy.startswith("http://")
    files, hiding = _containers_files(root)
    checks: list[Check] = []
    if hiding is not None:
        shown = _display(root, hiding)
        hidden = _hidden_proxy_entries(root, proxy_hp)
        checks.append(
            Check(
                "client-config",
                shown,
                "warn" if hidden else "info",
                f"{shown}: a per-user registries.conf: /etc/containers/registries.conf and "
                "registries.conf.d are NOT read for this user"
                + (f" (their entries for the proxy are ignored: {', '.join(hidden)})"
                   if hidden else ""),
            )
        )  # fmt: skip
    parsed: list[registries_conf.FileConfig] = []
    for path in files:
        name, doc_text, error = _read_text(root, path)
        if doc_text is None:
            checks.append(Check("client-config", name, "warn", f"{name}: {error}"))
            continue
        try:
            parsed_file = registries_conf.parse_file(name, doc_text)
        except registries_conf.RegistriesConfError as e:
            checks.append(
                Check("client-config", name, "warn",
                      f"{name}: {e}: podman/CRI-O refuse every pull while it is there")
            )  # fmt: skip
            continue
        if parsed_file.v1:
            checks.append(
                Check(
                    "client-config",
                    name,
                    "info",
                    f"{name}: v1 format ([registries.*]): not analysed; use [[registry]]",
                )
            )
        parsed.append(parsed_file)
    effective = registries_conf.merge(parsed)

    def is_proxy(location: str) -> bool:
        return bool(location) and hostport(location) == proxy_hp

    def uses_proxy(e: registries_conf.Entry) -> bool:
        return is_proxy(e.location) or any(is_proxy(m.location) for m in e.mirrors)

    for old, new in effective.overridden:
        if uses_proxy(old):
            now, _ = registries_conf.route(
                effective.entries.get(new.prefix), is_proxy, proxy_plain_http=plain_http
            )
            checks.append(
                Check(
                    "client-config",
                    old.source,
                    "info" if now == "enforcing" else "warn",
                    f"{old.source} [{safe_url(old.prefix)}]: overridden by {new.source} "
                    "(a later file replaces the whole entry for the same prefix; per-user "
                    "drop-ins come after every system one)",
                    data={"prefix": safe_url(old.prefix), "overridden_by": new.source},
                )
            )
    proxied = [e for e in effective.entries.values() if uses_proxy(e) and not e.blocked]
    replaced = {new.prefix for old, new in effective.overridden if uses_proxy(old)}
    for entry in effective.entries.values():
        check = _registry_entry_check(entry, effective, proxied, replaced, is_proxy, plain_http)
        if check is not None:
            checks.append(check)
    if not checks and files:
        name = _display(root, files[0])
        checks.append(
            Check("client-config", name, "info", f"{name}: no [[registry]] entry uses the proxy")
        )
    return checks


def _read_text(root: Path, path: Path) -> tuple[str, str | None, str | None]:
    name = _display(root, path)
    data, error = _read(path)
    return name, (data.decode("utf-8", "replace") if data is not None else None), error


def _registry_entry_check(
    entry: registries_conf.Entry,
    effective: registries_conf.Effective,
    proxied: list[registries_conf.Entry],
    replaced: set[str],
    is_proxy: Callable[[str], bool],
    plain_http: bool,
) -> Check | None:
    """One effective [[registry]] entry: None when it has nothing to do with the proxy."""
    prefix = safe_url(entry.prefix)
    mirrors = [safe_url(m.location) for m in entry.mirrors]
    kind, why = registries_conf.route(entry, is_proxy, proxy_plain_http=plain_http)
    data_out = {
        "prefix": prefix,
        "location": safe_url(entry.location),
        "mirrors": mirrors,
        "blocked": entry.blocked,
        "route": kind,
        "source": entry.source,
    }
    label = f"{entry.source} [{prefix}]"
    name = entry.source
    if entry.blocked:
        return Check("client-config", name, "info", f"{label}: {why}", data=data_out)
    location_is_proxy = is_proxy(entry.location)
    if entry in proxied:
        if kind == "enforcing":
            if effective.search:
                short = (f"short names search {', '.join(map(safe_url, effective.search))} "
                         f"({effective.search_origin})")  # fmt: skip
            else:
                short = ("no unqualified-search-registries: short names without an alias "
                         "fail (closed)")  # fmt: skip
            return Check(
                "client-config", name, "pass",
                f"{label}: location is the proxy (replaces the registry, no fallback): enforcing",
                [short], data_out,
            )  # fmt: skip
        if kind == "fails":
            return Check(
                "client-config", name, "warn",
                f"{label}: the proxy is plain HTTP and this entry lacks `insecure = true`: "
                "every pull through it fails (closed, but broken)",
                ["tests only: insecure = true (or --tls-verify=false); else give the proxy TLS"],
                data_out,
            )  # fmt: skip
        if kind == "falls-back" or not location_is_proxy:
            fallback = safe_url(entry.location or entry.prefix)
            how = "" if kind == "falls-back" else f" ({why})"  # e.g. a digest-only mirror
            return Check(
                "client-config", name, "warn",
                f"{label}: the proxy is a mirror; podman/CRI-O fall back to {fallback} on any "
                f"error: not enforcing unless egress to it is blocked{how}",
                ["set location to the proxy instead (docs/clients.md)"], data_out,
            )  # fmt: skip
        others = [m for m in mirrors if not is_proxy(m)]
        return Check(
            "client-config", name, "warn",
            f"{label}: location is the proxy, but mirrors {', '.join(others)} are tried "
            "first: what they serve is not checked",
            data=data_out,
        )  # fmt: skip
    shadowed = [
        p.prefix for p in proxied
        if len(p.prefix) < len(entry.prefix)
        and registries_conf.matching_prefix_length(entry.prefix, p.prefix) != -1
    ]  # fmt: skip
    if entry.prefix in replaced or shadowed:
        reason = (f"it replaced the proxy's entry for {prefix}" if entry.prefix in replaced
                  else f"it is more specific than {', '.join(map(safe_url, shadowed))}, "
                  "which uses the proxy")  # fmt: skip
        return Check(
            "client-config", name, "warn",
            f"{label}: {why}: not enforcing ({reason})", data=data_out,
        )  # fmt: skip
    if mirrors:
        return Check(
            "client-config", name, "info",
            f"{label}: mirrors {', '.join(mirrors)}, not the proxy", data=data_out,
        )  # fmt: skip
    return None
