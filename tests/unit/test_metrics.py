"""/metrics: the exposition endpoint, request counting with bounded labels, upstream errors."""

from __future__ import annotations

import httpx
import pytest

from proxy.errors import UpstreamUnavailableError
from proxy.http.access_log import endpoint_kind, status_class
from proxy.http.app import create_app
from proxy.metrics import REGISTRY
from proxy.settings import LimitSettings, ServerSettings, Settings, UpstreamSettings
from proxy.upstream.client import UpstreamClient

UPSTREAM = UpstreamSettings(name="internal", url="http://registry.test", registry="registry.test")


def settings(*, metrics: bool = True) -> Settings:
    return Settings(server=ServerSettings(metrics_enabled=metrics), upstreams=(UPSTREAM,))


def requests_count(method: str, endpoint: str, status: str) -> float:
    labels = {"method": method, "endpoint": endpoint, "status": status}
    return REGISTRY.get_sample_value("trustproxy_requests_total", labels) or 0.0


def upstream_errors(upstream: str, kind: str) -> float:
    labels = {"upstream": upstream, "kind": kind}
    return REGISTRY.get_sample_value("trustproxy_upstream_errors_total", labels) or 0.0


async def get(
    app_settings: Settings, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> httpx.Response:
    app = create_app(app_settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://proxy.test") as client:
        return await client.request(method, path, headers=headers)


@pytest.mark.anyio
async def test_metrics_endpoint_exposes_the_contract_names() -> None:
    r = await get(settings(), "/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    for name in (
        "trustproxy_requests_total",
        "trustproxy_decisions_total",
        "trustproxy_trust_refresh_seconds",
        "trustproxy_trust_cache_total",
        "trustproxy_upstream_errors_total",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in r.text, name
    # Only the proxy's own registry: no process_/python_ collectors of the global one.
    assert "python_gc_objects_collected_total" not in r.text


@pytest.mark.anyio
async def test_openmetrics_when_the_scraper_asks_for_it() -> None:
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    r = await get(settings(), "/metrics", headers={"Accept": accept})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")


@pytest.mark.anyio
async def test_a_request_is_counted_by_method_endpoint_and_status_class() -> None:
    before = requests_count("GET", "health", "2xx")
    await get(settings(), "/healthz")
    assert requests_count("GET", "health", "2xx") - before == 1
    r = await get(settings(), "/metrics")
    assert 'endpoint="health",method="GET",status="2xx"' in r.text


@pytest.mark.anyio
async def test_odd_methods_and_paths_do_not_mint_label_values() -> None:
    before = requests_count("other", "other", "4xx")
    await get(settings(), "/no/such/" + "x" * 300, method="PROPFIND")
    assert requests_count("other", "other", "4xx") - before == 1
    r = await get(settings(), "/metrics")
    assert "PROPFIND" not in r.text
    assert "xxxx" not in r.text


@pytest.mark.anyio
async def test_metrics_can_be_switched_off() -> None:
    r = await get(settings(metrics=False), "/metrics")
    assert r.status_code == 404


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/v2/", "base"),
        ("/v2", "base"),
        ("/v2/_catalog", "catalog"),
        ("/v2/team/app/manifests/v1", "manifests"),
        ("/v2/a/b/c/manifests/sha256:" + "0" * 64, "manifests"),
        ("/v2/team/app/blobs/sha256:" + "0" * 64, "blobs"),
        ("/v2/team/app/blobs/uploads/", "other"),
        ("/v2/team/app/blobs/uploads/1234", "other"),
        ("/v2/team/app/tags/list", "tags"),
        ("/v2/team/app/referrers/sha256:" + "0" * 64, "referrers"),
        ("/v2/manifests/v1", "other"),  # no repository name
        ("/v2/team/app/manifests/", "other"),
        ("/_trustproxy/token/internal", "token"),
        ("/healthz", "health"),
        ("/readyz", "health"),
        ("/metrics", "metrics"),
        ("/", "other"),
        ("/favicon.ico", "other"),
    ],
    ids=lambda v: v[:40],
)
def test_endpoint_kind(path: str, kind: str) -> None:
    assert endpoint_kind(path) == kind


@pytest.mark.parametrize(
    ("status", "label"),
    [(101, "1xx"), (200, "2xx"), (206, "2xx"), (307, "3xx"), (404, "4xx"), (503, "5xx"),
     (0, "other"), (999, "other")],
)  # fmt: skip
def test_status_class(status: int, label: str) -> None:
    assert status_class(status) == label


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ConnectError("connection refused"), "unreachable"),
        (httpx.ConnectTimeout("connect timeout"), "timeout"),
        (httpx.ReadTimeout("read timeout"), "timeout"),
        (httpx.RemoteProtocolError("server disconnected"), "unreachable"),
    ],
    ids=["refused", "connect-timeout", "read-timeout", "protocol"],
)
async def test_upstream_errors_are_counted(exc: httpx.HTTPError, kind: str) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc

    http = httpx.AsyncClient(transport=httpx.MockTransport(fail))
    client = UpstreamClient(UPSTREAM, LimitSettings(), http, None)
    before = upstream_errors("internal", kind)
    with pytest.raises(UpstreamUnavailableError):
        await client.open("GET", "/v2/", scope=None)
    await client.aclose()
    assert upstream_errors("internal", kind) - before == 1


@pytest.mark.anyio
async def test_request_counter_children_are_reused_and_still_count() -> None:
    from proxy.http.access_log import _request_counter

    assert _request_counter("GET", "health", "2xx") is _request_counter("GET", "health", "2xx")
    before = requests_count("GET", "health", "2xx")
    await get(settings(), "/healthz")
    await get(settings(), "/healthz")
    assert requests_count("GET", "health", "2xx") - before == 2


def test_json_formatter_timestamp_follows_the_clock() -> None:
    import json
    import logging

    from proxy.observability import JsonFormatter

    formatter = JsonFormatter()

    def ts(created: float) -> str:
        record = logging.LogRecord("x", logging.INFO, "", 0, "m", (), None)
        record.created, record.msecs = created, (created % 1) * 1000
        line: str = json.loads(formatter.format(record))["ts"]
        return line

    assert ts(0.5) == "1970-01-01T00:00:00.500Z"
    assert ts(0.75) == "1970-01-01T00:00:00.750Z"  # same second: cached part reused
    assert ts(86_401.25) == "1970-01-02T00:00:01.250Z"
    assert ts(0.25) == "1970-01-01T00:00:00.250Z"  # back in time too (clock steps)
