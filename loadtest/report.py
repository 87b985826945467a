"""The results file rendered for people: a Markdown report and a PNG chart (matplotlib)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
TARGETS = ("registry", "nginx", "trustproxy")
COLOURS = {"registry": "#7f7f7f", "nginx": "#1f77b4", "trustproxy": "#d62728"}


def _fmt(value: float, unit: str) -> str:
    if unit == "×":
        return f"{value:.2f}×"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "MiB":
        return f"{value:.0f} MiB"
    if unit == "%":
        return f"{value:.1f} %"
    if unit == "s/GB":
        return f"{value:.2f} s/GB"
    return f"{value:g}"


def _range(summary: dict[str, float], digits: int = 0) -> str:
    return (
        f"{summary['median']:.{digits}f} ({summary['min']:.{digits}f}–{summary['max']:.{digits}f})"
    )


def _short(name: str) -> str:
    """``snapshot.<sha256>.json`` -> ``snapshot``, ``3.root.json`` -> ``3.root``."""
    return re.sub(r"\.[0-9a-f]{64}", "", name).removesuffix(".json")


def targets_table(results: dict[str, Any]) -> list[str]:
    """The headline: every target with what was measured and whether it is met."""
    lines = ["| What | Measured | Target | Met |", "|---|---:|---:|:---:|"]
    for t in results["targets"]:
        op = {">=": "≥", "<=": "≤"}[t["op"]]
        target = f"{op} {_fmt(t['limit'], t['unit'])}"
        met = "yes" if t["met"] else "**no**"
        lines.append(f"| {t['label']} | {_fmt(t['measured'], t['unit'])} | {target} | {met} |")
    return lines


def summary_section(results: dict[str, Any], report_link: str, chart_link: str) -> str:
    """What ``docs/performance.md`` shows between its results markers."""
    mach, src = results["machine"], results["source"]
    changes = src["proxy_changes"]
    tree = "" if not changes else f" + uncommitted changes in `proxy/` ({len(changes)} files)"
    lines = [
        f"Full run of {results['started']} on {mach['nproc']} CPUs ({mach['cpu_model']}), "
        f"Python {mach['python']}, commit `{src['commit'][:12]}`{tree}"
        + (
            f", load average {mach['load_average_start'][0]:.1f} at the start"
            if "load_average_start" in mach
            else ""
        )
        + ". "
        f"Details, every section and the CPU table: [{report_link}]({report_link}).",
        "",
        *targets_table(results),
        "",
        f"![benchmark chart]({chart_link})",
    ]
    return "\n".join(lines)


def update_between_markers(path: Path, body: str) -> bool:
    """Replace what lies between ``<!-- bench:results:start -->`` and ``...:end -->`` in
    ``path``; False (nothing written) when the file or a marker is missing."""
    start, end = "<!-- bench:results:start -->", "<!-- bench:results:end -->"
    try:
        text = path.read_text()
    except OSError:
        return False
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{body}\n{end}{tail}")
    return True


def markdown(results: dict[str, Any], chart_name: str | None = None) -> str:
    m, bs, bc = results["manifests"], results["blob_single"], results["blob_concurrent"]
    cold, core, sf, cpu = (
        results["cold"],
        results["trust_core"],
        results["single_flight"],
        results["cpu"],
    )
    mach, src, plan = results["machine"], results["source"], results["plan"]
    out: list[str] = []
    w = out.append
    w(f"# Benchmark results ({results['mode']} run, {results['started']})")
    w("")
    w(
        f"Machine: {mach['nproc']} CPUs ({mach['cpu_model'] or 'unknown model'}), "
        f"{mach['memory_gib']} GiB, Linux {mach['kernel']}, Python {mach['python']} "
        f"({mach['event_loop']}); {mach['tools']['nginx']}, {mach['tools']['wrk'].split(' [')[0]}, "
        f"hey, curl. Everything on loopback, on the same cores as the load generators."
    )
    if "load_average_start" in mach:
        w(
            "Load average (1, 5, 15 min) at the start: "
            + ", ".join(f"{v:.1f}" for v in mach["load_average_start"])
            + "; at the end: "
            + ", ".join(f"{v:.1f}" for v in mach.get("load_average_end", []))
            + "."
        )
    changes = src["proxy_changes"]
    tree = (
        "clean `proxy/`"
        if not changes
        else f"`proxy/` with uncommitted changes ({len(changes)} files, diff "
        f"{src['proxy_diff_lines']} lines, sha256 {src['proxy_diff_sha256']})"
    )
    w(f"Code measured: commit `{src['commit'][:12]}` ({src['commit_subject']}), {tree}.")
    w(f"Run time: {results['duration_s']:.0f} s.")
    w("")
    w("## Targets (ratios against baselines measured in the same run)")
    w("")
    out.extend(targets_table(results))
    w("")
    if chart_name:
        w(f"![benchmark chart]({chart_name})")
        w("")
    workers = m.get("workers", 1)
    w(
        f"## Warm manifest GET by tag ({m['connections']} connections, wrk, "
        f"{m['reps']} × {m['seconds_per_run']:g} s per target, interleaved; "
        f"trustproxy: {workers} workers)"
    )
    w("")
    w(
        "As fast as each target goes. Median (min–max) over the repetitions; CPU = the serving "
        "process tree's CPU seconds per 1,000 requests, and the registry's CPU in the same runs "
        "(trustproxy answers a warm tag from its verified manifest cache: near zero means it "
        "did not ask the registry). wrk CPU: the load generator's share of the machine's "
        "cores in those runs (it runs on the same cores as the servers)."
    )
    w("")
    w(
        "| Target | req/s | × registry | p50 ms | p99 ms | CPU s / 1k req "
        "| registry CPU s / 1k req | wrk CPU | errors |"
    )
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    reg_rps = m["targets"]["registry"]["rps"]["median"]
    for name in TARGETS:
        t = m["targets"][name]
        w(
            f"| {name} | {_range(t['rps'])} | {t['rps']['median'] / reg_rps:.2f}× | "
            f"{_range(t['p50_ms'], 2)} | {_range(t['p99_ms'], 2)} | "
            f"{t['cpu_s_per_1k_requests']:.3f} | "
            f"{t['registry_cpu_s_per_1k_requests']:.3f} | "
            f"{100 * t.get('wrk_cpu_share', 0.0):.0f} % | {t['errors']} |"
        )
    w("")
    if "saturated_added_p99_ms" in m:
        w(
            "At saturation the latency is mostly the queue of "
            f"{m['connections']} connections behind the slowest part (and the generator's "
            "share of the cores): trustproxy minus registry, p50 "
            f"{m['saturated_added_p50_ms']:+.2f} ms, p99 {m['saturated_added_p99_ms']:+.2f} ms. "
            "Not the target's measure; the paced runs below are."
        )
        w("")
    if "paced" in m["targets"]["registry"]:
        w(
            f"### Paced: each connection pauses {m['paced_delay_ms']:g} ms after an answer "
            f"({m['reps']} × {m['paced_seconds']:g} s per target, interleaved)"
        )
        w("")
        w(
            "A load well below every target's capacity, so no queue forms and the percentiles "
            "are each server's own latency (wrk times a request from its send)."
        )
        w("")
        w("| Target | req/s | p50 ms | p99 ms | p99.9 ms | max ms | errors |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        for name in TARGETS:
            t = m["targets"][name]["paced"]
            w(
                f"| {name} | {_range(t['rps'])} | {_range(t['p50_ms'], 2)} | "
                f"{_range(t['p99_ms'], 2)} | {_range(t['p999_ms'], 2)} | "
                f"{_range(t['max_ms'], 1)} | {t['errors']} |"
            )
        w("")
    w(
        f"Added latency vs the registry (paced): trustproxy p50 "
        f"{m['trustproxy_added_p50_ms']:+.2f} ms, p99 {m['trustproxy_added_p99_ms']:+.2f} ms"
        + (
            f", p99.9 {m['trustproxy_added_p999_ms']:+.2f} ms"
            if "trustproxy_added_p999_ms" in m
            else ""
        )
        + f"; nginx p99 {m['nginx_added_p99_ms']:+.2f} ms."
    )
    w("")
    w(
        f"## Blobs (curl, {bs['blob_bytes'] // MiB} MiB × {bs['reps']} single stream; "
        f"{bc['streams']} × {bc['blob_bytes'] // MiB} MiB concurrent × {bc['reps']})"
    )
    w("")
    w(
        "| Target | 1 stream MB/s | × nginx | CPU s/GB | "
        f"{bc['streams']} streams MB/s | × nginx | CPU s/GB | RSS idle → peak MiB "
        "| PSS peak MiB |"
    )
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    ngx_s = bs["targets"]["nginx"]["mb_per_s"]["median"]
    ngx_c = bc["targets"]["nginx"]["mb_per_s"]["median"]
    for name in TARGETS:
        s, c = bs["targets"][name], bc["targets"][name]
        w(
            f"| {name} | {_range(s['mb_per_s'])} | {s['mb_per_s']['median'] / ngx_s:.2f}× | "
            f"{s['cpu_s_per_gb']:.2f} | {_range(c['mb_per_s'])} | "
            f"{c['mb_per_s']['median'] / ngx_c:.2f}× | {c['cpu_s_per_gb']:.2f} | "
            f"{c['rss_idle_mib']:.0f} → {c['rss_peak_mib']:.0f} | "
            f"{c.get('pss_peak_mib', 0.0):.0f} |"
        )
    w("")
    w(
        "MB = 10⁶ bytes. RSS: the serving process tree (nginx: master + workers; trustproxy: "
        "master + workers), sampled every 20 ms during the concurrent runs; the sum counts "
        "pages the processes share (a forked master's imports) once per process. PSS counts "
        "each shared page once in all: the memory the tree takes."
    )
    w("")
    br = results.get("blob_redirect")
    if br:
        w(
            f"With `blobs: redirect` (the same {br['blob_bytes'] // MiB} MiB blob, curl following "
            f"the 307 to the registry, interleaved with nginx, {br['reps']} each): "
            f"{_range(br['redirect_mb_per_s'])} MB/s, {br['redirect_vs_nginx']:.2f}× nginx "
            f"({_range(br['nginx_mb_per_s'])} MB/s); the proxy's CPU "
            f"{br['proxy_cpu_s_per_gb']:.3f} s per GB delivered. No hash check by the proxy "
            "then (the client's only): a trade, not the target's measure."
        )
        w("")
    w(f"## Cold tag resolution ({cold['reps']} new repositories, median (min–max))")
    w("")
    w("| | ms |")
    w("|---|---:|")
    w(
        f"| trustproxy: first GET of `v1` in a repository it never saw | "
        f"{_range(cold['trustproxy_ms'], 1)} |"
    )
    w(f"| raw: the same GETs back to back on warm connections | {_range(cold['raw_ms'], 1)} |")
    w(f"| trustproxy: the next GET (warm) | {_range(cold['warm_after_ms'], 2)} |")
    w("")
    w(
        f"Ratio {cold['trustproxy_vs_raw']:.2f}×. Raw GETs: notary "
        f"{', '.join('`' + _short(f) + '`' for f in cold['files'])} "
        "(root, the next-root probe, timestamp, snapshot, targets, delegations), then the "
        "manifest by digest from the registry."
    )
    w("")
    w("## Trust core (in process)")
    w("")
    w("| Operation | median ms (min–max) |")
    w("|---|---:|")
    w(f"| baseline: `json.loads` of the targets file | {_range(core['json_loads_ms'], 1)} |")
    for op in core["operations"]:
        w(f"| {op['name']} | {_range(op['ms'], 1)} |")
    w("")
    w(f"## Single flight ({sf['requests']:,} concurrent cold requests, hey)")
    w("")
    statuses = ", ".join(f"{k}: {v}" for k, v in sf["statuses"].items())
    w(
        f"Answers: {statuses}; errors {sf['errors']}; p50 {sf['p50_ms']:.0f} ms, "
        f"p99 {sf['p99_ms']:.0f} ms. Notary fetches: {sf['notary_fetches']} for "
        f"{sf['distinct_files']} files (max {sf['max_fetches_per_file']} per file)."
    )
    w("")
    sc = results.get("scale")
    if sc:
        w(
            f"## Scale ({sc['repositories']:,} repositories × {sc['tags_per_repository']} "
            f"signed tags, {sc['connections']} connections, "
            f"{sc['seconds_per_point']:g} s per point)"
        )
        w("")
        w(
            "Trust data made in process, served by a stub notary over HTTPS; one image per "
            f"repository in the registry (tag `v0`). A trustproxy of its own ({sc['workers']} "
            f"worker, Redis, refresh_seconds {sc['refresh_seconds']:g}: the cache is measured, "
            "not the timestamp re-checks). At each point the new repositories are pulled "
            "cold, then wrk asks for `v0` of every repository so far, round robin."
        )
        w("")
        w(
            "| Repositories | warm req/s | proxy CPU ms / req | p99 ms | errors | cold pulls/s "
            "| RSS MiB | RSS KiB per added repo | Redis keys | Redis KiB per added repo |"
        )
        w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in sc["rows"]:
            cpu_ms = r.get("cpu_ms_per_request")
            if cpu_ms is None and r["warm"]["requests"]:  # results written before the field
                cpu_ms = r["cpu_s"]["trustproxy"] * 1000 / r["warm"]["requests"]
            w(
                f"| {r['repositories']:,} | {r['warm_rps']:.0f} | "
                f"{'' if cpu_ms is None else f'{cpu_ms:.3f}'} | {r['warm_p99_ms']:.2f} | "
                f"{r['errors']} | {r['cold_pulls_per_s']:.0f} | {r['rss_mib']:.1f} | "
                f"{r.get('rss_marginal_kib', r['rss_per_repository_kib']):.1f} | "
                f"{r['redis_keys']} | "
                f"{r.get('redis_marginal_kib', r['redis_per_repository_kib']):.1f} |"
            )
        w("")
        w(
            "Per added repo: the growth since the previous point divided by the repositories "
            "added (the first point also carries what a first request warms up: pools, "
            "caches, code paths). Proxy CPU ms per request: the proxy's CPU over the step's "
            "requests, which does not depend on how much of the shared cores it got."
        )
        w("")
        w(
            f"Warm req/s at the last point / the first: {sc['warm_rps_last_vs_first']:.2f}× "
            f"(flat is 1). Notary fetches in all: {sc['notary_fetches']:,}."
        )
        w("")
    w("## CPU")
    w("")
    w("| Process | CPU s per GB streamed | CPU s per 1,000 manifests |")
    w("|---|---:|---:|")
    for name in ("trustproxy", "nginx", "registry"):
        w(
            f"| {name} | {cpu[name]['cpu_s_per_gb_streamed']:.2f} | "
            f"{cpu[name]['cpu_s_per_1k_manifests']:.3f} |"
        )
    w("")
    w(
        "(registry: its own CPU when it is hit directly.) Plan: "
        + ", ".join(f"{k}={v}" for k, v in plan.items() if k != "mode")
        + "."
    )
    w("")
    return "\n".join(out)


def chart(results: dict[str, Any], path: Path) -> None:
    """Six panels: manifest throughput and latency, blob throughput (1 and N streams), cold
    resolution, and every target as "measured relative to the limit" (≥ 1 means met)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, bs, bc, cold = (
        results["manifests"],
        results["blob_single"],
        results["blob_concurrent"],
        results["cold"],
    )
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    colours = [COLOURS[n] for n in TARGETS]

    def bars(ax: Any, section: dict[str, Any], key: str, title: str, ylabel: str) -> None:
        values = [section["targets"][n][key]["median"] for n in TARGETS]
        ax.bar(TARGETS, values, color=colours)
        for i, n in enumerate(TARGETS):
            points = [r[key] for r in section["targets"][n]["runs"]]
            ax.scatter([i] * len(points), points, color="black", s=8, zorder=3)
        for i, v in enumerate(values):
            ax.annotate(f"{v:,.0f}", (i, v), ha="center", va="bottom", fontsize=9)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)

    bars(axes[0][0], m, "rps", f"warm manifest GET by tag, {m['connections']} clients", "req/s")

    ax = axes[0][1]
    x = range(len(TARGETS))
    lat = {n: m["targets"][n].get("paced", m["targets"][n]) for n in TARGETS}
    p50 = [lat[n]["p50_ms"]["median"] for n in TARGETS]
    p99 = [lat[n]["p99_ms"]["median"] for n in TARGETS]
    ax.bar([i - 0.2 for i in x], p50, width=0.4, label="p50", color=colours, alpha=0.55)
    ax.bar([i + 0.2 for i in x], p99, width=0.4, label="p99", color=colours)
    ax.set_xticks(list(x), TARGETS)
    ax.set_title("manifest latency, paced (light: p50, dark: p99)", fontsize=10)
    ax.set_ylabel("ms")

    bars(axes[0][2], bs, "mb_per_s", f"1 stream, {bs['blob_bytes'] // MiB} MiB blob", "MB/s")
    bars(
        axes[1][0],
        bc,
        "mb_per_s",
        f"{bc['streams']} streams × {bc['blob_bytes'] // MiB} MiB (aggregate)",
        "MB/s",
    )

    ax = axes[1][1]
    labels = ["raw GETs", "trustproxy cold", "trustproxy warm"]
    values = [
        cold["raw_ms"]["median"],
        cold["trustproxy_ms"]["median"],
        cold["warm_after_ms"]["median"],
    ]
    ax.bar(labels, values, color=[COLOURS["registry"], COLOURS["trustproxy"], "#ff9896"])
    for i, v in enumerate(values):
        ax.annotate(f"{v:.1f}", (i, v), ha="center", va="bottom", fontsize=9)
    ax.set_title("tag resolution in a new repository", fontsize=10)
    ax.set_ylabel("ms")

    ax = axes[1][2]
    names: list[str] = []
    scores: list[float] = []
    met: list[bool] = []
    texts: list[str] = []
    for t in results["targets"]:
        measured, limit = float(t["measured"]), float(t["limit"])
        if t["op"] == ">=":
            score = measured / limit if limit else 0.0
        elif t["unit"] == "ms" and t["key"] == "manifest_added_p99_ms":
            score = limit / max(measured, 0.01) if measured > 0 else 10.0
        else:
            score = limit / measured if measured > 0 else 10.0
        names.append(t["key"].replace("_", " "))
        scores.append(max(min(score, 10.0), 0.02))
        met.append(bool(t["met"]))
        texts.append(_fmt(measured, t["unit"]))
    ax.barh(names, scores, color=["#2ca02c" if ok else "#d62728" for ok in met])
    for i, (score, text) in enumerate(zip(scores, texts, strict=True)):
        ax.annotate(text, (score, i), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=8)  # fmt: skip
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlim(0.02, 40)
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=8)
    ax.set_title("targets: headroom (≥ 1 = met, log scale)", fontsize=10)

    src = results["source"]
    fig.suptitle(
        f"trustproxy benchmark ({results['mode']}, {results['started']}, "
        f"{results['machine']['nproc']} CPUs, commit {src['commit'][:10]}"
        f"{' + local changes' if src['proxy_changes'] else ''})",
        fontsize=12,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
