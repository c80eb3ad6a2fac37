"""Tier administration through the service functions: every rule, every refusal, no partial writes."""

import pytest

from shared.domain import tiers
from shared.errors import Conflict, InvalidInput, NotFound

pytestmark = pytest.mark.integration


def _snapshot(conn) -> list[dict]:
    return conn.execute("SELECT * FROM resolution_tiers ORDER BY id").fetchall()


def _add_scene(conn, tier_name: str) -> None:
    project = conn.execute(
        "INSERT INTO projects (name) VALUES ('p') ON CONFLICT (name) DO UPDATE SET name = 'p' RETURNING id"
    ).fetchone()["id"]
    conn.execute(
        "INSERT INTO scenes (project_id, name, aspect_width, aspect_height, width, height, resolution_tier_id) "
        "SELECT %s, 's', 16, 9, 1024, 576, id FROM resolution_tiers WHERE name = %s",
        [project, tier_name],
    )


def test_list_is_ordered_by_rank_and_default_is_draft(conn):
    assert [t.name for t in tiers.list_tiers(conn)] == ["draft", "preview", "production"]
    assert tiers.default_tier(conn).name == "draft"
    assert [t.label for t in tiers.list_tiers(conn)] == ["Draft", "Preview", "Production"]


def test_create_a_custom_tier(conn):
    tier = tiers.create_tier(
        conn, "ultra-hd", 3840, 2160, speed_factor=0.25, is_deliverable=True,
        quality_settings={"codec": "h265", "crf": 16, "fps": 24, "pixel_format": "yuv420p"},
    )
    assert (tier.name, tier.label, tier.width, tier.height, tier.sort_order) == ("ultra-hd", "Ultra-Hd", 3840, 2160, 4)
    assert tier.is_deliverable and not tier.is_default and not tier.is_builtin
    assert tiers.get_tier(conn, "ultra-hd") == tier
    assert tier.to_json()["quality_settings"] == {"codec": "h265", "crf": 16, "fps": 24, "pixel_format": "yuv420p"}


def test_creating_the_default_moves_the_default(conn):
    tiers.create_tier(conn, "rough", 256, 256, sort_order=0, is_default=True)
    assert [t.name for t in tiers.list_tiers(conn) if t.is_default] == ["rough"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Ultra HD"}, "tier name 'Ultra HD' must be a lowercase slug"),
        ({"name": "x" * 41}, "must be a lowercase slug of at most 40"),
        ({"name": "-x"}, "tier name '-x' must be a lowercase slug"),
        ({"width": 1004}, "width 1004 must be a multiple of 8 between 64 and 8192"),
        ({"width": 1001}, "width 1001 must be a multiple of 8"),
        ({"height": 8200}, "height 8200 must be a multiple of 8 between 64 and 8192"),
        ({"height": 56}, "height 56 must be a multiple of 8"),
        ({"speed_factor": 0}, "speed factor 0 must be a finite number greater than 0"),
        ({"speed_factor": -2.5}, "speed factor -2.5 must be"),
        ({"speed_factor": float("nan")}, "speed factor nan must be"),
        ({"sort_order": 2**31}, "sort order 2147483648 must be a whole number"),
        ({"quality_settings": {"steps": 30}}, "quality setting 'steps' is a sampler setting"),
        ({"quality_settings": {"guidance_scale": 7}}, "'guidance_scale' is a sampler setting"),
        ({"quality_settings": {"bitrate_kbps": 1}}, "unknown quality setting 'bitrate_kbps'"),
        ({"quality_settings": {"crf": 70}}, "quality setting 'crf' is 70 but must be an integer from 0"),
        ({"quality_settings": {"codec": "mpeg2"}}, "quality setting 'codec' is \"mpeg2\" but must be one of h264, h265"),
        ({"quality_settings": [1, 2]}, "quality settings must be a JSON object"),
    ],
)
def test_every_invalid_input_is_rejected_with_its_own_message_and_no_write(conn, kwargs, message):
    before = _snapshot(conn)
    args = {"name": "custom", "width": 640, "height": 360, **kwargs}
    with pytest.raises(InvalidInput) as caught:
        tiers.create_tier(conn, args.pop("name"), args.pop("width"), args.pop("height"), **args)
    assert message in str(caught.value)
    assert _snapshot(conn) == before


def test_several_problems_are_reported_together(conn):
    with pytest.raises(InvalidInput) as caught:
        tiers.create_tier(conn, "BAD", 10, 20, speed_factor=-1)
    text = str(caught.value)
    assert "tier name 'BAD'" in text and "width 10" in text and "height 20" in text and "speed factor -1" in text
    assert "\n" not in text


def test_duplicate_name_is_refused(conn):
    before = _snapshot(conn)
    with pytest.raises(Conflict, match="a tier named 'preview' already exists"):
        tiers.create_tier(conn, "preview", 640, 360)
    assert _snapshot(conn) == before


def test_making_a_tier_default_unsets_the_old_default_atomically(conn):
    tier = tiers.update_tier(conn, "production", is_default=True)
    assert tier.is_default
    assert [t.name for t in tiers.list_tiers(conn) if t.is_default] == ["production"]


def test_leaving_no_default_is_refused(conn):
    before = _snapshot(conn)
    with pytest.raises(Conflict, match="'draft' is the default tier and there must always be one"):
        tiers.update_tier(conn, "draft", is_default=False)
    assert _snapshot(conn) == before
    # Un-defaulting a tier that is not the default changes nothing and is fine.
    assert not tiers.update_tier(conn, "preview", is_default=False).is_default


def test_update_fields_and_clear_quality_settings(conn):
    tiers.create_tier(conn, "review", 1024, 576, quality_settings={"crf": 20})
    tier = tiers.update_tier(conn, "review", new_name="review-hq", width=1280, height=720, speed_factor=1.5,
                             sort_order=7, is_deliverable=True)
    assert (tier.name, tier.width, tier.height, tier.speed_factor, tier.sort_order, tier.is_deliverable) == (
        "review-hq", 1280, 720, 1.5, 7, True)
    assert tier.quality_settings == {"crf": 20}
    assert tiers.update_tier(conn, "review-hq", quality_settings=None).quality_settings is None
    with pytest.raises(NotFound, match="unknown tier 'review'"):
        tiers.get_tier(conn, "review")


def test_update_refusals_leave_everything_as_it_was(conn):
    tiers.create_tier(conn, "review", 1024, 576)
    before = _snapshot(conn)
    with pytest.raises(Conflict, match="built-in tier 'draft' cannot be renamed"):
        tiers.update_tier(conn, "draft", new_name="rough")
    with pytest.raises(Conflict, match="a tier named 'preview' already exists"):
        tiers.update_tier(conn, "review", new_name="preview")
    with pytest.raises(InvalidInput, match="width 1001"):
        tiers.update_tier(conn, "review", width=1001, height=720)
    with pytest.raises(InvalidInput, match="nothing to update"):
        tiers.update_tier(conn, "review")
    with pytest.raises(NotFound, match=r"unknown tier 'nope' \(known tiers: draft, preview, production, review\)"):
        tiers.update_tier(conn, "nope", width=640)
    assert _snapshot(conn) == before


def test_delete_a_custom_tier(conn):
    tiers.create_tier(conn, "review", 1024, 576)
    assert tiers.delete_tier(conn, "review").name == "review"
    assert [t.name for t in tiers.list_tiers(conn)] == ["draft", "preview", "production"]


def test_deleting_a_tier_in_use_is_refused_and_the_row_survives(conn):
    tiers.create_tier(conn, "review", 1024, 576)
    _add_scene(conn, "review")
    _add_scene(conn, "review")
    before = _snapshot(conn)
    with pytest.raises(Conflict, match="tier 'review' is used by 2 scene"):
        tiers.delete_tier(conn, "review")
    assert _snapshot(conn) == before


@pytest.mark.parametrize("name", ["draft", "preview", "production"])
def test_builtin_tiers_cannot_be_deleted(conn, name):
    with pytest.raises(Conflict, match=f"built-in tier '{name}' cannot be deleted"):
        tiers.delete_tier(conn, name)


def test_the_default_tier_cannot_be_deleted(conn):
    tiers.create_tier(conn, "rough", 256, 256, is_default=True)
    with pytest.raises(Conflict, match="'rough' is the default tier; make another tier default first"):
        tiers.delete_tier(conn, "rough")
    assert tiers.default_tier(conn).name == "rough"


def test_unknown_tier_is_not_found(conn):
    with pytest.raises(NotFound, match="unknown tier 'nope'"):
        tiers.delete_tier(conn, "nope")


def test_tier_sizes_for_an_aspect_ratio(conn):
    from shared.domain.dimensions import parse_aspect

    sizes = {t.name: t.size_for(parse_aspect("16:9")) for t in tiers.list_tiers(conn)}
    assert sizes == {"draft": (512, 288), "preview": (768, 432), "production": (1920, 1080)}


def test_concurrent_default_changes_leave_exactly_one_default(database_url):
    from concurrent.futures import ThreadPoolExecutor

    from shared.adapters import db

    def flip(name: str) -> None:
        with db.connect(database_url) as own:
            for _ in range(15):
                tiers.update_tier(own, name, is_default=True)

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(flip, ["draft", "preview", "production"]))  # re-raises any failure
    with db.connect(database_url) as check:
        assert len([t for t in tiers.list_tiers(check) if t.is_default]) == 1


@pytest.mark.parametrize("name", ["draft", "preview"])
def test_draft_and_preview_can_never_be_deliverable(conn, name):
    before = _snapshot(conn)
    with pytest.raises(Conflict) as refused:
        tiers.update_tier(conn, name, is_deliverable=True)
    assert str(refused.value) == (
        f"tier '{name}' cannot be deliverable: only production and tiers ranked at or above it (sort_order 3 or "
        "more) are delivered; draft and preview never")
    # Not even ranked above production.
    with pytest.raises(Conflict, match=f"tier '{name}' cannot be deliverable"):
        tiers.update_tier(conn, name, sort_order=9, is_deliverable=True)
    assert _snapshot(conn) == before


def test_a_custom_tier_is_deliverable_only_at_or_above_production(conn):
    with pytest.raises(Conflict, match="tier 'mid' cannot be deliverable: only production and tiers ranked at or"):
        tiers.create_tier(conn, "mid", 1280, 720, sort_order=2, is_deliverable=True)
    assert [t.name for t in tiers.list_tiers(conn)] == ["draft", "preview", "production"]
    uhd = tiers.create_tier(conn, "uhd", 3840, 2160, is_deliverable=True)  # placed above every tier
    assert uhd.is_deliverable and uhd.sort_order == 4
    assert tiers.create_tier(conn, "same-rank", 2560, 1440, sort_order=3, is_deliverable=True).is_deliverable
    # Re-ordering counts too: moving uhd below production, or production above uhd, is refused.
    with pytest.raises(Conflict, match="tier 'uhd' cannot be deliverable"):
        tiers.update_tier(conn, "uhd", sort_order=1)
    with pytest.raises(Conflict, match="tier 'same-rank', 'uhd' cannot be deliverable"):
        tiers.update_tier(conn, "production", sort_order=10)
    assert tiers.get_tier(conn, "uhd").sort_order == 4 and tiers.get_tier(conn, "production").sort_order == 3
    # Not deliverable, a tier may rank anywhere.
    assert tiers.update_tier(conn, "uhd", is_deliverable=False, sort_order=1).sort_order == 1


def test_the_database_refuses_a_deliverable_tier_below_production_whatever_writes_it(conn):
    import psycopg

    with pytest.raises(psycopg.errors.CheckViolation, match="tier.s. draft cannot be deliverable"):
        with conn.transaction():
            conn.execute("UPDATE resolution_tiers SET is_deliverable = true WHERE name = 'draft'")
    assert not tiers.get_tier(conn, "draft").is_deliverable


def test_the_cli_refuses_a_deliverable_draft_with_one_line(run_cli, database_url):
    refused = run_cli("tiers", "update", "draft", "--deliverable", env={"TIERFLOW_DATABASE_URL": database_url})
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "tierflow: tier 'draft' cannot be deliverable: only production and tiers ranked at or above it (sort_order 3 "
        "or more) are delivered; draft and preview never"]
