"""Delivery: only deliverable-tier (built-in: Production), fully generated, verified files leave.

`delivery_problems` is the one place the rule lives: the delivery handler, `tierflow deliver
--check` and every other entrypoint call it, and the database refuses a completed delivery with
a scene of a non-deliverable tier (a trigger), so a bug elsewhere cannot ship a Draft.
"""

import hashlib
import json

import psycopg
from psycopg.types.json import Jsonb

from events import DeliveryCompleted, DeliveryRejected, DeliveryRequested, RejectionReason
from shared import tiers
from shared.errors import InvalidInput, NotFound
from shared.scenes import FULLY_GENERATED

MAX_SCENES = 1000
PRESIGNED_URL_SECONDS = 7 * 24 * 3600  # a week: long enough to hand over, short enough to expire


def _reason(code: str, scene_id: int, tier: str | None, message: str) -> RejectionReason:
    return RejectionReason(code=code, scene_id=scene_id, tier=tier, message=message)


def _deliverable_tier(conn: psycopg.Connection) -> str:
    # The highest deliverable tier, for the advice in a refusal.
    names = [r["name"] for r in conn.execute(
        "SELECT name FROM resolution_tiers WHERE is_deliverable ORDER BY sort_order DESC")]
    return names[0] if names else "a deliverable tier"


def delivery_problems(conn: psycopg.Connection, s3, bucket: str, project: str, scene_ids: list[int]) -> list[RejectionReason]:
    """Every reason the scenes cannot be delivered for `project` (empty: they can). Reads S3:
    each segment's file must exist, match the sha256 in its metadata, and decode to the
    scene's width, height and frame count."""
    from shared.generation import probe_video

    target = _deliverable_tier(conn)
    reasons = []
    for scene_id in scene_ids:
        scene = conn.execute(
            """SELECT s.id, s.status, s.width, s.height, p.name AS project, t.name AS tier, t.is_deliverable
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
        if scene["status"] not in FULLY_GENERATED:
            reasons.append(_reason(
                "SCENE_NOT_GENERATED", scene_id, tier,
                f"Scene {scene_id} is {scene['status']}; wait until it is generated (tierflow scenes show "
                f"{scene_id} --wait) or retry its failed segments (tierflow scenes retry {scene_id})."))
            continue
        reasons.extend(_file_problems(conn, s3, bucket, scene, tier, probe_video))
    return reasons


def _segments(conn: psycopg.Connection, scene_id: int) -> list[dict]:
    return conn.execute(
        """SELECT g.id, g.position, g.frames, j.video_key, j.poster_key, j.metadata_key, j.sha256
           FROM segments g LEFT JOIN LATERAL (SELECT * FROM generation_jobs WHERE segment_id = g.id
                                              AND status = 'succeeded' ORDER BY attempt DESC LIMIT 1) j ON true
           WHERE g.scene_id = %s ORDER BY g.position""",
        [scene_id],
    ).fetchall()


def _file_problems(conn, s3, bucket: str, scene: dict, tier: str, probe_video) -> list[RejectionReason]:
    reasons = []
    for segment in _segments(conn, scene["id"]):
        where = f"Scene {scene['id']} segment {segment['position']}"
        if segment["video_key"] is None:
            reasons.append(_reason("FILE_MISSING", scene["id"], tier, f"{where} has no generated file."))
            continue
        try:
            video = s3.get_object(Bucket=bucket, Key=segment["video_key"])["Body"].read()
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
    if len(scene_ids) > MAX_SCENES or len(set(scene_ids)) != len(scene_ids):
        raise InvalidInput(f"give at most {MAX_SCENES} distinct scene ids")
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


def complete_delivery(uow, s3, bucket: str, delivery: dict, scene_ids: list[int]) -> str:
    """Copy the files under deliveries/<id>/, write the manifest, mark the delivery completed.
    Returns the manifest key."""
    conn = uow.conn
    prefix = f"deliveries/{delivery['id']}/"
    manifest = {"delivery_id": delivery["id"], "project": delivery["project"], "scenes": []}
    for scene_id in scene_ids:
        scene = conn.execute("SELECT width, height, recipe_hash FROM scenes WHERE id = %s", [scene_id]).fetchone()
        entry = {"scene_id": scene_id, "width": scene["width"], "height": scene["height"],
                 "recipe_hash": scene["recipe_hash"], "lineage": _ancestry(conn, scene_id), "segments": []}
        for segment in _segments(conn, scene_id):
            key = f"{prefix}scene-{scene_id}/segment-{segment['position']}.mp4"
            s3.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": segment["video_key"]})
            entry["segments"].append({"position": segment["position"], "key": key, "source_key": segment["video_key"],
                                      "sha256": segment["sha256"], "frames": segment["frames"]})
        conn.execute("INSERT INTO delivery_scenes (delivery_id, scene_id) VALUES (%s, %s)", [delivery["id"], scene_id])
        manifest["scenes"].append(entry)
    manifest_key = prefix + "manifest.json"
    s3.put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(manifest, indent=2).encode(),
                  ContentType="application/json")
    conn.execute(
        """UPDATE deliveries SET status = 'completed', manifest_key = %s, finished_at = now()
           WHERE id = %s AND status = 'requested'""",
        [manifest_key, delivery["id"]],
    )
    uow.emit(DeliveryCompleted(delivery_id=delivery["id"], project=delivery["project"], scene_ids=scene_ids,
                               manifest_key=manifest_key))
    return manifest_key


def _ancestry(conn, scene_id: int) -> list[dict]:
    # The versions this scene was re-generated from, oldest (the approved source) first.
    rows = conn.execute(
        """WITH RECURSIVE up AS (
               SELECT id, upscaled_from_scene_id, 0 AS depth FROM scenes WHERE id = %s
               UNION ALL
               SELECT s.id, s.upscaled_from_scene_id, up.depth + 1 FROM scenes s JOIN up ON s.id = up.upscaled_from_scene_id)
           SELECT s.id, t.name AS tier, s.width, s.height, s.approved_at
           FROM up JOIN scenes s ON s.id = up.id JOIN resolution_tiers t ON t.id = s.resolution_tier_id
           ORDER BY up.depth DESC""",
        [scene_id],
    ).fetchall()
    return [{"scene_id": r["id"], "tier": r["tier"], "width": r["width"], "height": r["height"],
             "approved_at": r["approved_at"].isoformat() if r["approved_at"] else None} for r in rows]


def reject_delivery(uow, delivery: dict, reasons: list[RejectionReason]) -> None:
    """Record the reasons and publish `delivery.rejected`; nothing is copied."""
    uow.conn.execute(
        "UPDATE deliveries SET status = 'rejected', reasons = %s, finished_at = now() WHERE id = %s AND status = 'requested'",
        [Jsonb([r.model_dump(mode="json") for r in reasons]), delivery["id"]],
    )
    uow.emit(DeliveryRejected(delivery_id=delivery["id"], project=delivery["project"], reasons=reasons,
                              summary=summary(reasons)))


def get_delivery(conn: psycopg.Connection, delivery_id: int, s3=None, bucket: str | None = None) -> dict:
    """The JSON form of a delivery; with `s3`, presigned URLs (a week) for the manifest and files."""
    row = conn.execute(
        """SELECT d.id, d.status, d.reasons, d.manifest_key, d.requested_scene_ids, d.created_at, d.finished_at,
                  p.name AS project
           FROM deliveries d JOIN projects p ON p.id = d.project_id WHERE d.id = %s""", [delivery_id]).fetchone()
    if row is None:
        raise NotFound(f"delivery {delivery_id} does not exist")
    result = {"delivery_id": row["id"], "project": row["project"], "status": row["status"],
              "scene_ids": row["requested_scene_ids"], "reasons": row["reasons"] or [],
              "manifest_key": row["manifest_key"], "created_at": row["created_at"].isoformat()}
    if s3 is not None and row["manifest_key"]:
        manifest = json.loads(s3.get_object(Bucket=bucket, Key=row["manifest_key"])["Body"].read())

        def url(key: str) -> str:
            return s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                             ExpiresIn=PRESIGNED_URL_SECONDS)

        result["manifest_url"] = url(row["manifest_key"])
        result["file_urls"] = {seg["key"]: url(seg["key"]) for scene in manifest["scenes"] for seg in scene["segments"]}
    return result
