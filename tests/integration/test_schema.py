"""The schema's own rules, exercised with plain SQL: they hold even for code that bypasses the services."""

import time

import pytest
from psycopg import errors as pg_errors

pytestmark = pytest.mark.integration


def _project(conn, name="p") -> int:
    return conn.execute("INSERT INTO projects (name) VALUES (%s) RETURNING id", [name]).fetchone()["id"]


def _scene(conn, project_id: int, *, tier_id: int | None = None, upscaled_from: int | None = None) -> dict:
    columns, values = ["project_id", "name", "aspect_width", "aspect_height", "width", "height"], [project_id, "s", 16, 9, 512, 288]
    if tier_id is not None:
        columns.append("resolution_tier_id")
        values.append(tier_id)
    if upscaled_from is not None:
        columns.append("upscaled_from_scene_id")
        values.append(upscaled_from)
    placeholders = ", ".join(["%s"] * len(values))
    return conn.execute(
        f"INSERT INTO scenes ({', '.join(columns)}) VALUES ({placeholders}) RETURNING *", values
    ).fetchone()


def _tier_id(conn, name: str) -> int:
    return conn.execute("SELECT id FROM resolution_tiers WHERE name = %s", [name]).fetchone()["id"]


def test_seed_tiers_have_the_seed_values(conn):
    rows = conn.execute(
        "SELECT name, width, height, quality_settings, speed_factor, is_default, sort_order, is_deliverable, is_builtin "
        "FROM resolution_tiers ORDER BY sort_order"
    ).fetchall()
    assert [tuple(r.values()) for r in rows] == [
        ("draft", 512, 512, {"preset": "veryfast"}, 5.0, True, 1, False, True),
        ("preview", 768, 768, None, 2.5, False, 2, False, True),
        ("production", 1920, 1080, None, 1.0, False, 3, True, True),
    ]


def test_updated_at_trigger_fires(conn):
    before = conn.execute("SELECT created_at, updated_at FROM resolution_tiers WHERE name = 'preview'").fetchone()
    assert before["updated_at"] == before["created_at"]
    time.sleep(0.01)
    conn.execute("UPDATE resolution_tiers SET speed_factor = 2.0 WHERE name = 'preview'")
    after = conn.execute("SELECT created_at, updated_at FROM resolution_tiers WHERE name = 'preview'").fetchone()
    assert after["created_at"] == before["created_at"]
    assert after["updated_at"] > before["updated_at"]


def test_deleting_a_tier_in_use_is_restricted(conn):
    conn.execute("INSERT INTO resolution_tiers (name, width, height) VALUES ('custom', 640, 360)")
    _scene(conn, _project(conn), tier_id=_tier_id(conn, "custom"))
    with pytest.raises(pg_errors.ForeignKeyViolation):
        conn.execute("DELETE FROM resolution_tiers WHERE name = 'custom'")
    assert conn.execute("SELECT count(*) AS n FROM resolution_tiers WHERE name = 'custom'").fetchone()["n"] == 1


def test_source_scene_deletion_clears_the_upscale_link(conn):
    project = _project(conn)
    source = _scene(conn, project)
    target = _scene(conn, project, tier_id=_tier_id(conn, "production"), upscaled_from=source["id"])
    assert target["upscaled_from_scene_id"] == source["id"]
    conn.execute("DELETE FROM scenes WHERE id = %s", [source["id"]])
    row = conn.execute("SELECT upscaled_from_scene_id FROM scenes WHERE id = %s", [target["id"]]).fetchone()
    assert row == {"upscaled_from_scene_id": None}


def test_scene_tier_defaults_to_the_default_tier_at_insert_time(conn):
    project = _project(conn)
    assert _scene(conn, project)["resolution_tier_id"] == _tier_id(conn, "draft")
    with conn.transaction():
        conn.execute("UPDATE resolution_tiers SET is_default = false WHERE name = 'draft'")
        conn.execute("UPDATE resolution_tiers SET is_default = true WHERE name = 'preview'")
    assert _scene(conn, project)["resolution_tier_id"] == _tier_id(conn, "preview")


def test_scene_tier_default_follows_moved_ids(conn):
    # The seed's hard-coded DEFAULT 1 would break here: the default tier no longer has id 1.
    with conn.transaction():
        conn.execute("INSERT INTO resolution_tiers (name, width, height, sort_order) VALUES ('rough', 256, 256, 0)")
        conn.execute("UPDATE resolution_tiers SET is_default = false WHERE name = 'draft'")
        conn.execute("UPDATE resolution_tiers SET is_default = true WHERE name = 'rough'")
    assert _scene(conn, _project(conn))["resolution_tier_id"] == _tier_id(conn, "rough") != 1


def test_a_second_default_tier_is_refused(conn):
    with pytest.raises(pg_errors.UniqueViolation) as caught:
        conn.execute("UPDATE resolution_tiers SET is_default = true WHERE name = 'preview'")
    assert caught.value.diag.constraint_name == "resolution_tiers_one_default"
    with pytest.raises(pg_errors.UniqueViolation):
        conn.execute("INSERT INTO resolution_tiers (name, width, height, is_default) VALUES ('x', 64, 64, true)")
    assert conn.execute("SELECT array_agg(name) AS d FROM resolution_tiers WHERE is_default").fetchone()["d"] == ["draft"]


def test_no_default_tier_is_refused_at_commit(conn):
    with pytest.raises(pg_errors.CheckViolation) as caught:
        with conn.transaction():
            conn.execute("UPDATE resolution_tiers SET is_default = false WHERE name = 'draft'")
    assert "exactly one default" in str(caught.value)
    assert conn.execute("SELECT array_agg(name) AS d FROM resolution_tiers WHERE is_default").fetchone()["d"] == ["draft"]


def test_builtin_tiers_cannot_be_deleted_renamed_or_forged(conn):
    with pytest.raises(pg_errors.RestrictViolation, match="cannot be deleted"):
        conn.execute("DELETE FROM resolution_tiers WHERE name = 'production'")
    with pytest.raises(pg_errors.RestrictViolation, match="cannot be renamed"):
        conn.execute("UPDATE resolution_tiers SET name = 'final' WHERE name = 'production'")
    with pytest.raises(pg_errors.RestrictViolation, match="cannot be renamed"):
        conn.execute("UPDATE resolution_tiers SET is_builtin = false WHERE name = 'production'")
    with pytest.raises(pg_errors.RestrictViolation, match="only migrations"):
        conn.execute("INSERT INTO resolution_tiers (name, width, height, is_builtin) VALUES ('fake', 64, 64, true)")
    # Resizing a built-in tier is allowed.
    conn.execute("UPDATE resolution_tiers SET width = 2048 WHERE name = 'production'")


@pytest.mark.parametrize(
    ("column", "value", "constraint"),
    [
        ("width", 500, "resolution_tiers_width_valid"),
        ("width", 56, "resolution_tiers_width_valid"),
        ("height", 8200, "resolution_tiers_height_valid"),
        ("speed_factor", 0, "resolution_tiers_speed_factor_positive"),
        ("speed_factor", float("inf"), "resolution_tiers_speed_factor_positive"),
        ("name", "Has Space", "resolution_tiers_name_slug"),
        ("name", "trailing-", "resolution_tiers_name_slug"),
    ],
)
def test_tier_checks(conn, column, value, constraint):
    row = {"name": "custom", "width": 640, "height": 360, "speed_factor": 1.0, column: value}
    with pytest.raises(pg_errors.CheckViolation) as caught:
        conn.execute(
            "INSERT INTO resolution_tiers (name, width, height, speed_factor) VALUES (%(name)s, %(width)s, %(height)s, %(speed_factor)s)",
            row,
        )
    assert caught.value.diag.constraint_name == constraint


def test_scene_status_and_approval_time_agree(conn):
    project = _project(conn)
    scene = _scene(conn, project)
    with pytest.raises(pg_errors.CheckViolation):
        conn.execute("UPDATE scenes SET status = 'approved' WHERE id = %s", [scene["id"]])
    with pytest.raises(pg_errors.CheckViolation):
        conn.execute("UPDATE scenes SET status = 'shipped' WHERE id = %s", [scene["id"]])
    conn.execute("UPDATE scenes SET status = 'approved', approved_at = now() WHERE id = %s", [scene["id"]])


def test_the_seed_indexes_exist(conn):
    names = {r["indexname"] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'scenes'")}
    assert {"idx_scenes_resolution_tier_id", "idx_scenes_upscaled_from_scene_id"} <= names


def test_outbox_and_processed_events_tables(conn):
    conn.execute(
        "INSERT INTO outbox (event_id, topic, message_key, payload) VALUES ('e1', 'scene.approved', '1', '{}')"
    )
    with pytest.raises(pg_errors.UniqueViolation):
        conn.execute(
            "INSERT INTO outbox (event_id, topic, message_key, payload) VALUES ('e1', 'scene.approved', '1', '{}')"
        )
    conn.execute("INSERT INTO processed_events (consumer, event_id) VALUES ('on_scene_approved', 'e1')")
    with pytest.raises(pg_errors.UniqueViolation):
        conn.execute("INSERT INTO processed_events (consumer, event_id) VALUES ('on_scene_approved', 'e1')")
    # Another consumer applies the same event independently.
    conn.execute("INSERT INTO processed_events (consumer, event_id) VALUES ('on_upscale_requested', 'e1')")
