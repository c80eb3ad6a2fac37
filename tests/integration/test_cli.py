"""The `tierflow` command as a user runs it: exit codes, one-line errors, stable JSON, no partial writes."""

import json

import pytest

from shared.adapters import db

pytestmark = pytest.mark.integration


@pytest.fixture
def cli(run_cli, database_url):
    """`tierflow` against a fresh migrated database."""
    return lambda *args: run_cli(*args, env={"TIERFLOW_DATABASE_URL": database_url})


def _tiers(cli) -> list[dict]:
    result = cli("tiers", "list", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _assert_one_line_error(result, code: int, text: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert text in lines[0]
    assert "Traceback" not in result.stderr


def test_tiers_list_json_prints_the_seed_tiers(cli):
    listed = _tiers(cli)
    assert [
        (t["name"], t["label"], t["width"], t["height"], t["speed_factor"], t["is_default"], t["sort_order"],
         t["is_deliverable"], t["is_builtin"], t["quality_settings"])
        for t in listed
    ] == [
        ("draft", "Draft", 512, 512, 5.0, True, 1, False, True, {"preset": "veryfast"}),
        ("preview", "Preview", 768, 768, 2.5, False, 2, False, True, None),
        ("production", "Production", 1920, 1080, 1.0, False, 3, True, True, None),
    ]
    assert set(listed[0]) == {
        "id", "name", "label", "width", "height", "speed_factor", "sort_order", "is_default", "is_deliverable",
        "is_builtin", "quality_settings", "created_at", "updated_at", "measured_speed_factor", "measured_on",
    }


def test_tiers_list_with_an_aspect_shows_generation_sizes(cli):
    result = cli("tiers", "list", "--aspect", "9:16", "--json")
    assert [t["size_for_aspect"] for t in json.loads(result.stdout)] == [
        {"width": 288, "height": 512}, {"width": 432, "height": 768}, {"width": 600, "height": 1080}]
    human = cli("tiers", "list", "--aspect", "16:9")
    assert "SIZE AT 16:9" in human.stdout and "512×288" in human.stdout and "1920×1080" in human.stdout
    _assert_one_line_error(cli("tiers", "list", "--aspect", "wide"), 2, "aspect ratio 'wide' is not of the form W:H")


def test_create_update_delete_round_trip(cli):
    created = cli("tiers", "create", "ultra-hd", "--width", "3840", "--height", "2160", "--speed-factor", "0.25",
                  "--deliverable", "--quality-settings", '{"codec": "h265", "crf": 16}', "--json")
    assert created.returncode == 0, created.stderr
    [tier] = json.loads(created.stdout)
    assert (tier["name"], tier["width"], tier["height"], tier["speed_factor"], tier["sort_order"],
            tier["is_deliverable"], tier["quality_settings"]) == (
        "ultra-hd", 3840, 2160, 0.25, 4, True, {"codec": "h265", "crf": 16})

    updated = cli("tiers", "update", "ultra-hd", "--name", "uhd", "--default", "--quality-settings", "null", "--json")
    assert updated.returncode == 0, updated.stderr
    [tier] = json.loads(updated.stdout)
    assert (tier["name"], tier["is_default"], tier["quality_settings"]) == ("uhd", True, None)
    assert [t["name"] for t in _tiers(cli) if t["is_default"]] == ["uhd"]

    assert cli("tiers", "update", "draft", "--default").returncode == 0
    deleted = cli("tiers", "delete", "uhd", "--json")
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(deleted.stdout) == {"deleted": "uhd"}
    assert [t["name"] for t in _tiers(cli)] == ["draft", "preview", "production"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["tiers", "create", "x", "--width", "500", "--height", "288"], 2, "width 500 must be a multiple of 8"),
        (["tiers", "create", "x", "--width", "abc", "--height", "288"], 2, "invalid whole number: 'abc'"),
        (["tiers", "create", "x", "--height", "288"], 2, "the following arguments are required: --width"),
        (["tiers", "create", "X Y", "--width", "512", "--height", "288"], 2, "must be a lowercase slug"),
        (["tiers", "create", "x", "--width", "512", "--height", "288", "--speed-factor", "0"], 2,
         "speed factor 0.0 must be a finite number greater than 0"),
        (["tiers", "create", "x", "--width", "512", "--height", "288", "--quality-settings", "{oops"], 2,
         "quality settings are not valid JSON"),
        (["tiers", "create", "x", "--width", "512", "--height", "288", "--quality-settings", '{"steps": 4}'], 2,
         "'steps' is a sampler setting"),
        (["tiers", "create", "preview", "--width", "512", "--height", "288"], 1, "a tier named 'preview' already exists"),
        (["tiers", "update", "draft", "--no-default"], 1, "there must always be one"),
        (["tiers", "update", "draft", "--name", "rough"], 1, "built-in tier 'draft' cannot be renamed"),
        (["tiers", "update", "nope", "--width", "512"], 1, "unknown tier 'nope'"),
        (["tiers", "update", "draft"], 2, "nothing to update"),
        (["tiers", "delete", "production"], 1, "built-in tier 'production' cannot be deleted"),
        (["tiers", "delete", "nope"], 1, "unknown tier 'nope'"),
        (["tiers", "frobnicate"], 2, "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_input_is_one_line_with_the_right_status_and_changes_nothing(cli, database_url, args, code, message):
    before = _tiers(cli)
    _assert_one_line_error(cli(*args), code, message)
    assert _tiers(cli) == before


def test_deleting_a_tier_in_use_is_refused(cli, database_url):
    assert cli("tiers", "create", "review", "--width", "1024", "--height", "576").returncode == 0
    with db.connect(database_url) as conn:
        project = conn.execute("INSERT INTO projects (name) VALUES ('p') RETURNING id").fetchone()["id"]
        conn.execute(
            "INSERT INTO scenes (project_id, name, aspect_width, aspect_height, width, height, resolution_tier_id) "
            "SELECT %s, 's', 16, 9, 1024, 576, id FROM resolution_tiers WHERE name = 'review'", [project])
    _assert_one_line_error(cli("tiers", "delete", "review"), 1, "tier 'review' is used by 1 scene(s)")
    assert "review" in [t["name"] for t in _tiers(cli)]


def test_db_migrate_twice_is_a_no_op_and_status_lists_everything(run_cli, empty_database_url):
    env = {"TIERFLOW_DATABASE_URL": empty_database_url}
    status = json.loads(run_cli("db", "status", "--json", env=env).stdout)
    assert status and all(row["applied_at"] is None for row in status)
    # An external database is never migrated behind the operator's back.
    _assert_one_line_error(run_cli("tiers", "list", env=env), 1, "run tierflow db migrate")

    first = run_cli("db", "migrate", "--json", env=env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["applied"] == [f"{r['version']}_{r['name']}" for r in status]
    second = run_cli("db", "migrate", env=env)
    assert (second.returncode, second.stdout.strip()) == (0, "schema is up to date; nothing to apply")
    after = json.loads(run_cli("db", "status", "--json", env=env).stdout)
    assert all(row["applied_at"] for row in after)
    human = run_cli("db", "status", env=env).stdout
    assert "0001" in human and "applied" in human and "pending" not in human


def test_config_show_masks_secrets(run_cli):
    result = run_cli("config", "show", "--json", env={
        "TIERFLOW_DATABASE_URL": "postgresql://app:hunter2@db.example:5432/tierflow?password=hunter2",
        "TIERFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:4566",
    })
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert "hunter2" not in result.stdout
    assert shown["database_url"] == "postgresql://app:****@db.example:5432/tierflow?password=****"
    assert shown["s3_endpoint_url"] == "http://127.0.0.1:4566"
    assert shown["s3_bucket"] == "tierflow-media"


def test_unreachable_database_is_one_clear_line(run_cli):
    result = run_cli("tiers", "list", env={"TIERFLOW_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none"})
    _assert_one_line_error(result, 1, "cannot connect to PostgreSQL")
