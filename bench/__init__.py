"""Benchmarks and studies, run from the repo root as modules: `python -m bench.bench_freeu`."""
