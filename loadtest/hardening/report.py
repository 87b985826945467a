"""``docs/hardening.md`` from the results: the attempt records of the hardening tests
(``testbed/attempts.py``), the faults run and the soak, plus two charts (matplotlib).

Every section says "not run" when its input is missing (no attempts file, ``--soak-minutes
0``, ``--skip-faults``), so the page never shows stale figures as if they were new.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from loadtest.hardening.faults import ALLOWED_DOWN, CLASSES, NORMAL
from testbed.attempts import SURFACES, Attempt

SURFACE_TITLES = {
    "trust server": "Hostile trust server",
    "registry": "Hostile registry",
    "client input": "Request fuzzing and hostile clients",
    "faults": "Faults under load",
    "soak": "Soak",
}
STATUS_COLOURS = {
    "200": "#2ca02c",
    "206": "#2ca02c",
    "404": "#9e9e9e",
    "502": "#ff7f0e",
    "503": "#d62728",
    "504": "#8c564b",
}
_MAX_SAMPLE_ROWS = 60


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _statuses(statuses: Mapping[str, int]) -> str:
    return ", ".join(f"{k}×{v}" for k, v in sorted(statuses.items())) or "–"


def _tool(version: str) -> str:
    # A bare path (tools without a version flag) says only that it is installed; the
    # machine's own paths stay out of the page.
    if not version:
        return "not installed"
    return "installed" if version.startswith("/") else version


def _s(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} s"


# -- attempts ---------------------------------------------------------------------------------


def attempts_section(attempts: Sequence[Attempt], source: str, recorded: int) -> list[str]:
    """``attempts``: the first ``recorded`` from the tests' file, then this run's own."""
    lines = ["## What was tried, per surface", ""]
    if recorded == 0:
        lines += [
            f"The attack tests: not run (no attempt records in `{source}`; the hardening "
            "tests write them when `HARDENING_RESULTS_FILE` is set, as `make "
            "hardening` does).",
            "",
        ]
    if not attempts:
        return lines
    by_surface: dict[str, list[Attempt]] = defaultdict(list)
    for a in attempts:
        by_surface[a.surface].append(a)
    lines += [
        f"{recorded} attempts recorded by the tests in `{source}` and {len(attempts) - recorded} "
        f"by this run (faults, soak): {sum(not a.ok for a in attempts)} not as expected, "
        f"{sum(a.unsigned_served for a in attempts)} answers with unsigned content.",
        "",
        "| Surface | Attempts | As expected | Requests | Unsigned served |",
        "|---|---:|---:|---:|---:|",
    ]
    for surface in SURFACES:
        found = by_surface.get(surface, [])
        if not found:
            lines.append(f"| {SURFACE_TITLES[surface]} | not run | | | |")
            continue
        lines.append(
            f"| {SURFACE_TITLES[surface]} | {len(found)} | "
            f"{sum(a.ok for a in found)} | {sum(a.requests for a in found)} | "
            f"{sum(a.unsigned_served for a in found)} |"
        )
    lines.append("")
    for surface in SURFACES:
        found = by_surface.get(surface, [])
        lines += [f"### {SURFACE_TITLES[surface]}", ""]
        if not found:
            lines += ["Not run.", ""]
            continue
        lines += [
            "| Attack | Expected | Requests | Statuses | Unsigned served | OK | Detail |",
            "|---|---|---:|---|---:|:---:|---|",
        ]
        for a in found:
            ok = "yes" if a.ok else "**no**"
            lines.append(
                f"| {_cell(a.attack)} | {_cell(a.expected)} | {a.requests} | "
                f"{_cell(_statuses(a.statuses))} | {a.unsigned_served} | {ok} | "
                f"{_cell(a.detail)[:300]} |"
            )
        lines.append("")
    return lines


# -- faults -------------------------------------------------------------------------------------


def faults_section(faults: Mapping[str, Any] | None, chart: str | None) -> list[str]:
    lines = ["## Faults under load", ""]
    if not faults:
        return [*lines, "Not run.", ""]
    plan, stack = faults["plan"], faults["stack"]
    totals = faults["totals"]
    load = "the prober" + (" and wrk" if faults["use_wrk"] else " only (wrk not installed)")
    notary_store = "PostgreSQL" if stack["persistent_notary"] else "memory (not restarted)"
    lines += [
        f"Two replicas sharing one Redis, trust `refresh_interval` {stack['refresh_interval']:g} s "
        f"and `retry_interval` {stack['retry_interval']:g} s, audit records to a file per "
        f"replica; notary-server's storage: {notary_store}. Load: {load}. Phases: baseline "
        f"{plan['baseline_s']:g} s, then for the registry, Redis and the notary-server in turn: "
        f"{plan['before_s']:g} s of load, `kill -9`, {plan['down_s']:g} s down, restart on the "
        f"same port, {plan['settle_s']:g} s to settle. Cold pulls use repositories no replica "
        f"has seen ({plan['cold_signed']} signed and {plan['cold_plain']} without trust data "
        "per pool, a fresh pool from each kill on).",
        "",
        f"**Result: {'as expected' if faults['ok'] else 'NOT as expected'}.** "
        f"Prober: {totals['requests']} requests, each checked; wrk: {faults['wrk_requests']} "
        f"requests. Unsigned content served: **{totals['unsigned_served']}**; tag lists naming "
        f"an unsigned tag: {totals['tag_list_leaks']}; non-2xx without an OCI error body: "
        f"{totals['non_oci_errors']}; 500s: {totals['server_errors_500']}; hangs (no answer in "
        f"10 s): {totals['hangs']}. Replica PIDs unchanged through all phases (recovered "
        f"without restart): **{'yes' if faults['pids']['unchanged'] else 'NO'}**; final sweep "
        f"of every URL on every replica: {faults['final_sweep']['requests']} requests, "
        f"{len(faults['final_sweep']['wrong'])} wrong.",
        "",
        "Load classes: `warm-manifest` signed tags seen before (GET and HEAD; one was re-pushed "
        "to unsigned bytes after signing), `warm-refused` a tag in the registry that is not "
        "signed and a repository without trust data, `cold-manifest` / `cold-refused` the same "
        "in never-seen repositories, `blob`, `tags` (tag lists, filtered).",
        "",
    ]
    if chart:
        lines += [f"![faults timeline]({chart})", ""]
    lines += [
        "### Answers by phase, window and class (prober)",
        "",
        "Windows: `before` the kill, `down` until the restart is issued, `after` it. "
        "Statuses with a name instead of a number are transport errors (none expected); "
        "OCI codes are read from GET bodies (a HEAD answer has none).",
        "",
        "| Phase | Window | Class | Requests | Statuses | OCI codes | Unsigned |",
        "|---|---|---|---:|---|---|---:|",
    ]
    for phase in faults["phases"]:
        for window, classes in phase["windows"].items():
            for cls in CLASSES:
                s = classes[cls]
                lines.append(
                    f"| {phase['name']} | {window} | {cls} | {s['requests']} | "
                    f"{_statuses(s['statuses'])} | {_statuses(s['codes'])} | "
                    f"{s['unsigned_served']} |"
                )
    lines += [
        "",
        "### Expected while down (asserted by the `make test` variant)",
        "",
        "| Fault | " + " | ".join(CLASSES) + " |",
        "|---|" + "---|" * len(CLASSES),
    ]
    for fault, allowed in ALLOWED_DOWN.items():
        lines.append(
            f"| {fault} | "
            + " | ".join("/".join(str(s) for s in sorted(allowed[c])) for c in CLASSES)
            + " |"
        )
    lines += ["", f"Normal answers: {', '.join(f'{c} {s}' for c, s in NORMAL.items())}.", ""]
    lines += [
        "### Recovery",
        "",
        "Seconds from the kill to the first abnormal answer of a class, from the restart "
        "(process listening again) to its first normal answer and to its last abnormal "
        'one; `recovered`: the class ended the phase answering normally. "–": none.',
        "",
        "| Fault | Restart took | Class | First abnormal after kill | First normal after "
        "restart | Last abnormal after restart | Recovered |",
        "|---|---:|---|---:|---:|---:|:---:|",
    ]
    for phase in faults["phases"]:
        if phase["name"] == "baseline":
            continue
        took = phase["times"]["restart_seconds"]
        took_s = _s(took) if took is not None else f"not restarted ({phase['restart_skipped']})"
        for cls in CLASSES:
            r = phase["recovery"][cls]
            rec = "–" if "recovered" not in r else ("yes" if r["recovered"] else "**no**")
            lines.append(
                f"| {phase['name']} | {took_s} | {cls} | "
                f"{_s(r.get('first_abnormal_after_kill_s'))} | "
                f"{_s(r.get('first_normal_after_restart_s'))} | "
                f"{_s(r.get('last_abnormal_after_restart_s'))} | {rec} |"
            )
    for phase in faults["phases"]:
        if phase["store"]:
            lines += [
                "",
                "Redis, per replica (`trustproxy_store_up` sampled every 0.5 s; "
                "`/readyz` stays 200 while the store is down, by design):",
                "",
            ]
            for name, st in phase["store"].items():
                lines.append(
                    f"- {name}: store seen down {_s(st['store_down_seen_after_kill_s'])} "
                    f"after the kill, up again {_s(st['store_up_after_restart_s'])} after "
                    f"the restart; /readyz statuses {_statuses(st['readyz_statuses'])}"
                )
    lines += [
        "",
        "### What the proxies counted (`/metrics`, change over each phase, both replicas)",
        "",
        "| Phase | Counter | Change |",
        "|---|---|---:|",
    ]
    for phase in faults["phases"]:
        total: Counter[str] = Counter()
        for deltas in phase["metrics_delta"].values():
            for k, v in deltas.items():
                if k.startswith("trustproxy_requests"):
                    # Every request (wrk's too), by status class only.
                    found = re.search(r'status="([^"]*)"', k)
                    k = f'trustproxy_requests{{status="{found.group(1) if found else "?"}"}}'
                total[_metric_name(k)] += v
        for k, v in sorted(total.items()):
            lines.append(f"| {phase['name']} | `{_cell(k)}` | {v:g} |")
    audit = faults["audit"]
    per_replica = ", ".join(f"{k}: {v}" for k, v in audit["per_replica"].items())
    unchecked = sum(
        v
        for k, v in audit["by_outcome"].items()
        if k.split()[-1] in ("passed_through", "audit_would_deny", "upstream_mismatch")
    )
    lines += [
        "",
        "### Audit cross-check",
        "",
        f"{audit['records']} audit records ({per_replica}). Every record saying content "
        "was served was checked against the digests the trust data signs for its reference: "
        f"{audit['served_records_checked']} checked, **{audit['served_not_signed']}** naming "
        f"anything else (or passing content through unchecked: {unchecked} records of "
        "`passed_through` / `audit_would_deny` / `upstream_mismatch`).",
        "",
        "| Kind and outcome | Records |",
        "|---|---:|",
    ]
    for k, v in audit["by_outcome"].items():
        lines.append(f"| {k} | {v} |")
    if faults["use_wrk"]:
        lines += [
            "",
            "### wrk (statuses counted in its Lua; GETs only)",
            "",
            "| Phase | Run | Requests | Statuses | Socket errors |",
            "|---|---|---:|---|---:|",
        ]
        for phase in faults["phases"]:
            for w in phase["wrk"]:
                if "failed" in w:
                    lines.append(
                        f"| {phase['name']} | {w['name']} | failed: "
                        f"{_cell(w['failed'])[:200]} | | |"
                    )
                    continue
                lines.append(
                    f"| {phase['name']} | {w['name']} | {w['requests']} | "
                    f"{_statuses(w['statuses'])} | {w['errors']} |"
                )
    lines += ["", "### Not as expected", ""]
    lines += [f"- {_cell(v)}" for v in faults["violations"]] or ["None."]
    lines.append("")
    return lines


def _metric_name(key: str) -> str:
    # Drop the store's URL label (a loopback port that changes every run).
    return re.sub(r',?store="[^"]*"', "", key).replace("{,", "{")


# -- soak -------------------------------------------------------------------------------------


def soak_section(soak: Mapping[str, Any] | None, chart: str | None) -> list[str]:
    lines = ["## Soak", ""]
    if not soak:
        return [*lines, "Not run.", ""]
    plan = soak["plan"]
    flat = soak["flatness"]
    bound = soak["bound_mib"]
    nrep = max(1, len(soak["stack"]["replicas"]))
    if soak.get("judged", True):
        verdict = "met" if soak["ok"] else "NOT MET"
    else:
        verdict = f"not judged: a run under {soak['min_judged_s'] / 60:g} minutes is warm-up"
    load = (
        "wrk (warm and cold-ish manifests, refusals, tag lists, small blobs and a "
        f"{plan['big_blob_mib']} MiB blob) and"
        if soak["use_wrk"]
        else ""
    )
    lines += [
        f"{soak['seconds'] / 60:g} minute(s) of mixed load against both replicas: {load} a Python "
        f"driver ({plan['driver_workers']} workers: HEADs, downloads of {plan['big_blob_mib']} "
        "MiB blobs abandoned after the first 64 KiB, ranged reads, repositories that do not "
        f"exist, manifests of {plan['coldish_repos']} repositories whose trust data is "
        f"refreshed every {soak['stack']['refresh_interval']:g} s). Sampled every "
        f"{plan['interval']:g} s: RSS of each replica's process tree, open file descriptors, "
        "TCP connections by peer.",
        "",
        f"{soak.get('requests', 0)} requests in all, about "
        f"{soak.get('requests', 0) / max(1.0, soak['seconds']) / nrep:.0f} per second per "
        "replica.",
        "",
        f"**Bound: RSS growth after the warm-up ({flat['warmup_s']:g} s) ≤ {bound:g} MiB per "
        f"replica — {verdict}.** Unsigned content served: "
        f"{soak['unsigned_served']}.",
        "",
    ]
    if chart:
        lines += [f"![soak: memory and connections]({chart})", ""]
    lines += [
        "| Replica | RSS first | RSS after warm-up | RSS end | Growth | Slope, 2nd half | "
        "FDs after warm-up → end (max) | Max conns: clients / registry / notary / redis |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, f in flat.items():
        if not isinstance(f, dict):
            continue
        lines.append(
            f"| {name} | {f['rss_first_mib']:.1f} MiB | {f['rss_at_warmup_mib']:.1f} MiB | "
            f"{f['rss_end_mib']:.1f} MiB | {f['rss_growth_mib']:+.1f} MiB | "
            f"{f['rss_slope_second_half_mib_per_h']:+.1f} MiB/h | {f['fds_at_warmup']:g} → "
            f"{f['fds_end']:g} ({f['fds_max']:g}) | {f['conns_clients_max']} / "
            f"{f['conns_registry_max']} / {f['conns_notary_max']} / {f['conns_redis_max']} |"
        )
    lines += [
        "",
        "Load: "
        + "; ".join(
            f"wrk {w['name']}: {w.get('requests', 0)} requests ({_statuses(w.get('statuses', {}))})"
            for w in soak["wrk"]
        )
        + ("; " if soak["wrk"] else "")
        + "driver: "
        + _statuses(soak["driver"])
        + ".",
        "",
    ]
    idle = soak.get("idle_after") or []
    if idle:
        lines += [
            "One second after the load stopped: "
            + "; ".join(
                f"{s['replica']}: {s['conns_clients']} client and {s['conns_registry']} registry "
                f"connections, {s['fds']} fds"
                for s in idle
            )
            + ".",
            "",
        ]
    samples = soak["samples"]
    step = max(1, len(samples) // _MAX_SAMPLE_ROWS)
    by_t: dict[float, dict[str, dict[str, Any]]] = defaultdict(dict)
    for s in samples:
        by_t[s["t"]][s["replica"]] = s
    times = sorted(by_t)[::step]
    replicas = sorted({s["replica"] for s in samples})
    lines += [
        "### Samples" + ("" if step == 1 else f" (every {step}th)"),
        "",
        "| Minute | "
        + " | ".join(f"{r}: RSS MiB / fds / clients / upstream" for r in replicas)
        + " |",
        "|---:|" + "---:|" * len(replicas),
    ]
    for t in times:
        cells = []
        for r in replicas:
            s = by_t[t].get(r)
            cells.append(
                "–"
                if s is None
                else f"{s['rss_mib']:.1f} / {s['fds']} / "
                f"{s['conns_clients']} / {s['conns_registry']}"
            )
        lines.append(f"| {t / 60:.1f} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


# -- page -------------------------------------------------------------------------------------


def markdown(
    results: Mapping[str, Any],
    attempts: Sequence[Attempt],
    *,
    faults_chart: str | None,
    soak_chart: str | None,
) -> str:
    mach, src = results["machine"], results["source"]
    changes = src.get("proxy_changes") or []
    tree = "" if not changes else f" plus uncommitted changes in `proxy/` ({len(changes)} files)"
    lines = [
        "# Hardening: what was tried, and what came back",
        "",
        "<!-- Generated by `python -m loadtest.hardening` (make hardening); do not edit. -->",
        "",
        f"Run of {results['started']} ({results['mode']}), {results['duration_s'] / 60:.1f} "
        f"minutes, on {mach['nproc']} CPUs ({mach['cpu_model']}), {mach['memory_gib']} GiB, "
        f"Linux {mach['kernel']}, Python {mach['python']} ({mach['event_loop']}); commit "
        f"`{src.get('commit', '')[:12]}`{tree}.",
        "",
        f"Command: `{results['command']}`"
        + (
            " (after `pytest -m hardening tests/hardening`, which writes the attempt records; "
            "both are what `make hardening` runs)."
            if results.get("via_make")
            else "."
        ),
        "",
        "The question every section answers: did any client get content that the honest trust "
        "data does not sign for the reference it asked for? Answers are hashed per response "
        "(the tests, the prober, the soak driver) and the proxies' audit records are "
        "cross-checked. What the suite found and what was changed because of it, and the "
        "limits it leaves, are in [hardening-notes.md](hardening-notes.md) (written by hand).",
        "",
    ]
    lines += attempts_section(
        attempts, results["attempts_file"], int(results.get("attempts_recorded", len(attempts)))
    )
    lines += faults_section(results.get("faults"), faults_chart)
    lines += soak_section(results.get("soak"), soak_chart)
    lines += ["## Tools", "", *(f"- {k}: {_tool(v)}" for k, v in mach["tools"].items()), ""]
    return "\n".join(lines)


# -- charts ---------------------------------------------------------------------------------------


def faults_chart(faults: Mapping[str, Any], path: Path) -> None:
    """Answers over time per class (coloured by status), kills and restarts marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 4.5))
    y = {cls: i for i, cls in enumerate(reversed(CLASSES))}
    points: dict[str, tuple[list[float], list[float], list[float]]] = {}
    for t, cls, label, n in faults["timeline"]:
        key = label if label in STATUS_COLOURS else "other"
        xs, ys, sizes = points.setdefault(key, ([], [], []))
        offset = {"200": 0.0, "206": 0.0, "404": 0.15, "502": -0.15, "503": -0.3}.get(label, 0.3)
        xs.append(t)
        ys.append(y[cls] + offset)
        sizes.append(min(40.0, 4 + n))
    for key, (xs, ys, sizes) in sorted(points.items()):
        ax.scatter(
            xs,
            ys,
            s=sizes,
            c=STATUS_COLOURS.get(key, "#000000"),
            label=key,
            marker="s",
            linewidths=0,
        )
    for phase in faults["phases"]:
        times = phase["times"]
        ax.axvline(times["start"], color="#cccccc", linewidth=0.8)
        ax.text(times["start"] + 0.2, len(CLASSES) - 0.4, phase["name"], fontsize=8)
        if times["kill"] is not None:
            ax.axvline(times["kill"], color="#d62728", linestyle="--", linewidth=1)
        if times["restart_ready"] is not None:
            ax.axvline(times["restart_ready"], color="#2ca02c", linestyle="--", linewidth=1)
    ax.set_yticks(list(y.values()), list(y.keys()))
    ax.set_xlabel("seconds (red dashed: kill -9, green dashed: back on the same port)")
    ax.set_title("Faults under load: answers per 0.5 s by class and status (prober)")
    ax.legend(loc="lower right", fontsize=8, ncol=6, markerscale=1.5)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def soak_chart(soak: Mapping[str, Any], path: Path) -> None:
    """RSS, file descriptors and connections per replica over the soak."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = soak["samples"]
    replicas = sorted({s["replica"] for s in samples})
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for r in replicas:
        mine = [s for s in samples if s["replica"] == r]
        minutes = [s["t"] / 60 for s in mine]
        axes[0].plot(minutes, [s["rss_mib"] for s in mine], label=r)
        axes[1].plot(minutes, [s["fds"] for s in mine], label=r)
        axes[2].plot(minutes, [s["conns_clients"] for s in mine], label=f"{r} clients")
        axes[2].plot(
            minutes, [s["conns_registry"] for s in mine], linestyle="--", label=f"{r} registry"
        )
    warm = soak["flatness"]["warmup_s"] / 60
    for ax, title, ylabel in (
        (axes[0], "RSS (process tree)", "MiB"),
        (axes[1], "open file descriptors", "fds"),
        (axes[2], "TCP connections", "established"),
    ):
        ax.axvline(warm, color="#cccccc", linestyle=":")
        ax.set_title(title)
        ax.set_xlabel("minutes")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    fig.suptitle(f"Soak, {soak['seconds'] / 60:g} minutes (dotted: end of warm-up)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
