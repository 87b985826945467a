"""Faults under load: kill -9 the registry, Redis and the notary-server, one at a time,
while load runs against two replicas; restart each on the same port; check every answer.

Timeline (``FaultPlan`` sets the lengths)::

    baseline | registry: before, KILL, down, RESTART, settle | redis: ... | notary: ...

Load: the prober (``probe.py``) checks every answer it gets; with ``wrk`` installed and
``plan.wrk``, one wrk per replica rotates over the warm URLs and one over the phase's cold
URLs (counted by status in wrk's Lua). Cold = repositories no replica has seen: each
phase has a pool for before the kill and a fresh pool from the kill on (so that "cold
while the server is down" really is cold, and the same repositories show the recovery).

What is expected while a server is down (``ALLOWED_DOWN``, asserted by the fast test and
reported by the long run), per load class:

- registry: blobs, tag lists and cold manifests 502 ``UNAVAILABLE``; warm manifests from
  the verified manifest cache (200) or 502; refusals still 404 (trust decides them);
- notary-server: warm tags served from verified cached trust data (200, it is unexpired);
  cold tags 503 ``UNAVAILABLE``; a repository without trust data 404 or 503;
- Redis: nothing changes (each replica decides from its own verified state).

Requests in flight at a kill or a restart are not judged against these (a blob cut off
mid-body, a 502 for a request that reached the registry a moment too late); they are
counted. The notary-server keeps its metadata in PostgreSQL (``postgres.py``); without
PostgreSQL it is killed but not restarted, and the report says so.

And always: no unsigned content (hashed per answer), no tag list naming an unsigned tag,
every non-2xx an OCI error body, no 500, no hang, the replicas' PIDs unchanged, every
class back to normal after the restart, and every audit record that says content was
served names a digest the trust data signs for that reference.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from loadtest.hardening.probe import Observation, Prober, Target, check_answer, ok_answer
from loadtest.hardening.stack import (
    ACCEPT,
    Stack,
    StackConfig,
    World,
    build_world,
    postgres_available,
    start_stack,
    warm_up,
)
from loadtest.hardening.wrkmix import WrkMix, start_wrk
from loadtest.tools import tool_path

CLASSES = ("warm-manifest", "warm-refused", "cold-manifest", "cold-refused", "blob", "tags")
#: the normal answer of each class
NORMAL = {
    "warm-manifest": 200,
    "warm-refused": 404,
    "cold-manifest": 200,
    "cold-refused": 404,
    "blob": 200,
    "tags": 200,
}
FAULTS = ("registry", "redis", "notary")
#: statuses a correct proxy may answer while the server is down (after the kill)
ALLOWED_DOWN: dict[str, dict[str, set[int]]] = {
    "registry": {
        "warm-manifest": {200, 502},
        "warm-refused": {404},
        "cold-manifest": {502},
        "cold-refused": {404},
        "blob": {502},
        "tags": {502},
    },
    "notary": {
        "warm-manifest": {200},
        "warm-refused": {404, 503},
        "cold-manifest": {503},
        "cold-refused": {503},
        "blob": {200},
        "tags": {200},
    },
    "redis": {cls: {status} for cls, status in NORMAL.items()},
}
#: statuses that must be seen while the server is down (the fault did happen)
MUST_SEE_DOWN: dict[str, dict[str, int]] = {
    "registry": {"cold-manifest": 502, "blob": 502},
    "notary": {"cold-manifest": 503},
    "redis": {},
}
#: transport errors of requests in flight at the kill (a blob cut off mid-body) are not
#: the proxy's to avoid: tolerated within this long after the kill
IN_FLIGHT_GRACE_S = 1.0


@dataclass(frozen=True)
class FaultPlan:
    mode: str
    baseline_s: float
    before_s: float  # normal load in each fault phase before the kill
    down_s: float
    settle_s: float  # after the restart
    cold_signed: int  # signed never-seen repositories per pool
    cold_plain: int  # never-seen repositories without trust data per pool
    prober_workers: int  # per class
    wrk: bool
    wrk_connections: int  # per replica for the warm mix (half that for the cold URLs)
    stack: StackConfig = field(default_factory=StackConfig)


TEST = FaultPlan(
    "test",
    baseline_s=2,
    before_s=1,
    down_s=4,
    settle_s=5,
    cold_signed=2,
    cold_plain=1,
    prober_workers=2,
    wrk=False,
    wrk_connections=0,
    stack=StackConfig(refresh_interval=2.0, retry_interval=2.0),
)
QUICK = FaultPlan(
    "quick",
    baseline_s=4,
    before_s=2,
    down_s=6,
    settle_s=8,
    cold_signed=2,
    cold_plain=1,
    prober_workers=2,
    wrk=True,
    wrk_connections=8,
    stack=StackConfig(refresh_interval=2.0, retry_interval=2.0),
)
FULL = FaultPlan(
    "full",
    baseline_s=15,
    before_s=5,
    down_s=20,
    settle_s=20,
    cold_signed=6,
    cold_plain=2,
    prober_workers=2,
    wrk=True,
    wrk_connections=16,
    stack=StackConfig(refresh_interval=3.0, retry_interval=2.0),
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Phase:
    name: str  # baseline or a fault
    start: float
    end: float = 0.0
    kill_issued: float | None = None
    kill: float | None = None  # the process is gone (reaped)
    restart_issued: float | None = None
    restart_ready: float | None = None
    restart_skipped: str = ""  # why the server was not restarted
    pools: dict[str, str] = field(default_factory=dict)  # window -> cold pool
    wrk: list[dict[str, Any]] = field(default_factory=list)
    metrics_before: dict[str, dict[str, float]] = field(default_factory=dict)
    metrics_after: dict[str, dict[str, float]] = field(default_factory=dict)

    def windows(self) -> dict[str, tuple[float, float]]:
        """Requests by start time: ``before`` the process is gone, ``down`` until the
        restart is issued, ``after`` from then on (recovery counts from ``restart_ready``)."""
        if self.kill is None:
            return {"all": (self.start, self.end)}
        out = {"before": (self.start, self.kill)}
        if self.restart_issued is None:
            out["down"] = (self.kill, self.end)
        else:
            out["down"] = (self.kill, self.restart_issued)
            out["after"] = (self.restart_issued, self.end)
        return out


# -- targets ------------------------------------------------------------------------------------


def warm_targets(world: World) -> dict[str, list[Target]]:
    out: dict[str, list[Target]] = {c: [] for c in CLASSES}
    for repo, tag in world.warm_manifests:
        signed = frozenset(world.signed[(repo, tag)])
        for method in ("GET", "HEAD"):
            out["warm-manifest"].append(
                Target("warm-manifest", "manifest", repo, tag, signed, method)
            )
    for repo, tag in world.warm_refused:
        for method in ("GET", "HEAD"):
            out["warm-refused"].append(
                Target("warm-refused", "manifest", repo, tag, frozenset(), method)
            )
    for digest, (repo, _) in world.blobs.items():
        out["blob"].append(Target("blob", "blob", repo, digest, frozenset({digest})))
    for repo in world.tag_lists:
        out["tags"].append(Target("tags", "tags", repo, "", frozenset(world.signed_tags(repo))))
    return out


def cold_targets(world: World, pool: str) -> dict[str, list[Target]]:
    signed = [
        Target(
            "cold-manifest", "manifest", repo, tag, frozenset(world.signed.get((repo, tag), set()))
        )
        for repo, tag, is_signed in world.cold[pool]
        if is_signed
    ]
    plain = [
        Target("cold-refused", "manifest", repo, tag, frozenset())
        for repo, tag, is_signed in world.cold[pool]
        if not is_signed
    ]
    return {"cold-manifest": signed, "cold-refused": plain}


def pool_names() -> list[str]:
    return ["baseline", *(f"{f}-{w}" for f in FAULTS for w in ("before", "down"))]


# -- metrics --------------------------------------------------------------------------------


_SAMPLE = re.compile(r"^(trustproxy_[a-z_]+?)(?:_total)?(\{[^}]*\})? (\S+)$", re.M)
_COUNTERS = (
    "trustproxy_trust_cache",
    "trustproxy_decisions",
    "trustproxy_upstream_errors",
    "trustproxy_store_errors",
    "trustproxy_requests",
)


def scrape(url: str) -> dict[str, float]:
    """The proxy's counters that tell what happened in a phase, ``name{labels}`` -> value."""
    try:
        text = httpx.get(url + "/metrics", timeout=5).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for name, labels, value in _SAMPLE.findall(text):
        if name in _COUNTERS and not name.endswith("_created"):
            out[f"{name}{labels}"] = float(value)
    return out


def metric_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    keys = set(before) | set(after)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in keys}
    return {k: v for k, v in sorted(delta.items()) if v}


# -- the run --------------------------------------------------------------------------------------


@dataclass
class Faults:
    plan: FaultPlan
    stack: Stack
    world: World
    prober: Prober
    use_wrk: bool
    phases: list[Phase] = field(default_factory=list)
    pids_start: dict[str, dict[str, Any]] = field(default_factory=dict)
    _running: list[WrkMix] = field(default_factory=list)

    def now(self) -> float:
        return self.prober.now()

    def _set_cold(self, pool: str) -> None:
        for cls, targets in cold_targets(self.world, pool).items():
            self.prober.set_targets(cls, targets)

    def _wrk(self, name: str, paths: Sequence[str], seconds: float, conns: int) -> None:
        if not self.use_wrk or not paths or conns < 1:
            return
        for replica in self.stack.replicas:
            self._running.append(
                start_wrk(
                    f"{name}@{replica.name}",
                    replica.url,
                    paths,
                    seconds=seconds,
                    connections=conns,
                    workdir=self.stack.workdir / "wrk",
                    headers=ACCEPT,
                )
            )

    def _collect_wrk(self, phase: Phase) -> None:
        for w in self._running:
            phase.wrk.append(w.result())
        self._running.clear()

    def stop_wrk(self) -> None:
        for w in self._running:
            w.stop()
        self._running.clear()

    def _warm_paths(self) -> list[str]:
        t = warm_targets(self.world)
        return [x.path for cls in t for x in t[cls] if x.method == "GET"]

    def _cold_paths(self, pool: str) -> list[str]:
        return [f"/v2/{repo}/manifests/{tag}" for repo, tag, _ in self.world.cold[pool]]

    def _scrape_all(self) -> dict[str, dict[str, float]]:
        return {r.name: scrape(r.url) for r in self.stack.replicas}

    def baseline(self) -> Phase:
        plan = self.plan
        phase = Phase("baseline", self.now(), pools={"all": "baseline"})
        phase.metrics_before = self._scrape_all()
        self._set_cold("baseline")
        conns = plan.wrk_connections
        self._wrk("warm", self._warm_paths(), plan.baseline_s, conns)
        self._wrk("cold", self._cold_paths("baseline"), plan.baseline_s, max(1, conns // 2))
        time.sleep(plan.baseline_s)
        self._collect_wrk(phase)
        phase.end = self.now()
        phase.metrics_after = self._scrape_all()
        self.phases.append(phase)
        return phase

    def fault(
        self,
        name: str,
        kill: Callable[[], None],
        restart: Callable[[], None] | None,
        skipped: str = "",
    ) -> Phase:
        plan = self.plan
        before, down = f"{name}-before", f"{name}-down"
        phase = Phase(
            name, self.now(), pools={"before": before, "down": down}, restart_skipped=skipped
        )
        phase.metrics_before = self._scrape_all()
        self._set_cold(before)
        conns = plan.wrk_connections
        total = plan.before_s + plan.down_s + plan.settle_s
        self._wrk("warm", self._warm_paths(), total, conns)
        self._wrk("cold-before", self._cold_paths(before), plan.before_s, max(1, conns // 2))
        time.sleep(plan.before_s)
        phase.kill_issued = self.now()
        kill()
        phase.kill = self.now()
        self._set_cold(down)
        self._wrk(
            "cold-down", self._cold_paths(down), plan.down_s + plan.settle_s, max(1, conns // 2)
        )
        log(f"  {name}: killed (kill -9); down for {plan.down_s:g} s")
        time.sleep(plan.down_s)
        if restart is not None:
            phase.restart_issued = self.now()
            restart()
            phase.restart_ready = self.now()
            log(
                f"  {name}: restarted on the same port in "
                f"{phase.restart_ready - phase.restart_issued:.2f} s; settling "
                f"{plan.settle_s:g} s"
            )
        else:
            log(f"  {name}: not restarted ({skipped})")
        time.sleep(plan.settle_s)
        self._collect_wrk(phase)
        phase.end = self.now()
        phase.metrics_after = self._scrape_all()
        self.phases.append(phase)
        return phase


def fault_actions(
    stack: Stack,
) -> dict[str, tuple[Callable[[], None], Callable[[], None] | None, str]]:
    """(kill, restart or None, why not restarted) per fault."""
    notary_restart: Callable[[], None] | None = stack.notary.restart_server
    why = ""
    if not stack.config.persistent_notary:
        # With memory storage a restarted notary-server has no repository: every tag would
        # be refused as unsigned, which is another test (trust data deleted).
        notary_restart, why = None, "no PostgreSQL for notary-server's storage"

    def registry_restart() -> None:
        stack.registry.restart()

    def redis_restart() -> None:
        stack.redis.start()  # same port, empty (no persistence)

    return {
        "registry": (stack.registry.kill, registry_restart, ""),
        "redis": (stack.redis.kill, redis_restart, ""),
        "notary": (stack.notary.kill_server, notary_restart, why),
    }


def run_faults(plan: FaultPlan, workdir: Path, *, use_wrk: bool | None = None) -> dict[str, Any]:
    """Start the stack, run every phase, stop everything (by PID, also on failure), and
    return the results (JSON-able), ``violations`` empty when all went as expected."""
    if use_wrk is None:
        use_wrk = plan.wrk and tool_path("wrk") is not None
    config = plan.stack
    if config.persistent_notary and not postgres_available():
        config = StackConfig(**{**asdict(config), "persistent_notary": False})
    t0 = time.perf_counter()
    log(
        "starting the stack: docker-registry, PostgreSQL + notary-server + signer, redis, "
        f"{len(config.replicas)} trustproxy replicas"
    )
    stack = start_stack(workdir, config)
    try:
        log(f"stack up in {time.perf_counter() - t0:.1f} s; pushing and signing content")
        world = build_world(
            stack, pool_names(), cold_signed=plan.cold_signed, cold_plain=plan.cold_plain
        )
        warm_up(stack, world)
        prober = Prober(
            {r.name: r.url for r in stack.replicas},
            warm_targets(world),
            workers=plan.prober_workers,
        )
        run = Faults(plan, stack, world, prober, use_wrk)
        run.pids_start = stack.pids()
        log(
            f"load: prober ({plan.prober_workers} workers per class)"
            + (f" + wrk ({plan.wrk_connections} connections per replica)" if use_wrk else "")
        )
        prober.start()
        try:
            log(f"baseline: {plan.baseline_s:g} s")
            run.baseline()
            for name, (kill, restart, why) in fault_actions(stack).items():
                log(f"fault: {name}")
                run.fault(name, kill, restart, why)
        finally:
            run.stop_wrk()
            prober.stop()
        time.sleep(0.5)  # the audit writer threads flush
        pids_end = stack.pids()
        skipped = [p.name for p in run.phases if p.restart_skipped]
        if skipped:
            final = {"requests": 0, "wrong": [], "skipped": f"{', '.join(skipped)} not restarted"}
        else:
            final = final_sweep(stack, world)
        results = analyse(run, pids_end, final)
        results["stack_seconds"] = round(time.perf_counter() - t0, 1)
        results["use_wrk"] = use_wrk
        results["stack"] = asdict(config)
        _write_observations(stack.workdir / "observations.jsonl", prober.observations)
        return results
    finally:
        stack.close()


def _write_observations(path: Path, observations: Iterable[Observation]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for o in observations:
            out.write(json.dumps(asdict(o)) + "\n")


def final_sweep(stack: Stack, world: World) -> dict[str, Any]:
    """After the last phase: every class answers normally on every replica."""
    wrong: list[str] = []
    targets = warm_targets(world)
    for pool in world.cold:
        for cls, found in cold_targets(world, pool).items():
            targets[cls] = [*targets.get(cls, []), *found]
    checked = 0
    for replica in stack.replicas:
        with httpx.Client(base_url=replica.url, timeout=30) as http:
            for cls, found in targets.items():
                for t in found:
                    headers = ACCEPT if t.kind == "manifest" else {}
                    r = http.request(t.method, t.path, headers=headers)
                    checked += 1
                    got = check_answer(t, r.status_code, r.headers, r.content)
                    o = Observation(0.0, cls, replica.name, t.method, t.path, **got)
                    if not ok_answer(o, NORMAL[cls]):
                        wrong.append(f"{replica.name} {t.method} {t.path}: {r.status_code}")
    return {"requests": checked, "wrong": wrong}


# -- analysis -----------------------------------------------------------------------------------


def _label(o: Observation) -> str:
    return o.error if o.status == 0 else str(o.status)


def summarise(obs: Sequence[Observation]) -> dict[str, Any]:
    statuses = Counter(_label(o) for o in obs)
    codes = Counter(o.code for o in obs if o.code)
    return {
        "requests": len(obs),
        "statuses": dict(sorted(statuses.items())),
        "codes": dict(sorted(codes.items())),
        "unsigned_served": sum(o.unsigned for o in obs),
        "tag_list_leaks": sum(o.leak for o in obs),
        "non_oci_errors": sum(not o.oci_body for o in obs),
        "hangs": sum(o.error == "hang" for o in obs),
        "server_errors_500": sum(o.status == 500 for o in obs),
    }


def _in_flight_at_kill(o: Observation, phase: Phase) -> bool:
    """An answer the kill itself decided: a request started while the server still ran
    that ended after the kill was issued (a 502 for a blob fetched a moment too late), or
    a transport error (a blob cut off mid-body) right after the kill."""
    if phase.kill is None or phase.kill_issued is None or o.error == "hang":
        return False
    if o.t < phase.kill:
        return o.t + o.ms / 1000 >= phase.kill_issued
    return bool(o.error) and o.t - phase.kill <= IN_FLIGHT_GRACE_S


def _ended_after_restart(o: Observation, phase: Phase) -> bool:
    return phase.restart_issued is not None and o.t + o.ms / 1000 >= phase.restart_issued


def recovery(phase: Phase, obs: Sequence[Observation], cls: str) -> dict[str, Any]:
    """Per class: seconds from the kill to the first abnormal answer, from the restart to
    the first normal one and to the last abnormal one, and whether it ended normal."""
    normal = NORMAL[cls]
    mine = sorted((o for o in obs if o.cls == cls), key=lambda o: o.t)
    kill, ready = phase.kill, phase.restart_ready
    out: dict[str, Any] = {}
    if kill is not None:
        bad = [o for o in mine if o.t >= kill and not ok_answer(o, normal)]
        out["first_abnormal_after_kill_s"] = round(bad[0].t - kill, 3) if bad else None
    if ready is not None:
        after = [o for o in mine if o.t >= ready]
        oks = [o for o in after if ok_answer(o, normal)]
        bads = [o for o in after if not ok_answer(o, normal)]
        out["first_normal_after_restart_s"] = round(oks[0].t - ready, 3) if oks else None
        out["last_abnormal_after_restart_s"] = round(bads[-1].t - ready, 3) if bads else None
        tail = after[-3:]
        out["recovered"] = bool(oks) and bool(tail) and all(ok_answer(o, normal) for o in tail)
    return out


def store_recovery(phase: Phase, prober: Prober) -> dict[str, Any]:
    """Redis: when every replica's ``trustproxy_store_up`` went to 0 after the kill, and
    back to 1 after the restart (seconds), from the monitor's samples."""
    out: dict[str, Any] = {}
    if phase.kill is None:
        return out
    for name in prober.replicas:
        samples = [
            s for s in prober.monitor if s.replica == name and phase.start <= s.t <= phase.end
        ]
        down = next((s for s in samples if s.t >= phase.kill and s.store_up == 0), None)
        up = None
        if phase.restart_ready is not None:
            up = next((s for s in samples if s.t >= phase.restart_ready and s.store_up == 1), None)
        out[name] = {
            "store_down_seen_after_kill_s": round(down.t - phase.kill, 3) if down else None,
            "store_up_after_restart_s": (
                round(up.t - phase.restart_ready, 3) if up and phase.restart_ready else None
            ),
            "readyz_statuses": dict(Counter(str(s.ready) for s in samples)),
        }
    return out


def check_phase(
    phase: Phase,
    by_window: Mapping[str, Sequence[Observation]],
    rec: Mapping[str, Mapping[str, Any]],
) -> list[str]:
    """What went differently from the expected behaviour (empty: as expected)."""
    problems: list[str] = []
    where = phase.name
    for window, obs in by_window.items():
        for o in obs:
            tag = f"{where}/{window} {o.cls} {o.replica} {o.method} {o.path}"
            if o.unsigned:
                problems.append(f"{tag}: UNSIGNED CONTENT SERVED (status {o.status})")
            if o.leak:
                problems.append(f"{tag}: tag list names an unsigned tag")
            if not o.oci_body:
                problems.append(f"{tag}: {o.status} without an OCI error body")
            if o.status == 500:
                problems.append(f"{tag}: 500")
            if o.error == "hang":
                problems.append(f"{tag}: no answer in time (hang)")
        if window in ("all", "before"):
            for o in obs:
                if not ok_answer(o, NORMAL[o.cls]) and not _in_flight_at_kill(o, phase):
                    problems.append(
                        f"{where}/{window} {o.cls}: {_label(o)} {o.code} "
                        f"on {o.method} {o.path} before any fault"
                    )
    down = by_window.get("down")
    if down is not None:
        allowed = ALLOWED_DOWN[phase.name]
        for cls in CLASSES:
            mine = [o for o in down if o.cls == cls]
            if not mine:
                problems.append(f"{where}/down {cls}: no request while down")
                continue
            # Not judged: answers the kill decided, and requests still in flight when the
            # restart was issued (the upstream may already have answered them).
            seen = Counter(
                _label(o)
                for o in mine
                if not _in_flight_at_kill(o, phase) and not _ended_after_restart(o, phase)
            )
            for label in seen:
                if not label.isdigit() or int(label) not in allowed[cls]:
                    problems.append(
                        f"{where}/down {cls}: {label} x{seen[label]}, expected "
                        f"only {sorted(allowed[cls])}"
                    )
            must = MUST_SEE_DOWN[phase.name].get(cls)
            if must is not None and str(must) not in seen:
                problems.append(
                    f"{where}/down {cls}: never {must} ({dict(seen)}): "
                    "the fault did not reach this class"
                )
    if phase.restart_ready is not None:
        for cls in CLASSES:
            if not rec.get(cls, {}).get("recovered"):
                problems.append(
                    f"{where}/after {cls}: not back to {NORMAL[cls]} after the "
                    f"restart ({rec.get(cls)})"
                )
    return problems


def analyse(
    run: Faults, pids_end: Mapping[str, Mapping[str, Any]], final: Mapping[str, Any]
) -> dict[str, Any]:
    obs = run.prober.observations
    phases_out: list[dict[str, Any]] = []
    violations: list[str] = []
    for phase in run.phases:
        in_phase = [o for o in obs if phase.start <= o.t < phase.end]
        by_window = {
            w: [o for o in in_phase if a <= o.t < b] for w, (a, b) in phase.windows().items()
        }
        rec = {cls: recovery(phase, in_phase, cls) for cls in CLASSES}
        problems = check_phase(phase, by_window, rec)
        store = store_recovery(phase, run.prober) if phase.name == "redis" else {}
        if phase.name == "redis" and phase.restart_ready is not None:
            for name, s in store.items():
                if s["store_up_after_restart_s"] is None:
                    problems.append(f"redis/after: replica {name} never saw the store up again")
        violations += problems
        phases_out.append(
            {
                "name": phase.name,
                "times": {
                    "start": round(phase.start, 3),
                    "end": round(phase.end, 3),
                    "kill": _r(phase.kill),
                    "restart_issued": _r(phase.restart_issued),
                    "restart_ready": _r(phase.restart_ready),
                    "restart_seconds": _r(
                        phase.restart_ready - phase.restart_issued
                        if phase.restart_ready and phase.restart_issued
                        else None
                    ),
                },
                "restart_skipped": phase.restart_skipped,
                "pools": phase.pools,
                "windows": {
                    w: {cls: summarise([o for o in ws if o.cls == cls]) for cls in CLASSES}
                    for w, ws in by_window.items()
                },
                "in_flight_at_kill": sum(
                    not ok_answer(o, NORMAL[o.cls]) and _in_flight_at_kill(o, phase)
                    for o in in_phase
                ),
                "recovery": rec,
                "store": store,
                "wrk": phase.wrk,
                "metrics_delta": {
                    name: metric_delta(
                        phase.metrics_before.get(name, {}), phase.metrics_after.get(name, {})
                    )
                    for name in phase.metrics_after
                },
                "problems": problems,
            }
        )
    unchanged = all(
        pids_end[n]["pid"] == p["pid"]
        and pids_end[n]["create_time"] == p["create_time"]
        and pids_end[n]["alive"]
        for n, p in run.pids_start.items()
    )
    if not unchanged:
        violations.append(
            f"a replica was restarted or died: {dict(run.pids_start)} -> {dict(pids_end)}"
        )
    if final["wrong"]:
        violations += [f"final sweep: {w}" for w in final["wrong"]]
    violations += store_flaps(run)
    audit = audit_cross_check(run.stack, run.world)
    violations += audit["violations"]
    totals = summarise(obs)
    return {
        "timeline": timeline(obs),
        "schema": 1,
        "plan": {k: v for k, v in asdict(run.plan).items() if k != "stack"},
        "phases": phases_out,
        "totals": totals,
        "wrk_requests": sum(int(w.get("requests", 0)) for p in run.phases for w in p.wrk),
        "pids": {"start": run.pids_start, "end": dict(pids_end), "unchanged": unchanged},
        "final_sweep": dict(final),
        "audit": audit,
        "violations": violations,
        "ok": not violations,
    }


def timeline(obs: Sequence[Observation], bucket: float = 0.5) -> list[list[Any]]:
    """``[t, class, status or error, count]`` per ``bucket`` seconds (for the chart)."""
    counts: Counter[tuple[float, str, str]] = Counter()
    for o in obs:
        counts[(round(o.t // bucket * bucket, 2), o.cls, _label(o))] += 1
    return [[t, cls, label, n] for (t, cls, label), n in sorted(counts.items())]


def store_flaps(run: Faults) -> list[str]:
    """Once Redis is back, no replica may mark the store down again (it did, before
    ``RedisConnection`` dropped the pooled connections to the dead server)."""
    redis = next((p for p in run.phases if p.name == "redis"), None)
    if redis is None or redis.restart_ready is None:
        return []
    out: list[str] = []
    for name in run.prober.replicas:
        samples = [
            s for s in run.prober.monitor if s.replica == name and s.t >= redis.restart_ready
        ]
        up = next((s for s in samples if s.store_up == 1), None)
        if up is None:
            continue  # the redis phase's own check says so
        again = [s for s in samples if s.t > up.t and s.store_up == 0]
        if again:
            out.append(
                f"redis/after: replica {name} marked the store down again "
                f"{again[0].t - redis.restart_ready:.1f} s after Redis was back"
            )
    return out


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# -- audit cross-check --------------------------------------------------------------------------


def audit_cross_check(stack: Stack, world: World) -> dict[str, Any]:
    """Every replica's audit file: records by (kind, outcome); every record saying content
    was served must name a digest the trust data signs for that reference; nothing passed
    through unchecked (the policy enforces everything)."""
    host = stack.bed.registry_host
    by_outcome: Counter[str] = Counter()
    per_replica: dict[str, int] = {}
    checked = 0
    bad: list[str] = []
    for replica in stack.replicas:
        records = replica.proxy.audit_records()
        per_replica[replica.name] = len(records)
        for r in records:
            kind, outcome = str(r.get("kind")), str(r.get("outcome"))
            by_outcome[f"{kind} {outcome}"] += 1
            repo = str(r.get("repository", "")).removeprefix(host + "/")
            reference = str(r.get("reference", ""))
            served = r.get("served_digest")
            if outcome in ("passed_through", "audit_would_deny"):
                bad.append(f"{replica.name}: {kind} {repo}:{reference} {outcome}")
            if outcome == "upstream_mismatch":
                bad.append(f"{replica.name}: upstream mismatch on {repo}:{reference}")
            if outcome != "served_signed" or kind == "tags":
                continue
            checked += 1
            if kind == "manifest":
                signed = world.signed.get((repo, reference), set())
            else:  # by digest: any digest signed in the repository
                signed = world.signed_digests(repo)
            if served not in signed:
                bad.append(
                    f"{replica.name}: served {served} for {repo}:{reference}, signed "
                    f"{sorted(signed)}"
                )
    violations = [f"audit: {b}" for b in bad[:50]]
    if len(bad) > 50:
        violations.append(f"audit: ... and {len(bad) - 50} more")
    return {
        "records": sum(per_replica.values()),
        "per_replica": per_replica,
        "by_outcome": dict(sorted(by_outcome.items())),
        "served_records_checked": checked,
        "served_not_signed": len(bad),
        "violations": violations,
    }


def attempts_from(results: Mapping[str, Any], *, suffix: str = "") -> list[dict[str, Any]]:
    """One attempt record per fault (for ``testbed.attempts.AttemptLog.record``)."""
    out: list[dict[str, Any]] = []
    expected = {
        "registry": "blobs, tag lists, cold manifests 502 UNAVAILABLE; warm manifests from "
        "the verified cache or 502; refusals 404; recovers after restart",
        "notary": "warm tags served from verified cached trust data; cold tags 503; "
        "recovers after restart",
        "redis": "no change: each replica decides from its own verified state; the store "
        "is used again after restart",
    }
    for phase in results["phases"]:
        if phase["name"] == "baseline":
            continue
        statuses: Counter[str] = Counter()
        unsigned = 0
        for window in phase["windows"].values():
            for s in window.values():
                statuses.update(s["statuses"])
                unsigned += s["unsigned_served"]
        down = {
            cls: sorted(s["statuses"].items())
            for cls, s in phase["windows"]["down"].items()
            if set(s["statuses"]) - {str(NORMAL[cls])}
        }
        seen = "; ".join(
            f"{cls} {', '.join(f'{k}x{v}' for k, v in st)}" for cls, st in down.items()
        )
        if phase["restart_skipped"]:
            after = f"not restarted ({phase['restart_skipped']})"
        else:
            late = {
                cls: r["last_abnormal_after_restart_s"]
                for cls, r in phase["recovery"].items()
                if r.get("last_abnormal_after_restart_s") is not None
            }
            after = (
                f"back on the same port in {phase['times']['restart_seconds']} s; last abnormal "
                "answer after it: "
                + (", ".join(f"{c} {v:.2f} s" for c, v in late.items()) or "none")
            )
        detail = "; ".join(phase["problems"][:3]) or (
            f"while down: {seen or 'every class normal'}. {after}"
        )
        out.append(
            {
                "surface": "faults",
                "attack": f"kill -9 {phase['name']} under load{suffix}",
                "expected": expected[phase["name"]],
                "statuses": dict(statuses),
                "unsigned_served": unsigned,
                "ok": not phase["problems"] and results["pids"]["unchanged"],
                "detail": detail,
                "extra": {"wrk_requests": sum(int(w.get("requests", 0)) for w in phase["wrk"])},
            }
        )
    return out
