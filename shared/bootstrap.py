"""Builds what entrypoints and handlers need from the settings: the one place that wires services.

Embedded services start on first use only, so a command that needs just the database never
starts the S3 server (and never imports boto3: the CLI starts in half the time).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cached_property

import psycopg

from infra import embedded
from shared import db
from shared.config import Settings
from shared.errors import ServiceUnavailable
from shared.uow import UnitOfWork

# The unit of work a consumer runtime opened for the event being handled: a handler's own
# `deps.uow()` joins it, so its effects commit together with the record that it ran.
_current_uow: ContextVar[UnitOfWork | None] = ContextVar("tierflow_current_uow", default=None)


class Deps:
    """Connections and clients for one process, built lazily from `Settings`."""

    def __init__(self, settings: Settings | None = None, source: str = "urn:tierflow:cli"):
        self.settings = settings or Settings()
        # CloudEvents `source` of the events this process emits.
        self.source = source

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

    @contextmanager
    def uow(self) -> Iterator[UnitOfWork]:
        """A transaction for a state change and its events; commits when the block ends.

        Inside a consumer runtime's transaction (see `joined_uow`) it joins that one instead.
        """
        current = _current_uow.get()
        if current is not None:
            yield current
            return
        with self.connect() as conn, conn.transaction():
            yield UnitOfWork(conn, self.source)

    @contextmanager
    def joined_uow(self, uow: UnitOfWork) -> Iterator[None]:
        """Make `deps.uow()` in this block (this thread) use `uow`."""
        token = _current_uow.set(uow)
        try:
            yield
        finally:
            _current_uow.reset(token)

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

    def close(self) -> None:
        """Stop what this process started for jobs: the local dispatcher's queue and workers."""
        dispatcher = self.__dict__.get("dispatcher")  # only when it was ever used
        if dispatcher is not None and hasattr(dispatcher, "close"):
            dispatcher.close()

    @cached_property
    def dispatcher(self):
        """Where generation jobs run (`TIERFLOW_DISPATCHER`: local processes or AWS Batch)."""
        from shared.dispatch import BatchDispatcher, LocalDispatcher

        return BatchDispatcher(self) if self.settings.dispatcher == "batch" else LocalDispatcher(self)
