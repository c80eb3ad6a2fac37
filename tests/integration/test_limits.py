"""Cost bounds per project: segments per scene, frames × steps per segment, the artists' tier."""

import json

import pytest
from fastapi.testclient import TestClient

from functions.http.app import create_app
from shared.domain import limits, scenes
from shared.domain.recipe import SegmentSpec
from shared.errors import Conflict
from tests.conftest import API_KEYS

pytestmark = pytest.mark.integration


def _count(conn) -> int:
    return conn.execute("SELECT count(*) AS n FROM scenes").fetchone()["n"]


def test_bounds_are_set_from_the_cli_and_refuse_submissions_with_each_bound_named(run_cli, database_url, api_deps,
                                                                                   conn):
    env = {"TIERFLOW_DATABASE_URL": database_url}
    done = run_cli("projects", "set", "ads", "--max-segments", "2", "--max-frame-steps", "20", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"project": "ads", "auto_upscale_to": None, "max_segments": 2,
                                       "max_frame_steps": 20, "max_artist_tier": None}
    specs = [SegmentSpec(prompt="a", frames=4, steps=4), SegmentSpec(prompt="b", frames=8, steps=4),
             SegmentSpec(prompt="c", frames=2, steps=2)]
    with pytest.raises(Conflict) as refused:
        scenes.submit_scene(api_deps, project="ads", name="s", aspect="16:9", segments=specs)
    assert str(refused.value) == (
        "the scene has 3 segments; project 'ads' allows at most 2 per scene (--max-segments); segment 1: 8 frames × 4 "
        "steps = 32; project 'ads' allows at most 20 per segment (--max-frame-steps)")
    assert _count(conn) == 0
    assert scenes.submit_scene(api_deps, project="ads", name="s", aspect="16:9", segments=[specs[0], specs[2]])
    # What is not given stays; none clears.
    cleared = run_cli("projects", "set", "ads", "--max-segments", "none", "--json", env=env)
    assert json.loads(cleared.stdout)["max_segments"] is None and json.loads(cleared.stdout)["max_frame_steps"] == 20
    bad = run_cli("projects", "set", "ads", "--max-segments", "many", env=env)
    assert bad.returncode == 2 and "'many' is neither none nor a int" in bad.stderr
    nothing = run_cli("projects", "set", "ads", env=env)
    assert nothing.returncode == 2 and "give at least one of --auto-upscale-to" in nothing.stderr


def test_artists_stay_within_the_projects_artist_tier_and_admins_do_not(api_deps, conn):
    with api_deps.connect() as own:
        limits.set_limits(own, "ads", max_artist_tier="draft")
    body = {"project": "ads", "scene": "s", "aspect": "16:9", "tier": "preview",
            "segments": [{"prompt": "a", "frames": 2, "steps": 1}]}
    with TestClient(create_app(api_deps)) as client:
        refused = client.post("/api/jobs", headers={"X-API-Key": API_KEYS["artist"]}, json=body)
        assert refused.status_code == 409
        assert refused.json()["detail"] == ("project 'ads' lets artists work up to draft; preview needs an admin "
                                            "(the bound: tierflow projects set ads --max-artist-tier)")
        assert _count(conn) == 0
        assert client.post("/api/jobs", headers={"X-API-Key": API_KEYS["admin"]}, json=body).status_code == 202
        draft = client.post("/api/jobs", headers={"X-API-Key": API_KEYS["artist"]}, json={**body, "tier": "draft"})
        assert draft.status_code == 202
        # An upscale is a submission at the target tier.
        conn.execute("UPDATE scenes SET status = 'approved', approved_at = now() WHERE id = %s",
                     [draft.json()["scene_id"]])
        upscaled = client.post(f"/api/scenes/{draft.json()['scene_id']}/upscale",
                               headers={"X-API-Key": API_KEYS["artist"]}, json={"target_tier": "production"})
        assert upscaled.status_code == 409 and "lets artists work up to draft; production needs" in upscaled.text
