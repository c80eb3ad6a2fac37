"""Upscaling end to end: approval, automatic and one-click re-generation at a higher tier,
lineage, similarity, refusals, idempotency and retries — real Postgres, S3 and diffusers."""

import hashlib
import io
import json
import threading

import pytest
from PIL import Image

from infra import embedded
from shared.bootstrap import Deps
from shared.domain import scenes, upscale
from shared.domain.recipe import SegmentSpec
from shared.errors import Conflict, NotFound
from shared.runtime.drive import approval_settled
from tests.conftest import generation_deps, run_until, wait_for_scene

pytestmark = pytest.mark.integration

# Small enough that a 1920x1080 segment renders in seconds on a CPU.
SEGMENTS = [SegmentSpec(prompt="a red fox in snow", seed=21, frames=2, steps=1),
            SegmentSpec(prompt="the fox jumps", seed=22, frames=2, steps=1)]


def _generated_draft(deps, project="fox") -> int:
    scene_id = scenes.submit_scene(deps, project=project, name="opening", aspect="16:9", segments=SEGMENTS)
    assert wait_for_scene(deps, scene_id)["status"] == "generated"
    return scene_id


def _approve_and_follow(deps, scene_id: int) -> int:
    event_id = scenes.approve(deps, scene_id, approved_by="test")
    run_until(deps, lambda conn: approval_settled(conn, scene_id, event_id), settle=False)
    with deps.connect() as conn:
        target = conn.execute("SELECT id FROM scenes WHERE upscaled_from_scene_id = %s", [scene_id]).fetchone()
    return target["id"] if target else None


def _scene_count(conn) -> int:
    return conn.execute("SELECT count(*) AS n FROM scenes").fetchone()["n"]


def test_approval_with_auto_upscale_gives_a_linked_production_scene(gen_deps, conn):
    draft_id = _generated_draft(gen_deps)
    upscale.set_auto_upscale(gen_deps, "fox", "production")
    target_id = _approve_and_follow(gen_deps, draft_id)
    target = wait_for_scene(gen_deps, target_id)
    draft = scenes.get_scene(conn, draft_id)

    assert draft["status"] == "approved"
    assert (target["status"], target["tier"], target["width"], target["height"], target["progress"]) == (
        "generated", "production", 1920, 1080, 100.0)
    assert target["upscaled_from_scene_id"] == draft_id and target["recipe_hash"] == draft["recipe_hash"]
    assert [s["recipe"] for s in target["segments"]] == [s["recipe"] for s in draft["segments"]]
    assert [v["scene_id"] for v in target["lineage"]] == [draft_id, target_id]
    assert [v["scene_id"] for v in scenes.get_scene(conn, draft_id)["lineage"]] == [draft_id, target_id]

    # Events about the source scene, in order.
    topics = [r["topic"] for r in conn.execute(
        "SELECT topic FROM outbox WHERE message_key = %s AND topic LIKE ANY(ARRAY['scene.%%', 'upscale.%%']) ORDER BY id",
        [str(draft_id)])]
    assert topics[:2] == ["scene.approved", "upscale.requested"]
    assert topics[-1] == "upscale.completed" and set(topics[2:-1]) == {"upscale.progress"}
    last_progress = [r["payload"]["data"] for r in conn.execute(
        "SELECT payload FROM outbox WHERE topic = 'upscale.progress' ORDER BY id")][-1]
    assert (last_progress["percent"], last_progress["segments_done"], last_progress["segments_total"]) == (100.0, 2, 2)

    # Similarity scores and the side-by-side image for every upscaled segment.
    for segment in target["segments"]:
        assert -1 <= segment["ssim"] <= 1 and segment["psnr"] > 0
        assert segment["similarity_flagged"] is (segment["ssim"] < gen_deps.settings.similarity_threshold)
        image = gen_deps.s3.get_object(Bucket=gen_deps.bucket, Key=segment["outputs"]["comparison"])["Body"].read()
        assert Image.open(io.BytesIO(image)).size == (2 * 512, 288)

    # A second approval (another event id) is applied and does nothing twice.
    second = scenes.approve(gen_deps, draft_id)
    run_until(gen_deps, lambda conn: True)
    assert _scene_count(conn) == 2
    assert conn.execute("SELECT count(*) AS n FROM processed_events WHERE consumer = 'on_scene_approved' "
                        "AND event_id = %s", [second]).fetchone()["n"] == 1
    assert conn.execute("SELECT count(*) AS n FROM dead_letters").fetchone()["n"] == 0


def test_refusals_have_their_own_message_and_create_nothing(gen_deps, conn):
    draft_id = _generated_draft(gen_deps)
    pending = scenes.submit_scene(gen_deps, project="fox", name="later", aspect="16:9", segments=SEGMENTS[:1])
    before = _scene_count(conn)
    cases = [
        (draft_id, "draft", Conflict, "upscaling goes to a higher tier than draft, and draft is not higher"),
        (pending, "preview", Conflict, f"scene {pending} is pending; only a fully generated scene can be upscaled"),
        (draft_id, "production", Conflict, f"scene {draft_id} is not approved; approve it before upscaling to Production"),
        (draft_id, "ultra", NotFound, "unknown tier 'ultra'"),
        (9999, "preview", NotFound, "scene 9999 does not exist"),
    ]
    for scene_id, tier, error, message in cases:
        with pytest.raises(error) as caught:
            upscale.request_upscale(gen_deps, scene_id, tier)
        assert message in str(caught.value)
    assert _scene_count(conn) == before
    assert conn.execute("SELECT count(*) AS n FROM outbox WHERE topic = 'upscale.requested'").fetchone()["n"] == 0


def test_a_refused_upscale_event_is_answered_with_upscale_failed(gen_deps, conn):
    from events import UpscaleRequested

    draft_id = _generated_draft(gen_deps)
    with gen_deps.uow() as uow:
        uow.emit(UpscaleRequested(source_scene_id=draft_id, target_tier="production"))
    run_until(gen_deps, lambda conn: True)
    [failed] = [r["payload"]["data"] for r in conn.execute("SELECT payload FROM outbox WHERE topic = 'upscale.failed'")]
    assert failed["target_scene_id"] is None and "is not approved" in failed["reason"]
    assert _scene_count(conn) == 1


def test_the_same_upscale_twice_and_concurrently_gives_one_target(gen_deps, conn):
    source = scenes.submit_scene(gen_deps, project="fox", name="s", aspect="16:9", segments=SEGMENTS)
    conn.execute("UPDATE scenes SET status = 'generated' WHERE id = %s", [source])  # generation is not the point here
    results, errors = [], []

    def request():
        try:
            results.append(upscale.request_upscale(Deps(gen_deps.settings), source, "preview"))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=request) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(set(results)) == 1
    assert upscale.request_upscale(gen_deps, source, "preview") == results[0]
    assert conn.execute("SELECT count(*) AS n FROM scenes WHERE upscaled_from_scene_id = %s",
                        [source]).fetchone()["n"] == 1
    # The database itself refuses a second target for the same source and tier.
    import psycopg

    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("""INSERT INTO scenes (project_id, name, aspect_width, aspect_height, width, height,
                                            resolution_tier_id, upscaled_from_scene_id)
                        SELECT project_id, name, 16, 9, 768, 432, resolution_tier_id, upscaled_from_scene_id
                        FROM scenes WHERE id = %s""", [results[0]])


def test_a_failed_segment_fails_the_upscale_and_retry_regenerates_only_it(gen_deps, conn):
    draft_id = _generated_draft(gen_deps)
    draft = scenes.get_scene(conn, draft_id)
    # Break the source video of segment 1: its upscale cannot decode it and fails (max_attempts 1 here).
    key = draft["segments"][1]["outputs"]["video"]
    video = gen_deps.s3.get_object(Bucket=gen_deps.bucket, Key=key)["Body"].read()
    gen_deps.s3.put_object(Bucket=gen_deps.bucket, Key=key, Body=b"not a video")

    target_id = upscale.request_upscale(gen_deps, draft_id, "preview")
    target = wait_for_scene(gen_deps, target_id)
    assert target["status"] == "failed"
    assert [s["status"] for s in target["segments"]] == ["generated", "failed"]
    [failed] = [r["payload"]["data"] for r in conn.execute("SELECT payload FROM outbox WHERE topic = 'upscale.failed'")]
    assert failed["target_scene_id"] == target_id and "not a readable video (11 bytes)" in failed["reason"]

    gen_deps.s3.put_object(Bucket=gen_deps.bucket, Key=key, Body=video)  # the fix
    scenes.retry_failed_segments(gen_deps, target_id)
    target = wait_for_scene(gen_deps, target_id)
    assert target["status"] == "generated"
    attempts = {s["position"]: s["job"]["attempt"] for s in target["segments"]}
    assert attempts == {0: 1, 1: 2}  # only the failed segment ran again
    with pytest.raises(Conflict, match="has no failed segment to retry"):
        scenes.retry_failed_segments(gen_deps, target_id)


def test_cli_upscale_approve_and_show(gen_deps, run_cli, database_url, tiny_model, conn):
    draft_id = _generated_draft(gen_deps)
    env = {"TIERFLOW_DATABASE_URL": database_url, "TIERFLOW_MODEL": tiny_model,
           "TIERFLOW_HOME": str(gen_deps.settings.home)}
    first = run_cli("scenes", "upscale", str(draft_id), "--to", "preview", "--json", env=env)
    assert first.returncode == 0, first.stderr
    target = json.loads(first.stdout)
    assert target["target_scene_id"] == target["scene_id"] and target["upscaled_from_scene_id"] == draft_id
    again = json.loads(run_cli("scenes", "upscale", str(draft_id), "--to", "preview", "--json", env=env).stdout)
    assert again["target_scene_id"] == target["target_scene_id"]

    refused = run_cli("scenes", "upscale", str(draft_id), "--to", "production", env=env)
    assert refused.returncode == 1 and f"tierflow scenes approve {draft_id}" in refused.stderr

    assert run_cli("projects", "set", "fox", "--auto-upscale-to", "none", env=env).returncode == 0
    approved = run_cli("scenes", "approve", str(draft_id), "--json", env=env)
    assert approved.returncode == 0 and json.loads(approved.stdout)["scene_id"] == draft_id
    not_generated = run_cli("scenes", "approve", str(target["target_scene_id"]), env=env)
    assert not_generated.returncode == 1 and "only a fully generated scene can be approved" in not_generated.stderr

    shown = run_cli("scenes", "show", str(target["target_scene_id"]), env=env)
    assert f"lineage: {draft_id} draft 512×288" in shown.stdout and "preview 768×432" in shown.stdout


def _retention_tags(deps, keys: list[str]) -> list[str | None]:
    tags = [{t["Key"]: t["Value"] for t in deps.s3.get_object_tagging(Bucket=deps.bucket, Key=key)["TagSet"]}
            for key in keys]
    return [t.get("tierflow-retention") for t in tags]


def test_draft_media_expire_unless_their_scene_is_approved(database_url, tmp_path, tiny_model, moto_server, conn):
    """The bucket's lifecycle rule expires media/draft/ objects tagged expire (test_infra_deploy).
    On moto's S3: the embedded rclone server stores no tags, so Tierflow tags nothing there."""
    home = tmp_path / "home"
    deps = generation_deps(database_url, home, tiny_model, s3_endpoint_url=moto_server)
    try:
        approved, other = _generated_draft(deps), _generated_draft(deps, project="other")
        keys = {scene_id: scenes.scene_media_keys(conn, scene_id) for scene_id in (approved, other)}
        assert len(keys[approved]) == 6 and all(k.startswith("media/draft/") for k in keys[approved])  # 2 × 3 files
        assert _retention_tags(deps, keys[approved] + keys[other]) == ["expire"] * 12

        assert _approve_and_follow(deps, approved) is None  # no auto-upscale policy here
        assert _retention_tags(deps, keys[approved]) == ["keep"] * 6
        assert _retention_tags(deps, keys[other]) == ["expire"] * 6
        target = wait_for_scene(deps, upscale.request_upscale(deps, approved, "preview"))
        preview_keys = scenes.scene_media_keys(conn, target["scene_id"])
        assert len(preview_keys) == 8 and _retention_tags(deps, preview_keys) == [None] * 8  # only Draft expires

        # A file already gone (expired, deleted) does not stop the approval of the rest.
        deps.s3.delete_object(Bucket=deps.bucket, Key=keys[other][0])
        _approve_and_follow(deps, other)
        assert scenes.get_scene(conn, other)["status"] == "approved"
        assert _retention_tags(deps, keys[other][1:]) == ["keep"] * 5
    finally:
        deps.close()
        embedded.stop(home)


def test_the_embedded_s3_server_gets_no_tags_which_it_would_write_over_the_object(gen_deps, conn):
    scene_id = _generated_draft(gen_deps)
    assert not gen_deps.settings.tags_media
    _approve_and_follow(gen_deps, scene_id)
    for segment in scenes.get_scene(conn, scene_id)["segments"]:
        video = gen_deps.s3.get_object(Bucket=gen_deps.bucket, Key=segment["outputs"]["video"])["Body"].read()
        assert hashlib.sha256(video).hexdigest() == segment["outputs"]["sha256"]


def test_an_upscale_whose_source_media_is_gone_still_renders_and_says_why_it_has_no_score(gen_deps, conn):
    draft_id = _generated_draft(gen_deps, project="expired")
    # The Draft's files expired (the bucket's lifecycle rule) before anyone asked for Production.
    draft = scenes.get_scene(conn, draft_id)
    for segment in draft["segments"]:
        gen_deps.s3.delete_object(Bucket=gen_deps.bucket, Key=segment["outputs"]["video"])
    event_id = scenes.approve(gen_deps, draft_id)
    run_until(gen_deps, lambda c: approval_settled(c, draft_id, event_id), settle=False)
    target = wait_for_scene(gen_deps, upscale.request_upscale(gen_deps, draft_id, "preview"))
    assert target["status"] == "generated"
    for source, segment in zip(draft["segments"], target["segments"]):
        assert (segment["ssim"], segment["psnr"], segment["similarity_flagged"]) == (None, None, None)
        assert segment["outputs"]["comparison"] is None and segment["outputs"]["video"]
        assert segment["no_similarity_reason"] == (
            f"the source segment's video s3://{gen_deps.bucket}/{source['outputs']['video']} is gone (expired or "
            "deleted), so it was not compared")
        assert segment["job"]["attempt"] == 1  # rendered on the first try, not failed and retried


def test_the_noise_scheme_is_recorded_rendered_and_kept_by_every_upscale(gen_deps, conn):
    """A scene submitted today draws consistent-v1 noise; a native scene (and every scene from
    before the choice, which the migration made native) renders as it always did; each upscale
    keeps its source's scheme, so the recipe, and its hash, stay identical."""
    consistent = _generated_draft(gen_deps)
    native = scenes.submit_scene(gen_deps, project="fox", name="as before", aspect="16:9", segments=SEGMENTS,
                                 noise="native")
    assert wait_for_scene(gen_deps, native)["status"] == "generated"
    default = conn.execute("SELECT column_default FROM information_schema.columns "
                           "WHERE table_name = 'segments' AND column_name = 'noise'").fetchone()["column_default"]
    assert default.startswith("'native'")  # what rows written before the column got

    drafts = {scheme: scenes.get_scene(conn, scene_id) for scheme, scene_id in
              (("consistent-v1", consistent), ("native", native))}
    for scheme, draft in drafts.items():
        assert {s["recipe"]["noise"] for s in draft["segments"]} == {scheme}
    # The same seeds and prompts, drawn by another scheme: the worker rendered other frames.
    assert [s["outputs"]["sha256"] for s in drafts["native"]["segments"]] != [
        s["outputs"]["sha256"] for s in drafts["consistent-v1"]["segments"]]
    assert drafts["native"]["recipe_hash"] != drafts["consistent-v1"]["recipe_hash"]

    for scheme, draft in drafts.items():
        target_id = upscale.request_upscale(gen_deps, draft["scene_id"], "preview")
        target = wait_for_scene(gen_deps, target_id)
        assert target["status"] == "generated" and target["recipe_hash"] == draft["recipe_hash"]
        assert [s["recipe"] for s in target["segments"]] == [s["recipe"] for s in draft["segments"]]
        queued = [r["payload"]["data"]["recipe"]["noise"] for r in conn.execute(
            "SELECT payload FROM outbox WHERE topic = 'generation.requested' "
            "AND (payload -> 'data' ->> 'scene_id')::bigint = %s", [target_id])]
        assert queued == [scheme] * len(SEGMENTS)  # what the worker was told to draw
