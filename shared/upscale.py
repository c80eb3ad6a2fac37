"""Upscaling: re-generating an approved scene at a higher tier with the identical recipe.

Not super-resolution: the target scene is a new scene at the target tier, linked to its source
(`upscaled_from_scene_id`), with the same aspect ratio and segments with the same prompts,
seeds, frames, fps, steps, guidance, model and scheduler. Only the size changes, so the recipe
hashes are equal. One target per source and tier: the database refuses a second one, so a
repeated, redelivered or concurrent request returns the first.
"""

import psycopg

from events import Recipe, SceneApproved, UpscaleRequested
from shared import tiers
from shared.dimensions import AspectRatio
from shared.errors import Conflict, NotFound
from shared.scenes import FULLY_GENERATED, create_scene


def _source(conn: psycopg.Connection, scene_id: int) -> dict:
    row = conn.execute(
        """SELECT s.*, p.name AS project, t.name AS tier, t.sort_order AS tier_sort_order
           FROM scenes s JOIN projects p ON p.id = s.project_id JOIN resolution_tiers t ON t.id = s.resolution_tier_id
           WHERE s.id = %s FOR UPDATE OF s""",
        [scene_id],
    ).fetchone()
    if row is None:
        raise NotFound(f"scene {scene_id} does not exist")
    return row


def upscale_scene(conn: psycopg.Connection, emit, scene_id: int, target_tier: str) -> tuple[int, bool]:
    """Create (or find) the re-generation of `scene_id` at `target_tier`; returns (target id, created).

    Runs in the caller's transaction. Refused, with the reason and nothing written: an unknown
    scene or tier, a tier not above the source's, a source not fully generated, and a
    deliverable target (Production) for a source that is not approved.
    """
    # 1. the source, locked so concurrent requests for it queue here
    source = _source(conn, scene_id)
    target = tiers.get_tier(conn, target_tier)
    if target.sort_order <= source["tier_sort_order"]:
        raise Conflict(
            f"scene {scene_id} is {source['tier']}; upscaling goes to a higher tier than {source['tier']}, "
            f"and {target.name} is not higher"
        )
    existing = conn.execute(
        "SELECT id FROM scenes WHERE upscaled_from_scene_id = %s AND resolution_tier_id = %s", [scene_id, target.id]
    ).fetchone()
    if existing:
        return existing["id"], False
    if source["status"] not in FULLY_GENERATED:
        raise Conflict(f"scene {scene_id} is {source['status']}; only a fully generated scene can be upscaled")
    if target.is_deliverable and source["status"] != "approved":
        raise Conflict(
            f"scene {scene_id} is not approved; approve it before upscaling to {target.label}: "
            f"tierflow scenes approve {scene_id}"
        )
    # 2. the identical recipe, segment by segment
    segments = conn.execute("SELECT * FROM segments WHERE scene_id = %s ORDER BY position", [scene_id]).fetchall()
    recipes = [Recipe(**{k: s[k] for k in Recipe.model_fields}) for s in segments]
    aspect = AspectRatio(source["aspect_width"], source["aspect_height"])
    # 3. the target scene and its jobs; the unique index is the final word on "one target"
    with conn.transaction():
        try:
            target_id = create_scene(conn, emit, project=source["project"], name=source["name"], aspect=aspect,
                                     tier=target, recipes=recipes, upscaled_from_scene_id=scene_id)
        except psycopg.errors.UniqueViolation:
            target_id = None
    if target_id is None:  # created meanwhile by a request that did not wait on our lock
        return conn.execute(
            "SELECT id FROM scenes WHERE upscaled_from_scene_id = %s AND resolution_tier_id = %s",
            [scene_id, target.id]).fetchone()["id"], False
    return target_id, True


def request_upscale(deps, scene_id: int, target_tier: str, requested_by: str | None = None) -> int:
    """One click: create the target scene now (so its id can be shown) and record the request as
    an `upscale.requested` event; its handler finds the same target and does nothing twice."""
    with deps.uow() as uow:
        target_id, _ = upscale_scene(uow.conn, uow.emit, scene_id, target_tier)
        uow.emit(UpscaleRequested(source_scene_id=scene_id, target_tier=target_tier, requested_by=requested_by))
    return target_id


def approve(deps, scene_id: int, approved_by: str | None = None) -> str:
    """Publish `scene.approved` (its handler applies it); returns the event id. Refused at once,
    with the reason, for an unknown scene or one that is not fully generated."""
    with deps.uow() as uow:
        scene = _source(uow.conn, scene_id)
        if scene["status"] not in FULLY_GENERATED:
            raise Conflict(f"scene {scene_id} is {scene['status']}; only a fully generated scene can be approved")
        return uow.emit(SceneApproved(scene_id=scene_id, approved_by=approved_by))


def retry_failed_segments(deps, scene_id: int) -> list[int]:
    """Queue a new attempt of every failed segment of a scene (only those); returns the new job ids."""
    from functions.on_generation_result import retry_job

    with deps.uow() as uow:
        scene = _source(uow.conn, scene_id)
        failed = uow.conn.execute(
            """SELECT g.id, (SELECT max(attempt) FROM generation_jobs WHERE segment_id = g.id) AS attempt
               FROM segments g WHERE g.scene_id = %s AND g.status = 'failed' ORDER BY g.position""",
            [scene_id],
        ).fetchall()
        if not failed:
            raise Conflict(f"scene {scene_id} is {scene['status']} and has no failed segment to retry")
        jobs = [retry_job(uow.conn, uow.emit, row["id"], row["attempt"] + 1) for row in failed]
        uow.conn.execute("UPDATE segments SET status = 'pending' WHERE id = ANY(%s)", [[r["id"] for r in failed]])
        uow.conn.execute("UPDATE scenes SET status = 'generating' WHERE id = %s AND status = 'failed'", [scene_id])
    return jobs


def set_auto_upscale(deps, project: str, tier: str | None) -> None:
    """Set (or clear, with None) the tier a project's approved scenes are upscaled to automatically."""
    with deps.uow() as uow:
        tier_id = tiers.get_tier(uow.conn, tier).id if tier else None
        updated = uow.conn.execute(
            "UPDATE projects SET auto_upscale_to_tier_id = %s WHERE name = %s RETURNING id", [tier_id, project]
        ).fetchone()
        if updated is None:
            uow.conn.execute("INSERT INTO projects (name, auto_upscale_to_tier_id) VALUES (%s, %s)", [project, tier_id])
