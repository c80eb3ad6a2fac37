"""Scenes: submitting generation jobs at a tier, approving and retrying them, and reading them back
with their progress.

A scene is one or more segments generated at one tier. Each segment has a recipe
(`shared.domain.recipe`) that is identical at every tier; only the size changes. Status changes
go through `shared.domain.lifecycle`.
"""

from typing import Any

import psycopg

from events import SceneApproved, tracing
from shared.domain import catalogue, lifecycle, limits, tiers
from shared.domain.dimensions import AspectRatio, parse_aspect
from shared.domain.recipe import (
    RECIPE_FIELDS,
    SegmentSpec,
    build_recipes,
    recipe_hash,
    recipe_of,
)
from shared.errors import Conflict, InvalidInput, NotFound


def latest_attempt(alias: str = "j", *, succeeded: bool = False) -> str:
    """The LATERAL join of segment `g`'s latest attempt (its latest succeeded one) as `alias`:
    the attempt that decides a segment's progress and outputs."""
    only = " AND status = 'succeeded'" if succeeded else ""
    return (f"LEFT JOIN LATERAL (SELECT * FROM generation_jobs WHERE segment_id = g.id{only} "
            f"ORDER BY attempt DESC LIMIT 1) {alias} ON true")


def job_prefix(tier: str, scene_id: int, position: int, job_id: int) -> str:
    """Where a job's outputs go: deterministic per job, so a re-run overwrites them. The tier
    leads the key so a bucket lifecycle rule can expire Draft media after a while."""
    return f"media/{tier}/scenes/{scene_id}/segments/{position}/jobs/{job_id}/"


def create_scene(
    conn: psycopg.Connection,
    emit,
    *,
    project: str,
    name: str,
    aspect: AspectRatio,
    tier: tiers.Tier,
    recipes: list,
    upscaled_from_scene_id: int | None = None,
) -> int:
    """Insert a pending scene with its segments and one queued job each; emits
    generation.requested per job. Runs in the caller's transaction; returns the scene id.
    Refused, with nothing written, when the tier's codec cannot encode the scene's size."""
    width, height = tier.size_for(aspect)
    problem = tiers.output_size_problem(tier.quality_settings, width, height,
                                        what=f"a {aspect.width}:{aspect.height} scene's size at tier {tier.name}")
    if problem:
        raise Conflict(problem)
    project_id = conn.execute(
        "INSERT INTO projects (name) VALUES (%s) ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id",
        [project],
    ).fetchone()["id"]
    scene_id = conn.execute(
        """INSERT INTO scenes (project_id, name, aspect_width, aspect_height, width, height,
                               resolution_tier_id, recipe_hash, upscaled_from_scene_id, traceparent)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
        [project_id, name, aspect.width, aspect.height, width, height, tier.id,
         recipe_hash(aspect, recipes), upscaled_from_scene_id, tracing.current()],
    ).fetchone()["id"]
    columns = ", ".join(RECIPE_FIELDS)
    placeholders = ", ".join(["%s"] * len(RECIPE_FIELDS))
    for position, recipe in enumerate(recipes):
        segment_id = conn.execute(
            f"INSERT INTO segments (scene_id, position, {columns}) VALUES (%s, %s, {placeholders}) RETURNING id",
            [scene_id, position, *(getattr(recipe, field) for field in RECIPE_FIELDS)],
        ).fetchone()["id"]
        emit(lifecycle.queue_attempt(conn, segment_id))
    return scene_id


def submit_scene(
    deps,
    *,
    project: str,
    name: str,
    aspect: str,
    segments: list[SegmentSpec],
    tier: str | None = None,
    model: str | None = None,
    role: str | None = None,
    noise: str | None = None,
) -> int:
    """Validate everything, then create the scene and queue its jobs; nothing is written on error.
    `model` names a catalogue model (None: `deps.default_model()`); anything else is refused.
    `noise` is the initial noise scheme (None: recipe.DEFAULT_NOISE).
    The project's cost bounds (shared.domain.limits) hold; `role` is the caller's API key role
    (None: the operator)."""
    # 1. validate everything that needs no database
    problems = []
    if not project or not project.strip():
        problems.append("--project must not be empty")
    if not name or not name.strip():
        problems.append("--scene must not be empty")
    if problems:
        raise InvalidInput("; ".join(problems))
    parsed_aspect = parse_aspect(aspect)
    model = model or deps.default_model()
    # 2. model, tier (default: whichever is default now) and size, then write it all in one transaction
    with deps.uow() as uow:
        entry = catalogue.for_submission(uow.conn, model)
        recipes = build_recipes(segments, entry["name"], entry["pin"], noise)
        chosen = tiers.get_tier(uow.conn, tier) if tier else tiers.default_tier(uow.conn)
        chosen.size_for(parsed_aspect)  # refuses an aspect too extreme for the tier before writing
        limits.check_submission(uow.conn, project.strip(), recipes, chosen, role)
        return create_scene(uow.conn, uow.emit, project=project.strip(), name=name.strip(), aspect=parsed_aspect,
                            tier=chosen, recipes=recipes)


def approve(deps, scene_id: int, approved_by: str | None = None) -> str:
    """Publish `scene.approved` (its handler applies it); returns the event id. Refused at once,
    with the reason, for an unknown scene or one that is not fully generated."""
    with deps.uow() as uow:
        scene = scene_row(uow.conn, scene_id, for_update=True)
        if scene["status"] not in lifecycle.FULLY_GENERATED:
            raise Conflict(f"scene {scene_id} is {scene['status']}; only a fully generated scene can be approved")
        with tracing.scope(scene["traceparent"] or tracing.current(), name="approve",  # the scene's trace goes on
                           attributes={"tierflow.scene_id": scene_id}):
            return uow.emit(SceneApproved(scene_id=scene_id, approved_by=approved_by))


def retry_failed_segments(deps, scene_id: int) -> list[int]:
    """Queue a new attempt of every failed segment of a scene (only those); returns the new job ids."""
    with deps.uow() as uow:
        conn = uow.conn
        scene = scene_row(conn, scene_id, for_update=True)
        failed = [r["id"] for r in conn.execute(
            "SELECT id FROM segments WHERE scene_id = %s AND status = 'failed' ORDER BY position", [scene_id])]
        if not failed:
            raise Conflict(f"scene {scene_id} is {scene['status']} and has no failed segment to retry")
        requests = [lifecycle.queue_attempt(conn, segment_id) for segment_id in failed]
        for request in requests:
            uow.emit(request)
        lifecycle.reset_failed_segments(conn, failed)
        lifecycle.reopen_scene(conn, scene_id)
    return [request.job_id for request in requests]


def scene_row(conn: psycopg.Connection, scene_id: int, *, for_update: bool = False) -> dict:
    """The scene's row with its project, its tier and the project's auto-upscale tier (`auto_tier`,
    `auto_sort_order`, None without a policy); `for_update` locks it, so that concurrent changes
    of the scene queue here."""
    row = conn.execute(
        f"""SELECT s.*, p.name AS project, t.name AS tier, t.sort_order AS tier_sort_order,
                   auto.name AS auto_tier, auto.sort_order AS auto_sort_order
            FROM scenes s JOIN projects p ON p.id = s.project_id JOIN resolution_tiers t ON t.id = s.resolution_tier_id
            LEFT JOIN resolution_tiers auto ON auto.id = p.auto_upscale_to_tier_id
            WHERE s.id = %s{" FOR UPDATE OF s" if for_update else ""}""",
        [scene_id],
    ).fetchone()
    if row is None:
        raise NotFound(f"scene {scene_id} does not exist")
    return row


# ---------------------------------------------------------------------------------------------
# Reading scenes back


SCENE_QUERY = """
    SELECT s.id, s.name, p.name AS project, s.status, s.width, s.height, s.aspect_width, s.aspect_height,
           s.recipe_hash, s.upscaled_from_scene_id, s.approved_at, s.created_at, s.updated_at,
           t.name AS tier, t.sort_order AS tier_sort_order, t.is_deliverable AS tier_deliverable
    FROM scenes s JOIN projects p ON p.id = s.project_id JOIN resolution_tiers t ON t.id = s.resolution_tier_id
"""

SEGMENT_QUERY = f"""
    SELECT g.id, g.position, g.status, {", ".join("g." + field for field in RECIPE_FIELDS)},
           g.ssim, g.psnr, g.comparison_key, g.similarity_flagged, g.no_similarity_reason,
           j.id AS job_id, j.attempt, j.status AS job_status, j.progress, j.error, j.device, j.device_seconds,
           j.load_seconds, j.held_seconds, j.worker_id, j.batch_size,
           j.video_key, j.poster_key, j.metadata_key, j.sha256,
           (SELECT COALESCE(json_agg(json_build_object('job_id', a.id, 'attempt', a.attempt, 'status', a.status,
                                                       'error', a.error, 'worker_id', a.worker_id)
                                     ORDER BY a.attempt), '[]')
            FROM generation_jobs a WHERE a.segment_id = g.id) AS attempts
    FROM segments g {latest_attempt()}
    WHERE g.scene_id = %s ORDER BY g.position
"""


def _segment_json(row: dict) -> dict:
    return {
        "segment_id": row["id"], "position": row["position"], "status": row["status"],
        "recipe": {field: row[field] for field in RECIPE_FIELDS},
        "job": None if row["job_id"] is None else {
            "job_id": row["job_id"], "attempt": row["attempt"], "status": row["job_status"],
            "progress": round(100 * row["progress"], 1), "error": row["error"], "device": row["device"],
            # What the attempt cost: rendering (device_seconds, also render_seconds), loading the
            # pipeline, and the whole time its worker held the device for it.
            "device_seconds": row["device_seconds"], "render_seconds": row["device_seconds"],
            "load_seconds": row["load_seconds"], "held_seconds": row["held_seconds"],
            "worker_id": row["worker_id"], "batch_size": row["batch_size"],
        },
        "outputs": None if row["video_key"] is None else {
            "video": row["video_key"], "poster": row["poster_key"], "metadata": row["metadata_key"],
            "sha256": row["sha256"], "comparison": row["comparison_key"],
        },
        "attempts": row["attempts"],  # every attempt, oldest first: a failed one keeps its reason
        # Upscaled segments only: similarity to the source segment, flagged below the threshold.
        "ssim": row["ssim"], "psnr": row["psnr"], "similarity_flagged": row["similarity_flagged"],
        "no_similarity_reason": row["no_similarity_reason"],
    }


def _scene_json(conn: psycopg.Connection, row: dict) -> dict:
    segments = [_segment_json(r) for r in conn.execute(SEGMENT_QUERY, [row["id"]])]
    progress = sum((s["job"] or {}).get("progress", 0) for s in segments) / len(segments) if segments else 0
    return {
        "scene_id": row["id"], "name": row["name"], "project": row["project"], "status": row["status"],
        "tier": row["tier"], "tier_label": tiers.tier_label(row["tier"]), "tier_deliverable": row["tier_deliverable"],
        "width": row["width"], "height": row["height"],
        "aspect": AspectRatio(row["aspect_width"], row["aspect_height"]).label, "progress": round(progress, 1),
        "recipe_hash": row["recipe_hash"], "upscaled_from_scene_id": row["upscaled_from_scene_id"],
        "upscale_targets": [
            {"scene_id": r["id"], "tier": r["tier"], "tier_label": tiers.tier_label(r["tier"])}
            for r in conn.execute(
                """SELECT s.id, t.name AS tier FROM scenes s JOIN resolution_tiers t ON t.id = s.resolution_tier_id
                   WHERE s.upscaled_from_scene_id = %s ORDER BY t.sort_order""", [row["id"]])],
        "approved_at": row["approved_at"].isoformat() if row["approved_at"] else None,
        "created_at": row["created_at"].isoformat(), "segments": segments,
    }


def _lineage_json(conn: psycopg.Connection, scene_id: int) -> list[dict]:
    chain = lineage(conn, scene_id)
    by_id = {r["id"]: r for r in conn.execute(SCENE_QUERY + " WHERE s.id = ANY(%s)", [chain]).fetchall()}
    return [{"scene_id": i, "tier": by_id[i]["tier"], "width": by_id[i]["width"], "height": by_id[i]["height"],
             "status": by_id[i]["status"], "upscaled_from_scene_id": by_id[i]["upscaled_from_scene_id"]}
            for i in chain]


def get_scene(conn: psycopg.Connection, scene_id: int) -> dict:
    """The documented JSON form of a scene (`tierflow scenes show ID --json`)."""
    row = conn.execute(SCENE_QUERY + " WHERE s.id = %s", [scene_id]).fetchone()
    if row is None:
        raise NotFound(f"scene {scene_id} does not exist")
    return {**_scene_json(conn, row), "lineage": _lineage_json(conn, scene_id)}


def list_scenes(conn: psycopg.Connection, project: str | None = None, limit: int = 100,
                after: int | None = None) -> list[dict]:
    """Newest scenes first, optionally of one project; with `after` (a scene id, the cursor of
    the previous page), only scenes older than it."""
    conditions, params = [], []
    if project:
        conditions, params = ["p.name = %s"], [project]
    if after is not None:
        conditions, params = [*conditions, "s.id < %s"], [*params, after]
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    rows = conn.execute(SCENE_QUERY + f" {where} ORDER BY s.id DESC LIMIT %s", [*params, limit]).fetchall()
    return [_scene_json(conn, row) for row in rows]


def ancestry(conn: psycopg.Connection, scene_id: int) -> list[dict]:
    """The scene and the versions it was re-generated from, oldest (the approved source) first
    (empty when there is no such scene)."""
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


def lineage(conn: psycopg.Connection, scene_id: int) -> list[int]:
    """The chain a scene belongs to, oldest first (draft → preview → production), both ways."""
    versions = ancestry(conn, scene_id)
    if not versions:
        raise NotFound(f"scene {scene_id} does not exist")
    rows = conn.execute(
        """WITH RECURSIVE down AS (
               SELECT id, 0 AS depth FROM scenes WHERE id = %s
               UNION ALL
               SELECT s.id, down.depth + 1 FROM scenes s JOIN down ON s.upscaled_from_scene_id = down.id)
           SELECT id FROM down ORDER BY depth, id""",
        [versions[0]["scene_id"]],
    ).fetchall()
    return [r["id"] for r in rows]


def scene_media_keys(conn: psycopg.Connection, scene_id: int) -> list[str]:
    """The S3 keys of a scene's media: each segment's latest succeeded attempt's files and its
    comparison image."""
    rows = conn.execute(
        f"""SELECT j.video_key, j.poster_key, j.metadata_key, g.comparison_key
            FROM segments g {latest_attempt(succeeded=True)} WHERE g.scene_id = %s ORDER BY g.position""",
        [scene_id]).fetchall()
    return [key for row in rows for key in row.values() if key]


def job_document(conn: psycopg.Connection, job_id: int) -> dict:
    """Everything a worker needs to run one job, so that it reads nothing from the database."""
    row = conn.execute(
        """SELECT j.id AS job_id, j.attempt, g.*, s.width, s.height, t.name AS tier, t.quality_settings,
                  m.source AS model_source, j.traceparent
           FROM generation_jobs j JOIN segments g ON g.id = j.segment_id JOIN scenes s ON s.id = g.scene_id
           JOIN resolution_tiers t ON t.id = s.resolution_tier_id
           LEFT JOIN models m ON m.name = g.model AND m.pin = g.model_pin
           WHERE j.id = %s""",
        [job_id],
    ).fetchone()
    # An upscale target is compared with the same segment of its source scene.
    source = conn.execute(
        f"""SELECT j.video_key, src.width, src.height
            FROM scenes s JOIN scenes src ON src.id = s.upscaled_from_scene_id
            JOIN segments g ON g.scene_id = src.id AND g.position = %s {latest_attempt(succeeded=True)}
            WHERE s.id = %s AND j.id IS NOT NULL""",
        [row["position"], row["scene_id"]],
    ).fetchone()
    return {
        "job_id": row["job_id"], "scene_id": row["scene_id"], "segment_id": row["id"],
        "attempt": row["attempt"], "tier": row["tier"], "width": row["width"], "height": row["height"],
        "recipe": recipe_of(row).model_dump(mode="json"),
        # A recipe made before the catalogue names its source as its model.
        "model_source": row["model_source"] if row["model_pin"] else row["model"],
        "traceparent": row["traceparent"],
        "quality_settings": row["quality_settings"],
        "output_prefix": job_prefix(row["tier"], row["scene_id"], row["position"], row["job_id"]),
        "compare_with": dict(source) if source else None,
    }


def parse_spec(document: Any) -> dict:
    """A --spec file: {"project", "scene", "aspect", "tier"?, "model"?, "noise"?, "segments": [{...}]}."""
    if not isinstance(document, dict):
        raise InvalidInput("the spec must be a JSON object with project, scene, aspect and segments")
    unknown = set(document) - {"project", "scene", "aspect", "tier", "model", "noise", "segments"}
    if unknown:
        raise InvalidInput(f"unknown spec field(s): {', '.join(sorted(unknown))}")
    segments = document.get("segments")
    if not isinstance(segments, list) or not all(isinstance(s, dict) for s in segments):
        raise InvalidInput("the spec's segments must be a list of objects with at least a prompt")
    allowed = set(SegmentSpec.__dataclass_fields__)
    specs = []
    for position, segment in enumerate(segments):
        extra = set(segment) - allowed
        if extra:
            raise InvalidInput(f"segment {position + 1}: unknown field(s) {', '.join(sorted(extra))}")
        if "prompt" not in segment:
            raise InvalidInput(f"segment {position + 1}: prompt is required")
        specs.append(SegmentSpec(**segment))
    return {**{k: document.get(k) for k in ("project", "scene", "aspect", "tier", "model", "noise")}, "segments": specs}
