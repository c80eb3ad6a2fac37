"""Tierflow's shared code: the rules (`domain`), the event runtime (`runtime`), the adapters to
PostgreSQL, S3 and the dispatchers (`adapters`), the diffusers side (`media`), and the bootstrap,
settings and errors every entrypoint uses."""
