"""``python -m loadtest.hardening``: faults under load, the soak, and ``docs/hardening.md``.

Runs the faults (registry, Redis and notary-server killed with SIGKILL under wrk + prober
load and restarted on the same port) and the soak (``--soak-minutes``, default 20), then
writes the raw results to ``loadtest/results/hardening/<date>.json`` and the report, with
the attempt records the hardening tests wrote (``--attempts``), to ``docs/hardening.md``
and ``docs/hardening/*.png``. ``--quick`` is a short run (short phases, a one-minute soak)
whose report goes next to its results instead of into docs/.

Exit status: 0 when everything went as expected, 1 when a fault phase did not or the soak's
memory bound was exceeded (the report is written either way), 2 when a tool is missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtest.hardening import faults as faults_mod
from loadtest.hardening import report
from loadtest.hardening.soak import SoakPlan, run_soak, soak_attempt, soak_problems
from loadtest.suite import REPO_ROOT, machine, source_state
from loadtest.tools import missing_tools
from testbed import attempts as attempts_mod

NEEDED = ("docker-registry", "notary", "notary-server", "notary-signer", "redis-server")
DEFAULT_ATTEMPTS = Path("loadtest/results/hardening/attempts.jsonl")


def _display(path: Path) -> str:
    """A path as the reader of the report should see it: relative to the repository."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return path.name


def _attempt(raw: dict[str, Any]) -> attempts_mod.Attempt:
    statuses = {str(k): int(v) for k, v in raw["statuses"].items()}
    return attempts_mod.Attempt(
        surface=raw["surface"],
        attack=raw["attack"],
        expected=raw["expected"],
        requests=sum(statuses.values()),
        statuses=dict(sorted(statuses.items())),
        unsigned_served=int(raw["unsigned_served"]),
        ok=bool(raw["ok"]),
        detail=str(raw.get("detail", "")),
        extra=dict(raw.get("extra", {})),
    )


def _own_attempts(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's own faults and soak as attempt records (not written to the tests' file:
    it is theirs)."""
    suffix = f" ({results['mode']} run)"
    own = faults_mod.attempts_from(results["faults"], suffix=suffix) if results["faults"] else []
    if results["soak"]:
        own.append(soak_attempt(results["soak"]))
    return own


def _write_report(results: dict[str, Any], json_path: Path, docs_dir: Path | None) -> list[Path]:
    """The Markdown page and its charts for ``results`` (saved at ``json_path``): into
    ``docs_dir`` when given, docs/ for a full run, next to the JSON for a quick one."""
    mode = results["mode"]
    attempts = [_attempt(raw) for raw in (*results["attempts"], *_own_attempts(results))]
    if docs_dir is not None:
        page_dir, page_name, charts_dir = docs_dir, "hardening.md", docs_dir / "hardening"
    elif mode == "full":
        page_dir, page_name = REPO_ROOT / "docs", "hardening.md"
        charts_dir = page_dir / "hardening"
    else:
        page_dir, page_name = json_path.parent, json_path.with_suffix(".md").name
        charts_dir = json_path.with_suffix("")
    written = []
    faults_png = soak_png = None
    if results["faults"]:
        path = charts_dir / "faults.png"
        report.faults_chart(results["faults"], path)
        faults_png = path.relative_to(page_dir).as_posix()
        written.append(path)
    if results["soak"]:
        path = charts_dir / "soak.png"
        report.soak_chart(results["soak"], path)
        soak_png = path.relative_to(page_dir).as_posix()
        written.append(path)
    page = page_dir / page_name
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(
        report.markdown(results, attempts, faults_chart=faults_png, soak_chart=soak_png)
    )
    written.append(page)
    return written


def main(argv: list[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.hardening",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="short phases, 1-minute soak")
    parser.add_argument(
        "--soak-minutes",
        type=float,
        default=None,
        help="soak length (default 20, or 1 with --quick; 0: no soak)",
    )
    parser.add_argument("--skip-faults", action="store_true", help="soak (and report) only")
    parser.add_argument(
        "--attempts",
        type=Path,
        default=REPO_ROOT / DEFAULT_ATTEMPTS,
        help="the attempt records of the hardening tests (JSON lines)",
    )
    parser.add_argument(
        "--results-dir", type=Path, default=REPO_ROOT / "loadtest" / "results" / "hardening"
    )
    parser.add_argument(
        "--docs-dir",
        type=Path,
        default=None,
        help="where hardening.md goes (default: docs/ for a full run, the results dir for --quick)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the servers' configs and logs here (default: a temp dir)",
    )
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        metavar="RESULTS_JSON",
        help="run nothing: write the report again from the results of an earlier run",
    )
    parser.add_argument("--via-make", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(args_list)
    if args.render is not None:
        earlier: dict[str, Any] = json.loads(args.render.read_text())
        for path in _write_report(earlier, args.render, args.docs_dir):
            print(f"wrote {_display(path)}")
        return 0

    missing = missing_tools(NEEDED)
    if missing:
        print(
            f"missing tools: {', '.join(missing)} (bash scripts/install-system-deps.sh)",
            file=sys.stderr,
        )
        return 2
    if importlib.util.find_spec("matplotlib") is None:
        print("matplotlib is not installed (.venv/bin/pip install -e '.[bench]')", file=sys.stderr)
        return 2
    minutes = args.soak_minutes if args.soak_minutes is not None else (1.0 if args.quick else 20.0)
    plan = faults_mod.QUICK if args.quick else faults_mod.FULL
    mode = "quick" if args.quick else "full"

    started = datetime.now(UTC)
    t0 = time.perf_counter()
    shown = [a for a in args_list if a != "--via-make"]
    results: dict[str, Any] = {
        "schema": 1,
        "started": started.isoformat(timespec="seconds"),
        "mode": mode,
        "command": shlex.join(["python", "-m", "loadtest.hardening", *shown]),
        "via_make": args.via_make,
        "machine": machine(),
        "source": source_state(),
        "attempts_file": _display(args.attempts),
        "faults": None,
        "soak": None,
    }
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="trustproxy-hardening-") as tmp:
        workdir = args.workdir or Path(tmp)
        if not args.skip_faults:
            faults_mod.log(f"faults under load ({mode})")
            results["faults"] = faults_mod.run_faults(plan, workdir / "faults")
            problems += results["faults"]["violations"]
        if minutes > 0:
            interval = 10.0 if minutes >= 5 else 5.0
            soak = run_soak(SoakPlan(minutes=minutes, interval=interval), workdir / "soak")
            results["soak"] = soak
            problems += soak_problems(soak)
    results["duration_s"] = round(time.perf_counter() - t0, 1)
    results["attempts"] = [asdict(a) for a in attempts_mod.load(args.attempts)]
    results["attempts_recorded"] = len(results["attempts"])
    stamp = started.strftime("%Y-%m-%dT%H%M%SZ")
    suffix = "" if mode == "full" else f"-{mode}"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.results_dir / f"hardening-{stamp}{suffix}.json"
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    written = [json_path, *_write_report(results, json_path, args.docs_dir)]
    recorded = results["attempts_recorded"]
    own = len(_own_attempts(results))

    print()
    if results["faults"]:
        f = results["faults"]
        print(
            f"faults: {'as expected' if f['ok'] else 'NOT as expected'}; prober "
            f"{f['totals']['requests']} requests, wrk {f['wrk_requests']}; unsigned served "
            f"{f['totals']['unsigned_served']}; PIDs unchanged {f['pids']['unchanged']}"
        )
    if results["soak"]:
        s = results["soak"]
        for name, fl in s["flatness"].items():
            if isinstance(fl, dict):
                print(
                    f"soak {name}: RSS {fl['rss_at_warmup_mib']:.1f} -> {fl['rss_end_mib']:.1f} "
                    f"MiB ({fl['rss_growth_mib']:+.1f}, bound {s['bound_mib']:g}), slope "
                    f"{fl['rss_slope_second_half_mib_per_h']:+.1f} MiB/h"
                )
    print(f"attempt records: {recorded} from {_display(args.attempts)}, {own} from this run")
    for p in problems:
        print(f"  NOT AS EXPECTED: {p}")
    for path in written:
        print(f"wrote {_display(path)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
