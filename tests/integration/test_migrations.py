"""The migrations runner against a real, empty PostgreSQL database."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from shared.adapters import db
from shared.errors import SchemaNotReady

pytestmark = pytest.mark.integration

SHIPPED = [f"{m.version}_{m.name}" for m in db.available_migrations()]


def test_shipped_migrations_are_numbered_in_order():
    assert SHIPPED[0] == "0001_create_resolution_tiers"
    assert [name[:4] for name in SHIPPED] == [f"{i:04d}" for i in range(1, len(SHIPPED) + 1)]


def test_migrate_applies_everything_once_and_records_it(empty_database_url):
    with db.connect(empty_database_url) as conn:
        assert [r["applied_at"] for r in db.migration_status(conn)] == [None] * len(SHIPPED)
        applied = db.migrate(conn)
        assert [f"{m.version}_{m.name}" for m in applied] == SHIPPED
        recorded = conn.execute("SELECT version, checksum FROM schema_migrations ORDER BY version").fetchall()
        assert [r["version"] for r in recorded] == [m.version for m in applied]
        assert [r["checksum"] for r in recorded] == [m.checksum for m in applied]
        assert all(r["applied_at"] is not None for r in db.migration_status(conn))
        # Second run: a no-op.
        tiers_before = conn.execute("SELECT * FROM resolution_tiers ORDER BY id").fetchall()
        assert db.migrate(conn) == []
        assert conn.execute("SELECT * FROM resolution_tiers ORDER BY id").fetchall() == tiers_before
        db.require_current_schema(conn)


def test_pending_schema_is_refused_with_what_to_run(empty_database_url):
    with db.connect(empty_database_url) as conn:
        with pytest.raises(SchemaNotReady, match=r"pending migration.*run tierflow db migrate"):
            db.require_current_schema(conn)


def test_concurrent_migrations_apply_each_file_once(empty_database_url):
    def run() -> list[str]:
        with db.connect(empty_database_url) as conn:
            return [m.version for m in db.migrate(conn)]

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: run(), range(3)))
    assert sorted(len(r) for r in results) == [0, 0, len(SHIPPED)]
    with db.connect(empty_database_url) as conn:
        assert conn.execute("SELECT count(*) AS n FROM resolution_tiers").fetchone()["n"] == 3


def test_an_edited_migration_is_detected(database_url):
    with db.connect(database_url) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = '0002'")
        with pytest.raises(SchemaNotReady, match="0002_create_projects_and_scenes was changed after it was applied"):
            db.migration_status(conn)


def test_a_database_from_a_newer_tierflow_is_detected(database_url):
    with db.connect(database_url) as conn:
        conn.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES ('9999', 'future', 'x')")
        with pytest.raises(SchemaNotReady, match=r"does not know \(9999\): upgrade Tierflow"):
            db.migrate(conn)


def test_a_failing_migration_is_rolled_back_whole(empty_database_url):
    with db.connect(empty_database_url) as conn:
        # Something already named like a table 0002 creates: 0002 fails half way.
        conn.execute("CREATE TABLE projects (id int)")
        with pytest.raises(SchemaNotReady, match="migration 0002_create_projects_and_scenes failed and was rolled back"):
            db.migrate(conn)
        applied = [r["version"] for r in db.migration_status(conn) if r["applied_at"]]
        assert applied == ["0001"]
        assert conn.execute("SELECT to_regclass('scenes') AS t").fetchone()["t"] is None
        assert conn.execute("SELECT count(*) AS n FROM resolution_tiers").fetchone()["n"] == 3
