"""What an upscale will cost, before it is queued: `scenes upscale --estimate`, GET
/api/scenes/{id}/upscale-estimate, the measured speed factors of `tiers list`, on measured jobs
in a real PostgreSQL; and one estimate checked against a real upscale with the tiny model."""

import json

import pytest

from infra import embedded
from shared.domain import estimate, tiers, upscale
from shared.domain.dimensions import AspectRatio
from shared.domain.recipe import SegmentSpec, build_recipes
from shared.domain.scenes import create_scene
from shared.errors import Conflict, NotFound
from tests.conftest import API_KEYS

pytestmark = pytest.mark.integration

PIN = "sha256:" + "0" * 64
SHA = "a" * 64
TRUE = (0.1, 1e-7, 5e-8, 1e-16)  # the costs the measured jobs follow (shared.domain.estimate.TERMS)


def _cost(pixels: int, frames: int, steps: int, scale: float = 1.0) -> float:
    return scale * sum(c * t for c, t in zip(TRUE, estimate.terms(pixels, frames, steps)))


def _scene(conn, *, aspect=(16, 9), tier="draft", segments=((2, 2), (4, 3)), status="generated", device="cpu",
           measured=True, scale=1.0, project="studio") -> int:
    """A scene of model `m` whose jobs succeeded, costing `_cost` (render seconds 80% of it,
    plus 2 s of loading on the first job that held seconds do not count)."""
    conn.execute("INSERT INTO models (name, source, pin) VALUES ('m', '/models/m', %s) ON CONFLICT DO NOTHING", [PIN])
    recipes = build_recipes([SegmentSpec(prompt=f"shot {i}", seed=i, frames=f, steps=s)
                             for i, (f, s) in enumerate(segments)], "m", PIN)
    tier = tiers.get_tier(conn, tier)
    scene_id = create_scene(conn, lambda event: None, project=project, name="s", aspect=AspectRatio(*aspect),
                            tier=tier, recipes=recipes)
    width, height = tier.size_for(AspectRatio(*aspect))
    jobs = conn.execute("SELECT j.id, g.frames, g.steps FROM generation_jobs j JOIN segments g ON g.id = j.segment_id "
                        "WHERE g.scene_id = %s ORDER BY g.position", [scene_id]).fetchall()
    for n, job in enumerate(jobs):
        held = _cost(width * height, job["frames"], job["steps"], scale) if measured else None
        load = 2.0 if n == 0 else 0.0
        conn.execute("""UPDATE generation_jobs SET status = 'succeeded', video_key = 'v.mp4', sha256 = %s, device = %s,
                               device_seconds = %s, held_seconds = %s, load_seconds = %s, finished_at = now()
                        WHERE id = %s""",
                     [SHA, device, held and 0.8 * held, held and held + load, load, job["id"]])
    conn.execute("UPDATE segments SET status = 'generated' WHERE scene_id = %s", [scene_id])
    conn.execute("UPDATE scenes SET status = %s, approved_at = CASE WHEN %s = 'approved' THEN now() END WHERE id = %s",
                 [status, status, scene_id])
    return scene_id


def _measured_fleet(conn, device="cpu") -> None:
    """Eight measured jobs of eight shapes at every built-in tier."""
    for aspect, tier, segments in [((1, 1), "draft", ((2, 2), (8, 3))), ((16, 9), "preview", ((2, 4), (4, 2))),
                                   ((1, 1), "preview", ((3, 3),)), ((4, 3), "production", ((2, 2), (3, 2))),
                                   ((16, 9), "draft", ((6, 6),))]:
        _scene(conn, aspect=aspect, tier=tier, segments=segments, device=device)


def _count(conn, table: str) -> int:
    return conn.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"]


# -- the estimate --------------------------------------------------------------------------------


def test_a_fit_on_measured_jobs_estimates_every_segment_at_the_target_size(conn):
    _measured_fleet(conn)
    source = _scene(conn, status="approved")  # 16:9 Draft, segments of 2 frames × 2 steps and 4 × 3
    found = estimate.upscale_estimate(conn, source, "production")

    expected = _cost(1920 * 1080, 2, 2) + _cost(1920 * 1080, 4, 3)  # both segments at 1920×1080
    assert found["estimated_held_seconds"] == pytest.approx(expected, rel=0.01)
    assert found["estimated_render_seconds"] == pytest.approx(0.8 * expected, rel=0.01)
    assert (found["width"], found["height"], found["segments"], found["target_scene_id"]) == (1920, 1080, 2, None)
    assert found["basis"] == {"method": "fitted", "model": "m", "device": "cpu", "jobs": 10, "shapes": 10,
                              "proportional": False, "reason": None}
    assert found["confidence"] == "high" and found["median_error"] < 0.01
    assert found["cold_start_seconds"] == 2.0  # the median load, said apart: warm workers are the design
    assert found["summary"].startswith(f"Upscaling scene {source} at Production (1920×1080, 2 segment(s)) should "
                                       f"hold a cpu device for about {expected:.1f} s")


def test_the_estimate_is_for_cuda_when_the_model_was_measured_there(conn):
    _measured_fleet(conn, device="cpu")
    _measured_fleet(conn, device="cuda:0")  # "cuda:0" is a cuda
    source = _scene(conn, status="approved", device="cpu")
    found = estimate.upscale_estimate(conn, source, "production")
    assert (found["basis"]["method"], found["basis"]["device"]) == ("fitted", "cuda")
    assert "hold a cuda device" in found["summary"]


def test_few_measured_jobs_fall_back_to_the_speed_factors_of_the_source(conn):
    source = _scene(conn, status="approved")  # its own two jobs are all that is measured
    found = estimate.upscale_estimate(conn, source, "production")
    own = _cost(512 * 288, 2, 2) + _cost(512 * 288, 4, 3)
    assert found["estimated_held_seconds"] == pytest.approx(own * 5.0 / 1.0, rel=0.01)  # Draft 5, Production 1
    assert found["estimated_render_seconds"] == pytest.approx(0.8 * own * 5.0, rel=0.01)
    assert found["basis"]["method"] == "speed_factor" and found["basis"]["jobs"] == 2
    assert (found["basis"]["source_speed_factor"], found["basis"]["target_speed_factor"]) == (5.0, 1.0)
    assert found["basis"]["reason"] == "only 2 job(s) of m on cpu are measured (a fit needs 5)"
    assert (found["confidence"], found["median_error"]) == ("low", None)
    assert "a rough estimate" in found["summary"]


def test_a_fit_far_from_the_target_size_is_not_used(conn):
    # Plenty of jobs, but only of small Drafts: 1920×1080 is over RANGE times anything measured.
    for segments in (((2, 2), (2, 3)), ((2, 4), (2, 5)), ((2, 6),)):
        _scene(conn, segments=segments)
    source = _scene(conn, status="approved", segments=((2, 2),))
    found = estimate.upscale_estimate(conn, source, "production")
    assert found["basis"]["method"] == "speed_factor"
    assert found["basis"]["reason"] == "no measured job of m on cpu is within 4× of 1920×1080 at 2 frames"
    # Preview (768×432) is near enough.
    assert estimate.upscale_estimate(conn, source, "preview")["basis"]["method"] == "fitted"


def test_nothing_measured_says_so(conn):
    source = _scene(conn, status="approved", measured=False)
    found = estimate.upscale_estimate(conn, source, "production")
    assert found["estimated_held_seconds"] is None and found["estimated_render_seconds"] is None
    assert found["basis"]["method"] is None and found["confidence"] is None
    assert found["summary"] == (f"No estimate for scene {source} at Production (1920×1080, 2 segment(s)): only 0 "
                                "job(s) of m on any device are measured (a fit needs 5), and the scene has no "
                                "measured job of its own to scale by the tiers' speed factors.")


def test_an_estimate_is_refused_exactly_as_the_upscale_is_and_writes_nothing(deps, conn):
    generated = _scene(conn)
    approved = _scene(conn, status="approved")
    scenes_before, outbox_before = _count(conn, "scenes"), _count(conn, "outbox")
    for scene_id, tier, error in [(9999, "preview", NotFound), (generated, "ultra", NotFound),
                                  (generated, "draft", Conflict), (generated, "production", Conflict)]:
        with pytest.raises(error) as refused_estimate:
            estimate.upscale_estimate(conn, scene_id, tier)
        with pytest.raises(error) as refused_upscale:
            upscale.request_upscale(deps, scene_id, tier)
        assert str(refused_estimate.value) == str(refused_upscale.value)
    estimate.upscale_estimate(conn, approved, "production")
    assert (_count(conn, "scenes"), _count(conn, "outbox")) == (scenes_before, outbox_before)
    # An upscale requested already: the same target, and asking again queues nothing.
    target = upscale.request_upscale(deps, approved, "production")
    found = estimate.upscale_estimate(conn, approved, "production")
    assert found["target_scene_id"] == target and f"requested already, as scene {target}" in found["summary"]


# -- the command ---------------------------------------------------------------------------------


@pytest.fixture
def cli(run_cli, database_url):
    return lambda *args: run_cli(*args, env={"TIERFLOW_DATABASE_URL": database_url})


def test_the_cli_estimate_prints_the_cost_and_queues_nothing(cli, conn):
    _measured_fleet(conn)
    source = _scene(conn, status="approved")
    scenes_before, outbox_before, jobs_before = _count(conn, "scenes"), _count(conn, "outbox"), _count(
        conn, "generation_jobs")

    shown = cli("scenes", "upscale", str(source), "--to", "production", "--estimate")
    assert shown.returncode == 0, shown.stderr
    expected = _cost(1920 * 1080, 2, 2) + _cost(1920 * 1080, 4, 3)
    assert f"should hold a cpu device for about {expected:.1f} s" in shown.stdout
    assert "basis: fitted on 10 job(s); confidence high" in shown.stdout
    as_json = cli("scenes", "upscale", str(source), "--to", "production", "--estimate", "--json")
    found = json.loads(as_json.stdout)
    assert set(found) == {"scene_id", "target_tier", "width", "height", "segments", "target_scene_id",
                          "estimated_render_seconds", "estimated_held_seconds", "cold_start_seconds", "basis",
                          "confidence", "median_error", "summary"}
    assert found["estimated_held_seconds"] == pytest.approx(expected, rel=0.01)
    assert (_count(conn, "scenes"), _count(conn, "outbox"), _count(conn, "generation_jobs")) == (
        scenes_before, outbox_before, jobs_before)


def test_the_cli_estimate_refuses_what_the_upscale_refuses_in_one_line(cli, conn):
    generated = _scene(conn)
    for args, code, message in [
        (["9999", "--to", "preview"], 1, "scene 9999 does not exist"),
        ([str(generated), "--to", "ultra"], 1, "unknown tier 'ultra'"),
        ([str(generated), "--to", "production"], 1, f"scene {generated} is not approved"),
        ([str(generated), "--to", "preview", "--wait"], 2, "--estimate queues nothing"),
    ]:
        result = cli("scenes", "upscale", *args, "--estimate")
        assert result.returncode == code, (result.stdout, result.stderr)
        [line] = result.stderr.strip().splitlines()
        assert message in line
    assert _count(conn, "scenes") == 1


# -- the API -------------------------------------------------------------------------------------


def test_the_api_gives_the_same_estimate_and_the_upscale_routes_errors(client, conn):
    _measured_fleet(conn)
    source = _scene(conn, status="approved")
    generated = _scene(conn)
    viewer = {"X-API-Key": API_KEYS["viewer"]}  # reading an estimate queues nothing: a viewer may
    answer = client.get(f"/api/scenes/{source}/upscale-estimate?to=production", headers=viewer)
    assert answer.status_code == 200, answer.text
    assert answer.json() == estimate.upscale_estimate(conn, source, "production")
    assert client.get(f"/api/scenes/{source}/upscale-estimate", headers=viewer).json()["target_tier"] == "production"
    for url, status, message in [
        ("/api/scenes/9999/upscale-estimate?to=preview", 404, "scene 9999 does not exist"),
        (f"/api/scenes/{source}/upscale-estimate?to=ultra", 404, "unknown tier 'ultra'"),
        (f"/api/scenes/{generated}/upscale-estimate?to=production", 409, f"scene {generated} is not approved"),
        (f"/api/scenes/{source}/upscale-estimate?to=draft", 409, "is not higher"),
    ]:
        refused = client.get(url, headers=viewer)
        assert refused.status_code == status and message in refused.json()["detail"], refused.text
    assert client.get(f"/api/scenes/{source}/upscale-estimate").status_code == 401
    assert _count(conn, "scenes") == 7


# -- tiers list ----------------------------------------------------------------------------------


def test_tiers_list_shows_the_measured_speed_factor_next_to_the_configured_one(cli, conn):
    unmeasured = json.loads(cli("tiers", "list", "--json").stdout)
    assert [(t["name"], t["measured_speed_factor"]) for t in unmeasured] == [
        ("draft", None), ("preview", None), ("production", None)]
    assert "—" in cli("tiers", "list").stdout

    _measured_fleet(conn)
    listed = json.loads(cli("tiers", "list", "--json").stdout)
    frames, steps = listed[0]["measured_on"]["frames"], listed[0]["measured_on"]["steps"]
    production = _cost(1920 * 1080, frames, steps)
    assert [(t["name"], t["measured_speed_factor"]) for t in listed] == [
        ("draft", pytest.approx(production / _cost(512 * 288, frames, steps), abs=0.01)),
        ("preview", pytest.approx(production / _cost(768 * 432, frames, steps), abs=0.01)),
        ("production", 1.0)]
    assert listed[0]["measured_on"] == {"model": "m", "device": "cpu", "jobs": 8, "aspect": "16:9",
                                        "frames": frames, "steps": steps}
    human = cli("tiers", "list").stdout
    header, draft = human.splitlines()[:2]
    assert header.split()[3:5] == ["SPEED", "MEASURED"]
    assert draft.split()[3:5] == ["5", f"{listed[0]['measured_speed_factor']:g}"]
    assert "fitted to 8 job(s) of m on cpu" in human


# -- against a real upscale ----------------------------------------------------------------------


@pytest.fixture
def stack_stopped(tmp_path):
    """The embedded S3 server the commands start under run_cli's home, stopped afterwards."""
    yield
    embedded.stop(tmp_path / "home")


def test_the_estimate_of_a_real_upscale_is_within_a_factor_two_of_what_it_held(run_cli, database_url, tiny_model,
                                                                               conn, stack_stopped):
    def cli(*args):
        result = run_cli(*args, env={"TIERFLOW_DATABASE_URL": database_url, "TIERFLOW_MODEL": tiny_model})
        assert result.returncode == 0, result.stderr
        return result

    def submit(aspect, segments, *wait):
        options = [o for i, (f, s) in enumerate(segments)
                   for o in ("--prompt", f"shot {i}", "--seed", str(i), "--frames", str(f), "--steps", str(s))]
        return json.loads(cli("jobs", "submit", "--project", "fox", "--scene", aspect, "--aspect", aspect,
                              *options, *wait, "--json").stdout)["scene_id"]

    # Six Draft jobs of six shapes (the last submission's workers render the queue before it): too
    # few for the four terms, so the fit scales by pixels·frames·steps.
    source = submit("16:9", [(2, 2), (4, 3)])
    square = submit("1:1", [(10, 2), (3, 4)])
    submit("4:3", [(2, 4), (6, 2)], "--wait")
    for scene_id in (source, square):
        assert json.loads(cli("scenes", "show", str(scene_id), "--wait", "--json").stdout)["status"] == "generated"
    cli("scenes", "approve", str(source))

    found = json.loads(cli("scenes", "upscale", str(source), "--to", "production", "--estimate", "--json").stdout)
    assert (found["basis"]["method"], found["basis"]["proportional"]) == ("fitted", True), found
    assert _count(conn, "scenes") == 3
    target = json.loads(cli("scenes", "upscale", str(source), "--to", "production", "--wait", "--json").stdout)
    assert target["status"] == "generated"
    # What the workers held, without loading the model (a cold worker's load is reported apart).
    held = conn.execute("""SELECT sum(j.held_seconds - COALESCE(j.load_seconds, 0)) AS held
                           FROM generation_jobs j JOIN segments g ON g.id = j.segment_id
                           WHERE g.scene_id = %s AND j.status = 'succeeded'""", [target["scene_id"]]).fetchone()["held"]
    assert found["estimated_held_seconds"] / 2 <= held <= 2 * found["estimated_held_seconds"], (held, found)
