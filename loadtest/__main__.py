"""``python -m loadtest``: the benchmark suite of the "Performance" issue (``make bench``).

Starts the real stack (docker-registry, notary-server + signer, redis, trustproxy, nginx as a
plain reverse proxy), measures every section interleaved against same-run baselines, and
writes ``loadtest/results/<date>.json`` plus a Markdown report and a PNG chart
(``docs/performance/latest.md`` / ``latest.png`` for a full run). ``--quick`` is a ~1 minute
smoke version with small sizes and single repetitions (its numbers are not the reported ones).

Benchmarks report timings and ratios against a baseline measured in the same run; they
never assert on time (see the project README). ``python -m loadtest.bench_trust`` still
runs the trust-core micro-benchmark on its own.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from loadtest.report import chart, markdown, summary_section, update_between_markers
from loadtest.suite import FULL, QUICK, REPO_ROOT, run_suite
from loadtest.tools import missing_tools


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="~1 minute smoke run")
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=REPO_ROOT / "loadtest" / "results",
        help="where <date>.json (and, for quick runs, the .md/.png) go",
    )
    parser.add_argument(
        "--docs-dir",
        type=Path,
        default=None,
        help="where latest.md/latest.png go (default: docs/performance for a full run, "
        "none for --quick)",
    )
    parser.add_argument("--no-docs", action="store_true", help="do not write latest.md/png")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the servers' configs and logs here (default: a temp dir)",
    )
    args = parser.parse_args(argv)

    missing = missing_tools()
    if missing:
        print(
            f"missing tools: {', '.join(missing)} "
            "(bash scripts/install-system-deps.sh && bash scripts/install-bench-deps.sh)",
            file=sys.stderr,
        )
        return 2
    if importlib.util.find_spec("matplotlib") is None:
        print("matplotlib is not installed (.venv/bin/pip install -e '.[bench]')", file=sys.stderr)
        return 2
    plan = QUICK if args.quick else FULL
    docs_dir = args.docs_dir
    if docs_dir is None and not args.quick:
        docs_dir = REPO_ROOT / "docs" / "performance"
    if args.no_docs:
        docs_dir = None

    if args.workdir is not None:
        results = run_suite(plan, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="trustproxy-bench-") as tmp:
            results = run_suite(plan, Path(tmp))

    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    suffix = "" if plan.mode == "full" else f"-{plan.mode}"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.results_dir / f"{stamp}{suffix}.json"
    json_path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    written = [json_path]
    outputs = [(args.results_dir, f"{stamp}{suffix}")]
    if docs_dir is not None:
        outputs.append((docs_dir, "latest"))
    for directory, base in outputs:
        directory.mkdir(parents=True, exist_ok=True)
        png = directory / f"{base}.png"
        chart(results, png)
        md = directory / f"{base}.md"
        md.write_text(markdown(results, chart_name=png.name))
        written += [md, png]
    if docs_dir is not None:
        page = docs_dir.parent / f"{docs_dir.name}.md"  # docs/performance -> performance.md
        link = f"{docs_dir.name}/latest"
        if update_between_markers(page, summary_section(results, f"{link}.md", f"{link}.png")):
            written.append(page)
    print()
    for t in results["targets"]:
        print(
            f"  {'met    ' if t['met'] else 'NOT MET'}  {t['label']}: "
            f"{t['measured']:.2f} {t['unit']} (target {t['op']} {t['limit']:g})"
        )
    print()
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
