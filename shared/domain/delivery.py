"""Delivery: only deliverable-tier (built-in: Production), fully generated, verified files leave.

`delivery_problems` is the one place the rule lives: the delivery handler, `tierflow deliver
--check` and every other entrypoint call it, and the database refuses a completed delivery with
a scene of a non-deliverable tier (a trigger), so a bug elsewhere cannot ship a Draft.
"""

import hashlib
import json
from collections.abc import Callable

import psycopg

from events import DeliveryCompleted, DeliveryRejected, DeliveryRequested, RejectionReason
from events.models import MAX_SCENES_PER_DELIVERY
from shared.domain import lifecycle, tiers
from shared.domain.scenes import ancestry, latest_attempt
from shared.errors import InvalidInput, NotFound

# (width, height, frame count) of a video file, found by decoding it (shared.media.video.probe_video).
Probe = Callable[[bytes], tuple[int, int, int]]

PRESIGNED_URL_SECONDS = 7 * 24 * 3600  # a week: long enough to hand over, short enough to expire


def _reason(code: str, scene_id: int, tier: str | None, message: str) -> RejectionReason:
    return RejectionReason(code=code, scene_id=scene_id, tier=tier, message=message)


def _deliverable_tier(conn: psycopg.Connection) -> str:
    # The lowest deliverable tier (the cheapest that ships), for the advice in a refusal.
    names = [r["name"] for r in conn.execute(
        "SELECT name FROM resolution_tiers t WHERE deliverable_tier(t) ORDER BY sort_order")]
    return names[0] if names else "a deliverable tier"


def delivery_problems(conn: psycopg.Connection, s3, bucket: str, project: str, scene_ids: list[int],
                      probe_video: Probe, checked: dict[str, str] | None = None) -> list[RejectionReason]:
    """Every reason the scenes cannot be delivered for `project` (empty: they can). Reads S3:
    each segment's file must exist, match the sha256 in its metadata, and decode (`probe_video`)
    to the scene's width, height and frame count. `checked` receives the ETag of each file as it
    was checked, by key: what `deliver_checked` copies."""
    target = _deliverable_tier(conn)
    reasons = []
    for scene_id in scene_ids:
        scene = conn.execute(
            """SELECT s.id, s.status, s.width, s.height, p.name AS project, t.name AS tier,
                      deliverable_tier(t) AS is_deliverable
               FROM scenes s JOIN projects p ON p.id = s.project_id JOIN resolution_tiers t ON t.id = s.resolution_tier_id
               WHERE s.id = %s""",
            [scene_id],
        ).fetchone()
        if scene is None:
            reasons.append(_reason("SCENE_NOT_FOUND", scene_id, None, f"Scene {scene_id} does not exist."))
            continue
        tier, label = scene["tier"], tiers.tier_label(scene["tier"])
        size = f"{scene['width']}×{scene['height']}"
        if scene["project"] != project:
            reasons.append(_reason("SCENE_NOT_IN_PROJECT", scene_id, tier,
                                   f"Scene {scene_id} belongs to project {scene['project']}, not {project}."))
            continue
        if not scene["is_deliverable"]:
            reasons.append(_reason(
                "TIER_NOT_DELIVERABLE", scene_id, tier,
                f"Scene {scene_id} is {label} ({size}); upscale it to {tiers.tier_label(target)} before delivery: "
                f"tierflow scenes upscale {scene_id} --to {target}"))
            continue
        if scene["status"] not in lifecycle.FULLY_GENERATED:
            reasons.append(_reason(
                "SCENE_NOT_GENERATED", scene_id, tier,
                f"Scene {scene_id} is {scene['status']}; wait until it is generated (tierflow scenes show "
                f"{scene_id} --wait) or retry its failed segments (tierflow scenes retry {scene_id})."))
            continue
        reasons.extend(_file_problems(conn, s3, bucket, scene, tier, probe_video, {} if checked is None else checked))
    return reasons


def _segments(conn: psycopg.Connection, scene_id: int) -> list[dict]:
    return conn.execute(
        f"""SELECT g.id, g.position, g.frames, j.video_key, j.poster_key, j.metadata_key, j.sha256
            FROM segments g {latest_attempt(succeeded=True)}
            WHERE g.scene_id = %s ORDER BY g.position""",
        [scene_id],
    ).fetchall()


def _file_problems(conn, s3, bucket: str, scene: dict, tier: str, probe_video,
                   checked: dict[str, str]) -> list[RejectionReason]:
    reasons = []
    for segment in _segments(conn, scene["id"]):
        where = f"Scene {scene['id']} segment {segment['position']}"
        if segment["video_key"] is None:
            reasons.append(_reason("FILE_MISSING", scene["id"], tier, f"{where} has no generated file."))
            continue
        try:
            got = s3.get_object(Bucket=bucket, Key=segment["video_key"])
            video = got["Body"].read()
            metadata = json.loads(s3.get_object(Bucket=bucket, Key=segment["metadata_key"])["Body"].read())
        except s3.exceptions.NoSuchKey:
            reasons.append(_reason("FILE_MISSING", scene["id"], tier,
                                   f"{where}: s3://{bucket}/{segment['video_key']} or its metadata is missing; "
                                   f"regenerate it."))
            continue
        actual = hashlib.sha256(video).hexdigest()
        if actual != metadata.get("sha256") or actual != segment["sha256"]:
            reasons.append(_reason("FILE_MISMATCH", scene["id"], tier,
                                   f"{where}: the file's sha256 {actual[:12]}… does not match its metadata; "
                                   f"it was changed after generation."))
            continue
        try:
            width, height, frames = probe_video(video)
        except InvalidInput:
            width = height = frames = None
        expected = (scene["width"], scene["height"], segment["frames"])
        if (width, height, frames) != expected:
            reasons.append(_reason(
                "FILE_MISMATCH", scene["id"], tier,
                f"{where}: the file is {width}×{height} with {frames} frames, not {expected[0]}×{expected[1]} "
                f"with {expected[2]}."))
            continue
        checked[segment["video_key"]] = got["ETag"]
    return reasons


def summary(reasons: list[RejectionReason]) -> str:
    """One sentence for a person."""
    scenes = sorted({r.scene_id for r in reasons})
    return (f"Delivery refused: {len(reasons)} problem(s) with scene(s) {', '.join(map(str, scenes))}. "
            + " ".join(r.message for r in reasons[:3]) + (" …" if len(reasons) > 3 else ""))


def request_delivery(deps, project: str, scene_ids: list[int], requested_by: str | None = None) -> int:
    """Record a delivery request and publish `delivery.requested`; returns the delivery id."""
    if not scene_ids:
        raise InvalidInput("give at least one scene id to deliver")
    if len(scene_ids) > MAX_SCENES_PER_DELIVERY or len(set(scene_ids)) != len(scene_ids):
        raise InvalidInput(f"give at most {MAX_SCENES_PER_DELIVERY} distinct scene ids")
    with deps.uow() as uow:
        project_row = uow.conn.execute("SELECT id FROM projects WHERE name = %s", [project]).fetchone()
        if project_row is None:
            raise NotFound(f"project {project!r} does not exist")
        delivery_id = uow.conn.execute(
            "INSERT INTO deliveries (project_id, requested_scene_ids) VALUES (%s, %s) RETURNING id",
            [project_row["id"], scene_ids],
        ).fetchone()["id"]
        uow.emit(DeliveryRequested(delivery_id=delivery_id, project=project, scene_ids=scene_ids,
                                   requested_by=requested_by))
    return delivery_id


def lock_requested(conn: psycopg.Connection, delivery_id: int) -> dict | None:
    """The delivery with its project, locked; None when it was decided before."""
    row = conn.execute(
        """SELECT d.id, d.status, p.name AS project FROM deliveries d JOIN projects p ON p.id = d.project_id
           WHERE d.id = %s FOR UPDATE OF d""",
        [delivery_id],
    ).fetchone()
    if row is None:
        raise NotFound(f"delivery {delivery_id} does not exist")
    return row if row["status"] == "requested" else None


def deliver_checked(conn: psycopg.Connection, s3, bucket: str, delivery: dict, scene_ids: list[int],
                    checked: dict[str, str]) -> DeliveryCompleted | DeliveryRejected:
    """Copy the files `delivery_problems` checked under deliveries/<id>/, write the manifest and
    mark the delivery completed; returns the event that says so.

    What is checked is what is delivered: each copy is made only if its source still has the ETag
    it had when checked (CopySourceIfMatch), and the copy itself is read back and hashed; the
    manifest records that hash. A file changed in between rejects the delivery (FILE_CHANGED), and
    no manifest is written."""
    prefix = f"deliveries/{delivery['id']}/"
    manifest = {"delivery_id": delivery["id"], "project": delivery["project"], "scenes": []}
    changed: list[RejectionReason] = []
    copied: list[str] = []
    for scene_id in scene_ids:
        scene = conn.execute(
            "SELECT s.width, s.height, s.recipe_hash, t.name AS tier FROM scenes s "
            "JOIN resolution_tiers t ON t.id = s.resolution_tier_id WHERE s.id = %s", [scene_id]).fetchone()
        entry = {"scene_id": scene_id, "width": scene["width"], "height": scene["height"],
                 "recipe_hash": scene["recipe_hash"], "lineage": ancestry(conn, scene_id), "segments": []}
        for segment in _segments(conn, scene_id):
            key = f"{prefix}scene-{scene_id}/segment-{segment['position']}.mp4"
            sha256 = _copy_unchanged(s3, bucket, segment["video_key"], checked[segment["video_key"]], key)
            copied += [key] if sha256 else []
            if sha256 != segment["sha256"]:
                changed.append(_reason("FILE_CHANGED", scene_id, scene["tier"],
                                       f"Scene {scene_id} segment {segment['position']}: s3://{bucket}/"
                                       f"{segment['video_key']} changed after it was checked; nothing was delivered."))
                continue
            entry["segments"].append({"position": segment["position"], "key": key, "source_key": segment["video_key"],
                                      "sha256": sha256, "frames": segment["frames"]})
        manifest["scenes"].append(entry)
    if changed:
        for key in copied:  # nothing of a refused delivery stays under deliveries/
            s3.delete_object(Bucket=bucket, Key=key)
        return reject_delivery(conn, delivery, changed)
    for scene_id in scene_ids:
        conn.execute("INSERT INTO delivery_scenes (delivery_id, scene_id) VALUES (%s, %s)", [delivery["id"], scene_id])
    manifest_key = prefix + "manifest.json"
    s3.put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(manifest, indent=2).encode(),
                  ContentType="application/json")
    lifecycle.complete_delivery(conn, delivery["id"], manifest_key)
    return DeliveryCompleted(delivery_id=delivery["id"], project=delivery["project"], scene_ids=scene_ids,
                             manifest_key=manifest_key)


def _copy_unchanged(s3, bucket: str, source_key: str, etag: str, key: str) -> str | None:
    """Copy `source_key` to `key` if it still has `etag`; returns the sha256 of the copy as read
    back (None: the source had changed, and nothing was copied)."""
    try:
        s3.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": source_key},
                       CopySourceIfMatch=etag)
    except s3.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
            return None
        raise
    return hashlib.sha256(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()


def reject_delivery(conn: psycopg.Connection, delivery: dict, reasons: list[RejectionReason]) -> DeliveryRejected:
    """Record the reasons (nothing is copied); returns the event that says so."""
    lifecycle.reject_delivery(conn, delivery["id"], [r.model_dump(mode="json") for r in reasons])
    return DeliveryRejected(delivery_id=delivery["id"], project=delivery["project"], reasons=reasons,
                            summary=summary(reasons))


def get_delivery(conn: psycopg.Connection, delivery_id: int, s3=None, bucket: str | None = None) -> dict:
    """The JSON form of a delivery; with `s3`, presigned URLs (a week) for the manifest and files."""
    row = conn.execute(
        """SELECT d.id, d.status, d.reasons, d.manifest_key, d.requested_scene_ids, d.created_at, d.finished_at,
                  d.redriven, p.name AS project
           FROM deliveries d JOIN projects p ON p.id = d.project_id WHERE d.id = %s""", [delivery_id]).fetchone()
    if row is None:
        raise NotFound(f"delivery {delivery_id} does not exist")
    result = {"delivery_id": row["id"], "project": row["project"], "status": row["status"],
              "scene_ids": row["requested_scene_ids"], "reasons": row["reasons"] or [],
              "manifest_key": row["manifest_key"], "created_at": row["created_at"].isoformat(),
              "redriven": row["redriven"]}
    if s3 is not None and row["manifest_key"]:
        manifest = json.loads(s3.get_object(Bucket=bucket, Key=row["manifest_key"])["Body"].read())

        def url(key: str) -> str:
            return s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                             ExpiresIn=PRESIGNED_URL_SECONDS)

        result["manifest_url"] = url(row["manifest_key"])
        result["file_urls"] = {seg["key"]: url(seg["key"]) for scene in manifest["scenes"] for seg in scene["segments"]}
    return result


REDRIVES = 3  # then an operator looks at the dead letters (`tierflow events dlq`)


def redrive_stuck(conn: psycopg.Connection, emit: Callable[[DeliveryRequested], object],
                  older_than_seconds: float, limit: int = 100) -> dict[str, list[int]]:
    """Ask again, in the caller's transaction, for each delivery left `requested` for longer than
    `older_than_seconds` since it was last asked for: its event was lost or dead-lettered (the
    handler decides a delivery once, so a second request of one still in flight changes nothing).
    Returns {"redriven": ids, "given_up": ids re-driven REDRIVES times already, said once}."""
    rows = conn.execute(
        """SELECT d.id, d.requested_scene_ids, d.redriven, p.name AS project FROM deliveries d
           JOIN projects p ON p.id = d.project_id
           WHERE d.status = 'requested' AND d.redriven <= %s
             AND d.updated_at < now() - make_interval(secs => %s)
           ORDER BY d.id LIMIT %s FOR UPDATE OF d SKIP LOCKED""",
        [REDRIVES, float(older_than_seconds), limit]).fetchall()
    done: dict[str, list[int]] = {"redriven": [], "given_up": []}
    for row in rows:
        conn.execute("UPDATE deliveries SET redriven = redriven + 1 WHERE id = %s", [row["id"]])
        if row["redriven"] == REDRIVES:  # counted once more, so it is said once
            done["given_up"].append(row["id"])
            continue
        emit(DeliveryRequested(delivery_id=row["id"], project=row["project"], scene_ids=row["requested_scene_ids"]))
        done["redriven"].append(row["id"])
    return done
