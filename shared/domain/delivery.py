"""Delivery: only deliverable-tier (built-in: Production), fully generated, verified files leave.

`delivery_problems` is the one place the rule lives: the delivery handler, `tierflow deliver
--check` and every other entrypoint call it, and the database refuses a completed delivery with
a scene of a non-deliverable tier (a trigger), so a bug elsewhere cannot ship a Draft.
"""

import hashlib
import json
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata

import psycopg

from events import DeliveryCompleted, DeliveryRejected, DeliveryRequested, RejectionReason
from events.models import MAX_SCENES_PER_DELIVERY
from shared.domain import delivery_mhl, lifecycle, tiers
from shared.domain.scenes import ancestry, latest_attempt
from shared.errors import InvalidInput, NotFound

# What a video file holds, found by decoding it (shared.media.video.probe_video): it unpacks as
# (width, height, frame count) and has the stream's .codec, .profile and .timecode.
Probe = Callable[[bytes], tuple[int, int, int]]


@dataclass(frozen=True)
class Checked:
    """A file as `delivery_problems` checked it: its ETag then, and what it probed as."""

    etag: str
    codec: str | None
    profile: str | None
    timecode: str | None

PRESIGNED_URL_SECONDS = 7 * 24 * 3600  # a week: long enough to hand over, short enough to expire


def _reason(code: str, scene_id: int, tier: str | None, message: str) -> RejectionReason:
    return RejectionReason(code=code, scene_id=scene_id, tier=tier, message=message)


def _deliverable_tier(conn: psycopg.Connection) -> str:
    # The lowest deliverable tier (the cheapest that ships), for the advice in a refusal.
    names = [r["name"] for r in conn.execute(
        "SELECT name FROM resolution_tiers t WHERE deliverable_tier(t) ORDER BY sort_order")]
    return names[0] if names else "a deliverable tier"


def delivery_problems(conn: psycopg.Connection, s3, bucket: str, project: str, scene_ids: list[int],
                      probe_video: Probe, checked: dict[str, Checked] | None = None) -> list[RejectionReason]:
    """Every reason the scenes cannot be delivered for `project` (empty: they can). Reads S3:
    each segment's file must exist, match the sha256 in its metadata, and decode (`probe_video`)
    to the scene's width, height and frame count, in the codec and profile its tier's quality
    settings give. `checked` receives each file as it was checked (its ETag, what it probed as),
    by key: what `deliver_checked` copies."""
    target = _deliverable_tier(conn)
    reasons = []
    for scene_id in scene_ids:
        scene = conn.execute(
            """SELECT s.id, s.status, s.width, s.height, p.name AS project, t.name AS tier,
                      t.quality_settings, deliverable_tier(t) AS is_deliverable
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
                   checked: dict[str, Checked]) -> list[RejectionReason]:
    expected = tiers.output_format(scene["quality_settings"])
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
            probe = probe_video(video)
        except InvalidInput:
            probe = None
        width, height, frames = probe if probe is not None else (None, None, None)
        size = (scene["width"], scene["height"], segment["frames"])
        if (width, height, frames) != size:
            reasons.append(_reason(
                "FILE_MISMATCH", scene["id"], tier,
                f"{where}: the file is {width}×{height} with {frames} frames, not {size[0]}×{size[1]} "
                f"with {size[2]}."))
            continue
        # The codec, and for a master its profile, must be what the tier's quality settings give.
        found = tiers.OutputFormat(probe.codec or "an unknown codec", probe.profile if expected.profile else None, None)
        if (found.codec, found.profile) != (expected.codec, expected.profile):
            reasons.append(_reason(
                "FILE_MISMATCH", scene["id"], tier,
                f"{where}: the file is {found.label}, not {expected.label} as tier {tier}'s quality settings "
                f"require (were they changed after it was generated?)."))
            continue
        checked[segment["video_key"]] = Checked(got["ETag"], probe.codec, probe.profile, probe.timecode)
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
                    checked: dict[str, Checked]) -> DeliveryCompleted | DeliveryRejected:
    """Copy the files `delivery_problems` checked under deliveries/<id>/, write the manifest and
    its ASC MHL history (`ascmhl/`: xxh64 of every file, the manifest's too) and mark the delivery
    completed; returns the event that says so.

    What is checked is what is delivered: each copy is made only if its source still has the ETag
    it had when checked (CopySourceIfMatch), and the copy itself is read back and hashed; the
    manifest and the hash list record those hashes. A file changed in between rejects the delivery
    (FILE_CHANGED), and nothing is left under deliveries/<id>/."""
    prefix = f"deliveries/{delivery['id']}/"
    created = datetime.now(timezone.utc)
    mhl_name = delivery_mhl.generation_name(str(delivery["id"]), created)
    mhl_keys = {"key": f"{prefix}{delivery_mhl.FOLDER}/{mhl_name}",
                "chain_key": f"{prefix}{delivery_mhl.FOLDER}/{delivery_mhl.CHAIN_FILE}"}
    manifest = {"delivery_id": delivery["id"], "project": delivery["project"], "scenes": [],
                "mhl": {**mhl_keys, "hash_format": delivery_mhl.HASH_FORMAT}}
    changed: list[RejectionReason] = []
    hashed: list[delivery_mhl.HashedFile] = []
    for scene_id in scene_ids:
        scene = conn.execute(
            "SELECT s.width, s.height, s.recipe_hash, t.name AS tier FROM scenes s "
            "JOIN resolution_tiers t ON t.id = s.resolution_tier_id WHERE s.id = %s", [scene_id]).fetchone()
        entry = {"scene_id": scene_id, "width": scene["width"], "height": scene["height"],
                 "recipe_hash": scene["recipe_hash"], "lineage": ancestry(conn, scene_id), "segments": []}
        for segment in _segments(conn, scene_id):
            # The extension the worker gave it: .mp4 (H.264, H.265) or .mov (ProRes, DNxHR masters).
            extension = posixpath.splitext(segment["video_key"])[1] or ".mp4"
            key = f"{prefix}scene-{scene_id}/segment-{segment['position']}{extension}"
            check = checked[segment["video_key"]]
            copy = _copy_unchanged(s3, bucket, segment["video_key"], check.etag, key)
            if copy is None or copy["sha256"] != segment["sha256"]:
                changed.append(_reason("FILE_CHANGED", scene_id, scene["tier"],
                                       f"Scene {scene_id} segment {segment['position']}: s3://{bucket}/"
                                       f"{segment['video_key']} changed after it was checked; nothing was delivered."))
                continue
            hashed.append(delivery_mhl.HashedFile(key.removeprefix(prefix), copy["size"], copy["xxh64"]))
            entry["segments"].append({"position": segment["position"], "key": key, "source_key": segment["video_key"],
                                      "sha256": copy["sha256"], "xxh64": copy["xxh64"], "bytes": copy["size"],
                                      "frames": segment["frames"], "codec": check.codec, "profile": check.profile,
                                      "timecode": check.timecode})
        manifest["scenes"].append(entry)
    if changed:
        _delete_under(s3, bucket, prefix)  # nothing of a refused delivery stays under deliveries/
        return reject_delivery(conn, delivery, changed)
    for scene_id in scene_ids:
        conn.execute("INSERT INTO delivery_scenes (delivery_id, scene_id) VALUES (%s, %s)", [delivery["id"], scene_id])
    # The manifest, then the hash list of everything, itself included, and the chain naming it.
    manifest_key = prefix + "manifest.json"
    body = json.dumps(manifest, indent=2).encode()
    s3.put_object(Bucket=bucket, Key=manifest_key, Body=body, ContentType="application/json")
    hashed.append(delivery_mhl.HashedFile("manifest.json", len(body), delivery_mhl.xxh64(body)))
    _delete_under(s3, bucket, f"{prefix}{delivery_mhl.FOLDER}/")  # an earlier try's, cut short, is not a generation
    hash_list = delivery_mhl.hash_list(hashed, created=created, tool_version=_version(),
                                       comment=f"Tierflow delivery {delivery['id']} of project {delivery['project']}")
    s3.put_object(Bucket=bucket, Key=mhl_keys["key"], Body=hash_list, ContentType="application/xml")
    s3.put_object(Bucket=bucket, Key=mhl_keys["chain_key"], Body=delivery_mhl.chain([(mhl_name, hash_list)]),
                  ContentType="application/xml")
    lifecycle.complete_delivery(conn, delivery["id"], manifest_key)
    return DeliveryCompleted(delivery_id=delivery["id"], project=delivery["project"], scene_ids=scene_ids,
                             manifest_key=manifest_key)


def _version() -> str:
    try:
        return metadata.version("tierflow")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"


def _delete_under(s3, bucket: str, prefix: str) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=item["Key"])


def _copy_unchanged(s3, bucket: str, source_key: str, etag: str, key: str) -> dict | None:
    """Copy `source_key` to `key` if it still has `etag`; returns the sha256, xxh64 and size of the
    copy as read back (None: the source had changed, and nothing was copied)."""
    try:
        s3.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": source_key},
                       CopySourceIfMatch=etag)
    except s3.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
            return None
        raise
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return {"sha256": hashlib.sha256(body).hexdigest(), "xxh64": delivery_mhl.xxh64(body), "size": len(body)}


def reject_delivery(conn: psycopg.Connection, delivery: dict, reasons: list[RejectionReason]) -> DeliveryRejected:
    """Record the reasons (nothing is copied); returns the event that says so."""
    lifecycle.reject_delivery(conn, delivery["id"], [r.model_dump(mode="json") for r in reasons])
    return DeliveryRejected(delivery_id=delivery["id"], project=delivery["project"], reasons=reasons,
                            summary=summary(reasons))


DELIVERY_STATUSES = ("requested", "completed", "rejected")  # the CHECK on deliveries.status

DELIVERY_QUERY = """
    SELECT d.id, d.status, d.reasons, d.manifest_key, d.requested_scene_ids, d.created_at, d.finished_at,
           d.redriven, p.name AS project
    FROM deliveries d JOIN projects p ON p.id = d.project_id
"""


def _delivery_json(row: dict) -> dict:
    return {"delivery_id": row["id"], "project": row["project"], "status": row["status"],
            "scene_ids": row["requested_scene_ids"], "reasons": row["reasons"] or [],
            "manifest_key": row["manifest_key"], "created_at": row["created_at"].isoformat(),
            "redriven": row["redriven"]}


def list_deliveries(conn: psycopg.Connection, project: str | None = None, status: str | None = None,
                    limit: int = 100, after: int | None = None) -> list[dict]:
    """Newest deliveries first, optionally of one project and in one status; with `after` (a
    delivery id, the cursor of the previous page), only older ones. The JSON form of
    `get_delivery` without presigned URLs (those need each manifest read from S3)."""
    if status is not None and status not in DELIVERY_STATUSES:
        raise InvalidInput(f"delivery status {status!r} does not exist (one of: {', '.join(DELIVERY_STATUSES)})")
    conditions, params = [], []
    for condition, value in (("p.name = %s", project), ("d.status = %s", status), ("d.id < %s", after)):
        if value is not None:
            conditions.append(condition)
            params.append(value)
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    rows = conn.execute(DELIVERY_QUERY + f" {where} ORDER BY d.id DESC LIMIT %s", [*params, limit]).fetchall()
    return [_delivery_json(row) for row in rows]


def get_delivery(conn: psycopg.Connection, delivery_id: int, s3=None, bucket: str | None = None) -> dict:
    """The JSON form of a delivery; with `s3`, presigned URLs (a week) for the manifest and files."""
    row = conn.execute(DELIVERY_QUERY + " WHERE d.id = %s", [delivery_id]).fetchone()
    if row is None:
        raise NotFound(f"delivery {delivery_id} does not exist")
    result = _delivery_json(row)
    if s3 is not None and row["manifest_key"]:
        manifest = json.loads(s3.get_object(Bucket=bucket, Key=row["manifest_key"])["Body"].read())

        def url(key: str) -> str:
            return s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                             ExpiresIn=PRESIGNED_URL_SECONDS)

        result["manifest_url"] = url(row["manifest_key"])
        keys = [seg["key"] for scene in manifest["scenes"] for seg in scene["segments"]]
        mhl = manifest.get("mhl")  # deliveries made before hash lists have none
        keys += [mhl["key"], mhl["chain_key"]] if mhl else []
        result["file_urls"] = {key: url(key) for key in keys}
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
