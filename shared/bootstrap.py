"""Builds what entrypoints and handlers need from the settings: the one place that wires services.

Embedded services start on first use only, so a command that needs just the database never
starts the S3 server (and never imports boto3: the CLI starts in half the time).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property

import psycopg

from infra import embedded
from shared.adapters import db
from shared.config import Settings
from shared.errors import ServiceUnavailable
from shared.runtime.ports import Ports, Storage
from shared.runtime.uow import UnitOfWork


class Deps:
    """Connections and clients for one process, built lazily from `Settings`."""

    def __init__(self, settings: Settings | None = None, source: str = "urn:tierflow:cli",
                 idle_transaction_timeout: float | None = None):
        self.settings = settings or Settings()
        # CloudEvents `source` of the events this process emits.
        self.source = source
        # See shared.adapters.db.connect: workers set it, so a hung one cannot keep jobs locked.
        self.idle_transaction_timeout = idle_transaction_timeout

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
        conn = db.connect(self.database_url, self.idle_transaction_timeout)
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
        """A new transaction for a state change and its events; commits when the block ends.
        (Handlers never open one: the runtime passes them the one it applies the event in.)"""
        with self.connect() as conn, conn.transaction():
            yield UnitOfWork(conn, self.source)

    @cached_property
    def ports(self) -> Ports:
        """What this process's handlers are given besides their unit of work."""
        return Ports(self.settings, storage=lambda: Storage(self.s3, self.bucket), dispatcher=lambda: self.dispatcher)

    def resolve_model(self, model: str | None) -> str:
        """The model a new scene is generated with (see shared.media.models.resolve_model)."""
        from shared.media.models import resolve_model

        return resolve_model(self.settings, model)

    @cached_property
    def s3(self):
        """A boto3 S3 client whose bucket exists."""
        from shared.adapters import storage

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
        """Stop what this process started for jobs: the local warm workers."""
        dispatcher = self.__dict__.get("dispatcher")  # only when it was ever used
        if dispatcher is not None and hasattr(dispatcher, "close"):
            dispatcher.close()

    @cached_property
    def dispatcher(self):
        """Where generation jobs run (`TIERFLOW_DISPATCHER`: local processes or AWS Batch)."""
        from shared.adapters.dispatch import BatchDispatcher, LocalDispatcher

        return BatchDispatcher(self) if self.settings.dispatcher == "batch" else LocalDispatcher(self)
