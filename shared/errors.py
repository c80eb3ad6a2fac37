"""One error family for everything Tierflow refuses, so every entrypoint can report it the same way.

Messages are written for the person who hit them: what is wrong and what to do about it.
"""


class TierflowError(Exception):
    """Base of every error Tierflow raises on purpose. `exit_code` is what the CLI exits with."""

    exit_code = 1


class InvalidInput(TierflowError):
    """The request itself is malformed (bad size, bad name, bad JSON): a usage error."""

    exit_code = 2


class NotFound(TierflowError):
    """The request names something that does not exist."""


class Conflict(TierflowError):
    """The request is well formed but a rule refuses it (in use, duplicate, built-in, no default)."""


class ServiceUnavailable(TierflowError):
    """A service Tierflow needs (PostgreSQL, S3) cannot be reached or started."""


class SchemaNotReady(TierflowError):
    """The database schema is older than this code."""
