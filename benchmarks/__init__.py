"""Benchmarks of the relay against baselines; run with `python -m benchmarks.run [--quick]`."""
