"""Benchmarks of the gateway, each runnable as `python -m benchmarks.<name>`.

Every benchmark starts its own gateway (temporary SQLite database, daphne on a free
loopback port), measures a baseline in the same run, and prints each figure with its
ratio to that baseline. What they share is in `benchmarks.harness`; each module here is
one benchmark's scenario."""
