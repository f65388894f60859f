"""Benchmarks behind ``dreamer-fast bench`` (timing helpers, cases, report)."""
