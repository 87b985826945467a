"""What ``serve`` runs: config + policy → one *generation* of state, swapped on SIGHUP.

A :class:`Generation` is everything built from one (config, policy) pair: the upstream
clients, the gate and the trust sources behind it, the audit recorder. The handlers read
the current one from ``app.state.proxy``; a reload builds a whole new generation beside the
old one and swaps the reference in one assignment, so a request sees either the old state
or the new one, never a mix of half-applied changes (nginx's ``HUP``: new workers take new
requests, old ones finish theirs).

A reload that fails — unreadable or invalid config, invalid policy — changes nothing: the
old generation keeps serving and the reason is logged with its key path. The old generation
is closed once every request that started before the swap has finished (a blob download in
progress keeps its upstream connection), and at the latest after ``retire_timeout``.

Startup differs in one way: a configured policy that cannot be loaded makes the proxy run
*fail closed* (every manifest 503) instead of refusing to start, so that a broken policy
file never turns into either an outage of the whole node or an open door.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Collection, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from proxy.audit import AuditRecorder, open_recorder
from proxy.decisions import DecisionRecorder
from proxy.enforcement.build import GateOwner, build_enforcement
from proxy.enforcement.fail_closed import FailClosedGate
from proxy.errors import ConfigError
from proxy.http.app import build_state
from proxy.http.state import ProxyState
from proxy.policy.loader import load_policy
from proxy.policy.model import Policy
from proxy.settings import (
    CacheSettings,
    Settings,
    TrustSourceSettings,
    load_settings,
    restart_needed,
)
from proxy.sources.redis_store import RedisConnection
from proxy.sources.sqlite_store import SqliteStateFile
from proxy.sources.store import TrustStateStore
from proxy.sources.store_factory import StoreFactory, redis_connection, state_stores, wants_redis
from proxy.trust_gate import TrustGate

if TYPE_CHECKING:
    from starlette.applications import Starlette

log = logging.getLogger("trustproxy.reload")

NO_POLICY_WARNING = "no policy_file: nothing is enforced, every tag passes through unchecked"
DEFAULT_RETIRE_TIMEOUT = 3600.0  # longest a request may keep a replaced generation alive


class LoadPolicy(Protocol):
    def __call__(
        self, path: Path, *, known_sources: Collection[str] | Mapping[str, str] | None = None
    ) -> Policy: ...


class BuildEnforcement(Protocol):
    def __call__(
        self,
        settings: Settings,
        policy: Policy | None,
        *,
        recorder: DecisionRecorder,
        store_factory: StoreFactory | None = None,
    ) -> GateOwner: ...


BuildState = Callable[[Settings, TrustGate], ProxyState]


# --------------------------------------------------------------------------- in-flight requests


class RequestTracker:
    """Counts requests in flight per epoch; a reload starts a new epoch.

    ``drained(epoch)`` resolves when no request that entered in ``epoch`` or before is still
    running: from then on nothing can hold a reference to a generation replaced at the end of
    ``epoch`` (handlers read ``app.state.proxy`` while they run, never after returning).
    """

    def __init__(self) -> None:
        self.epoch = 0
        self._counts: dict[int, int] = {}
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def enter(self) -> int:
        self._counts[self.epoch] = self._counts.get(self.epoch, 0) + 1
        return self.epoch

    def exit(self, epoch: int) -> None:
        left = self._counts[epoch] - 1
        if left:
            self._counts[epoch] = left
            return
        del self._counts[epoch]
        still: list[tuple[int, asyncio.Future[None]]] = []
        for upto, fut in self._waiters:
            if fut.done():
                continue
            if self._busy(upto):
                still.append((upto, fut))
            else:
                fut.set_result(None)
        self._waiters = still

    def advance(self) -> int:
        """Start a new epoch; returns the one that ended."""
        ended = self.epoch
        self.epoch += 1
        return ended

    def in_flight(self, upto: int | None = None) -> int:
        return sum(n for e, n in self._counts.items() if upto is None or e <= upto)

    def _busy(self, upto: int) -> bool:
        return any(e <= upto for e in self._counts)

    async def drained(self, upto: int) -> None:
        if not self._busy(upto):
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((upto, fut))
        await fut


# --------------------------------------------------------------------------- generations


@dataclass
class Generation:
    settings: Settings
    policy: Policy | None
    state: ProxyState
    recorder: AuditRecorder
    enforcement: GateOwner | None = None
    # Why the gate refuses everything (a configured policy that could not be loaded).
    fail_closed: str | None = None

    async def aclose(self) -> None:
        """Close the clients and trust sources (not the recorder: it may be shared)."""
        try:
            if self.enforcement is not None:
                await self.enforcement.aclose()
        finally:
            await self.state.aclose()


@dataclass
class Builder:
    """Builds generations; the collaborators are parameters so tests can stand them in."""

    stdout: TextIO
    load_policy: LoadPolicy = load_policy
    build_enforcement: BuildEnforcement = build_enforcement
    fail_closed_gate: Callable[[str, DecisionRecorder], TrustGate] = FailClosedGate
    build_state: BuildState = build_state
    # Trust state outlives generations: a reload must not forget the versions seen (the
    # rollback floors) nor, under trust on first use, the roots pinned. A source whose
    # settings changed starts afresh: its state belongs to the server it came from.
    # With Redis the state lives there (keyed by source name and URL); the process keeps
    # one connection pool per cache settings, reused by every generation built with them.
    # Without Redis it lives in the host's state file (cache.state_dir), shared with the
    # other workers; with Redis that file still holds the floors the workers share.
    _stores: dict[str, tuple[TrustSourceSettings, CacheSettings, TrustStateStore]] = field(
        default_factory=dict, init=False, repr=False
    )
    _redis: dict[CacheSettings, RedisConnection] = field(
        default_factory=dict, init=False, repr=False
    )
    _replaced: list[RedisConnection] = field(default_factory=list, init=False, repr=False)
    _state_file: SqliteStateFile | None = field(default=None, init=False, repr=False)
    #: the key the workers of one serve authenticate their saves with (proxy.workers)
    handoff_key: bytes | None = None

    def store_factory(self, settings: Settings) -> StoreFactory:
        by_name = {s.name: s for s in settings.trust.sources}
        cache = settings.cache
        # The choice of store is store_factory's; this keeps stores across generations.
        state_file = self._state_file_for(cache) if settings.trust.sources else None
        redis = self._redis_for(cache) if wants_redis(settings) else None
        new_store = state_stores(settings, redis, state_file)

        def store(name: str) -> TrustStateStore:
            source = by_name[name]
            kept = self._stores.get(name)
            if kept is not None and kept[0] == source and kept[1] == cache:
                return kept[2]
            new = new_store(name)
            self._stores[name] = (source, cache, new)
            return new

        return store

    def _state_file_for(self, cache: CacheSettings) -> SqliteStateFile | None:
        """The process's state file (opened on first use). Another ``state_dir`` after a
        reload takes a restart (``restart_needed``): the running file stays."""
        if self._state_file is None and cache.state_dir is not None:
            self._state_file = SqliteStateFile(cache.state_dir, handoff_key=self.handoff_key)
        return self._state_file

    def _redis_for(self, cache: CacheSettings) -> RedisConnection:
        conn = self._redis.get(cache)
        if conn is not None:
            return conn
        # Other cache settings: the previous connection may still serve a generation that
        # is draining; it leaves /readyz now and is closed at shutdown.
        for old in self._redis.values():
            old.retire()
            self._replaced.append(old)
        self._redis.clear()
        conn = self._redis[cache] = redis_connection(cache)
        return conn

    async def aclose(self) -> None:
        """Close the store connections (shutdown, after every generation is closed)."""
        conns = [*self._redis.values(), *self._replaced]
        self._redis.clear()
        self._replaced.clear()
        if self._state_file is not None:
            await self._state_file.aclose()
        for conn in conns:
            try:
                await conn.aclose()
            except Exception:
                log.exception("closing the trust state store failed")

    def read_policy(self, settings: Settings) -> Policy | None:
        """The policy ``settings`` name, or None without ``policy_file``. Raises ConfigError
        (the message names the file and the key path)."""
        path = settings.policy_file
        if path is None:
            return None
        try:
            known = {s.name: s.type for s in settings.trust.sources}
            return self.load_policy(path, known_sources=known)
        except ConfigError as e:
            if e.path.startswith(str(path)):
                raise
            # "repositories['x/*'].mode" alone does not say which file: name it.
            where = f"{path}: {e.path}" if e.path else str(path)
            raise ConfigError(where, e.message) from e

    def recorder(self, settings: Settings, previous: Generation | None) -> AuditRecorder:
        """Keep the running recorder when its settings did not change. Raises ConfigError."""
        if previous is not None and previous.settings.audit == settings.audit:
            return previous.recorder
        return open_recorder(settings.audit, stdout=self.stdout)

    def first(self, settings: Settings) -> Generation:
        """The generation ``serve`` starts with. A policy that cannot be loaded is logged and
        makes the gate refuse every manifest (fail closed). Raises ConfigError only for an
        audit file that cannot be opened."""
        recorder = self.recorder(settings, None)
        try:
            return self.build(settings, self.read_policy(settings), recorder)
        except ConfigError as e:
            reason = f"policy not loaded, refusing every manifest until it is fixed: {e}"
            log.error("%s (fix it and send SIGHUP)", reason)
            gate = self.fail_closed_gate(reason, recorder)
            state = self.build_state(settings, gate)
            return Generation(settings, None, state, recorder, None, fail_closed=reason)

    def build(
        self, settings: Settings, policy: Policy | None, recorder: AuditRecorder
    ) -> Generation:
        if policy is None:
            log.warning(NO_POLICY_WARNING)
        else:
            for warning in policy.warnings:
                log.warning("policy: %s", warning)
        enforcement = self.build_enforcement(
            settings, policy, recorder=recorder, store_factory=self.store_factory(settings)
        )
        try:
            state = self.build_state(settings, enforcement.gate)
        except BaseException:
            # Closing here keeps a half-built generation from leaking the sources' clients.
            _close_soon(enforcement)
            raise
        return Generation(settings, policy, state, recorder, enforcement)


def _close_soon(enforcement: GateOwner) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # at startup nothing has run yet: nothing to close asynchronously
    task = loop.create_task(enforcement.aclose())
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


_BACKGROUND: set[asyncio.Task[None]] = set()


def _start(gen: Generation) -> None:
    """Start the background tasks of ``gen``'s sources (change feeds) on the running loop:
    a generation is built before the loop runs (at startup), so they cannot start then."""
    start = getattr(gen.enforcement, "start", None)  # test stand-ins may have none
    if callable(start):
        start()


# --------------------------------------------------------------------------- runtime


@dataclass
class Runtime:
    """The current generation, the SIGHUP reload, and the retirement of old generations."""

    current: Generation
    builder: Builder
    config_path: Path
    environ: Mapping[str, str]
    retire_timeout: float = DEFAULT_RETIRE_TIMEOUT
    tracker: RequestTracker = field(default_factory=RequestTracker)
    reloads: int = 0  # successful ones, for tests and logs

    _app: Starlette | None = field(default=None, init=False, repr=False)
    _retiring: list[Generation] = field(default_factory=list, init=False, repr=False)
    _tasks: set[asyncio.Task[object]] = field(default_factory=set, init=False, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)
    _signal_installed: bool = field(default=False, init=False, repr=False)

    @property
    def state(self) -> ProxyState:
        return self.current.state

    async def start(self, app: Starlette) -> None:
        """Called from the app's lifespan, on the serving loop."""
        self._app = app
        app.state.proxy = self.current.state
        _start(self.current)
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self.on_sighup)
            self._signal_installed = True
        except (NotImplementedError, RuntimeError, ValueError) as e:
            # Not the main thread (embedded in a test runner) or no signals (Windows).
            log.warning("SIGHUP reload not available: %s", e)

    def on_sighup(self) -> None:
        log.info("SIGHUP: reloading %s", self.config_path)
        self._spawn(self.reload())

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        # The loop keeps only weak references to tasks: without ours a reload could be
        # garbage-collected half-way.
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> bool:
        """Re-read config and policy; swap on success. Returns whether it swapped."""
        async with self._lock:  # two quick SIGHUPs: the second reads the files after the first
            # logrotate sends SIGHUP after moving the file: reopen whatever else happens.
            self.current.recorder.reopen()
            try:
                settings = await asyncio.to_thread(load_settings, self.config_path, self.environ)
                policy = await asyncio.to_thread(self.builder.read_policy, settings)
                recorder = self.builder.recorder(settings, self.current)
            except ConfigError as e:
                log.error(
                    "reload failed, still serving the previous config and policy: %s", e,
                    extra={"config": str(self.config_path), "error": str(e)},
                )  # fmt: skip
                return False
            try:
                new = self.builder.build(settings, policy, recorder)
            except Exception as e:  # ConfigError from the enforcement build, or a bug
                if recorder is not self.current.recorder:
                    recorder.close()
                log.error(
                    "reload failed, still serving the previous config and policy: %s", e,
                    exc_info=not isinstance(e, ConfigError),
                )  # fmt: skip
                return False
            for warning in settings.warnings:
                log.warning("config: %s", warning)
            pending = restart_needed(self.current.settings, settings)
            if pending:
                log.warning("restart needed for: %s (kept the running values)", ", ".join(pending))
            self._swap(new)
            return True

    def _swap(self, new: Generation) -> None:
        old = self.current
        # Verified manifests stay valid across a reload as long as every upstream name
        # still means the same registry (the cache is keyed by upstream name).
        a, b = old.settings.limits, new.settings.limits
        if old.settings.upstreams == new.settings.upstreams and (
            (a.manifest_cache_bytes, a.manifest_cache_recheck)
            == (b.manifest_cache_bytes, b.manifest_cache_recheck)
        ):
            new.state.manifest_cache = old.state.manifest_cache
        _start(new)
        # No await between these lines: a request entering now sees the new state.
        ended = self.tracker.advance()
        self.current = new
        if self._app is not None:
            self._app.state.proxy = new.state
        self.reloads += 1
        self._retiring.append(old)
        log.info(
            "reloaded",
            extra={"config": str(self.config_path),
                   "policy": str(new.settings.policy_file) if new.policy else None,
                   "draining": self.tracker.in_flight(ended)},
        )  # fmt: skip
        self._spawn(self._retire(old, ended))

    async def _retire(self, old: Generation, epoch: int) -> None:
        try:
            await asyncio.wait_for(self.tracker.drained(epoch), self.retire_timeout)
        except TimeoutError:
            log.warning(
                "closing the previous generation with %d requests still running after %.0fs",
                self.tracker.in_flight(epoch),
                self.retire_timeout,
            )
        await self._close(old)
        log.info("previous generation closed: its requests have finished")

    async def _close(self, gen: Generation) -> None:
        if gen in self._retiring:
            self._retiring.remove(gen)
        try:
            await gen.aclose()
        except Exception:
            log.exception("closing a previous generation failed")
        live = [self.current, *self._retiring]
        if all(g.recorder is not gen.recorder for g in live):
            await asyncio.to_thread(gen.recorder.close)

    async def aclose(self) -> None:
        """Shutdown: the server has stopped taking requests; close every generation."""
        if self._signal_installed:
            with contextlib.suppress(RuntimeError, ValueError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._signal_installed = False
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for gen in [*self._retiring, self.current]:
            await self._close(gen)
        await self.builder.aclose()
        await asyncio.to_thread(self.current.recorder.close)
