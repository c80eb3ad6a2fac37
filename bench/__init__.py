"""Benchmarks that print measured figures; run them as scripts (`python bench/events.py`)."""
