"""Performance benchmarks: `python -m benchmarks <name>` prints JSON and a table (numbers, never pass/fail)."""
