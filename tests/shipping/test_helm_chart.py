"""The Helm chart: rendered with Helm itself (helm-python embeds Helm v4 as a library),
validated against the Kubernetes 1.30 schemas, and checked object by object.

The trustproxy config and policy the chart renders are loaded with the proxy's own
parsers, so the chart cannot ship a config the proxy would reject.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from proxy.policy.loader import parse_policy
from proxy.settings import Settings, apply_env_overrides, parse_settings

helm = pytest.importorskip(
    "helm_python", reason="helm-python-sdk is not installed (a dev extra; `make test` has it)"
)
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed (a dev extra)"
)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "trustproxy"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
KUBE_VERSION = "1.30"
RELEASE, NAMESPACE = "tp", "registry"
FULLNAME = f"{RELEASE}-trustproxy"
IMAGE_UID = 10001  # the Dockerfile's USER (tests/shipping/test_dockerfile.py)
IMAGE_CONFIG = "/etc/trustproxy/trustproxy.yaml"  # the Dockerfile's CMD --config
PORT = 8443
# Custom resources: no schema in kubernetes-validate; their fields are asserted instead.
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
SECRET_PLACEHOLDER = "from-a-secret"
REDIS_URL_PLACEHOLDER = "redis://:from-a-secret@redis.example:6379/0"

Obj = dict[str, Any]


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses duplicate keys (kubectl and Helm's install path refuse them too)."""


def _mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Obj:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return dict(loader.construct_pairs(node, deep=deep))


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


@dataclass
class Rendered:
    files: dict[str, str]
    objects: list[Obj] = field(default_factory=list)

    def __post_init__(self) -> None:
        for path, text in sorted(self.files.items()):
            if not path.endswith((".yaml", ".yml")):
                continue  # NOTES.txt
            for doc in yaml.load_all(text, Loader=_UniqueKeyLoader):
                if doc:
                    self.objects.append(doc)

    def all(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str = FULLNAME) -> Obj:
        found = [o for o in self.all(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
        return found[0]

    def has(self, kind: str) -> bool:
        return bool(self.all(kind))

    @property
    def deployment(self) -> Obj:
        return self.one("Deployment")

    @property
    def pod(self) -> Obj:
        spec: Obj = self.deployment["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> Obj:
        (container,) = [c for c in self.pod["containers"] if c["name"] == "trustproxy"]
        found: Obj = container
        return found

    @property
    def configmap(self) -> Obj:
        return self.one("ConfigMap")

    @property
    def config_text(self) -> str:
        text: str = self.configmap["data"]["trustproxy.yaml"]
        return text

    @property
    def raw_config(self) -> Obj:
        raw: Obj = yaml.safe_load(self.config_text)
        return raw

    @property
    def secret_env(self) -> dict[str, Obj]:
        return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in self.container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})}  # fmt: skip

    def settings(self) -> Settings:
        """The rendered config as the container's proxy would load it: the environment's
        TRUSTPROXY_* overrides applied (Secret values stand in), paths resolved against
        the folder the config file is mounted in."""
        raw = self.raw_config
        env: dict[str, str] = {}
        for e in self.container.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
            elif e["name"] == "TRUSTPROXY_CACHE__REDIS_URL":
                env[e["name"]] = REDIS_URL_PLACEHOLDER
            else:
                env[e["name"]] = SECRET_PLACEHOLDER
        apply_env_overrides(raw, env)
        return parse_settings(raw, base_dir=config_dir(self), check_files=False)


def render(values: Obj | None = None) -> Rendered:
    with helm.Chart.load(CHART) as chart:
        files: dict[str, str] = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return Rendered(files)


def full_values() -> Obj:
    values: Obj = yaml.safe_load(FULL_VALUES.read_text(encoding="utf-8"))
    return values


def mtls_values() -> Obj:
    values = full_values()
    values["tls"]["clientCA"] = {"secretName": "client-ca", "key": "ca.crt"}
    return values


def external_redis_values() -> Obj:
    return {"redis": {"enabled": False}, "externalRedis": {"url": "rediss://redis.corp:6380/2"}}


def secret_redis_values() -> Obj:
    external = {"existingSecret": "redis-url", "existingSecretKey": "url"}
    return {"redis": {"enabled": False}, "externalRedis": external}


SCENARIOS: dict[str, Callable[[], Obj | None]] = {
    "default": lambda: None,
    "full": full_values,
    "mtls": mtls_values,
    "external-redis": external_redis_values,
    "external-redis-secret": secret_redis_values,
    "single-replica-no-redis": lambda: {"replicaCount": 1, "redis": {"enabled": False}},
}
_cache: dict[str, Rendered] = {}


@pytest.fixture(params=sorted(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> Rendered:
    name: str = request.param
    if name not in _cache:
        _cache[name] = render(SCENARIOS[name]())
    return _cache[name]


@pytest.fixture
def default() -> Rendered:
    return _cache.get("default") or _cache.setdefault("default", render())


@pytest.fixture
def full() -> Rendered:
    return _cache.get("full") or _cache.setdefault("full", render(full_values()))


def config_dir(r: Rendered) -> Path:
    return Path(config_path(r)).parent


def config_path(r: Rendered) -> str:
    args: list[str] = r.container.get("args") or ["serve", "--config", IMAGE_CONFIG]
    assert r.container.get("command") in (None, ["trustproxy"]), "the image's ENTRYPOINT"
    assert args[0] == "serve"
    assert "--config" in args
    return args[args.index("--config") + 1]


def mount_for(r: Rendered, path: str) -> tuple[Obj, Obj]:
    """The volumeMount (longest matching mountPath) a file path lies in, and its volume."""
    mounts = [m for m in r.container["volumeMounts"]
              if PurePosixPath(path).is_relative_to(m["mountPath"])]  # fmt: skip
    assert mounts, f"{path} is not on any mounted volume"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    (volume,) = [v for v in r.pod["volumes"] if v["name"] == mount["name"]]
    return mount, volume


def checksum(r: Rendered) -> str:
    value: str = r.deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    return value


# --------------------------------------------------------------------------- whole chart


@pytest.mark.parametrize("values", [None, "full"])
def test_helm_lint_is_clean(values: str | None) -> None:
    report = helm.lint(CHART, full_values() if values else None, strict=True,
                       kube_version=f"v{KUBE_VERSION}.0")  # fmt: skip
    assert not report["errors"], report
    # Severity 1 is "info" (an icon is recommended); warnings and errors fail.
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


def test_every_object_is_valid_for_kubernetes(scenario: Rendered) -> None:
    assert scenario.objects
    for obj in scenario.objects:
        where = f"{obj['kind']} {obj['metadata']['name']}"
        if (obj["apiVersion"], obj["kind"]) in CRDS:
            continue  # asserted field by field below
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{where}: {path}: {e.message}")
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE, where
        assert labels["app.kubernetes.io/managed-by"] == "Helm", where


def test_rendered_config_and_policy_are_accepted_by_the_proxy(scenario: Rendered) -> None:
    settings = scenario.settings()
    assert (settings.server.host, settings.server.port) == ("0.0.0.0", PORT)
    assert scenario.container["ports"] == [
        {"name": "registry", "containerPort": PORT, "protocol": "TCP"}
    ]
    assert settings.audit.sink == "stdout"
    assert settings.policy_file == config_dir(scenario) / "policy.yaml"
    policy_raw = yaml.safe_load(scenario.configmap["data"]["policy.yaml"])
    policy = parse_policy(policy_raw, base_dir=config_dir(scenario),
                          known_sources=[s.name for s in settings.trust.sources])  # fmt: skip
    if scenario is _cache.get("default"):
        assert policy.rules == (), "no policy given: fail closed, every repository refused"


def test_config_policy_and_every_file_are_mounted_where_the_proxy_reads_them(
    scenario: Rendered,
) -> None:
    path = config_path(scenario)
    assert path == IMAGE_CONFIG, "the same path as the image's own CMD"
    mount, volume = mount_for(scenario, path)
    assert mount["readOnly"] is True
    assert volume["configMap"]["name"] == scenario.configmap["metadata"]["name"]
    rel = PurePosixPath(path).relative_to(mount["mountPath"])
    assert str(rel) in scenario.configmap["data"]
    settings = scenario.settings()
    assert settings.policy_file is not None
    assert settings.policy_file.name in scenario.configmap["data"]
    files = [settings.server.tls_cert_file, settings.server.tls_key_file,
             settings.server.client_auth.client_ca_file, settings.server.client_auth.htpasswd_file,
             *(u.ca_file for u in settings.upstreams),
             *(s.ca_file for s in settings.trust.sources)]  # fmt: skip
    for file in filter(None, files):
        mount, volume = mount_for(scenario, str(file))
        assert mount["readOnly"] is True
        assert "secret" in volume or "configMap" in volume, (file, volume)
    # No mount inside another one (kubelet would have to create it in a read-only volume).
    paths = [PurePosixPath(m["mountPath"]) for m in scenario.container["volumeMounts"]]
    assert not [(a, b) for a in paths for b in paths if a != b and b.is_relative_to(a)]


# --------------------------------------------------------------------------- the pods


def test_default_runs_two_replicas_spread_over_nodes(default: Rendered) -> None:
    assert default.deployment["spec"]["replicas"] >= 2
    assert not default.has("HorizontalPodAutoscaler")
    anti = default.pod["affinity"]["podAntiAffinity"]
    (term,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    selector = default.deployment["spec"]["selector"]["matchLabels"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
    (spread,) = default.pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "topology.kubernetes.io/zone"
    assert spread["labelSelector"]["matchLabels"] == selector
    strategy = default.deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


def test_full_autoscales_from_at_least_two_with_hard_anti_affinity(full: Rendered) -> None:
    assert "replicas" not in full.deployment["spec"], "the HPA owns the replica count"
    hpa = full.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME
    }  # fmt: skip
    (term,) = full.pod["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    pdb = full.one("PodDisruptionBudget")
    assert 1 <= pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


def test_pdb_selects_the_proxy_pods(default: Rendered) -> None:
    pdb = default.one("PodDisruptionBudget")
    pod_labels = default.deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["minAvailable"] < default.deployment["spec"]["replicas"]


@pytest.mark.parametrize(("name", "scheme"), [("default", "HTTP"), ("full", "HTTPS")])
def test_probes_hit_healthz_and_readyz(name: str, scheme: str) -> None:
    r = _cache.get(name) or _cache.setdefault(name, render(SCENARIOS[name]()))
    live, ready = r.container["livenessProbe"], r.container["readinessProbe"]
    assert live["httpGet"] == {"path": "/healthz", "port": "registry", "scheme": scheme}
    assert ready["httpGet"] == {"path": "/readyz", "port": "registry", "scheme": scheme}
    assert r.settings().server.tls is (scheme == "HTTPS")


def test_mtls_probes_fall_back_to_tcp() -> None:
    # kubelet has no client certificate; the TLS handshake would refuse it.
    r = render(mtls_values())
    assert r.settings().server.client_auth.client_ca_file is not None
    for probe in (r.container["livenessProbe"], r.container["readinessProbe"]):
        assert probe["tcpSocket"] == {"port": "registry"}
        assert "httpGet" not in probe


def test_resources_and_security_context(scenario: Rendered) -> None:
    pod_sc, sc = scenario.pod["securityContext"], scenario.container["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == IMAGE_UID
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert scenario.pod["automountServiceAccountToken"] is False
    resources = scenario.container["resources"]
    assert resources["requests"]["cpu"]
    assert resources["requests"]["memory"]
    assert resources["limits"]["memory"]


def test_image_defaults_to_the_app_version_and_honours_a_digest(
    default: Rendered, full: Rendered
) -> None:
    with helm.Chart.load(CHART) as chart:
        app_version = chart.metadata["appVersion"]
    assert default.container["image"] == f"trustproxy:{app_version}"
    assert full.container["image"].startswith("registry.example.com/platform/trustproxy@sha256:")


# --------------------------------------------------------------------------- config rollout


def test_checksum_is_the_rendered_configmap_and_rolls_pods_on_change(default: Rendered) -> None:
    configmap_text = default.files["trustproxy/templates/configmap.yaml"]
    assert checksum(default) == hashlib.sha256(configmap_text.encode()).hexdigest()
    config_change = render({"config": {"cache": {"refresh_seconds": "10s"}}})
    rule = {"source": "n", "trustOnFirstUse": True}
    policy_change = render({
        "policy": {"version": "2.0", "trust": {"repositories": {"docker.io/library/*": rule}}},
        "config": {"trust": {"sources": {"n": {"type": "notary", "url": "https://n.example"}}}},
    })  # fmt: skip
    unrelated = render({"resources": {"requests": {"cpu": "1"}}})
    assert checksum(config_change) != checksum(default)
    assert checksum(policy_change) not in (checksum(default), checksum(config_change))
    assert checksum(unrelated) == checksum(default)
    assert config_change.settings().cache.refresh_seconds == 10.0


# --------------------------------------------------------------------------- Redis


def test_bundled_redis_is_what_the_config_points_at(default: Rendered) -> None:
    url = default.settings().cache.redis_url
    assert url == f"redis://{FULLNAME}-redis:6379/0"
    service = default.one("Service", f"{FULLNAME}-redis")
    assert service["spec"]["ports"][0]["port"] == 6379
    sts = default.one("StatefulSet", f"{FULLNAME}-redis")
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    proxy_labels = default.deployment["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= proxy_labels.items()
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert re.fullmatch(r"redis:7(\.\d+)*(-\S+)?", container["image"]), container["image"]
    args = container["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert args[args.index("--appendonly") + 1] == "no", "no persistence by default"
    assert "volumeClaimTemplates" not in sts["spec"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sts["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    netpol = default.one("NetworkPolicy", f"{FULLNAME}-redis")
    assert netpol["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    (rule,) = netpol["spec"]["ingress"]
    assert rule["from"][0]["podSelector"]["matchLabels"].items() <= proxy_labels.items()


def test_redis_persistence_when_asked(full: Rendered) -> None:
    sts = full.one("StatefulSet", f"{FULLNAME}-redis")
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"


def test_external_redis_url_goes_into_the_config() -> None:
    r = render(external_redis_values())
    assert not r.has("StatefulSet")
    assert r.settings().cache.redis_url == "rediss://redis.corp:6380/2"
    assert "TRUSTPROXY_CACHE__REDIS_URL" not in r.secret_env


def test_external_redis_url_from_a_secret_is_an_env_override() -> None:
    r = render(secret_redis_values())
    assert not r.has("StatefulSet")
    assert "redis_url" not in r.raw_config["cache"]
    assert r.secret_env["TRUSTPROXY_CACHE__REDIS_URL"] == {"name": "redis-url", "key": "url"}
    assert r.settings().cache.redis_url == REDIS_URL_PLACEHOLDER


def test_several_replicas_without_shared_state_do_not_render() -> None:
    with pytest.raises(helm.HelmError, match="shared trust state"):
        render({"redis": {"enabled": False}})
    r = render({"replicaCount": 1, "redis": {"enabled": False}})
    assert r.settings().cache.redis_url is None


# --------------------------------------------------------------------------- Secrets


def test_credentials_come_from_secrets_as_env_overrides(full: Rendered) -> None:
    assert full.secret_env == {
        "TRUSTPROXY_UPSTREAMS__0__AUTH__PASSWORD": {
            "name": "corp-registry-credentials", "key": "password"},
        "TRUSTPROXY_TRUST__SOURCES__CORP-NOTARY__AUTH__PASSWORD": {
            "name": "corp-notary-credentials", "key": "password"},
    }  # fmt: skip
    settings = full.settings()
    corp = settings.upstreams[0]
    assert corp.name == "corp"
    assert corp.auth.mode == "basic"
    assert corp.auth.credentials.password == SECRET_PLACEHOLDER
    (notary,) = settings.trust.sources
    assert notary.credentials.password == SECRET_PLACEHOLDER
    assert "password" not in full.config_text
    # extraEnv is passed through as well.
    assert settings.limits.connect_timeout == 3.0


def test_password_env_follows_the_upstream_index() -> None:
    values = full_values()
    values["upstreamPasswords"] = {"hub": {"secretName": "hub-credentials"}}
    values["config"]["upstreams"][1]["auth"] = {"mode": "basic", "username": "me"}
    values["config"]["upstreams"][0]["auth"] = {"mode": "anonymous"}
    r = render(values)
    assert r.secret_env["TRUSTPROXY_UPSTREAMS__1__AUTH__PASSWORD"] == {
        "name": "hub-credentials", "key": "password"
    }  # fmt: skip
    assert r.settings().upstreams[1].auth.credentials.password == SECRET_PLACEHOLDER


def test_secret_references_to_unknown_names_do_not_render() -> None:
    with pytest.raises(helm.HelmError, match="no upstream named nope"):
        render({"upstreamPasswords": {"nope": {"secretName": "x"}}})
    with pytest.raises(helm.HelmError, match="no trust source named nope"):
        render({"notaryPasswords": {"nope": {"secretName": "x"}}})


def test_tls_and_client_auth_files_come_from_secrets(full: Rendered) -> None:
    settings = full.settings()
    tls, htpasswd = settings.server.tls_cert_file, settings.server.client_auth.htpasswd_file
    for file, secret in [(tls, "trustproxy-tls"), (htpasswd, "trustproxy-clients")]:
        assert file is not None
        _, volume = mount_for(full, str(file))
        assert volume["secret"]["secretName"] == secret
    _, volume = mount_for(full, "/run/trustproxy/ca/corp/ca.crt")
    assert volume["configMap"]["name"] == "corp-ca"


# --------------------------------------------------------------------------- around the pods


def test_service_ingress_and_servicemonitor_reach_the_registry_port(full: Rendered) -> None:
    service = full.one("Service")
    (port,) = service["spec"]["ports"]
    assert port["name"] == "registry"
    assert port["targetPort"] == "registry"
    pod_labels = full.deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()

    ingress = full.one("Ingress")
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/"
    assert path["pathType"] == "Prefix"
    assert path["backend"]["service"] == {"name": FULLNAME, "port": {"name": "registry"}}
    assert ingress["spec"]["tls"][0]["hosts"] == [rule["host"]]

    monitor = full.one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "registry"
    assert endpoint["path"] == "/metrics"
    assert endpoint["scheme"] == "https"
    assert endpoint["interval"] == "15s"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert full.settings().server.metrics_enabled


def test_optional_objects_are_off_by_default(default: Rendered) -> None:
    for kind in ("Ingress", "ServiceMonitor", "HorizontalPodAutoscaler"):
        assert not default.has(kind), kind
    assert default.has("ServiceAccount")
    assert default.has("PodDisruptionBudget")


# --------------------------------------------------------------------------- values.yaml


def test_values_yaml_is_documented_line_by_line() -> None:
    lines = (CHART / "values.yaml").read_text(encoding="utf-8").splitlines()
    key = re.compile(r"^\s*(- )?[\w\"'./*-]+:(\s|$)")
    undocumented = []
    for i, line in enumerate(lines):
        if line.lstrip().startswith("#") or not key.match(line):
            continue
        above = lines[i - 1].lstrip() if i else ""
        if "#" not in line and not above.startswith("#"):
            undocumented.append(f"values.yaml:{i + 1}: {line.strip()}")
    assert undocumented == []


def test_defaults_leave_nothing_to_merge_into_a_users_policy_or_sources() -> None:
    # Helm merges maps from values files key by key: a default rule or trust source would
    # silently survive next to the user's. The defaults carry none.
    rule = {"mode": "enforce", "source": "mine", "rootKeys": ["ab" * 32]}
    source = {"type": "notary", "url": "https://notary.example"}
    r = render({
        "policy": {"version": "2.0", "trust": {"repositories": {"example.com/**": rule}}},
        "config": {"trust": {"sources": {"mine": source}}},
    })  # fmt: skip
    assert [s.name for s in r.settings().trust.sources] == ["mine"]
    policy = yaml.safe_load(r.configmap["data"]["policy.yaml"])
    assert list(policy["trust"]["repositories"]) == ["example.com/**"]
