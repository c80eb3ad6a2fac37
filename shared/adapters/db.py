"""PostgreSQL access and the migrations runner.

Migrations are the SQL files in `infra/migrations/NNNN_name.sql`, applied in order, each in its
own transaction, and recorded in `schema_migrations` with a checksum so that a migration edited
after it was applied is noticed instead of silently diverging.
"""

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import TypeVar

import psycopg
from psycopg.rows import dict_row

from shared.errors import SchemaNotReady, ServiceUnavailable

MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Any fixed number: serialises concurrent `db migrate` runs on one database.
MIGRATION_LOCK_KEY = 5_921_347_001
T = TypeVar("T")


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def connect(url: str, idle_transaction_timeout: float | None = None,
            connect_timeout: float | None = None) -> psycopg.Connection:
    """Open an autocommit connection whose rows are dicts.

    Autocommit: every write happens inside an explicit `with conn.transaction():` block, so a
    transaction's extent is visible in the code and a read never holds one open.
    With `idle_transaction_timeout`, the server ends a transaction left idle that many seconds
    (its process hung or stopped mid-transaction) and so releases the rows it locked;
    `connect_timeout` bounds the wait for a server that does not answer (a probe's).
    A refused connection becomes ServiceUnavailable.
    """
    extra = {} if connect_timeout is None else {"connect_timeout": max(1, round(connect_timeout))}
    if idle_transaction_timeout is not None:
        extra["options"] = f"-c idle_in_transaction_session_timeout={int(idle_transaction_timeout * 1000)}"
    try:
        return psycopg.connect(url, row_factory=dict_row, autocommit=True, **extra)
    except psycopg.OperationalError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServiceUnavailable(f"cannot connect to PostgreSQL: {first_line}") from exc


def with_reconnect(action: Callable[[], T], *, for_seconds: float, first_pause: float = 0.2,
                   longest_pause: float = 5.0) -> T:
    """Run `action` (which opens its own connection) and, while PostgreSQL is unreachable or the
    connection drops, again after a pause that doubles up to `longest_pause`, for up to
    `for_seconds` in all; then the last error is raised."""
    deadline = time.monotonic() + for_seconds
    pause = first_pause
    while True:
        try:
            return action()
        except (psycopg.OperationalError, ServiceUnavailable):
            if time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(2 * pause, longest_pause)


def available_migrations() -> list[Migration]:
    """The migrations shipped with this code, in order."""
    found = []
    for entry in resources.files("infra").joinpath("migrations").iterdir():
        match = MIGRATION_FILE.match(entry.name)
        if match:
            found.append(Migration(match[1], match[2], entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


def _ensure_migrations_table(conn: psycopg.Connection) -> None:
    with conn.transaction():
        conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version TEXT PRIMARY KEY,
                   name TEXT NOT NULL,
                   checksum TEXT NOT NULL,
                   applied_at TIMESTAMPTZ NOT NULL DEFAULT NOW())"""
        )


def _applied(conn: psycopg.Connection) -> dict[str, dict]:
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL AS present").fetchone()
    if not exists["present"]:
        return {}
    rows = conn.execute("SELECT version, name, checksum, applied_at FROM schema_migrations").fetchall()
    return {row["version"]: row for row in rows}


def migration_status(conn: psycopg.Connection) -> list[dict]:
    """Every known migration with `applied_at` (None while pending), oldest first.

    Raises SchemaNotReady when an applied migration was edited, or the database carries
    migrations this code does not know (it was migrated by a newer Tierflow).
    """
    applied = _applied(conn)
    available = available_migrations()
    known = {m.version for m in available}
    unknown = sorted(set(applied) - known)
    if unknown:
        raise SchemaNotReady(
            f"the database has migrations this Tierflow does not know ({', '.join(unknown)}): upgrade Tierflow"
        )
    rows = []
    for migration in available:
        record = applied.get(migration.version)
        if record and record["checksum"] != migration.checksum:
            raise SchemaNotReady(
                f"migration {migration.version}_{migration.name} was changed after it was applied; "
                "restore the original file and add a new migration instead"
            )
        rows.append(
            {"version": migration.version, "name": migration.name,
             "applied_at": record["applied_at"] if record else None}
        )
    return rows


def pending_migrations(conn: psycopg.Connection) -> list[Migration]:
    pending = {row["version"] for row in migration_status(conn) if row["applied_at"] is None}
    return [m for m in available_migrations() if m.version in pending]


def migrate(conn: psycopg.Connection) -> list[Migration]:
    """Apply every pending migration, each in its own transaction; returns those applied.

    `conn` must be in autocommit mode (as `connect` makes it) so each migration is a real
    transaction and the advisory lock spans them all.
    """
    conn.execute("SELECT pg_advisory_lock(%s)", [MIGRATION_LOCK_KEY])
    try:
        _ensure_migrations_table(conn)
        done = []
        for migration in pending_migrations(conn):  # read under the lock: a racing run applied none twice
            try:
                with conn.transaction():
                    conn.execute(migration.sql)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        [migration.version, migration.name, migration.checksum],
                    )
            except psycopg.Error as exc:
                raise SchemaNotReady(
                    f"migration {migration.version}_{migration.name} failed and was rolled back: "
                    f"{str(exc).strip().splitlines()[0]}"
                ) from exc
            done.append(migration)
        return done
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", [MIGRATION_LOCK_KEY])


def require_current_schema(conn: psycopg.Connection) -> None:
    """Refuse to work on a database whose schema is behind this code."""
    pending = pending_migrations(conn)
    if pending:
        names = ", ".join(f"{m.version}_{m.name}" for m in pending)
        raise SchemaNotReady(f"the database has {len(pending)} pending migration(s) ({names}): run tierflow db migrate")
