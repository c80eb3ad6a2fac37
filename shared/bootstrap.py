"""Builds what entrypoints and handlers need from the settings: the one place that wires services.

Embedded services start on first use only, so a command that needs just the database never
starts the S3 server (and never imports boto3: the CLI starts in half the time).
"""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property

import psycopg

from events import tracing
from infra import embedded
from shared.adapters import db
from shared.config import Settings
from shared.errors import Conflict, ServiceUnavailable
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
        with self.connect() as conn, conn.transaction(), tracing.continued("unit of work"):
            yield UnitOfWork(conn, self.source)

    @cached_property
    def ports(self) -> Ports:
        """What this process's handlers are given besides their unit of work."""
        return Ports(self.settings, storage=lambda: Storage(self.s3, self.bucket), dispatcher=lambda: self.dispatcher)

    def default_model(self) -> str:
        """The catalogue name of the model jobs run when they name none: TIERFLOW_MODEL, by default
        `tiny`. The tiny model (built under home) and a directory or hub id TIERFLOW_MODEL gives are
        added to the catalogue on first use: the operator's configuration names them, not a job."""
        from shared.domain import catalogue
        from shared.media import models

        wanted = self.settings.model or "tiny"
        source = None if catalogue.NAME.fullmatch(wanted) else wanted
        with self.uow() as uow:
            if source is None:
                if wanted != "tiny" or wanted in catalogue.names(uow.conn):
                    return wanted  # a name; refused at submission when it is not in the catalogue
            else:
                directory = models.pipeline_directory(source)
                source = str(directory) if directory else source
                found = catalogue.by_source(uow.conn, source)
                if found:
                    return found["name"]
        # Pinning reads every file (or asks the Hub): outside any transaction.
        pinned = models.pin_model(source or str(models.tiny_model_directory(self.settings.home)))
        name = "tiny" if source is None else _name_for(source)
        try:
            with self.uow() as uow:
                catalogue.add(uow.conn, name, source=pinned.source, revision=None, pin=pinned.pin,
                              added_by="TIERFLOW_MODEL" if source else "first use")
        except Conflict as exc:
            raise Conflict(f"TIERFLOW_MODEL={wanted} is not in the model catalogue, and {exc}; add it with "
                           "`tierflow models add NAME SOURCE` and set TIERFLOW_MODEL=NAME") from None
        return name

    def add_model(self, name: str, source: str, revision: str | None = None,
                  added_by: str | None = None) -> tuple[dict, bool]:
        """Pin `source` (a directory's file hashes, a hub revision's commit) and add it to the
        catalogue as `name`; returns the entry and whether it is new (see shared.domain.catalogue)."""
        from shared.domain import catalogue
        from shared.media.models import pin_model

        catalogue.check_name(name)  # before the pinning, which may read gigabytes
        pinned = pin_model(source, revision)
        with self.uow() as uow:
            return catalogue.add(uow.conn, name, source=pinned.source, revision=pinned.revision, pin=pinned.pin,
                                 added_by=added_by)

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


def _name_for(source: str) -> str:
    """A catalogue name for a directory or hub id: its last part ("…/models/sd-video" →
    "sd-video"), with what a name may not hold replaced."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", source.rstrip("/").rsplit("/", 1)[-1]).lstrip("._-")[:64]
    return name or "model"
