"""proxy.reload: generations built from config + policy, swapped on SIGHUP, retired after use.

Policy loading and the enforcement build are stood in by fakes (their own modules have their
own tests); the config loading, the app, the state and the swap are the real ones.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from starlette.applications import Starlette

from proxy.decisions import DecisionRecorder
from proxy.errors import ConfigError, TrustSourceUnavailableError
from proxy.http.app import create_app
from proxy.policy.model import Policy
from proxy.reload import (
    NO_POLICY_WARNING,
    Builder,
    Generation,
    RequestTracker,
    Runtime,
)
from proxy.routing import Route
from proxy.settings import Settings, load_settings, restart_needed
from proxy.sources.store import TrustStateStore
from proxy.sources.store_factory import StoreFactory
from proxy.trust_gate import PassThroughGate, RequestContext, TagDecision, TrustGate

pytestmark = pytest.mark.anyio


# --------------------------------------------------------------------------- fakes


@dataclass
class FakeEnforcement:
    policy: Policy | None
    recorder: DecisionRecorder
    gate: TrustGate = field(default_factory=PassThroughGate)
    stores: dict[str, TrustStateStore] = field(default_factory=dict)
    closed: bool = False

    async def aclose(self) -> None:
        self.closed = True


class RefuseAll(PassThroughGate):
    def __init__(self, reason: str, recorder: DecisionRecorder) -> None:
        self.reason = reason
        self.recorder = recorder

    async def decide_tag(self, route: Route, tag: str, ctx: RequestContext) -> TagDecision:
        raise TrustSourceUnavailableError("policy", self.reason)


def fake_load_policy(path: Path, *, known_sources: Collection[str] | None = None) -> Policy:
    """A "policy file" here is one line: ok, or broken (a path-qualified error)."""
    try:
        text = path.read_text().strip()
    except OSError as e:
        raise ConfigError(str(path), f"cannot read: {e.strerror}") from e
    if text != "ok":
        raise ConfigError(
            "repositories['team/*'].mode", f"must be one of enforce, audit, off: {text!r}"
        )
    return Policy(rules=(), source_file=path, warnings=("a policy warning",))


@dataclass
class Fakes:
    built: list[FakeEnforcement] = field(default_factory=list)

    def build_enforcement(
        self,
        settings: Settings,
        policy: Policy | None,
        *,
        recorder: DecisionRecorder,
        store_factory: StoreFactory | None = None,
    ) -> FakeEnforcement:
        assert store_factory is not None
        stores = {s.name: store_factory(s.name) for s in settings.trust.sources}
        enforcement = FakeEnforcement(policy, recorder, stores=stores)
        self.built.append(enforcement)
        return enforcement

    def builder(self) -> Builder:
        return Builder(
            stdout=io.StringIO(),
            load_policy=fake_load_policy,
            build_enforcement=self.build_enforcement,
            fail_closed_gate=RefuseAll,
        )


def config(folder: Path, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "server": {"listen": "127.0.0.1:8443"},
        "upstreams": [{"name": "internal", "url": "http://registry.test"}],
        "trust": {"sources": {"notary": {"type": "notary", "url": "https://notary.test"}}},
        "policy_file": "policy.yaml",
    }
    data.update(changes)
    return data


def write_config(folder: Path, data: dict[str, Any] | str) -> Path:
    path = folder / "trustproxy.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@dataclass
class Bed:
    runtime: Runtime
    app: Starlette
    fakes: Fakes
    path: Path

    @property
    def folder(self) -> Path:
        return self.path.parent

    def write(self, data: dict[str, Any] | str) -> None:
        write_config(self.folder, data)

    def policy(self, text: str) -> None:
        (self.folder / "policy.yaml").write_text(text)


@asynccontextmanager
async def running(
    tmp_path: Path, *, policy: str | None = "ok", **changes: Any
) -> AsyncIterator[Bed]:
    if policy is not None:
        (tmp_path / "policy.yaml").write_text(policy)
    path = write_config(tmp_path, config(tmp_path, **changes))
    settings = load_settings(path)
    fakes = Fakes()
    builder = fakes.builder()
    runtime = Runtime(builder.first(settings), builder, config_path=path, environ={})
    app = create_app(settings, runtime=runtime)
    async with app.router.lifespan_context(app):
        yield Bed(runtime, app, fakes, path)


def is_closed(enforcement: FakeEnforcement) -> bool:
    # A call, so that mypy does not keep "closed is False" from an earlier assert.
    return enforcement.closed


async def settle() -> None:
    """Let the retire tasks run."""
    for _ in range(5):
        await asyncio.sleep(0)


# --------------------------------------------------------------------------- tests


async def test_a_good_reload_swaps_the_state_and_retires_the_old_one(tmp_path: Path) -> None:
    async with running(tmp_path) as bed:
        old = bed.runtime.current
        assert bed.app.state.proxy is old.state
        data = config(tmp_path)
        data["upstreams"].append({"name": "mirror", "url": "http://mirror.test", "prefix": "m"})
        bed.write(data)
        assert await bed.runtime.reload()
        new = bed.runtime.current
        assert new is not old
        assert bed.app.state.proxy is new.state
        assert set(new.state.clients) == {"internal", "mirror"}
        assert new.state.router.route("m/team/app").upstream.name == "mirror"
        await settle()
        first, second = bed.fakes.built
        assert first.closed
        assert not second.closed
        # Same audit settings: the recorder (and its open file) carries over.
        assert new.recorder is old.recorder
    assert second.closed  # shutdown closes the current generation too


async def test_trust_state_stores_survive_a_reload_unless_the_source_changed(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as bed:
        assert await bed.runtime.reload()
        first, second = bed.fakes.built
        assert second.stores["notary"] is first.stores["notary"]  # rollback floors kept
        moved = {"notary": {"type": "notary", "url": "https://other-notary.test"}}
        bed.write(config(tmp_path, trust={"sources": moved}))
        assert await bed.runtime.reload()
        assert bed.fakes.built[2].stores["notary"] is not first.stores["notary"]


async def test_the_manifest_cache_survives_a_reload_unless_upstreams_changed(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as bed:
        cache = bed.runtime.current.state.manifest_cache
        assert await bed.runtime.reload()  # same upstreams: verified entries stay valid
        assert bed.runtime.current.state.manifest_cache is cache
        data = config(tmp_path)
        data["upstreams"][0]["url"] = "http://elsewhere.test"
        bed.write(data)
        assert await bed.runtime.reload()  # "internal" now names another registry
        assert bed.runtime.current.state.manifest_cache is not cache


async def test_a_broken_config_keeps_the_old_one_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(tmp_path) as bed:
        old = bed.runtime.current
        bed.write(config(tmp_path, upstreams=[{"name": "internal", "url": "registry.test"}]))
        with caplog.at_level(logging.ERROR, logger="trustproxy.reload"):
            assert not await bed.runtime.reload()
        assert bed.runtime.current is old
        assert bed.app.state.proxy is old.state
        assert "still serving the previous config" in caplog.text
        assert "upstreams[0].url: not a URL" in caplog.text
        assert len(bed.fakes.built) == 1
        assert not bed.fakes.built[0].closed


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("server: [unclosed\n", "not valid YAML"), ("upstreams: []\n", "at least one upstream")],
    ids=["yaml", "no-upstreams"],
)
async def test_unparsable_configs_keep_the_old_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, fragment: str
) -> None:
    async with running(tmp_path) as bed:
        old = bed.runtime.current
        bed.write(text)
        with caplog.at_level(logging.ERROR, logger="trustproxy.reload"):
            assert not await bed.runtime.reload()
        assert bed.runtime.current is old
        assert fragment in caplog.text


async def test_a_broken_policy_keeps_the_old_one_with_the_file_and_key_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(tmp_path) as bed:
        old = bed.runtime.current
        bed.policy("enforse")
        with caplog.at_level(logging.ERROR, logger="trustproxy.reload"):
            assert not await bed.runtime.reload()
        assert bed.runtime.current is old
        policy_path = old.settings.policy_file
        assert f"{policy_path}: repositories['team/*'].mode: must be one of" in caplog.text
        # Fixed: the next SIGHUP applies it.
        bed.policy("ok")
        assert await bed.runtime.reload()


async def test_a_missing_policy_file_on_reload_keeps_the_old_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(tmp_path) as bed:
        old = bed.runtime.current
        (tmp_path / "policy.yaml").unlink()
        with caplog.at_level(logging.ERROR, logger="trustproxy.reload"):
            assert not await bed.runtime.reload()
        assert bed.runtime.current is old
        assert "cannot read" in caplog.text


async def test_changes_that_need_a_restart_are_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(tmp_path) as bed:
        bed.write(config(tmp_path, server={"listen": "0.0.0.0:9443", "metrics": False},
                         logging={"level": "debug"}))  # fmt: skip
        with caplog.at_level(logging.WARNING, logger="trustproxy.reload"):
            assert await bed.runtime.reload()
        assert "restart needed for: server.listen, server.metrics, logging" in caplog.text


def test_restart_needed_lists_tls_and_client_ca(tmp_path: Path) -> None:
    for name in ("c.crt", "c.key", "ca.crt", "c2.crt"):
        (tmp_path / name).write_text("x")
    base = config(tmp_path)
    old = load_settings(write_config(tmp_path, base))
    tls = {"listen": "127.0.0.1:8443", "tls_cert_file": "c2.crt", "tls_key_file": "c.key",
           "client_auth": {"client_ca_file": "ca.crt"}}  # fmt: skip
    new = load_settings(write_config(tmp_path, config(tmp_path, server=tls)))
    assert restart_needed(old, new) == [
        "server.tls_cert_file",
        "server.tls_key_file",
        "server.client_auth.client_ca_file",
    ]
    assert restart_needed(old, old) == []


async def test_the_old_generation_lives_until_its_requests_finish(tmp_path: Path) -> None:
    async with running(tmp_path) as bed:
        tracker = bed.runtime.tracker
        epoch = tracker.enter()  # a blob download that started before the SIGHUP
        assert await bed.runtime.reload()
        await settle()
        first = bed.fakes.built[0]
        assert not first.closed
        later = tracker.enter()  # a request after the swap does not hold the old one
        await settle()
        tracker.exit(epoch)
        await settle()
        assert is_closed(first)
        tracker.exit(later)


async def test_a_request_that_never_ends_cannot_keep_the_old_one_forever(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(tmp_path) as bed:
        bed.runtime.retire_timeout = 0.05
        epoch = bed.runtime.tracker.enter()
        with caplog.at_level(logging.WARNING, logger="trustproxy.reload"):
            assert await bed.runtime.reload()
            await asyncio.sleep(0.2)
        assert bed.fakes.built[0].closed
        assert "1 requests still running" in caplog.text
        bed.runtime.tracker.exit(epoch)


async def test_startup_with_a_broken_policy_fails_closed_then_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="trustproxy.reload"):
        async with running(tmp_path, policy="nonsense") as bed:
            first = bed.runtime.current
            assert first.fail_closed is not None
            assert isinstance(first.state.gate, RefuseAll)
            assert "repositories['team/*'].mode" in first.fail_closed
            assert bed.fakes.built == []
            bed.policy("ok")
            assert await bed.runtime.reload()
            assert bed.runtime.current.fail_closed is None
            assert isinstance(bed.runtime.current.state.gate, PassThroughGate)
    assert "refusing every manifest" in caplog.text


async def test_startup_with_a_missing_policy_file_fails_closed(tmp_path: Path) -> None:
    async with running(tmp_path, policy=None) as bed:
        assert bed.runtime.current.fail_closed is not None
        assert "cannot read" in bed.runtime.current.fail_closed


async def test_no_policy_file_passes_through_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="trustproxy.reload"):
        async with running(tmp_path, policy_file=None) as bed:
            (enforcement,) = bed.fakes.built
            assert enforcement.policy is None
    assert NO_POLICY_WARNING in caplog.text
    assert "no policy_file: nothing is enforced" in caplog.text


async def test_policy_warnings_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="trustproxy.reload"):
        async with running(tmp_path):
            pass
    assert "policy: a policy warning" in caplog.text


async def test_a_changed_audit_sink_gets_a_new_recorder_and_the_old_is_closed(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as bed:
        old = bed.runtime.current
        bed.write(config(tmp_path, audit={"sink": "file", "path": "audit.log"}))
        assert await bed.runtime.reload()
        new = bed.runtime.current
        assert new.recorder is not old.recorder
        assert bed.fakes.built[1].recorder is new.recorder
        await settle()
        await asyncio.sleep(0.05)  # the close runs in a thread
        assert old.recorder._closed
        assert (tmp_path / "audit.log").exists()


async def test_an_audit_file_that_cannot_be_opened_fails_the_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "audit.log").mkdir()  # a directory where the file should be
    async with running(tmp_path) as bed:
        bed.write(config(tmp_path, audit={"sink": "file", "path": "audit.log"}))
        with caplog.at_level(logging.ERROR, logger="trustproxy.reload"):
            assert not await bed.runtime.reload()
        assert "audit.path: cannot open" in caplog.text


def test_an_audit_file_that_cannot_be_opened_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "audit.log").mkdir()
    path = write_config(tmp_path, config(tmp_path, audit={"sink": "file", "path": "audit.log"}))
    with pytest.raises(ConfigError, match=r"^audit.path: cannot open"):
        Fakes().builder().first(load_settings(path))


async def test_sighup_reopens_the_audit_file_even_when_the_reload_fails(tmp_path: Path) -> None:
    audit = {"sink": "file", "path": "audit.log"}
    async with running(tmp_path, audit=audit) as bed:
        (tmp_path / "audit.log").rename(tmp_path / "audit.log.1")
        bed.write("not: [valid")
        assert not await bed.runtime.reload()
        await asyncio.sleep(0.05)  # the reopen runs on the writer thread
        assert (tmp_path / "audit.log").exists()


async def test_sighup_triggers_a_reload(tmp_path: Path) -> None:
    async with running(tmp_path) as bed:
        if not bed.runtime._signal_installed:
            pytest.skip("signal handlers need the main thread")
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(200):
            if bed.runtime.reloads:
                break
            await asyncio.sleep(0.01)
        assert bed.runtime.reloads == 1


async def test_requests_are_tracked_by_the_app(tmp_path: Path) -> None:
    async with running(tmp_path) as bed:
        transport = httpx.ASGITransport(app=bed.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy.test") as c:
            assert (await c.get("/healthz")).status_code == 200
        assert bed.runtime.tracker.in_flight() == 0


async def test_request_tracker_epochs() -> None:
    tracker = RequestTracker()
    a = tracker.enter()
    ended = tracker.advance()
    b = tracker.enter()
    assert (a, ended, b) == (0, 0, 1)
    waiter = asyncio.ensure_future(tracker.drained(ended))
    await asyncio.sleep(0)
    assert not waiter.done()
    tracker.exit(b)  # a newer request ending does not release the old epoch
    await asyncio.sleep(0)
    assert not waiter.done()
    tracker.exit(a)
    await asyncio.wait_for(waiter, 1)
    await tracker.drained(5)  # nothing in flight: returns at once


async def test_shutdown_closes_generations_still_draining(tmp_path: Path) -> None:
    async with running(tmp_path) as bed:
        epoch = bed.runtime.tracker.enter()
        assert await bed.runtime.reload()
        await settle()
        assert not bed.fakes.built[0].closed
    assert all(e.closed for e in bed.fakes.built)
    bed.runtime.tracker.exit(epoch)


def test_generation_is_what_serve_starts_with(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text("ok")
    settings = load_settings(write_config(tmp_path, config(tmp_path)))
    first = Fakes().builder().first(settings)
    assert isinstance(first, Generation)
    assert first.policy is not None
    assert first.fail_closed is None
    assert first.state.settings is settings
    first.recorder.close()
    asyncio.run(first.aclose())


def test_restart_needed_lists_the_request_head_limits(tmp_path: Path) -> None:
    old = load_settings(write_config(tmp_path, config(tmp_path)))
    limits = {"header_timeout": "7s", "max_header_bytes": "128KiB", "keep_alive_timeout": "9s"}
    new = load_settings(write_config(tmp_path, config(tmp_path, server=limits)))
    assert restart_needed(old, new) == [
        "server.header_timeout",
        "server.max_header_bytes",
        "server.keep_alive_timeout",
    ]
