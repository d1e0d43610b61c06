"""Benchmark scripts (run as ``python benchmarks/<name>.py``) and :mod:`benchmarks.protocol`, the
quality protocol's importable pieces they share."""
