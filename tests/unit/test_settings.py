"""proxy.settings: the YAML contract, environment overrides, path-qualified errors."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.errors import ConfigError
from proxy.settings import (
    ENV_PREFIX,
    AuditSettings,
    CacheSettings,
    ClientAuthSettings,
    CredentialSettings,
    KiB,
    MiB,
    ServerSettings,
    apply_env_overrides,
    load_settings,
)

MINIMAL_YAML = """\
server:
  listen: 127.0.0.1:8443
upstreams:
  - name: internal
    url: http://127.0.0.1:5000
    registry: 127.0.0.1:5000
trust:
  sources:
    notary:
      type: notary
      url: https://127.0.0.1:4443
      ca_file: notary-ca.crt
cache:
  redis_url: null
policy_file: policy.yaml
"""


def minimal() -> dict[str, Any]:
    data = yaml.safe_load(MINIMAL_YAML)
    assert isinstance(data, dict)
    return data


def write(folder: Path, data: dict[str, Any] | str, name: str = "trustproxy.yaml") -> Path:
    path = folder / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def touch(folder: Path, rel: str, text: str = "x\n") -> Path:
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- the example


def test_minimal_example_loads_as_is_with_warnings_for_missing_files(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, MINIMAL_YAML))
    base = tmp_path.resolve()
    assert (s.server.host, s.server.port) == ("127.0.0.1", 8443)
    assert not s.server.tls
    assert [(u.name, u.url, u.registry, u.prefix) for u in s.upstreams] == [
        ("internal", "http://127.0.0.1:5000", "127.0.0.1:5000", None)
    ]
    assert s.upstreams[0].auth.mode == "anonymous"
    assert not s.upstreams[0].auth.credentials.present
    (source,) = s.trust.sources
    assert (source.name, source.type, source.url) == ("notary", "notary", "https://127.0.0.1:4443")
    # Relative paths are resolved against the config file's folder, not the cwd.
    assert source.ca_file == base / "notary-ca.crt"
    assert s.policy_file == base / "policy.yaml"
    assert s.cache.redis_url is None
    assert s.source_file == tmp_path / "trustproxy.yaml"
    assert len(s.warnings) == 2
    assert any(w.startswith("trust.sources.notary.ca_file: file not found") for w in s.warnings)
    assert any(w.startswith("policy_file: file not found") for w in s.warnings)


def test_minimal_example_without_warnings_when_files_exist(tmp_path: Path) -> None:
    touch(tmp_path, "notary-ca.crt")
    touch(tmp_path, "policy.yaml")
    assert load_settings(write(tmp_path, MINIMAL_YAML)).warnings == ()


def test_relative_paths_do_not_depend_on_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    touch(conf, "policy.yaml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    s = load_settings(Path("../conf") / write(conf, MINIMAL_YAML).name)
    assert s.policy_file == (conf / "policy.yaml").resolve()
    assert not any(w.startswith("policy_file") for w in s.warnings)


def test_every_key(tmp_path: Path) -> None:
    for rel in ("certs/server.crt", "certs/server.key", "certs/ca.crt", "certs/hub-ca.crt",
                "htpasswd", "notary-ca.crt", "policy.yaml"):  # fmt: skip
        touch(tmp_path, rel)
    touch(tmp_path, "secrets/hub-password", "s3cret\n")
    config = """\
server:
  listen: "[::1]:9443"
  tls_cert_file: certs/server.crt
  tls_key_file: certs/server.key
  client_auth:
    htpasswd_file: htpasswd
    client_ca_file: certs/ca.crt
upstreams:
  - name: hub
    url: https://registry-1.docker.io/
    registry: Docker.IO
    prefix: /hub/
    ca_file: certs/hub-ca.crt
    auth:
      mode: basic
      username: bot
      password_file: secrets/hub-password
    redirects: relay
    blobs: redirect
  - name: internal
    url: http://Registry.Example:5000
trust:
  sources:
    notary:
      type: notary
      url: https://notary.example:4443
      ca_file: notary-ca.crt
      auth: {username: reader, password: pw}
cache: {redis_url: "redis://redis:6379/0"}
limits:
  manifest_max_bytes: 2MiB
  metadata_max_bytes: 1000
  tag_list_max_bytes: 3MB
  token_max_bytes: 64k
  error_body_max_bytes: 1 KiB
  connect_timeout: 500ms
  read_timeout: 1m
  max_redirects: 0
  max_connections: 7
logging: {level: debug, format: text, access_log: false}
policy_file: policy.yaml
"""
    s = load_settings(write(tmp_path, config))
    base = tmp_path.resolve()
    assert s.warnings == ()
    assert (s.server.host, s.server.port) == ("::1", 9443)
    assert s.server.tls
    assert s.server.loopback_only
    assert s.server.tls_cert_file == base / "certs/server.crt"
    assert s.server.tls_key_file == base / "certs/server.key"
    assert s.server.client_auth == ClientAuthSettings(base / "htpasswd", base / "certs/ca.crt")
    assert s.server.client_auth.enabled

    hub, internal = s.upstreams
    assert hub.name == "hub"
    assert hub.url == "https://registry-1.docker.io"  # the trailing slash is not a path
    assert hub.registry == "docker.io"
    assert hub.prefix == "hub"
    assert hub.ca_file == base / "certs/hub-ca.crt"
    assert hub.auth.mode == "basic"
    assert hub.auth.credentials == CredentialSettings("bot", "s3cret")  # newline stripped
    assert hub.redirects == "relay"
    assert hub.blobs == "redirect"
    # Defaults: registry from the URL's host (lower case), follow redirects, anonymous.
    assert internal.registry == "registry.example:5000"
    assert internal.prefix is None
    assert internal.ca_file is None
    assert internal.redirects == "follow"
    assert internal.blobs == "stream"  # blobs pass through, hash-checked, unless asked
    assert internal.auth.mode == "anonymous"

    (source,) = s.trust.sources
    assert source.ca_file == base / "notary-ca.crt"
    assert source.credentials == CredentialSettings("reader", "pw")
    assert s.cache.redis_url == "redis://redis:6379/0"

    lim = s.limits
    assert lim.manifest_max_bytes == 2 * MiB
    assert lim.metadata_max_bytes == 1000
    assert lim.tag_list_max_bytes == 3 * 1000**2
    assert lim.token_max_bytes == 64 * KiB
    assert lim.error_body_max_bytes == KiB
    assert lim.connect_timeout == pytest.approx(0.5)
    assert lim.read_timeout == pytest.approx(60.0)
    assert (lim.max_redirects, lim.max_connections) == (0, 7)
    assert (s.logging.level, s.logging.format, s.logging.access_log) == ("debug", "text", False)
    assert s.policy_file == base / "policy.yaml"


def test_audit_and_metrics(tmp_path: Path) -> None:
    data = {
        "server": {"metrics": False},
        "upstreams": [{"name": "a", "url": "http://a"}],
        "audit": {"sink": "file", "path": "logs/audit.log"},
    }
    (tmp_path / "logs").mkdir()
    s = load_settings(write(tmp_path, data))
    assert not s.server.metrics_enabled
    # Relative to the config's folder; the file itself need not exist yet.
    assert s.audit == AuditSettings(sink="file", path=tmp_path.resolve() / "logs/audit.log")
    data["audit"] = {"sink": "off"}
    assert load_settings(write(tmp_path, data)).audit == AuditSettings(sink="off")


def test_audit_path_folder_not_checked_with_skip_file_checks(tmp_path: Path) -> None:
    data = {"upstreams": [{"name": "a", "url": "http://a"}],
            "audit": {"sink": "file", "path": "/var/log/nowhere/audit.log"}}  # fmt: skip
    s = load_settings(write(tmp_path, data), check_files=False)
    assert s.audit.path == Path("/var/log/nowhere/audit.log")


def test_audit_by_environment(tmp_path: Path) -> None:
    env = {f"{ENV_PREFIX}AUDIT__SINK": "file", f"{ENV_PREFIX}AUDIT__PATH": str(tmp_path / "a"),
           f"{ENV_PREFIX}SERVER__METRICS": "false"}  # fmt: skip
    s = load_settings(write(tmp_path, {"upstreams": [{"name": "a", "url": "http://a"}]}), env)
    assert s.audit == AuditSettings(sink="file", path=tmp_path / "a")
    assert not s.server.metrics_enabled


def test_defaults_for_omitted_sections(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, {"upstreams": [{"name": "a", "url": "http://a"}]}))
    assert s.server == ServerSettings()
    assert s.server.metrics_enabled
    assert s.audit == AuditSettings(sink="stdout", path=None)
    assert s.trust.sources == ()
    assert s.policy_file is None
    assert s.warnings == ()
    assert s.limits.manifest_max_bytes == 4 * MiB
    assert s.logging.format == "json"
    assert s.logging.access_log


@pytest.mark.parametrize(
    ("value", "expected"),
    [("4MiB", 4 * MiB), ("1KB", 1000), ("2k", 2 * KiB), (123, 123), ("10 B", 10),
     ("1G", 1024 * MiB), ("1GB", 1000**3)],
    ids=["MiB", "KB", "k", "int", "B-space", "G", "GB"],
)  # fmt: skip
def test_sizes(tmp_path: Path, value: object, expected: int) -> None:
    data = minimal()
    data["limits"] = {"manifest_max_bytes": value}
    assert load_settings(write(tmp_path, data)).limits.manifest_max_bytes == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0), (3, 3.0), ("1.5", 1.5), ("7s", 7.0)],
    ids=["ms", "m", "h", "int", "float-text", "s"],
)
def test_durations(tmp_path: Path, value: object, expected: float) -> None:
    data = minimal()
    data["limits"] = {"read_timeout": value}
    assert load_settings(write(tmp_path, data)).limits.read_timeout == pytest.approx(expected)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False),
     ("10.1.2.3", False), ("proxy.example", False)],
    ids=["v4", "v6", "localhost", "any", "private", "hostname"],
)  # fmt: skip
def test_loopback_only(host: str, loopback: bool) -> None:
    assert ServerSettings(host=host).loopback_only is loopback


# --------------------------------------------------------------------------- bad inputs

Mutation = Callable[[dict[str, Any], Path], None]


def _set(*path: str | int, value: Any) -> Mutation:
    def mutate(data: dict[str, Any], folder: Path) -> None:
        node: Any = data
        for key in path[:-1]:
            node = node.setdefault(key, {}) if isinstance(node, dict) else node[key]
        node[path[-1]] = value

    return mutate


def _up(**fields: Any) -> Mutation:
    def mutate(data: dict[str, Any], folder: Path) -> None:
        data["upstreams"][0].update(fields)

    return mutate


def _second(**fields: Any) -> Mutation:
    def mutate(data: dict[str, Any], folder: Path) -> None:
        data["upstreams"].append({"name": "other", "url": "http://other:5000", **fields})

    return mutate


def _with_file(rel: str, then: Mutation, content: bytes = b"x\n") -> Mutation:
    def mutate(data: dict[str, Any], folder: Path) -> None:
        (folder / rel).write_bytes(content)
        then(data, folder)

    return mutate


def _delete(key: str) -> Mutation:
    def mutate(data: dict[str, Any], folder: Path) -> None:
        del data[key]

    return mutate


def _with_prefixes(first: str, second: str) -> Mutation:
    def mutate(data: dict[str, Any], folder: Path) -> None:
        data["upstreams"][0]["prefix"] = first
        data["upstreams"].append({"name": "other", "url": "http://o", "prefix": second})

    return mutate


BAD: list[tuple[str, Mutation, str, str]] = [
    # (id, mutation, expected ConfigError.path, message fragment)
    ("url-scheme", _up(url="ftp://127.0.0.1:5000"), "upstreams[0].url", "not a URL"),
    ("url-no-host", _up(url="http://"), "upstreams[0].url", "not a URL"),
    ("url-word", _up(url="registry"), "upstreams[0].url", "not a URL"),
    ("url-ipv6-unclosed", _up(url="http://[::1"), "upstreams[0].url", "not a URL"),
    ("url-bad-port", _up(url="http://h:99999"), "upstreams[0].url", "bad port"),
    ("url-path", _up(url="http://h/v2"), "upstreams[0].url", "without a path"),
    ("url-query", _up(url="http://h?x=1"), "upstreams[0].url", "without a path"),
    ("url-list", _up(url=["http://h"]), "upstreams[0].url", "must be a string"),
    ("unknown-top", _set("extra", value=1), "extra", "unknown key"),
    ("unknown-server", _set("server", "lisen", value="x"), "server.lisen", "unknown key"),
    ("unknown-client-auth", _set("server", "client_auth", "x", value=1),
     "server.client_auth.x", "unknown key"),
    ("unknown-upstream", _up(urll="http://h"), "upstreams[0].urll", "unknown key"),
    ("unknown-upstream-auth", _up(auth={"modus": "basic"}), "upstreams[0].auth.modus",
     "unknown key"),
    ("unknown-trust", _set("trust", "x", value=1), "trust.x", "unknown key"),
    ("unknown-source", _set("trust", "sources", "notary", "x", value=1),
     "trust.sources.notary.x", "unknown key"),
    ("unknown-source-auth", _set("trust", "sources", "notary", "auth", value={"x": 1}),
     "trust.sources.notary.auth.x", "unknown key"),
    ("unknown-cache", _set("cache", "x", value=1), "cache.x", "unknown key"),
    ("unknown-limits", _set("limits", "x", value=1), "limits.x", "unknown key"),
    ("unknown-logging", _set("logging", "x", value=1), "logging.x", "unknown key"),
    ("size-word", _set("limits", "manifest_max_bytes", value="4 parsecs"),
     "limits.manifest_max_bytes", "not a size"),
    ("size-zero", _set("limits", "tag_list_max_bytes", value=0),
     "limits.tag_list_max_bytes", "greater than zero"),
    ("size-negative", _set("limits", "token_max_bytes", value=-5),
     "limits.token_max_bytes", "greater than zero"),
    ("size-bool", _set("limits", "metadata_max_bytes", value=True),
     "limits.metadata_max_bytes", "not a size"),
    ("size-float", _set("limits", "error_body_max_bytes", value=1.5),
     "limits.error_body_max_bytes", "not a size"),
    ("duration-word", _set("limits", "connect_timeout", value="5 fortnights"),
     "limits.connect_timeout", "not a duration"),
    ("duration-zero", _set("limits", "read_timeout", value="0s"),
     "limits.read_timeout", "greater than zero"),
    ("duration-negative", _set("limits", "read_timeout", value=-1),
     "limits.read_timeout", "greater than zero"),
    ("duration-nan", _set("limits", "read_timeout", value=float("nan")),
     "limits.read_timeout", "not a duration"),
    ("duration-inf", _set("limits", "connect_timeout", value=float("inf")),
     "limits.connect_timeout", "not a duration"),
    ("count-negative", _set("limits", "max_redirects", value=-1),
     "limits.max_redirects", "whole number"),
    ("count-text", _set("limits", "max_connections", value="many"),
     "limits.max_connections", "whole number"),
    ("duplicate-name", _second(name="internal", prefix="x"), "upstreams[1].name", "duplicate"),
    ("duplicate-prefix", _with_prefixes("hub", "/hub/"), "upstreams[1].prefix", "'hub'"),
    ("two-defaults", _second(), "upstreams[1].prefix", "default route"),
    ("basic-no-credentials", _up(auth={"mode": "basic"}), "upstreams[0].auth.username",
     "mode basic needs"),
    ("credentials-anonymous", _up(auth={"username": "u", "password": "p"}),
     "upstreams[0].auth.mode", "use mode basic"),
    ("credentials-passthrough", _up(auth={"mode": "passthrough", "username": "u",
                                          "password": "p"}),
     "upstreams[0].auth.mode", "use mode basic"),
    ("username-only", _up(auth={"mode": "basic", "username": "u"}),
     "upstreams[0].auth.password", "required when"),
    ("password-only", _up(auth={"mode": "basic", "password": "p"}),
     "upstreams[0].auth.username", "required when"),
    ("password-and-file", _with_file("pw", _up(auth={"mode": "basic", "username": "u",
                                                     "password": "p", "password_file": "pw"})),
     "upstreams[0].auth.password_file", "either password or password_file"),
    ("password-file-missing", _up(auth={"mode": "basic", "username": "u",
                                        "password_file": "nope"}),
     "upstreams[0].auth.password_file", "cannot read"),
    ("password-file-not-utf8", _with_file("pw", _up(auth={"mode": "basic", "username": "u",
                                                          "password_file": "pw"}), b"\xff\xfe"),
     "upstreams[0].auth.password_file", "not UTF-8"),
    ("auth-mode", _up(auth={"mode": "oauth"}), "upstreams[0].auth.mode", "must be one of"),
    ("auth-not-mapping", _up(auth="basic"), "upstreams[0].auth", "must be a mapping"),
    ("tls-cert-without-key", _with_file("c.crt", _set("server", "tls_cert_file",
                                                      value="c.crt")),
     "server.tls_key_file", "go together"),
    ("tls-key-without-cert", _with_file("c.key", _set("server", "tls_key_file",
                                                     value="c.key")),
     "server.tls_cert_file", "go together"),
    ("tls-cert-missing", _set("server", "tls_cert_file", value="missing.crt"),
     "server.tls_cert_file", "file not found"),
    ("client-ca-without-tls", _with_file("ca.crt", _set("server", "client_auth",
                                                       value={"client_ca_file": "ca.crt"})),
     "server.client_auth.client_ca_file", "mTLS"),
    ("htpasswd-missing", _set("server", "client_auth", value={"htpasswd_file": "nope"}),
     "server.client_auth.htpasswd_file", "file not found"),
    ("upstream-ca-missing", _up(ca_file="nope.crt"), "upstreams[0].ca_file", "file not found"),
    ("listen-no-port", _set("server", "listen", value="127.0.0.1"), "server.listen", "host:port"),
    ("listen-port-zero", _set("server", "listen", value="h:0"), "server.listen", "host:port"),
    ("listen-port-big", _set("server", "listen", value="h:70000"), "server.listen", "host:port"),
    ("listen-v6-bare", _set("server", "listen", value="::1:8443"), "server.listen", "host:port"),
    ("server-list", _set("server", value=["x"]), "server", "must be a mapping"),
    ("upstreams-missing", _delete("upstreams"), "upstreams", "at least one"),
    ("upstreams-empty", _set("upstreams", value=[]), "upstreams", "at least one"),
    ("upstreams-mapping", _set("upstreams", value={"a": 1}), "upstreams", "must be a list"),
    ("upstream-scalar", _set("upstreams", value=["x"]), "upstreams[0]", "must be a mapping"),
    ("name-missing", _set("upstreams", value=[{"url": "http://h"}]), "upstreams[0].name",
     "is required"),
    ("url-missing", _set("upstreams", value=[{"name": "a"}]), "upstreams[0].url", "is required"),
    ("name-bad", _up(name="a b"), "upstreams[0].name", "letters, digits"),
    ("prefix-upper", _up(prefix="Hub"), "upstreams[0].prefix", "not a repository path"),
    ("prefix-slash-only", _up(prefix="/"), "upstreams[0].prefix", "not a repository path"),
    ("prefix-double-slash", _up(prefix="a//b"), "upstreams[0].prefix", "not a repository path"),
    ("registry-bad", _up(registry="reg istry"), "upstreams[0].registry", "not a registry"),
    ("redirects-bad", _up(redirects="maybe"), "upstreams[0].redirects", "must be one of"),
    ("blobs-bad", _up(blobs="skip"), "upstreams[0].blobs", "must be one of"),
    ("redirect-hosts-string", _up(redirect_hosts="cdn.example"), "upstreams[0].redirect_hosts",
     "must be a list"),
    ("redirect-hosts-url", _up(redirect_hosts=["https://cdn.example"]),
     "upstreams[0].redirect_hosts[0]", "no scheme or path"),
    ("redirect-hosts-path", _up(redirect_hosts=["ok.example", "cdn.example/x"]),
     "upstreams[0].redirect_hosts[1]", "no scheme or path"),
    ("redirect-hosts-inner-star", _up(redirect_hosts=["cdn.*.example"]),
     "upstreams[0].redirect_hosts[0]", "only allowed as"),
    ("redirect-hosts-star-suffix", _up(redirect_hosts=["*."]),
     "upstreams[0].redirect_hosts[0]", "wildcard"),
    ("redirect-hosts-port", _up(redirect_hosts=["cdn.example:99999"]),
     "upstreams[0].redirect_hosts[0]", "not a port"),
    ("redirect-hosts-bare-v6", _up(redirect_hosts=["fd00::1"]),
     "upstreams[0].redirect_hosts[0]", "in brackets"),
    ("redirect-hosts-bad-v6", _up(redirect_hosts=["[fd00::zz]"]),
     "upstreams[0].redirect_hosts[0]", "not an IPv6"),
    ("redirect-hosts-mapping", _up(redirect_hosts=[{"host": "x"}]),
     "upstreams[0].redirect_hosts[0]", "must be a string"),
    ("insecure-redirect-word", _up(insecure_redirect_to_http="yes"),
     "upstreams[0].insecure_redirect_to_http", "true or false"),
    ("verify-blobs-word", _up(verify_blobs="off"), "upstreams[0].verify_blobs", "true or false"),
    ("request-timeout-zero", _set("limits", "request_timeout", value=0),
     "limits.request_timeout", "greater than zero"),
    ("min-rate-word", _set("limits", "min_upstream_rate", value="fast"),
     "limits.min_upstream_rate", "not a size"),
    ("sources-list", _set("trust", "sources", value=["notary"]), "trust.sources",
     "must be a mapping"),
    ("source-type", _set("trust", "sources", "notary", "type", value="sigstore"),
     "trust.sources.notary.type", "must be one of"),
    ("source-url-missing", _set("trust", "sources", "notary", "url", value=None),
     "trust.sources.notary.url", "is required"),
    ("source-url-bad", _set("trust", "sources", "notary", "url", value="notary:4443"),
     "trust.sources.notary.url", "not a URL"),
    ("source-name", _set("trust", "sources", value={"bad name!": {"type": "notary"}}),
     "trust.sources.bad name!", "source names"),
    ("redis-http", _set("cache", "redis_url", value="http://redis"), "cache.redis_url",
     "not a redis"),
    ("redis-unclosed-v6", _set("cache", "redis_url", value="redis://[::1"), "cache.redis_url",
     "not a redis"),
    ("log-level", _set("logging", "level", value="loud"), "logging.level", "must be one of"),
    ("log-format", _set("logging", "format", value="xml"), "logging.format", "must be one of"),
    ("access-log-text", _set("logging", "access_log", value="yes please"),
     "logging.access_log", "true or false"),
    ("metrics-text", _set("server", "metrics", value="on"), "server.metrics", "true or false"),
    ("audit-sink", _set("audit", "sink", value="syslog"), "audit.sink", "must be one of"),
    ("audit-file-no-path", _set("audit", "sink", value="file"), "audit.path", "is required"),
    ("audit-path-without-file", _set("audit", value={"sink": "stdout", "path": "a.log"}),
     "audit.path", "only goes with sink: file"),
    ("audit-folder-missing", _set("audit", value={"sink": "file", "path": "nope/a.log"}),
     "audit.path", "folder not found"),
    ("audit-unknown-key", _set("audit", value={"sink": "off", "format": "json"}),
     "audit.format", "unknown key"),
    ("audit-list", _set("audit", value=["stdout"]), "audit", "must be a mapping"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"), [c[1:] for c in BAD], ids=[c[0] for c in BAD]
)
def test_bad_config(tmp_path: Path, mutate: Mutation, path: str, fragment: str) -> None:
    data = copy.deepcopy(minimal())
    mutate(data, tmp_path)
    config = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert info.value.path == path
    assert fragment in info.value.message
    assert str(info.value) == f"{path}: {info.value.message}"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("server: [unclosed\n", "not valid YAML"), ("- a\n- b\n", "mapping at the top level"),
     ("just a string\n", "mapping at the top level")],
    ids=["yaml-syntax", "top-list", "top-scalar"],
)  # fmt: skip
def test_bad_file_content(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings(write(tmp_path, text))


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_settings(missing)
    assert info.value.path == str(missing)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"server:\n  listen: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8") as info:
        load_settings(binary)
    assert info.value.path == str(binary)


def test_empty_file_says_upstreams_are_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, ""))
    assert info.value.path == "upstreams"


# --------------------------------------------------------------------------- environment


def test_env_scalar_override(tmp_path: Path) -> None:
    s = load_settings(
        write(tmp_path, MINIMAL_YAML),
        {f"{ENV_PREFIX}SERVER__LISTEN": "0.0.0.0:9000", "PATH": "/usr/bin", "TRUSTPROXY": "x"},
    )
    assert (s.server.host, s.server.port) == ("0.0.0.0", 9000)


def test_env_list_index_and_append(tmp_path: Path) -> None:
    env = {
        "TRUSTPROXY_UPSTREAMS__0__URL": "http://10.0.0.1:5000",
        "TRUSTPROXY_UPSTREAMS__1__NAME": "mirror",
        "TRUSTPROXY_UPSTREAMS__1__URL": "https://mirror.example",
        "TRUSTPROXY_UPSTREAMS__1__PREFIX": "mirror",
    }
    s = load_settings(write(tmp_path, MINIMAL_YAML), env)
    assert [(u.name, u.url, u.prefix) for u in s.upstreams] == [
        ("internal", "http://10.0.0.1:5000", None),
        ("mirror", "https://mirror.example", "mirror"),
    ]
    # The YAML's other keys stay: only the overridden value changed.
    assert s.upstreams[0].registry == "127.0.0.1:5000"


def test_env_creates_missing_sections(tmp_path: Path) -> None:
    env = {"TRUSTPROXY_UPSTREAMS__0__NAME": "a", "TRUSTPROXY_UPSTREAMS__0__URL": "http://a"}
    s = load_settings(write(tmp_path, "logging: {format: text}\n"), env)
    assert [u.name for u in s.upstreams] == ["a"]


def test_env_mapping_keys_match_case_insensitively(tmp_path: Path) -> None:
    data = minimal()
    data["trust"]["sources"] = {"Notary": data["trust"]["sources"]["notary"]}
    s = load_settings(
        write(tmp_path, data), {"TRUSTPROXY_TRUST__SOURCES__NOTARY__URL": "https://n.example"}
    )
    assert [(src.name, src.url) for src in s.trust.sources] == [("Notary", "https://n.example")]


@pytest.mark.parametrize(
    ("name", "value", "get", "expected"),
    [
        ("CACHE__REDIS_URL", "null", lambda s: s.cache.redis_url, None),
        ("CACHE__REDIS_URL", "~", lambda s: s.cache.redis_url, None),
        ("LIMITS__MAX_REDIRECTS", "3", lambda s: s.limits.max_redirects, 3),
        ("LIMITS__READ_TIMEOUT", "2.5", lambda s: s.limits.read_timeout, 2.5),
        ("LIMITS__MANIFEST_MAX_BYTES", "4MiB", lambda s: s.limits.manifest_max_bytes, 4 * MiB),
        ("LOGGING__ACCESS_LOG", "false", lambda s: s.logging.access_log, False),
        ("SERVER__LISTEN", "[::]:8443", lambda s: s.server.host, "::"),
    ],
    ids=["null", "tilde", "int", "float", "size-unit", "bool", "ipv6-listen"],
)
def test_env_values_are_yaml_scalars(
    tmp_path: Path, name: str, value: str, get: Callable[[Any], object], expected: object
) -> None:
    data = minimal()
    data["cache"]["redis_url"] = "redis://before:6379"
    s = load_settings(write(tmp_path, data), {ENV_PREFIX + name: value})
    assert get(s) == expected


@pytest.mark.parametrize(
    "password",
    ["0123", "0x1F", "1_000", "+5", "#not-a-comment", "a: b", "[x]", "{y}", "2024-01-01", "42"],
    ids=["octal", "hex", "underscore", "plus", "hash", "colon", "list", "map", "date", "int"],
)
def test_env_strings_arrive_as_written(tmp_path: Path, password: str) -> None:
    data = minimal()
    data["upstreams"][0]["auth"] = {"mode": "basic", "username": "bot"}
    s = load_settings(write(tmp_path, data), {"TRUSTPROXY_UPSTREAMS__0__AUTH__PASSWORD": password})
    assert s.upstreams[0].auth.credentials.password == password


ENV_BAD: list[tuple[str, dict[str, str], str, str]] = [
    ("index-gap", {"TRUSTPROXY_UPSTREAMS__2__URL": "http://x"},
     "TRUSTPROXY_UPSTREAMS__2__URL", "not a list index in 0..1"),
    ("index-word", {"TRUSTPROXY_UPSTREAMS__FIRST__URL": "http://x"},
     "TRUSTPROXY_UPSTREAMS__FIRST__URL", "not a list index"),
    ("empty-segment", {"TRUSTPROXY_SERVER____LISTEN": "x"}, "TRUSTPROXY_SERVER____LISTEN",
     "empty key segment"),
    ("trailing-separator", {"TRUSTPROXY_SERVER__": "x"}, "TRUSTPROXY_SERVER__",
     "empty key segment"),
    ("into-scalar", {"TRUSTPROXY_SERVER__LISTEN__HOST": "x"},
     "TRUSTPROXY_SERVER__LISTEN__HOST", "cannot set 'host' inside a str"),
    ("through-scalar", {"TRUSTPROXY_POLICY_FILE__A__B": "x"}, "TRUSTPROXY_POLICY_FILE__A__B",
     "cannot descend into a str"),
    ("unknown-key", {"TRUSTPROXY_SERVER__LISTN": "x"}, "server.listn", "unknown key"),
    ("bad-value", {"TRUSTPROXY_UPSTREAMS__0__URL": "nope"}, "upstreams[0].url", "not a URL"),
    ("count-not-int", {"TRUSTPROXY_LIMITS__MAX_REDIRECTS": "0123"}, "limits.max_redirects",
     "whole number"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("env", "path", "fragment"), [c[1:] for c in ENV_BAD], ids=[c[0] for c in ENV_BAD]
)
def test_bad_env_override(tmp_path: Path, env: dict[str, str], path: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, MINIMAL_YAML), env)
    assert info.value.path == path
    assert fragment in info.value.message


def test_apply_env_overrides_in_place_and_ignores_other_variables() -> None:
    raw: dict[str, Any] = {"server": None}
    before = {"HOME": "/root", "TRUSTPROXY_": "x", "XTRUSTPROXY_SERVER__LISTEN": "y"}
    apply_env_overrides(raw, before)
    assert raw == {"server": None}
    apply_env_overrides(raw, {"TRUSTPROXY_SERVER__LISTEN": "h:1"})
    assert raw == {"server": {"listen": "h:1"}}


def test_env_appends_many_list_items_in_numeric_order(tmp_path: Path) -> None:
    # UPSTREAMS__10 must come after __9 (string order would put it after __1 and fail).
    env: dict[str, str] = {}
    for i in range(1, 12):
        env[f"TRUSTPROXY_UPSTREAMS__{i}__NAME"] = f"up{i}"
        env[f"TRUSTPROXY_UPSTREAMS__{i}__URL"] = f"http://10.0.0.{i}:5000"
        env[f"TRUSTPROXY_UPSTREAMS__{i}__PREFIX"] = f"p{i}"
    s = load_settings(write(tmp_path, MINIMAL_YAML), env)
    assert [u.name for u in s.upstreams] == ["internal"] + [f"up{i}" for i in range(1, 12)]


def test_trust_source_refresh_and_retry_intervals(tmp_path: Path) -> None:
    env = {
        "TRUSTPROXY_TRUST__SOURCES__NOTARY__REFRESH_INTERVAL": "2s",
        "TRUSTPROXY_TRUST__SOURCES__NOTARY__RETRY_INTERVAL": "500ms",
    }
    (source,) = load_settings(write(tmp_path, MINIMAL_YAML), env).trust.sources
    assert source.refresh_interval == 2.0
    assert source.retry_interval == 0.5
    (default,) = load_settings(write(tmp_path, MINIMAL_YAML), {}).trust.sources
    assert default.refresh_interval is None  # cache.refresh_seconds applies
    assert default.fresh_for(CacheSettings()) == 30.0
    assert default.fresh_for(CacheSettings(refresh_seconds=5.0)) == 5.0
    assert source.fresh_for(CacheSettings(refresh_seconds=5.0)) == 2.0  # the source's own wins


def test_cache_settings(tmp_path: Path) -> None:
    env = {
        "TRUSTPROXY_CACHE__REDIS_URL": "rediss://:pw@redis.internal:6380/2",
        "TRUSTPROXY_CACHE__REFRESH_SECONDS": "10s",
        "TRUSTPROXY_CACHE__KEY_PREFIX": "tp-prod:",
        "TRUSTPROXY_CACHE__LOCK_TIMEOUT": "5s",
        "TRUSTPROXY_CACHE__REDIS_TIMEOUT": "250ms",
    }
    cache = load_settings(write(tmp_path, MINIMAL_YAML), env).cache
    assert cache == CacheSettings(
        redis_url="rediss://:pw@redis.internal:6380/2",
        refresh_seconds=10.0,
        key_prefix="tp-prod:",
        lock_timeout=5.0,
        redis_timeout=0.25,
    )
    assert load_settings(write(tmp_path, MINIMAL_YAML), {}).cache == CacheSettings()
    unix = {"TRUSTPROXY_CACHE__REDIS_URL": "unix:///run/redis.sock?db=1"}
    assert load_settings(write(tmp_path, MINIMAL_YAML), unix).cache.redis_url == (
        "unix:///run/redis.sock?db=1"
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("redis_url", "redis+sentinel://s1:26379/mymaster", "Sentinel URLs are not supported"),
        ("redis_url", "redis://", "no host"),
        ("redis_cluster", "true", "Redis Cluster is not supported"),
        ("key_prefix", "''", "non-empty"),
        ("refresh_seconds", "0", "greater than zero"),
        ("lock_timeout", "soon", "not a duration"),
        ("redis_timeout", "-1", "greater than zero"),
        ("unknown_key", "1", "unknown key"),
    ],
    ids=["sentinel", "no-host", "cluster", "empty-prefix", "zero-refresh", "bad-lock",
         "negative-timeout", "unknown"],
)  # fmt: skip
def test_bad_cache_settings(tmp_path: Path, key: str, value: str, message: str) -> None:
    env = {f"TRUSTPROXY_CACHE__{key.upper()}": value}
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, MINIMAL_YAML), env)
    assert err.value.path == f"cache.{key}"
    assert message in str(err.value)


def test_trust_source_refresh_interval_must_be_a_duration(tmp_path: Path) -> None:
    env = {"TRUSTPROXY_TRUST__SOURCES__NOTARY__REFRESH_INTERVAL": "soon"}
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, MINIMAL_YAML), env)
    assert err.value.path == "trust.sources.notary.refresh_interval"


def test_redirect_settings(tmp_path: Path) -> None:
    config = {
        "upstreams": [
            {"name": "hub", "url": "https://registry-1.docker.io"},
            {"name": "corp", "url": "https://registry.corp.example", "prefix": "corp",
             "redirect_hosts": ["Storage.Corp.Example", "*.blob.example:8443", "[fd00::1]:9000"],
             "insecure_redirect_to_http": True},
            {"name": "closed", "url": "https://registry-1.docker.io", "prefix": "closed",
             "redirect_hosts": [], "verify_blobs": False},
        ],
        "limits": {"request_timeout": "45s", "min_upstream_rate": "4KiB"},
    }  # fmt: skip
    s = load_settings(write(tmp_path, config))
    hub, corp, closed = s.upstreams
    # Not set: the documented storage hosts of a known registry (Docker Hub's CDN).
    assert hub.redirect_hosts is None
    assert "production.cloudflare.docker.com" in hub.allowed_redirect_hosts
    assert not hub.insecure_redirect_to_http
    assert corp.allowed_redirect_hosts == (
        "storage.corp.example", "*.blob.example:8443", "[fd00::1]:9000",
    )  # fmt: skip
    assert corp.insecure_redirect_to_http
    assert closed.allowed_redirect_hosts == ()  # an empty list: same origin only, even for Hub
    assert hub.verify_blobs  # the default
    assert not closed.verify_blobs
    assert s.limits.request_timeout == pytest.approx(45.0)
    assert s.limits.request_deadline == pytest.approx(45.0)
    assert s.limits.min_upstream_rate == 4 * KiB


def test_redirect_and_deadline_defaults(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, MINIMAL_YAML))
    (up,) = s.upstreams
    assert up.redirect_hosts is None
    assert up.allowed_redirect_hosts == ()  # an unknown registry: its own origin only
    assert s.limits.request_timeout is None
    assert s.limits.request_deadline == pytest.approx(2 * s.limits.read_timeout)
    assert s.limits.min_upstream_rate == KiB
    env = {"TRUSTPROXY_LIMITS__MIN_UPSTREAM_RATE": "0",
           "TRUSTPROXY_UPSTREAMS__0__REDIRECT_HOSTS__0": "cdn.example"}  # fmt: skip
    s = load_settings(write(tmp_path, MINIMAL_YAML), env)
    assert s.limits.min_upstream_rate == 0  # off
    assert s.upstreams[0].allowed_redirect_hosts == ("cdn.example",)


# --------------------------------------------------------------------------- Docker Hub names


@pytest.mark.parametrize(
    ("url", "registry", "expected"),
    [
        ("https://registry-1.docker.io", None, "docker.io"),
        ("https://index.docker.io", None, "docker.io"),
        ("https://Registry-1.Docker.IO:443/", None, "docker.io"),
        ("https://registry.hub.docker.com", None, "docker.io"),
        ("https://mirror.example", "index.docker.io", "docker.io"),
        ("https://registry-1.docker.io:5000", None, "registry-1.docker.io:5000"),  # not Hub
        ("https://docker.io.example", None, "docker.io.example"),
        ("http://127.0.0.1:5000", None, "127.0.0.1:5000"),
    ],
    ids=["registry-1", "index", "case-and-443", "hub-alias", "explicit-index",
         "other-port", "lookalike", "plain"],
)  # fmt: skip
def test_docker_hub_host_names_become_docker_io(
    tmp_path: Path, url: str, registry: str | None, expected: str
) -> None:
    """Issue 17, finding 7: an upstream at registry-1.docker.io without ``registry`` named
    its repositories registry-1.docker.io/..., which no docker.io/... rule matches."""
    from proxy.policy.matcher import match_rule
    from proxy.policy.model import Policy, RepositoryRule
    from proxy.routing import Router

    data = minimal()
    up: dict[str, Any] = {"name": "hub", "url": url}
    if registry is not None:
        up["registry"] = registry
    data["upstreams"] = [up]
    s = load_settings(write(tmp_path, data), environ={}, check_files=False)
    assert s.upstreams[0].registry == expected
    route = Router(s.upstreams).route("alpine")
    if expected == "docker.io":
        # Official images get library/, and a docker.io rule applies (fail closed otherwise).
        assert route.repository == "docker.io/library/alpine"
        rules = (RepositoryRule(pattern="docker.io/library/*", mode="off"),)
        assert match_rule(Policy(rules=rules), route.repository) is not None
    else:
        assert route.repository == f"{expected}/alpine"
