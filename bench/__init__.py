"""Benchmarks of pftls-hook: `python -m bench.run` (see bench/run.py)."""
