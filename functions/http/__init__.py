"""The HTTP API and the web UI of `tierflow serve`."""
