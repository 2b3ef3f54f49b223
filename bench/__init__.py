"""Benchmarks of the process group (`python bench/run.py`); see docs/benchmarks.md."""
