"""A malicious trust server against the running proxy (issue 8, "Malicious trust server").

    httpx --> trustproxy (python -m proxy serve) --HTTPS--> HostileNotary --> notary-server
                   |                                          (+ mounted simulator repos)
                   +--> docker-registry

One proxy, one registry, one hostile server for the module. Every attack gets its own
repository whose registry tag ``v1`` holds **unsigned** bytes (pushed over the signed
image), plus an unsigned extra tag: an answer that carried those bytes, or listed that tag,
would be a pass-through. For each attempt the proxy is asked GET and HEAD ``v1`` and the tag
list, and each answer must be

* a refusal: 404/503 with an OCI error body (the expected status is spelled out per attack),
* or, for a **warm** attempt against a server that became *unreachable* (5xx, redirect,
  hang, trickle past the deadline, a cut connection), the verified cached answer: 200 with
  exactly the digest the honest trust data signs (``warm="signed"`` below). An answer the
  server *gave* is never excused that way: bad data is refused (503) even with a warm cache.
  (Valid metadata under a wrong content type is served: the label is not what is trusted.)

Every answer with a body is hashed, HEAD's ``Docker-Content-Digest`` compared, and the audit
log searched for a served digest other than the signed one.

Cold = the proxy never verified trust data for the repository; warm = it did, and the
refresh interval has passed, so the next request fetches from the hostile server. Rollback
and a withheld delegation are warm only: a client with no persisted versions accepts any
validly signed, unexpired older view (TUF's limit, bounded by the 14-day timestamp), and
notary skips an invalid delegation it has never seen; what the proxy verified before (the
version floors, the delegations it held) is the protection.

Where the content comes from:
* real notary data (CLI + notary-server), captured and replayed: rollback of the whole
  view, mix-and-match;
* the simulator (``tests.simulators.notary_repo``) mounted on the hostile server, where the
  attack needs keys: the server's own snapshot and timestamp keys (Docker's layout gives
  them to the server), an expiring timestamp (freeze), a key outside the root (forgery).

After every attack the honest server comes back and the proxy must serve the signed digest
again without a restart; the time that takes is recorded. Every attempt is recorded in the
attempt log (``docs/hardening.md``), then asserted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from testbed import images
from testbed.attempts import AttemptLog
from testbed.counting_front import consistent_name
from testbed.enforcement_bed import (
    EnforcementBed,
    EnforcingProxy,
    proxy_config,
    rule,
    upstream,
    wait_until,
    write_policy,
)
from testbed.hostile_notary import (
    Behaviour,
    HostileNotary,
    endless,
    gzip_bomb,
    hang,
    html_page,
    redirect,
    serve,
    status,
    trickle,
    truncated,
)
from testbed.notary_server import NotaryBed
from testbed.proxy_server import start_proxy
from tests.conftest import RegistryBed, requires
from tests.simulators.notary_repo import (
    NotaryRepository,
    envelope,
    expires_text,
    generate_key,
    make_ca,
    meta_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.hardening]

SURFACE = "trust server"
TAG = "v1"
EXTRA_TAG = "unsigned-extra"  # only in the registry: never signed
RELEASES = "targets/releases"

# The proxy's timing, short so that warm attempts and deadlines take seconds.
REFRESH = 0.3  # trust.sources.notary.refresh_interval
RETRY = 0.15  # trust.sources.notary.retry_interval
CONNECT_TIMEOUT = 1.0  # limits.connect_timeout
READ_TIMEOUT = 1.0  # limits.read_timeout (per read: a trickle below it never trips it)
#: NotarySource.from_settings: one fetch, and one whole refresh, within limits.request_timeout
#: (default: 2 x read)
DEADLINE = 2 * READ_TIMEOUT
TRICKLE_EVERY = 0.4  # seconds between writes of a trickle: below READ_TIMEOUT

Mode = Literal["cold", "warm"]
#: what an attempt must answer: a refusal, or 200 with exactly the honestly signed digest
#: (fresh, or for a warm attempt against an unreachable server: the verified cache)
Expect = Literal["refused", "signed"]


# -- the module's world ----------------------------------------------------------------------


@dataclass
class Target:
    """One repository under attack: the digest honest trust data signs for ``v1`` now,
    and the unsigned one the registry's tag holds."""

    name: str
    repo: str
    gun: str
    signed: str
    unsigned: str
    unsigned_length: int
    #: signed for v1 earlier and revoked since (what a rollback would bring back)
    revoked: str | None = None
    sim: NotaryRepository | None = None
    #: role -> bytes of an older view (simulator) / file name -> bytes (captured real view)
    old: dict[str, bytes] = field(default_factory=dict)


@dataclass
class World:
    bed: EnforcementBed
    hostile: HostileNotary
    proxy: EnforcingProxy
    log: AttemptLog
    sim_ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]


@pytest.fixture(scope="module")
def world(
    registry: RegistryBed,
    notary_bed: NotaryBed,
    attempt_log: AttemptLog,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    requires("notary")
    workdir = tmp_path_factory.mktemp("hostile-trust")
    ns = f"hostile{uuid.uuid4().hex[:8]}"
    bed = EnforcementBed.create(workdir / "bed", registry.url, notary_bed, namespace=ns)
    hostile = HostileNotary(notary_bed, workdir / "hostile")
    proxy: EnforcingProxy | None = None
    try:
        bed.trust("setup/app")  # the publisher's root key exists from here on
        hostile.start()
        sim_ca = make_ca("hostile-trust simulator root CA", now=datetime.now(UTC))
        ca_file = workdir / "sim-root-ca.pem"
        ca_file.write_bytes(sim_ca[1].public_bytes(serialization.Encoding.PEM))
        policy_file = write_policy(
            workdir / "policy.yaml",
            {
                bed.pattern("real/*"): rule(root_keys=[bed.root_key_id]),
                bed.pattern("sim/*"): rule(root_ca=ca_file),
            },
        )
        audit_file = workdir / "audit.jsonl"
        config = proxy_config(
            [upstream("internal", registry.url)],
            notary_bed,
            policy_file,
            audit_file=audit_file,
            source_options={
                "url": hostile.url,  # the CA stays the bed's: the hostile cert is from it
                "refresh_interval": f"{REFRESH * 1000:g}ms",
                "retry_interval": f"{RETRY * 1000:g}ms",
            },
        )
        config["limits"] = {
            "connect_timeout": f"{CONNECT_TIMEOUT * 1000:g}ms",
            "read_timeout": f"{READ_TIMEOUT * 1000:g}ms",
        }
        server = start_proxy(workdir / "proxy", config, name="trustproxy-hostile")
        proxy = EnforcingProxy(server=server, policy_file=policy_file, audit_file=audit_file)
        yield World(bed, hostile, proxy, attempt_log, sim_ca)
    finally:
        if proxy is not None:
            proxy.stop()
        hostile.stop()
        bed.close()


def _image(world: World, name: str, label: str) -> images.Image:
    return images.single_image(f"{world.bed.namespace} {name} {label}")


def real_target(world: World, name: str) -> Target:
    """A repository signed with the real notary CLI: ``v1`` signed at an old image (that
    view captured), then re-signed at a new one; the registry's ``v1`` then moves to
    unsigned bytes."""
    bed, full = world.bed, f"real/{name}"
    old, new, bad = (_image(world, name, x) for x in ("old", "signed", "unsigned"))
    revoked = bed.push_and_sign(full, TAG, old)
    captured = world.hostile.capture(bed.gun(full))
    signed = bed.push_and_sign(full, TAG, new)
    bed.push(full, bad, TAG)
    bed.push(full, bad, EXTRA_TAG)
    return Target(
        name=full,
        repo=bed.repo(full),
        gun=bed.gun(full),
        signed=f"sha256:{signed.sha256}",
        unsigned=bad.digest,
        unsigned_length=len(bad.manifest),
        revoked=f"sha256:{revoked.sha256}",
        old=captured,
    )


def sim_target(world: World, name: str, *, delegation: bool = False) -> Target:
    """A simulator repository mounted on the hostile server (root certificate from the
    policy's root CA). ``v1`` is signed at an old image first (in ``targets``, and in
    ``targets/releases`` with ``delegation``), that view kept in ``old``; then re-signed at
    a new image (in releases when there is one: releases wins, targets keeps the old
    entry). The registry's ``v1`` holds unsigned bytes."""
    bed, full = world.bed, f"sim/{name}"
    old, new, bad = (_image(world, name, x) for x in ("old", "signed", "unsigned"))
    gun = bed.gun(full)
    repo = NotaryRepository(gun, now=datetime.now(UTC), root_issuer=world.sim_ca)
    repo.add_target(TAG, old.manifest)
    if delegation:
        repo.add_delegation(RELEASES)
        repo.add_target(TAG, old.manifest, role=RELEASES)
    repo.publish()
    before = {role: repo.current[role] for role in ("snapshot", "targets", RELEASES)
              if role in repo.current}  # fmt: skip
    repo.add_target(TAG, new.manifest, role=RELEASES if delegation else "targets")
    repo.publish()
    bed.push(full, old, None)
    bed.push(full, new, None)
    bed.push(full, bad, TAG)
    bed.push(full, bad, EXTRA_TAG)
    world.hostile.mount(gun, repo)
    return Target(
        name=full,
        repo=bed.repo(full),
        gun=gun,
        signed=new.digest,
        unsigned=bad.digest,
        unsigned_length=len(bad.manifest),
        revoked=old.digest,
        sim=repo,
        old=before,
    )


def _sim(target: Target) -> NotaryRepository:
    if target.sim is None:
        raise RuntimeError(f"{target.name} is not a simulator repository")
    return target.sim


# -- forging what a server holding the snapshot and timestamp keys can publish ---------------


def _signed(raw: bytes) -> dict[str, Any]:
    signed: dict[str, Any] = json.loads(raw)["signed"]
    return signed


def forged_view(
    repo: NotaryRepository,
    announce: dict[str, bytes] | None = None,
    *,
    drop: Sequence[str] = (),
    snapshot: bytes | None = None,
    timestamp_expires: datetime | None = None,
    timestamp_bump: int = 1,
) -> dict[str, bytes]:
    """Files for the hostile server: a new snapshot (version + 1, signed with the server's
    snapshot key) announcing ``announce`` (role -> bytes) and no longer listing ``drop``,
    or the given ``snapshot`` bytes, and a new timestamp naming it (signed with the
    server's timestamp key)."""
    files: dict[str, bytes] = {}
    snap_raw = snapshot if snapshot is not None else repo.current["snapshot"]
    if announce or drop:
        snap = _signed(repo.current["snapshot"])
        for role, raw in (announce or {}).items():
            snap["meta"][role] = meta_for(raw)
            files[f"{role}.{hashlib.sha256(raw).hexdigest()}.json"] = raw
        for role in drop:
            del snap["meta"][role]
        snap["version"] += 1
        snap_raw = repo.sign("snapshot", snap)
    files[f"snapshot.{hashlib.sha256(snap_raw).hexdigest()}.json"] = snap_raw
    ts = _signed(repo.current["timestamp"])
    ts["meta"]["snapshot"] = meta_for(snap_raw)
    ts["version"] += timestamp_bump
    if timestamp_expires is not None:
        ts["expires"] = expires_text(timestamp_expires)
    files["timestamp.json"] = repo.sign("timestamp", ts)
    return files


def _target_entry(manifest_digest: str, length: int) -> dict[str, Any]:
    raw = bytes.fromhex(manifest_digest.removeprefix("sha256:"))
    return {"hashes": {"sha256": base64.b64encode(raw).decode()}, "length": length}


# -- asking the proxy ------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    what: str  # "GET v1", "HEAD v1", "tags"
    status: int | str  # "hang" when the proxy did not answer in time
    code: str  # OCI error code, "" for 200, "not OCI" for a body that is not one
    message: str
    unsigned: bool  # carried something the honest trust data does not sign
    seconds: float

    def brief(self) -> str:
        if self.status == 200:
            return f"{self.what} 200"
        return f"{self.what} {self.status} {self.code}: {self.message[:160]}"


def _error_entry(r: httpx.Response) -> tuple[str, str]:
    try:
        body = r.json()
        entry = body["errors"][0]
        return str(entry["code"]), str(entry.get("message", ""))
    except (ValueError, KeyError, IndexError, TypeError):
        return "not OCI", r.text[:200]


def probe(world: World, target: Target) -> list[Answer]:
    """GET and HEAD v1 and the tag list, through the proxy."""
    out: list[Answer] = []
    path = f"/v2/{target.repo}"
    with httpx.Client(base_url=world.proxy.url, timeout=6 * DEADLINE) as http:
        for what, method, url in (
            (f"GET {TAG}", "GET", f"{path}/manifests/{TAG}"),
            (f"HEAD {TAG}", "HEAD", f"{path}/manifests/{TAG}"),
            ("tags", "GET", f"{path}/tags/list"),
        ):
            started = time.monotonic()
            try:
                r = http.request(method, url, headers={"Accept": images.ACCEPT_ALL})
            except httpx.TimeoutException:
                out.append(Answer(what, "hang", "", "", False, time.monotonic() - started))
                continue
            took = time.monotonic() - started
            if r.status_code != 200:
                code, message = _error_entry(r) if method == "GET" else ("", "")
                out.append(Answer(what, r.status_code, code, message, False, took))
                continue
            if what == "tags":
                tags = set(r.json().get("tags") or [])
                unsigned = bool(tags - {TAG})
            elif method == "GET":
                unsigned = images.sha256(r.content) != target.signed
            else:
                unsigned = r.headers.get("docker-content-digest") != target.signed
            out.append(Answer(what, 200, "", "", unsigned, took))
    return out


def _serves_signed(world: World, target: Target) -> bool:
    r = world.proxy.manifest(target.repo, TAG)
    return r.status_code == 200 and images.sha256(r.content) == target.signed


def unsigned_audited(world: World, target: Target) -> list[dict[str, Any]]:
    """Audit records that say something other than the signed digest was served."""
    return [
        r
        for r in world.proxy.audit_records()
        if r.get("repository") == target.gun and r.get("served_digest") not in (None, target.signed)
    ]


# -- one attack, cold and warm ---------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One variant of an attack: ``install`` makes the server hostile, ``restore`` (if any)
    makes the honest server publish again after :meth:`HostileNotary.calm`."""

    label: str
    install: Callable[[], None]
    restore: Callable[[], None] | None = None
    #: files the proxy must have fetched from the hostile server (else the attempt proved
    #: nothing); empty: any tampered answer for the GUN
    files: tuple[str, ...] = ()


@dataclass
class Run:
    answers: list[tuple[Mode, str, list[Answer]]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    recovery: list[float] = field(default_factory=list)
    rss_growth_mib: list[float] = field(default_factory=list)

    def slowest(self, mode: Mode) -> float:
        return max((a.seconds for m, _, ans in self.answers if m == mode for a in ans), default=0)


def _check(
    run: Run,
    mode: Mode,
    case: Case,
    answers: list[Answer],
    *,
    expect: Expect,
    refuse: frozenset[int],
    within: float | None,
) -> None:
    for a in answers:
        where = f"{mode} {case.label}: {a.brief()} ({a.seconds:.1f}s)"
        if a.unsigned:
            run.problems.append(f"UNSIGNED SERVED: {where}")
        if within is not None and a.seconds > within:
            run.problems.append(f"answered after more than {within:g}s: {where}")
        if expect == "signed":
            if a.status != 200:
                run.problems.append(f"expected the signed digest (200): {where}")
            continue
        if a.status not in refuse:
            run.problems.append(f"expected {sorted(refuse)}: {where}")
        elif not a.what.startswith("HEAD") and a.code in ("", "not OCI"):
            run.problems.append(f"not an OCI error body: {where}")


def _exercised(world: World, target: Target, case: Case, since: float) -> bool:
    seen = [f for f in world.hostile.fetches(target.gun, since=since) if f.tampered]
    if not case.files:
        return bool(seen)
    return all(any(f.name == name for f in seen) for name in case.files)


def _recover(world: World, target: Target, case: Case, run: Run) -> None:
    """Honest again: the proxy must fetch untampered data and serve the signed digest."""
    world.hostile.calm(target.gun)
    if case.restore is not None:
        case.restore()
    since = time.monotonic()

    def recovered() -> bool:
        served = _serves_signed(world, target)  # asking is what makes the proxy refresh
        return served and any(
            not f.tampered and f.status == 200 and f.name == "timestamp.json"
            for f in world.hostile.fetches(target.gun, since=since)
        )

    try:
        run.recovery.append(wait_until(recovered, timeout=6 * DEADLINE, interval=0.05))
    except TimeoutError:
        run.problems.append(
            f"{case.label}: no recovery within {6 * DEADLINE:g}s after the honest server came "
            f"back:\n{world.hostile.summary(target.gun, since=since)}\n"
            f"{world.proxy.server.log_tail(10)}"
        )


def _proc_kib(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak(pid: int) -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux clear_refs 5)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def attack(
    world: World,
    target: Target,
    name: str,
    cases: Sequence[Case],
    *,
    modes: Sequence[Mode] = ("cold", "warm"),
    cold: Expect = "refused",
    warm: Expect = "refused",
    refuse: frozenset[int] = frozenset({503}),
    warm_cases: Sequence[Case] | int | None = None,
    within: float | None = None,
    max_rss_growth_mib: float | None = None,
    expected: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Run:
    """Run ``cases`` cold (each in turn: a refusal leaves nothing verified behind), then
    warm (``warm_cases``: other cases, or how many of the first ones; default all),
    recovering after each warm case and after the last cold one; record the attempt;
    assert it. ``within``: every answer must come within that many seconds;
    ``max_rss_growth_mib``: the proxy's peak RSS may grow at most that much per case."""
    run = Run()
    for mode in modes:
        if mode == "cold" or warm_cases is None:
            chosen = list(cases)
        elif isinstance(warm_cases, int):
            chosen = list(cases[:warm_cases])
        else:
            chosen = list(warm_cases)
        expect = cold if mode == "cold" else warm
        for case in chosen:
            if mode == "warm":
                if not _serves_signed(world, target):
                    try:
                        wait_until(lambda: _serves_signed(world, target), timeout=6 * DEADLINE)
                    except TimeoutError:
                        run.problems.append(
                            f"warm {case.label}: not attempted, the proxy does not serve the "
                            "signed digest any more (an earlier case left it broken)"
                        )
                        break
                time.sleep(REFRESH + 0.1)  # the next request refreshes
            else:
                time.sleep(RETRY + 0.05)  # the previous case's refusal is no longer cached
            pid = world.proxy.server.pid
            measured = max_rss_growth_mib is not None and _reset_peak(pid)
            before = _proc_kib(pid, "VmRSS") if measured else None
            since = time.monotonic()
            case.install()
            answers = probe(world, target)
            peak = _proc_kib(pid, "VmHWM") if measured else None
            if before is not None and peak is not None:
                run.rss_growth_mib.append(round((peak - before) / 1024, 1))
                if max_rss_growth_mib is not None and run.rss_growth_mib[-1] > max_rss_growth_mib:
                    run.problems.append(
                        f"{mode} {case.label}: the proxy's peak RSS grew by "
                        f"{run.rss_growth_mib[-1]} MiB (limit {max_rss_growth_mib} MiB)"
                    )
            if not _exercised(world, target, case, since):
                run.problems.append(
                    f"{mode} {case.label}: the proxy never fetched the hostile files "
                    f"{case.files or '(any)'}:\n{world.hostile.summary(target.gun, since=since)}"
                )
            _check(run, mode, case, answers, expect=expect, refuse=refuse, within=within)
            run.answers.append((mode, case.label, answers))
            if mode == "warm" or case is chosen[-1]:
                _recover(world, target, case, run)
            else:
                world.hostile.calm(target.gun)
                if case.restore is not None:
                    case.restore()
    audited = unsigned_audited(world, target)
    if audited:
        run.problems.append(f"audit records of unsigned digests served: {audited[:3]}")
    _record(world, target, name, run, cold, warm, refuse, expected, extra)
    assert not run.problems, "\n".join(run.problems) + "\n" + world.proxy.server.log_tail(15)
    return run


def _expectation(modes: set[Mode], cold: Expect, warm: Expect, refuse: frozenset[int]) -> str:
    refusal = f"refused ({'/'.join(str(s) for s in sorted(refuse))})"
    parts = []
    if "cold" in modes:
        parts.append("cold: " + (refusal if cold == "refused" else "signed digest"))
    if "warm" in modes:
        parts.append("warm: " + (refusal if warm == "refused" else "signed digest (cached)"))
    return "; ".join(parts)


def _record(
    world: World,
    target: Target,
    name: str,
    run: Run,
    cold: Expect,
    warm: Expect,
    refuse: frozenset[int],
    expected: str | None,
    extra: dict[str, Any] | None,
) -> None:
    statuses: list[int | str] = []
    seen: dict[str, None] = {}
    for mode, _, answers in run.answers:
        for a in answers:
            statuses.append(a.status)
            if a.status == 200:
                seen[f"{mode}: 200 {'UNSIGNED' if a.unsigned else 'signed digest'}"] = None
            elif a.code:
                # for the docs: no ports, no hashes of this run
                message = re.sub(
                    r"[0-9a-f]{64}", "<sha256>", a.message.replace(target.gun, "<gun>")
                )
                seen[f"{mode}: {a.status} {a.code} {message[:160]}"] = None
    modes = {m for m, _, _ in run.answers}
    details: dict[str, Any] = {
        "cases": len({(m, label) for m, label, _ in run.answers}),
        "recovery_seconds": round(max(run.recovery), 2) if run.recovery else None,
    }
    for mode in sorted(modes):
        details[f"{mode}_slowest_answer_seconds"] = round(run.slowest(mode), 2)
    if run.rss_growth_mib:
        details["peak_rss_growth_mib"] = max(run.rss_growth_mib)
    details.update(extra or {})
    unsigned = sum(a.unsigned for _, _, answers in run.answers for a in answers)
    world.log.record(
        SURFACE,
        name,
        expected=expected or _expectation(modes, cold, warm, refuse),
        statuses=statuses,
        unsigned_served=unsigned + len(unsigned_audited(world, target)),
        ok=not run.problems,
        detail="; ".join(seen)[:1500],
        extra=details,
    )


def run_concurrently(jobs: dict[str, Callable[[], None]]) -> None:
    """Run independent attacks (each on its own repository) at once; fail with every
    failure, each under its name."""
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
    failures = [f"{name}: {f.exception()}" for name, f in futures.items() if f.exception()]
    assert not failures, "\n\n".join(failures)


# -- rollback --------------------------------------------------------------------------------


def test_rollback_of_the_whole_view(world: World) -> None:
    """Real notary data: the server answers with the captured older view (timestamp,
    snapshot and targets of the time ``v1`` was signed at the revoked digest)."""
    target = real_target(world, "rollback")
    old = target.old
    case = Case(
        "older timestamp + its snapshot and targets",
        lambda: world.hostile.override(target.gun, old),
        files=("timestamp.json",),
    )
    attack(world, target, "rollback: whole view (older timestamp)", [case], modes=("warm",))


def test_rollback_of_snapshot_and_targets(world: World) -> None:
    """A fresh timestamp (the server's key) naming the older snapshot, which names the
    older targets: timestamp version goes up, snapshot and targets versions go down."""
    target = sim_target(world, "rollback-snapshot")
    repo = _sim(target)
    old_snapshot = target.old["snapshot"]
    files = forged_view(repo, snapshot=old_snapshot)
    case = Case(
        "new timestamp -> older snapshot -> older targets",
        lambda: world.hostile.override(target.gun, files),
        files=("timestamp.json", f"snapshot.{hashlib.sha256(old_snapshot).hexdigest()}.json"),
    )
    attack(world, target, "rollback: snapshot + targets (new timestamp)", [case], modes=("warm",))


def test_rollback_of_a_delegation(world: World) -> None:
    """The server re-signs snapshot + timestamp announcing the older ``targets/releases``
    (which signed ``v1`` at the revoked digest; ``targets`` still does). Skipping the
    rolled-back delegation would hand ``v1`` to ``targets``: the revoked digest."""
    target = sim_target(world, "rollback-releases", delegation=True)
    repo = _sim(target)
    old_releases = target.old[RELEASES]
    files = forged_view(repo, {RELEASES: old_releases})
    case = Case(
        "new snapshot announcing the older targets/releases",
        lambda: world.hostile.override(target.gun, files),
        files=(f"{RELEASES}.{hashlib.sha256(old_releases).hexdigest()}.json",),
    )
    attack(
        world,
        target,
        "rollback: delegation (targets/releases)",
        [case],
        modes=("warm",),
        refuse=frozenset({404, 503}),
    )


def test_withheld_delegation(world: World) -> None:
    """The server (holding the snapshot key) keeps ``targets/releases`` from the proxy:
    drops it from a new snapshot, or announces a copy re-signed by a stranger, or garbage.
    notary skips an invalid delegation, and Docker's rule would then let ``targets``
    answer ``v1`` with the digest releases replaced. Warm only: at first contact there is
    nothing to compare with, and notary's skip applies (see proxy.sources.notary.tuf.refresh)."""
    target = sim_target(world, "withheld-releases", delegation=True)
    repo = _sim(target)
    body = _signed(repo.current[RELEASES])
    body["targets"][TAG] = _target_entry(target.unsigned, target.unsigned_length)
    stranger = envelope(body, [generate_key()])
    views = {
        "dropped from a new snapshot": forged_view(repo, drop=[RELEASES]),
        "re-signed by a stranger": forged_view(repo, {RELEASES: stranger}),
        "garbage under its announced hash": forged_view(repo, {RELEASES: b"<html>503</html>"}),
    }

    def serving(files: dict[str, bytes]) -> Callable[[], None]:
        return lambda: world.hostile.override(target.gun, files)

    cases = [
        Case(label, serving(files), files=("timestamp.json",)) for label, files in views.items()
    ]
    attack(
        world,
        target,
        "delegation withheld (targets/releases)",
        cases,
        modes=("warm",),
        refuse=frozenset({404, 503}),
    )


# -- freeze and mix-and-match ------------------------------------------------------------------


def test_freeze(world: World) -> None:
    """The server stops re-signing and serves its last timestamp forever. Cold: it has
    already expired. Warm: the proxy accepts it while it is valid (the signed digest), then
    it expires while the server keeps serving it."""
    target = sim_target(world, "freeze")
    repo = _sim(target)
    expired = forged_view(repo, timestamp_expires=datetime.now(UTC) - timedelta(minutes=1))

    def honest_again() -> None:
        repo.versions["timestamp"] += 5  # above anything the frozen server handed out
        repo.publish_timestamp()

    cold = Case(
        "expired timestamp",
        lambda: world.hostile.override(target.gun, expired),
        restore=honest_again,
        files=("timestamp.json",),
    )
    lifetime = 1.2
    while_valid: list[Answer] = []

    def freeze() -> None:
        frozen = forged_view(
            repo, timestamp_expires=datetime.now(UTC) + timedelta(seconds=lifetime)
        )
        world.hostile.override(target.gun, frozen)
        started = time.monotonic()
        while_valid.extend(probe(world, target))
        time.sleep(max(0.0, started + lifetime + 0.1 - time.monotonic()))

    warm = Case("timestamp expires while served", freeze, restore=honest_again)
    attack(
        world,
        target,
        "freeze: expired timestamp served forever",
        [cold],
        warm_cases=[warm],
        expected="cold: refused (503); warm: signed digest while the timestamp is valid, "
        "refused (503) once it expired",
        extra={"timestamp_lifetime_seconds": lifetime},
    )
    assert [a.status for a in while_valid] == [200, 200, 200], [a.brief() for a in while_valid]
    assert not any(a.unsigned for a in while_valid)


@pytest.mark.parametrize("older", ["snapshot", "targets"])
def test_mix_and_match(world: World, older: str) -> None:
    """Real notary data: the current timestamp (snapshot) with the older snapshot (targets)
    served under the current file's consistent name. Warm: the repository moves on first
    (one more tag signed), so the proxy's refresh has to fetch the new files."""
    target = real_target(world, f"mix-{older}")
    older_bytes = next(v for n, v in target.old.items() if n.startswith(f"{older}."))

    def current_name() -> str:
        return next(n for n in world.hostile.capture(target.gun) if n.startswith(f"{older}."))

    name = current_name()
    cold = Case(
        f"current timestamp, older {older}",
        lambda: world.hostile.override(target.gun, {name: older_bytes}),
        files=(name,),
    )
    attack(world, target, f"mix-and-match: older {older} (cold)", [cold], modes=("cold",))

    moved: list[str] = []

    def move_on_then_mix() -> None:
        world.bed.trust(target.name).sign_bytes(f"more-{len(moved)}", b"another tag")
        moved.append(current_name())
        world.hostile.override(target.gun, {moved[-1]: older_bytes})

    warm = Case(f"new timestamp, older {older}", move_on_then_mix)
    attack(world, target, f"mix-and-match: older {older} (warm)", [warm], modes=("warm",))
    assert moved
    assert any(f.name == moved[-1] and f.tampered for f in world.hostile.fetches(target.gun))


# -- endless data, slow retrieval ----------------------------------------------------------------


def _names(repo: NotaryRepository) -> dict[str, str]:
    """Role -> the file name the proxy fetches for it now."""
    snap = _signed(repo.current["snapshot"])
    out = {
        "root": "root.json",
        "next root": f"{repo.versions['root'] + 1}.root.json",
        "timestamp": "timestamp.json",
        "snapshot": consistent_name(
            "snapshot", _signed(repo.current["timestamp"])["meta"]["snapshot"]
        ),
    }
    for role, entry in snap["meta"].items():
        if role != "root":
            out[role] = consistent_name(role, entry)
    return out


def test_endless_data(world: World) -> None:
    """A body that never ends (chunked, no Content-Length) for each role's file: the read
    is cut at the role's byte limit. Warm refreshes fetch only the next root version and
    timestamp.json (unchanged snapshot and targets are reused), so those two are tried
    warm."""
    target = sim_target(world, "endless", delegation=True)
    names = _names(_sim(target))

    def case(role: str) -> Case:
        name = names[role]
        return Case(f"endless {name}", lambda: world.hostile.behave(target.gun, endless(), name),
                    files=(name,))  # fmt: skip

    attack(
        world,
        target,
        "endless data (every role)",
        [case(r) for r in ("root", "timestamp", "snapshot", "targets", RELEASES)],
        warm_cases=[case("next root"), case("timestamp")],
        max_rss_growth_mib=96.0,
    )


# -- what the bytes say ---------------------------------------------------------------------------


def _honest_timestamp(target: Target) -> bytes:
    return _sim(target).current["timestamp"]


def _timestamp_case(target: Target, label: str, make: Callable[[bytes], bytes],
                    world: World) -> Case:  # fmt: skip
    """timestamp.json replaced by ``make(honest timestamp bytes)``."""

    def install() -> None:
        world.hostile.behave(target.gun, serve(make(_honest_timestamp(target))), "timestamp.json")

    return Case(label, install, files=("timestamp.json",))


def _valid_metadata_as_html(world: World, target: Target) -> None:
    """Honest bytes labelled text/html: the bytes are verified, the label is not trusted
    either way, so the signed digest is served."""
    html = Behaviour("honest bytes as text/html", content_type="text/html; charset=utf-8")
    case = Case("every file as text/html", lambda: world.hostile.behave(target.gun, html))
    attack(world, target, "wrong content type (valid metadata as text/html)", [case],
           cold="signed", warm="signed")  # fmt: skip


def _html_error_page(world: World, target: Target) -> None:
    cases = [
        Case("timestamp.json: HTML page, 200",
             lambda: world.hostile.behave(target.gun, html_page(200), "timestamp.json"),
             files=("timestamp.json",)),
        Case("root.json: HTML page, 200",
             lambda: world.hostile.behave(target.gun, html_page(200), "root.json"),
             files=("root.json",)),
    ]  # fmt: skip
    attack(world, target, "HTML error page with 200", cases, warm_cases=1)


def _huge_nesting(world: World, target: Target) -> None:

    def deep(levels: int, escape: bool) -> Callable[[bytes], bytes]:
        def make(_: bytes) -> bytes:
            inner = b"[" * levels + b"]" * levels
            esc = b',"e":"tab\\tnewline\\n"' if escape else b""
            return b'{"signed":{"_type":"Timestamp","deep":' + inner + esc + b'},"signatures":[]}'

        return make

    cases = [
        # parses, then the canonical encoder (slow path: two frames a level) recursed past
        # Python's limit: a 500 before the fix in proxy.sources.notary.tuf.canonical
        _timestamp_case(target, "500 nested arrays and an escaped string", deep(500, True), world),
        _timestamp_case(target, "900 nested arrays", deep(900, False), world),
        _timestamp_case(target, "30,000 nested arrays", deep(30_000, False), world),
    ]
    attack(world, target, "huge JSON nesting", cases, warm_cases=1)


def _duplicate_keys(world: World, target: Target) -> None:
    """Duplicates placed so that a last-wins parser (Python's, Go's) reads the honest,
    validly signed value and a first-wins parser the attacker's: refused outright, not
    read one way or the other."""
    repo = _sim(target)

    def version_twice(raw: bytes) -> bytes:
        return raw.replace(b'{"signed":{', b'{"signed":{"version":999999,', 1)

    def signed_twice(raw: bytes) -> bytes:
        forged = json.dumps(_signed(raw) | {"version": 999999}, separators=(",", ":")).encode()
        return raw.replace(b'{"signed":', b'{"signed":' + forged + b',"signed":', 1)

    bad = json.dumps(
        _target_entry(target.unsigned, target.unsigned_length), separators=(",", ":")
    ).encode()
    dup_targets = repo.current["targets"].replace(
        b'"targets":{', b'"targets":{"' + TAG.encode() + b'":' + bad + b",", 1
    )
    files = forged_view(repo, {"targets": dup_targets})
    dup_name = f"targets.{hashlib.sha256(dup_targets).hexdigest()}.json"
    cases = [
        _timestamp_case(target, '"version" twice in timestamp', version_twice, world),
        _timestamp_case(target, '"signed" twice in timestamp', signed_twice, world),
        Case(f"tag {TAG} twice in targets (unsigned digest first)",
             lambda: world.hostile.override(target.gun, files), files=(dup_name,)),
    ]  # fmt: skip
    attack(world, target, "duplicate keys", cases, warm_cases=[cases[0], cases[2]])


def _numbers(world: World, target: Target) -> None:
    version = _signed(_honest_timestamp(target))["version"]
    honest = f'"version":{version}'.encode()

    def as_number(text: str) -> Callable[[bytes], bytes]:
        return lambda raw: raw.replace(honest, b'"version":' + text.encode())

    values = ["NaN", "Infinity", "-Infinity", f"{version}.0", f"{version}e0", "1e400",
              str(2**53 + 1), "9" * 5000, "-1"]  # fmt: skip
    cases = [_timestamp_case(target, f"version {v[:24]}", as_number(v), world) for v in values]
    attack(world, target, "NaN, Infinity, floats, huge integers", cases, warm_cases=1)


def _text_encodings(world: World, target: Target) -> None:

    def inject(value: bytes) -> Callable[[bytes], bytes]:
        return lambda raw: raw.replace(
            b'"_type":"Timestamp"', b'"_type":"Timestamp","x":"' + value + b'"', 1
        )

    cases = [
        _timestamp_case(target, "invalid UTF-8 byte", inject(b"\xff\xfe"), world),
        _timestamp_case(target, "overlong UTF-8 for '/'", inject(b"\xc0\xaf"), world),
        _timestamp_case(target, "UTF-8 encoded surrogate", inject(b"\xed\xa0\x80"), world),
        _timestamp_case(target, "escaped lone surrogate", inject(b"\\ud800"), world),
        _timestamp_case(target, "UTF-8 BOM before valid JSON", lambda r: b"\xef\xbb\xbf" + r,
                        world),
        _timestamp_case(target, "UTF-16-LE with BOM",
                        lambda r: r.decode().encode("utf-16"), world),
        _timestamp_case(target, "UTF-16-BE without BOM",
                        lambda r: r.decode().encode("utf-16-be"), world),
    ]  # fmt: skip
    attack(world, target, "invalid UTF-8, UTF-16, BOM", cases, warm_cases=1)


def _truncated_json(world: World, target: Target) -> None:
    """Half of timestamp.json, correctly framed: the bytes arrive, the JSON is cut."""
    cases = [
        _timestamp_case(target, "first half, framed", lambda r: r[: len(r) // 2], world),
        _timestamp_case(target, "all but the last byte", lambda r: r[:-1], world),
    ]
    attack(world, target, "truncated JSON", cases, warm_cases=1)


#: repository name -> attack on timestamp.json / targets bytes (run concurrently below)
MALFORMED: dict[str, Callable[[World, Target], None]] = {
    "content-type-ok": _valid_metadata_as_html,
    "content-type-html": _html_error_page,
    "nesting": _huge_nesting,
    "duplicates": _duplicate_keys,
    "numbers": _numbers,
    "encodings": _text_encodings,
    "truncated-json": _truncated_json,
}


def test_malformed_metadata(world: World) -> None:
    """What the bytes say: wrong content types, nesting, duplicate keys, numbers, text
    encodings, truncated JSON (each attack on its own repository, run concurrently to
    keep the wall time down; each recorded and asserted on its own)."""
    targets = {name: sim_target(world, name) for name in MALFORMED}
    run_concurrently({name: partial(job, world, targets[name]) for name, job in MALFORMED.items()})


def test_gzip_bomb(world: World) -> None:
    """``Content-Encoding: gzip`` the proxy did not ask for (it sends identity): 256 MiB of
    zeros in about 256 KiB. The proxy's peak memory must not follow the inflated size
    (before the fix in the fetcher, one fetch grew it by ~50 MiB)."""
    target = sim_target(world, "gzip-bomb")
    names = _names(_sim(target))
    cases = [
        Case("timestamp.json, chunked",
             lambda: world.hostile.behave(target.gun, gzip_bomb(256 << 20, framing="chunked"),
                                          "timestamp.json"),
             files=("timestamp.json",)),
        Case("targets, with Content-Length",
             lambda: world.hostile.behave(target.gun, gzip_bomb(256 << 20), names["targets"]),
             files=(names["targets"],)),
    ]  # fmt: skip
    attack(world, target, "gzip bomb (Content-Encoding)", cases, warm_cases=1,
           max_rss_growth_mib=48.0)  # fmt: skip


def test_forged_targets(world: World) -> None:
    """A targets file signing v1 at the unsigned digest, signed by a key not in the root,
    announced by a snapshot and timestamp the server re-signed with its own keys."""
    target = sim_target(world, "forged")
    repo = _sim(target)
    body = _signed(repo.current["targets"])
    body["targets"][TAG] = _target_entry(target.unsigned, target.unsigned_length)
    body["version"] += 1
    stranger = generate_key()
    forged = envelope(body, [stranger])
    # The same signature, claiming to be by the real targets key.
    real_id = repo.roles["targets"].keys[0].key_id
    claimed = forged.replace(stranger.key_id.encode(), real_id.encode())
    plain = forged_view(repo, {"targets": forged})
    impostor = forged_view(repo, {"targets": claimed})
    cases = [
        Case("signed by an unknown key", lambda: world.hostile.override(target.gun, plain),
             files=(f"targets.{hashlib.sha256(forged).hexdigest()}.json",)),
        Case("signed by an unknown key claiming the targets key's ID",
             lambda: world.hostile.override(target.gun, impostor),
             files=(f"targets.{hashlib.sha256(claimed).hexdigest()}.json",)),
    ]  # fmt: skip
    attack(world, target, "forged targets (key not in root)", cases)


# -- a slow or unreachable server ------------------------------------------------------------------


def test_slow_and_unreachable_servers(world: World) -> None:
    """A server that is slow, cut off or gone. Cold: 503 (nothing valid cached); warm: the
    verified cache answers (the server counts as unreachable, the data is unexpired). Every
    answer within 2x the deadline (``DEADLINE``: one fetch, and one whole refresh).

    * trickle: timestamp.json a byte every 0.4 s, each read well inside the read timeout:
      only the whole-request deadline ends it;
    * slow retrieval of every file: each file completes inside the per-file deadline
      (spread over 0.75 x deadline), so only a bound on the whole refresh stops a cold
      refresh (root, timestamp, snapshot, targets one after the other) from taking ~4x;
      warm, only timestamp.json is new, so the fresh data answers;
    * a connection closed mid-body, 500, a redirect elsewhere, a server that never answers.

    The attacks run concurrently (each on its own repository) to keep the wall time down;
    each is recorded and asserted on its own."""
    per_file = 0.75 * DEADLINE
    behaviours: dict[str, tuple[Behaviour, str | None]] = {
        "slow trickle (one file)": (trickle(TRICKLE_EVERY, nbytes=1), "timestamp.json"),
        "slow retrieval of every file (each inside the deadline)": (
            trickle(TRICKLE_EVERY, over=per_file), None),
        "connection closed mid-body": (truncated(200), "timestamp.json"),
        "trust server answers 500": (status(500), None),
        "trust server redirects elsewhere": (redirect("https://127.0.0.1:9/elsewhere"), None),
        "trust server hangs": (hang(), None),
    }  # fmt: skip
    targets = {name: sim_target(world, f"slow-{n}") for n, name in enumerate(behaviours)}

    def run(name: str) -> None:
        behaviour, file = behaviours[name]
        target = targets[name]
        files = (file,) if file else ()
        case = Case(
            behaviour.label,
            lambda: world.hostile.behave(target.gun, behaviour, *files),
            files=files,
        )
        attack(
            world,
            target,
            name,
            [case],
            warm="signed",
            within=2 * DEADLINE,
            extra={
                "deadline_seconds": DEADLINE,
                "read_timeout_seconds": READ_TIMEOUT,
                "trickle_write_every_seconds": TRICKLE_EVERY,
            },
        )

    run_concurrently({name: partial(run, name) for name in behaviours})
