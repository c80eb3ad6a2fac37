"""Delivery enforcement: Production only, verified files, every reason, no bypass.

One rendered chain (approved draft → preview, production) serves the whole module; each test
makes its own deliveries and asserts on those."""

import hashlib
import json
from xml.etree import ElementTree

import psycopg
import pytest
import xxhash

from shared.domain import delivery, scenes, upscale
from shared.domain.recipe import SegmentSpec
from shared.media.video import encode_mp4
from tests.conftest import generation_deps, run_until, wait_for_scene

pytestmark = pytest.mark.integration
MHL = "urn:ASC:MHL:v2.0"

SEGMENTS = [SegmentSpec(prompt="a red fox in snow", seed=31, frames=2, steps=1),
            SegmentSpec(prompt="the fox jumps", seed=32, frames=2, steps=1)]


@pytest.fixture(scope="module")
def gen_deps(module_database_url, tmp_path_factory, tiny_model):
    from infra import embedded

    home = tmp_path_factory.mktemp("delivery-home")
    deps = generation_deps(module_database_url, home, tiny_model)
    yield deps
    deps.close()
    embedded.stop(home)


@pytest.fixture
def conn(module_database_url):
    from shared.adapters import db

    with db.connect(module_database_url) as connection:
        yield connection


@pytest.fixture(scope="module")
def chain(gen_deps):
    """An approved draft, its preview and its production re-generation, all generated."""
    draft = scenes.submit_scene(gen_deps, project="fox", name="opening", aspect="16:9", segments=SEGMENTS)
    assert wait_for_scene(gen_deps, draft)["status"] == "generated"
    event_id = scenes.approve(gen_deps, draft)
    run_until(gen_deps, lambda conn: conn.execute(
        "SELECT 1 FROM processed_events WHERE consumer = 'on_scene_approved' AND event_id = %s",
        [event_id]).fetchone() is not None)
    preview = upscale.request_upscale(gen_deps, draft, "preview")
    production = upscale.request_upscale(gen_deps, draft, "production")
    for scene_id in (preview, production):
        assert wait_for_scene(gen_deps, scene_id)["status"] == "generated"
    return {"draft": draft, "preview": preview, "production": production}


def _deliver(deps, scene_ids: list[int], project: str = "fox") -> dict:
    delivery_id = delivery.request_delivery(deps, project, scene_ids)
    run_until(deps, lambda conn: conn.execute(
        "SELECT status FROM deliveries WHERE id = %s", [delivery_id]).fetchone()["status"] != "requested")
    with deps.connect() as conn:
        return delivery.get_delivery(conn, delivery_id, deps.s3, deps.bucket)


def _delivered_objects(deps, delivery_id: int) -> list[str]:
    listed = deps.s3.list_objects_v2(Bucket=deps.bucket, Prefix=f"deliveries/{delivery_id}/")
    return [o["Key"] for o in listed.get("Contents", [])]


def test_production_preview_draft_and_missing_are_rejected_with_every_reason(gen_deps, chain, conn):
    result = _deliver(gen_deps, [chain["production"], chain["preview"], chain["draft"], 424242])
    assert result["status"] == "rejected"
    # Every problem, not just the first; the Production scene has none.
    assert [(r["code"], r["scene_id"], r["tier"]) for r in result["reasons"]] == [
        ("TIER_NOT_DELIVERABLE", chain["preview"], "preview"), ("TIER_NOT_DELIVERABLE", chain["draft"], "draft"),
        ("SCENE_NOT_FOUND", 424242, None)]
    preview_reason = next(r for r in result["reasons"] if r["scene_id"] == chain["preview"])
    assert preview_reason["message"] == (
        f"Scene {chain['preview']} is Preview (768×432); upscale it to Production before delivery: "
        f"tierflow scenes upscale {chain['preview']} --to production")
    assert _delivered_objects(gen_deps, result["delivery_id"]) == []  # nothing copied
    [event] = [r["payload"]["data"] for r in conn.execute(
        "SELECT payload FROM outbox WHERE topic = 'delivery.rejected' AND message_key = %s", [str(result["delivery_id"])])]
    assert len(event["reasons"]) == 3 and event["summary"].startswith("Delivery refused")


def test_a_draft_delivery_says_what_to_do(gen_deps, chain):
    result = _deliver(gen_deps, [chain["draft"]])
    [reason] = result["reasons"]
    assert reason == {"code": "TIER_NOT_DELIVERABLE", "scene_id": chain["draft"], "tier": "draft",
                      "message": f"Scene {chain['draft']} is Draft (512×288); upscale it to Production before "
                                 f"delivery: tierflow scenes upscale {chain['draft']} --to production"}


def test_a_production_delivery_is_accepted_with_a_verified_manifest(gen_deps, chain, conn):
    import urllib.request

    result = _deliver(gen_deps, [chain["production"]])
    assert result["status"] == "completed"
    manifest = json.loads(gen_deps.s3.get_object(Bucket=gen_deps.bucket, Key=result["manifest_key"])["Body"].read())
    [scene] = manifest["scenes"]
    assert (scene["scene_id"], scene["width"], scene["height"]) == (chain["production"], 1920, 1080)
    assert [v["scene_id"] for v in scene["lineage"]] == [chain["draft"], chain["production"]]
    assert scene["lineage"][0]["approved_at"] is not None
    assert len(scene["segments"]) == 2
    for segment in scene["segments"]:
        body = gen_deps.s3.get_object(Bucket=gen_deps.bucket, Key=segment["key"])["Body"].read()
        assert hashlib.sha256(body).hexdigest() == segment["sha256"]
    # H.264 files keep their .mp4 keys; the manifest says what each probed as.
    prefix = f"deliveries/{result['delivery_id']}/"
    assert [s["key"] for s in scene["segments"]] == [f"{prefix}scene-{chain['production']}/segment-{n}.mp4"
                                                     for n in (0, 1)]
    assert [(s["codec"], s["profile"], s["timecode"]) for s in scene["segments"]] == [("h264", "high", None)] * 2
    # Presigned, time-limited URL for the manifest works.
    assert json.loads(urllib.request.urlopen(result["manifest_url"], timeout=10).read()) == manifest
    # Beside the manifest, its ASC MHL history: the files' URLs include the hash list and its chain.
    mhl = manifest["mhl"]
    assert sorted(result["file_urls"]) == sorted([s["key"] for s in scene["segments"]] + [mhl["key"], mhl["chain_key"]])
    assert sorted(_delivered_objects(gen_deps, result["delivery_id"])) == sorted(
        [s["key"] for s in scene["segments"]] + [result["manifest_key"], mhl["key"], mhl["chain_key"]])
    # The hash list holds the xxh64 of every delivered file, the manifest's too.
    hash_list = ElementTree.fromstring(urllib.request.urlopen(result["file_urls"][mhl["key"]], timeout=10).read())
    listed = {entry.findtext(f"{{{MHL}}}path"): entry.findtext(f"{{{MHL}}}xxh64")
              for entry in hash_list.iter(f"{{{MHL}}}hash")}
    assert listed == {key.removeprefix(prefix): xxhash.xxh64(gen_deps.s3.get_object(
        Bucket=gen_deps.bucket, Key=key)["Body"].read()).hexdigest() for key in
        [s["key"] for s in scene["segments"]] + [result["manifest_key"]]}


def test_a_replaced_smaller_file_is_a_mismatch(gen_deps, chain, conn):
    import numpy as np

    production = scenes.get_scene(conn, chain["production"])
    key = production["segments"][0]["outputs"]["video"]
    original = gen_deps.s3.get_object(Bucket=gen_deps.bucket, Key=key)["Body"].read()
    small = encode_mp4(np.zeros((2, 288, 512, 3), dtype=np.uint8), 8)
    gen_deps.s3.put_object(Bucket=gen_deps.bucket, Key=key, Body=small)
    try:
        result = _deliver(gen_deps, [chain["production"]])
    finally:
        gen_deps.s3.put_object(Bucket=gen_deps.bucket, Key=key, Body=original)
    assert result["status"] == "rejected"
    [reason] = result["reasons"]
    assert reason["code"] == "FILE_MISMATCH" and "segment 0" in reason["message"]
    assert _delivered_objects(gen_deps, result["delivery_id"]) == []


def test_the_database_refuses_a_completed_draft_delivery(gen_deps, chain, conn):
    project = conn.execute("SELECT project_id FROM scenes WHERE id = %s", [chain["draft"]]).fetchone()["project_id"]
    before = conn.execute("SELECT count(*) AS n FROM deliveries").fetchone()["n"]
    with pytest.raises(psycopg.errors.CheckViolation, match="cannot be completed: scene"):
        with conn.transaction():
            delivery_id = conn.execute("INSERT INTO deliveries (project_id, status) VALUES (%s, 'completed') RETURNING id",
                                       [project]).fetchone()["id"]
            conn.execute("INSERT INTO delivery_scenes (delivery_id, scene_id) VALUES (%s, %s)", [delivery_id, chain["draft"]])
    # Nor can a requested delivery of a Preview scene be marked completed afterwards.
    delivery_id = delivery.request_delivery(gen_deps, "fox", [chain["preview"]])
    with pytest.raises(psycopg.errors.CheckViolation, match=f"scene {chain['preview']} is generated at tier preview"):
        with conn.transaction():
            conn.execute("INSERT INTO delivery_scenes (delivery_id, scene_id) VALUES (%s, %s)", [delivery_id, chain["preview"]])
            conn.execute("UPDATE deliveries SET status = 'completed' WHERE id = %s", [delivery_id])
    assert conn.execute("SELECT count(*) AS n FROM deliveries").fetchone()["n"] == before + 1
    assert conn.execute("SELECT status FROM deliveries WHERE id = %s", [delivery_id]).fetchone()["status"] == "requested"
    run_until(gen_deps, lambda conn: True)  # let the handler decide it: rejected


def test_the_same_delivery_request_twice_gives_one_outcome(gen_deps, chain, conn):
    result = _deliver(gen_deps, [chain["production"]])
    key = str(result["delivery_id"])
    conn.execute("INSERT INTO bus_deliveries (consumer, outbox_id) SELECT 'on_delivery_requested', id FROM outbox "
                 "WHERE topic = 'delivery.requested' AND message_key = %s", [key])
    # And a second event with a new id for the same delivery: decided already, nothing happens.
    from events import DeliveryRequested

    with gen_deps.uow() as uow:
        uow.emit(DeliveryRequested(delivery_id=result["delivery_id"], project="fox", scene_ids=[chain["production"]]))
    run_until(gen_deps, lambda conn: True)
    assert conn.execute("SELECT count(*) AS n FROM outbox WHERE topic LIKE 'delivery.%%ed' AND topic <> 'delivery.requested' "
                        "AND message_key = %s", [key]).fetchone()["n"] == 1
    assert conn.execute("SELECT status FROM deliveries WHERE id = %s", [result["delivery_id"]]).fetchone() == {
        "status": "completed"}


def test_cli_check_and_deliver(gen_deps, chain, run_cli, module_database_url, conn):
    env = {"TIERFLOW_DATABASE_URL": module_database_url, "TIERFLOW_HOME": str(gen_deps.settings.home)}
    before = conn.execute("SELECT count(*) AS n FROM deliveries").fetchone()["n"]
    check = run_cli("deliver", "--project", "fox", str(chain["draft"]), "--check", "--json", env=env)
    assert check.returncode == 1
    assert json.loads(check.stdout)["reasons"][0]["code"] == "TIER_NOT_DELIVERABLE"
    assert conn.execute("SELECT count(*) AS n FROM deliveries").fetchone()["n"] == before  # --check records nothing
    ok = run_cli("deliver", "--project", "fox", str(chain["production"]), env=env)
    assert ok.returncode == 0, ok.stderr
    assert "completed: manifest s3://" in ok.stdout
    refused = run_cli("deliver", "--project", "other", str(chain["production"]), env=env)
    assert refused.returncode == 1 and "project 'other' does not exist" in refused.stderr


def test_a_delivery_of_one_draft_and_400_unknown_scenes_is_rejected_with_every_reason(run_cli, database_url,
                                                                                       tmp_path):
    from infra import embedded
    from tests.conftest import make_scene

    with psycopg.connect(database_url, autocommit=True, row_factory=psycopg.rows.dict_row) as own:
        draft = make_scene(own, project="p")
    unknown = [str(n) for n in range(100_000, 100_400)]
    env = {"TIERFLOW_DATABASE_URL": database_url}
    try:
        done = run_cli("deliver", "--project", "p", str(draft), *unknown, "--json", env=env)
        # Nothing decides the delivery where no runtime runs: the command gives up in time, and says where to look.
        waited = run_cli("deliver", "--project", "p", str(draft), "--timeout", "1",
                         env={**env, "TIERFLOW_KAFKA_BOOTSTRAP": "127.0.0.1:9"})
        bad = run_cli("deliver", "--project", "p", str(draft), "--timeout", "0", env=env)
    finally:
        embedded.stop(tmp_path / "home")
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "rejected" and len(result["reasons"]) == 401
    assert {r["code"] for r in result["reasons"]} == {"TIER_NOT_DELIVERABLE", "SCENE_NOT_FOUND"}
    assert waited.returncode == 1
    [line] = waited.stderr.strip().splitlines()
    assert "was requested but not decided within 1 s (is `tierflow consume` running?)" in line
    assert "GET /api/deliveries/2" in line
    assert bad.returncode == 2 and "argument --timeout: 0 is not above 0" in bad.stderr


def test_a_10_s_s3_outage_during_a_delivery_ends_in_a_completed_delivery(gen_deps, chain, conn):
    from tests.conftest import s3_outage

    delivery_id = delivery.request_delivery(gen_deps, "fox", [chain["production"]])
    with s3_outage(gen_deps.settings.home, seconds=10):
        # The handler meets the outage: the delivery is deferred, not dead-lettered or rejected.
        run_until(gen_deps, lambda c: c.execute(
            "SELECT 1 FROM event_failures WHERE consumer = 'on_delivery_requested'").fetchone() is not None,
            settle=False, timeout=30)
        [failure] = conn.execute("SELECT last_error FROM event_failures").fetchall()
        assert "EndpointConnectionError" in failure["last_error"] or "Could not connect" in failure["last_error"]
        assert conn.execute("SELECT status FROM deliveries WHERE id = %s", [delivery_id]).fetchone()["status"] == \
            "requested"
    run_until(gen_deps, lambda c: c.execute(
        "SELECT status FROM deliveries WHERE id = %s", [delivery_id]).fetchone()["status"] != "requested", timeout=120)
    result = delivery.get_delivery(conn, delivery_id, gen_deps.s3, gen_deps.bucket)
    assert result["status"] == "completed", result["reasons"]
    assert len(_delivered_objects(gen_deps, delivery_id)) == 5  # two segments, the manifest, the MHL and its chain
    assert conn.execute("SELECT count(*) AS n FROM dead_letters").fetchone()["n"] == 0
    assert conn.execute("SELECT count(*) AS n FROM event_failures").fetchone()["n"] == 0


def test_a_delivery_whose_request_was_lost_is_requested_again_then_left_to_an_operator(gen_deps, chain, conn):
    from shared.runtime import drive

    conn.execute("SET session_replication_role = replica")  # no triggers here: updated_at is backdated below
    delivery_id = delivery.request_delivery(gen_deps, "fox", [chain["production"]])
    # Its event is lost (dead-lettered, say): nothing is pending for the handler any more.
    conn.execute("UPDATE outbox SET sent_at = now() WHERE sent_at IS NULL")
    conn.execute("DELETE FROM bus_deliveries")
    conn.execute("UPDATE deliveries SET updated_at = now() - interval '1 hour' WHERE id = %s", [delivery_id])
    done = drive.redrive_deliveries(gen_deps)
    assert done == {"redriven": [delivery_id], "given_up": []}
    assert drive.redrive_deliveries(gen_deps) == {"redriven": [], "given_up": []}  # not again before its time
    run_until(gen_deps, lambda c: c.execute(
        "SELECT status FROM deliveries WHERE id = %s", [delivery_id]).fetchone()["status"] != "requested", timeout=60)
    assert delivery.get_delivery(conn, delivery_id)["status"] == "completed"
    assert delivery.get_delivery(conn, delivery_id)["redriven"] == 1

    # One that never gets decided is asked for three times, then said once, then left alone.
    stuck = delivery.request_delivery(gen_deps, "fox", [chain["production"]])
    for attempt in range(delivery.REDRIVES + 2):
        conn.execute("UPDATE outbox SET sent_at = now() WHERE sent_at IS NULL")
        conn.execute("DELETE FROM bus_deliveries")
        conn.execute("UPDATE deliveries SET updated_at = now() - interval '1 hour' WHERE id = %s", [stuck])
        done = drive.redrive_deliveries(gen_deps)
        expected = ({"redriven": [stuck], "given_up": []} if attempt < delivery.REDRIVES else
                    {"redriven": [], "given_up": [stuck]} if attempt == delivery.REDRIVES else
                    {"redriven": [], "given_up": []})
        assert done == expected, attempt
    assert "still undecided after every re-drive" in drive.redrive_lines(
        {"redriven": [], "given_up": [stuck]}, gen_deps.settings)[0]
    requests = conn.execute("SELECT count(*) AS n FROM outbox WHERE topic = 'delivery.requested' AND message_key = %s",
                            [str(stuck)]).fetchone()["n"]
    assert requests == 1 + delivery.REDRIVES


def test_a_file_swapped_between_check_and_copy_is_rejected_and_nothing_is_delivered(gen_deps, chain, conn):
    production = chain["production"]
    [first] = [r for r in conn.execute(
        f"SELECT j.video_key FROM segments g {scenes.latest_attempt(succeeded=True)} "
        "WHERE g.scene_id = %s AND g.position = 0", [production])]
    source = first["video_key"]
    original = gen_deps.s3.get_object(Bucket=gen_deps.bucket, Key=source)["Body"].read()

    def swap(params, **_):
        # Someone with PutObject on media/* replaces the file once it has been checked.
        if params.get("CopySource", {}).get("Key") == source:
            gen_deps.s3.put_object(Bucket=gen_deps.bucket, Key=source, Body=original[:-16] + b"\0" * 16)

    gen_deps.s3.meta.events.register("provide-client-params.s3.CopyObject", swap)
    try:
        result = _deliver(gen_deps, [production])
    finally:
        gen_deps.s3.meta.events.unregister("provide-client-params.s3.CopyObject", swap)
        gen_deps.s3.put_object(Bucket=gen_deps.bucket, Key=source, Body=original)
    assert result["status"] == "rejected" and result["manifest_key"] is None
    [reason] = result["reasons"]
    assert reason["code"] == "FILE_CHANGED" and reason["scene_id"] == production
    assert reason["message"] == (f"Scene {production} segment 0: s3://{gen_deps.bucket}/{source} changed after it was "
                                 "checked; nothing was delivered.")
    assert _delivered_objects(gen_deps, result["delivery_id"]) == []  # no copy, no manifest
    assert conn.execute("SELECT count(*) AS n FROM delivery_scenes WHERE delivery_id = %s",
                        [result["delivery_id"]]).fetchone()["n"] == 0


def test_the_manifest_records_the_hash_of_each_delivered_copy(gen_deps, chain, conn):
    result = _deliver(gen_deps, [chain["production"]])
    manifest = json.loads(gen_deps.s3.get_object(Bucket=gen_deps.bucket, Key=result["manifest_key"])["Body"].read())
    for segment in manifest["scenes"][0]["segments"]:
        delivered = gen_deps.s3.get_object(Bucket=gen_deps.bucket, Key=segment["key"])["Body"].read()
        assert segment["sha256"] == hashlib.sha256(delivered).hexdigest()
