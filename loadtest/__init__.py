"""Benchmarks (run as modules, e.g. python -m loadtest.bench_trust)."""
