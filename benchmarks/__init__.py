"""The benchmark of what users wait for: run ``python benchmarks/bench.py --help``."""
