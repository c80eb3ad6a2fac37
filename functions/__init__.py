"""Tierflow's entrypoints: event handlers (one module each), the CLI and the worker."""
