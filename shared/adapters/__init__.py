"""Adapters to what runs outside the process: PostgreSQL, S3, and where generation jobs run (local
worker processes, AWS Batch)."""
