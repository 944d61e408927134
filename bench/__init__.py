"""Benchmarks of the harness's own cost: a fake server, the driver, the checks (see bench/README.md)."""
