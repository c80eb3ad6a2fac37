"""Builds what entrypoints and handlers need from the settings: the one place that wires services.

Embedded services start on first use only, so a command that needs just the database never
starts the S3 server (and never imports boto3: the CLI starts in half the time).
"""

from functools import cached_property

import psycopg

from infra import embedded
from shared import db
from shared.config import Settings
from shared.errors import ServiceUnavailable


class Deps:
    """Connections and clients for one process, built lazily from `Settings`."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings()

    @cached_property
    def database_url(self) -> str:
        if self.settings.database_url is not None:
            return self.settings.database_url.get_secret_value()
        try:
            return embedded.postgres_url(self.settings.home)
        except embedded.EmbeddedStackError as exc:
            raise ServiceUnavailable(str(exc)) from exc

    def connect(self, check_schema: bool = True) -> psycopg.Connection:
        """A new autocommit connection. The embedded database is migrated on first use; an
        external one must be migrated explicitly (`tierflow db migrate`) and is checked."""
        conn = db.connect(self.database_url)
        if check_schema and not self._schema_checked:
            try:
                if self.settings.embedded_database:
                    db.migrate(conn)
                else:
                    db.require_current_schema(conn)
            except BaseException:
                conn.close()
                raise
            self._schema_checked = True
        return conn

    _schema_checked = False

    @cached_property
    def s3(self):
        """A boto3 S3 client whose bucket exists."""
        from shared import storage

        if self.settings.embedded_s3:
            try:
                endpoint = embedded.s3_endpoint(self.settings.home)
            except embedded.EmbeddedStackError as exc:
                raise ServiceUnavailable(str(exc)) from exc
            client = storage.s3_client(endpoint.url, self.settings.aws_region, endpoint.access_key, endpoint.secret_key)
        else:
            client = storage.s3_client(self.settings.s3_endpoint_url, self.settings.aws_region)
        storage.ensure_bucket(client, self.settings.s3_bucket)
        return client

    @property
    def bucket(self) -> str:
        return self.settings.s3_bucket
