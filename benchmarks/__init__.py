"""The load benchmark of DESIGN §9: `make bench` (or `uv run python -m benchmarks.run`)."""
