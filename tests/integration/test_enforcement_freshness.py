"""Enforcement over time: revocation reaching the proxy, a trust server outage with a warm
and a cold cache, and a policy reload on SIGHUP. Each test runs its own trustproxy (and the
outage test its own notary bed, which it stops)."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.errors import ConfigError
from proxy.settings import parse_settings
from testbed import images
from testbed.enforcement_bed import (
    EnforcementBed,
    EnforcingProxy,
    oci_error,
    rule,
    skopeo_inspect_raw,
    start_enforcing_proxy,
    upstream,
    wait_until,
    write_policy,
)
from testbed.notary_server import NotaryBed
from tests.conftest import RegistryBed, requires

pytestmark = pytest.mark.integration

# How often the proxy re-reads a repository's trust data: NotarySourceOptions.fresh_for, 60 s
# by default. Short here when the config lets us set it (the key below), so that revocation
# and outages show within seconds; otherwise the default applies and the test takes a minute.
REFRESH_KEY = "refresh_interval"  # trust.sources.<name>.<key>
SHORT_REFRESH = 2.0
DEFAULT_REFRESH = 60.0


def refresh_interval() -> tuple[dict[str, Any], float]:
    """(trust source options for the config, the refresh interval they give)."""
    raw = {
        "upstreams": [{"name": "u", "url": "http://127.0.0.1:1", "registry": "127.0.0.1:1"}],
        "trust": {"sources": {"notary": {"type": "notary", "url": "https://127.0.0.1:2",
                                         REFRESH_KEY: f"{SHORT_REFRESH:g}s"}}},
    }  # fmt: skip
    try:
        parse_settings(raw, base_dir=Path.cwd(), check_files=False)
    except ConfigError:
        return {}, DEFAULT_REFRESH
    return {REFRESH_KEY: f"{SHORT_REFRESH:g}s"}, SHORT_REFRESH


@pytest.fixture
def bed(registry: RegistryBed, notary_bed: NotaryBed, tmp_path: Path) -> Iterator[EnforcementBed]:
    requires("skopeo", "notary")
    b = EnforcementBed.create(
        tmp_path / "bed", registry.url, notary_bed, namespace=f"fresh{uuid.uuid4().hex[:8]}"
    )
    try:
        yield b
    finally:
        b.close()


def _status(proxy: EnforcingProxy, repo: str, tag: str) -> int:
    return proxy.manifest(repo, tag).status_code


@pytest.mark.slow  # a minute while the refresh interval cannot be configured (see REFRESH_KEY)
def test_revocation_then_trust_server_outage(registry: RegistryBed, tmp_path: Path) -> None:
    """One proxy, one refresh interval: (1) ``notary remove`` + publish takes effect within
    the interval; (2) then the notary server stops: a repository with verified data cached
    is still served (unexpired: notary's timestamp lasts 14 days), one never fetched is 503.

    (Together because without a configurable interval each part waits the 60 s default.)"""
    requires("skopeo", "notary", "notary-server", "notary-signer")
    options, interval = refresh_interval()
    # The refresh interval itself, without the change feed (tests/integration/
    # test_changefeed.py): part (2) needs warm/app's cache to be as old as revoke/app's.
    options = {**options, "changefeed": {"enabled": False}}
    own = NotaryBed.start(tmp_path / "notary")  # this test stops it
    proxy: EnforcingProxy | None = None
    bed = EnforcementBed.create(
        tmp_path / "bed", registry.url, own, namespace=f"fresh{uuid.uuid4().hex[:8]}"
    )
    try:
        ns = bed.namespace
        warm = bed.push_and_sign("warm/app", "v1", images.single_image(f"{ns} warm"))
        revoked = bed.push_and_sign("revoke/app", "v1", images.single_image(f"{ns} revoke v1"))
        kept = bed.push_and_sign("revoke/app", "v2", images.single_image(f"{ns} revoke v2"))
        bed.push_and_sign("cold/app", "v1", images.single_image(f"{ns} cold"))
        proxy = start_enforcing_proxy(
            tmp_path / "proxy",
            [upstream("internal", registry.url)],
            own,
            {bed.pattern("*/app"): rule(root_keys=[bed.root_key_id])},
            source_options=options,
        )
        warm_ref, revoke_repo = f"{bed.repo('warm/app')}:v1", bed.repo("revoke/app")
        got = skopeo_inspect_raw(proxy.host, warm_ref)  # warm/app is cached first...
        assert got.ok, got.stderr
        assert got.digest == f"sha256:{warm.sha256}"
        got = skopeo_inspect_raw(proxy.host, f"{revoke_repo}:v1")  # ...then revoke/app
        assert got.ok, got.stderr
        assert got.digest == f"sha256:{revoked.sha256}"

        # (1) Revocation: served from the verified cache until the next refresh, refused
        # from then on; the other tag stays.
        bed.trust("revoke/app").remove("v1")  # notary remove + publish
        took = wait_until(
            lambda: _status(proxy, revoke_repo, "v1") == 404, timeout=interval + 10, interval=0.2
        )
        assert took <= interval + 10
        r = proxy.manifest(revoke_repo, "v1")
        assert r.status_code == 404
        assert oci_error(r)["code"] == "MANIFEST_UNKNOWN"
        assert proxy.tags(revoke_repo) == ["v2"]
        r = proxy.manifest(revoke_repo, "v2")
        assert r.status_code == 200
        assert images.sha256(r.content) == f"sha256:{kept.sha256}"

        # (2) Outage. warm/app's cache is as old as revoke/app's was: due for a refresh,
        # which now fails, so the verified cached data answers.
        own.stop()
        for _ in range(2):
            got = skopeo_inspect_raw(proxy.host, warm_ref)
            assert got.ok, got.stderr + proxy.server.log_tail()
            assert got.digest == f"sha256:{warm.sha256}"
        assert 'result="stale_served"' in proxy.metrics(), proxy.server.log_tail()
        # Never fetched: nothing valid cached, so 503 (never a pass-through).
        r = proxy.manifest(bed.repo("cold/app"), "v1")
        assert r.status_code == 503, (r.status_code, r.text)
        assert oci_error(r)["code"] == "UNAVAILABLE"
        assert not skopeo_inspect_raw(proxy.host, f"{bed.repo('cold/app')}:v1").ok
    finally:
        if proxy is not None:
            proxy.stop()
        own.stop()
        bed.close()


def test_sighup_reloads_the_policy(
    bed: EnforcementBed, notary_bed: NotaryBed, registry: RegistryBed, tmp_path: Path
) -> None:
    name = "reload/app"
    bed.push_and_sign(name, "v1.0.0", images.single_image(f"{bed.namespace} reload release"))
    bed.push_and_sign(name, "latest", images.single_image(f"{bed.namespace} reload latest"))
    key = bed.root_key_id
    proxy = start_enforcing_proxy(
        tmp_path / "proxy",
        [upstream("internal", registry.url)],
        notary_bed,
        {bed.pattern("reload/*"): rule(root_keys=[key])},
    )
    try:
        assert _status(proxy, bed.repo(name), "latest") == 200
        narrower = rule(root_keys=[key], paths=["v*.*.*"])
        write_policy(proxy.policy_file, {bed.pattern("reload/*"): narrower})
        proxy.server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: _status(proxy, bed.repo(name), "latest") == 404, timeout=10)
        assert _status(proxy, bed.repo(name), "v1.0.0") == 200
        # A broken policy on reload changes nothing: the last good one keeps enforcing.
        proxy.policy_file.write_text("version: [not, a, policy\n")
        proxy.server.process.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert proxy.server.alive(), proxy.server.log_tail()
        assert _status(proxy, bed.repo(name), "latest") == 404
        assert _status(proxy, bed.repo(name), "v1.0.0") == 200
    finally:
        proxy.stop()
