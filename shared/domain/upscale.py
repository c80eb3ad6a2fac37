"""Upscaling: re-generating an approved scene at a higher tier with the identical recipe.

Not super-resolution: the target scene is a new scene at the target tier, linked to its source
(`upscaled_from_scene_id`), with the same aspect ratio and segments with the same prompts,
seeds, frames, fps, steps, guidance, scheduler and model, at the weights it was pinned to (a
source whose model left the catalogue or changed pin is refused). Only the size changes, so
the recipe hashes are equal. One target per source and tier: the database refuses a second one, so a
repeated, redelivered or concurrent request returns the first.
"""

import time
from dataclasses import dataclass

import psycopg

from events import (
    Event,
    UpscaleCompleted,
    UpscaleFailed,
    UpscaleProgress,
    UpscaleRequested,
    tracing,
)
from shared.domain import catalogue, lifecycle, limits, tiers
from shared.domain.dimensions import AspectRatio
from shared.domain.recipe import recipe_of
from shared.domain.scenes import create_scene, latest_attempt, scene_row
from shared.errors import Conflict

# How long an upscale waits for the source's approval that was published and is not applied yet.
APPROVAL_WAIT_SECONDS = 15.0
# The handler whose record in processed_events says an approval was applied (others take the topic too).
APPROVAL_CONSUMER = "on_scene_approved"


class NotApproved(Conflict):
    """A deliverable target asked of a source that is not approved."""


@dataclass(frozen=True)
class UpscalePlan:
    """What an upscale of `source` to `target` would create, every check passed: the target tier,
    the aspect and the size it is generated at, the source's segments and their recipes, and the
    target scene that exists already (a repeated request returns it and creates nothing)."""

    source: dict
    target: tiers.Tier
    aspect: AspectRatio
    segments: list[dict]
    recipes: list
    existing_target_id: int | None

    @property
    def size(self) -> tuple[int, int]:
        return self.target.size_for(self.aspect)


def plan_upscale(conn: psycopg.Connection, scene_id: int, target_tier: str, *, role: str | None = None,
                 for_update: bool = False) -> UpscalePlan:
    """Every check an upscale of `scene_id` to `target_tier` makes, in order, writing nothing:
    an unknown scene or tier, a tier above an artist's bound (`role`, shared.domain.limits), a
    tier not above the source's, then, unless the target exists already, a source not fully
    generated, a deliverable target (Production) for a source that is not approved, and a model
    that left the catalogue or changed pin. `for_update` locks the source, so that concurrent
    requests for it queue here (the real upscale); an estimate reads without a lock."""
    # 1. the source and the target tier
    source = scene_row(conn, scene_id, for_update=for_update)
    target = tiers.get_tier(conn, target_tier)
    if role is not None:
        limits.check_tier(limits.project_limits(conn, source["project"]), source["project"], target, role)
    if target.sort_order <= source["tier_sort_order"]:
        raise Conflict(
            f"scene {scene_id} is {source['tier']}; upscaling goes to a higher tier than {source['tier']}, "
            f"and {target.name} is not higher"
        )
    existing = conn.execute(
        "SELECT id FROM scenes WHERE upscaled_from_scene_id = %s AND resolution_tier_id = %s", [scene_id, target.id]
    ).fetchone()
    # 2. the identical recipe, segment by segment
    segments = conn.execute("SELECT * FROM segments WHERE scene_id = %s ORDER BY position", [scene_id]).fetchall()
    recipes = [recipe_of(segment) for segment in segments]
    plan = UpscalePlan(source=source, target=target, aspect=AspectRatio(source["aspect_width"], source["aspect_height"]),
                       segments=segments, recipes=recipes, existing_target_id=existing["id"] if existing else None)
    if existing:  # requesting it again returns it, whatever became of the source since
        return plan
    # 3. what the source must be for a new target
    if source["status"] not in lifecycle.FULLY_GENERATED:
        raise Conflict(f"scene {scene_id} is {source['status']}; only a fully generated scene can be upscaled")
    if target.is_deliverable and source["status"] != "approved":
        raise NotApproved(
            f"scene {scene_id} is not approved; approve it before upscaling to {target.label}: "
            f"tierflow scenes approve {scene_id}"
        )
    for model, pin in sorted({(r.model, r.model_pin or "") for r in recipes}):
        catalogue.check_still_pinned(conn, scene_id, model, pin or None)
    return plan


def upscale_scene(conn: psycopg.Connection, emit, scene_id: int, target_tier: str, *,
                  role: str | None = None) -> tuple[int, bool]:
    """Create (or find) the re-generation of `scene_id` at `target_tier`; returns (target id, created).

    Runs in the caller's transaction. Refused, with the reason and nothing written, by the
    checks of `plan_upscale`.
    """
    # 1. every check, the source locked so concurrent requests for it queue here
    plan = plan_upscale(conn, scene_id, target_tier, role=role, for_update=True)
    if plan.existing_target_id is not None:
        return plan.existing_target_id, False
    source, target = plan.source, plan.target
    # 2. the target scene and its jobs; the unique index is the final word on "one target"
    with conn.transaction():
        try:
            target_id = create_scene(conn, emit, project=source["project"], name=source["name"], aspect=plan.aspect,
                                     tier=target, recipes=plan.recipes, upscaled_from_scene_id=scene_id)
        except psycopg.errors.UniqueViolation:
            target_id = None
    if target_id is None:  # created meanwhile by a request that did not wait on our lock
        return conn.execute(
            "SELECT id FROM scenes WHERE upscaled_from_scene_id = %s AND resolution_tier_id = %s",
            [scene_id, target.id]).fetchone()["id"], False
    return target_id, True


def request_upscale(deps, scene_id: int, target_tier: str, requested_by: str | None = None,
                    role: str | None = None) -> int:
    """One click: create the target scene now (so its id can be shown) and record the request as
    an `upscale.requested` event; its handler finds the same target and does nothing twice. An
    artist (`role`) stays within the project's artist tier (shared.domain.limits).

    A source whose approval was published but is not applied yet (a runtime process applies it
    a moment later) is waited for, up to APPROVAL_WAIT_SECONDS: approve then upscale works
    wherever the handlers run."""
    try:
        return _request_upscale(deps, scene_id, target_tier, requested_by, role)
    except NotApproved as refused:
        with deps.connect() as conn:
            if not approval_pending(conn, scene_id):
                raise
            deadline = time.monotonic() + APPROVAL_WAIT_SECONDS
            while approval_pending(conn, scene_id):
                if time.monotonic() > deadline:
                    raise NotApproved(f"{refused}; its approval was published but no runtime process applied it "
                                      f"within {APPROVAL_WAIT_SECONDS:g} s (is `tierflow serve` or `tierflow consume` "
                                      "running?)") from None
                time.sleep(0.1)
    return _request_upscale(deps, scene_id, target_tier, requested_by, role)


def approval_pending(conn: psycopg.Connection, scene_id: int) -> bool:
    """A `scene.approved` of the scene is in the outbox and not applied yet."""
    return conn.execute(
        """SELECT 1 FROM outbox o WHERE o.topic = 'scene.approved' AND o.message_key = %s AND NOT EXISTS (
               SELECT 1 FROM processed_events p WHERE p.consumer = %s AND p.event_id = o.event_id)
           LIMIT 1""", [str(scene_id), APPROVAL_CONSUMER]).fetchone() is not None


def _request_upscale(deps, scene_id: int, target_tier: str, requested_by: str | None, role: str | None) -> int:
    with deps.uow() as uow:
        source = scene_row(uow.conn, scene_id)
        # The source scene's trace goes on: its upscale is part of the same story.
        with tracing.scope(source["traceparent"] or tracing.current(), name="request upscale",
                           attributes={"tierflow.scene_id": scene_id, "tierflow.tier": target_tier}):
            target_id, _ = upscale_scene(uow.conn, uow.emit, scene_id, target_tier, role=role)
            uow.emit(UpscaleRequested(source_scene_id=scene_id, target_tier=target_tier, requested_by=requested_by))
    return target_id


def set_auto_upscale(deps, project: str, tier: str | None) -> None:
    """Set (or clear, with None) the tier a project's approved scenes are upscaled to automatically."""
    with deps.uow() as uow:
        set_auto_upscale_in(uow.conn, project, tier)


def set_auto_upscale_in(conn: psycopg.Connection, project: str, tier: str | None) -> None:
    """`set_auto_upscale` in the caller's transaction (the project is created when missing)."""
    tier_id = tiers.get_tier(conn, tier).id if tier else None
    updated = conn.execute(
        "UPDATE projects SET auto_upscale_to_tier_id = %s WHERE name = %s RETURNING id", [tier_id, project]
    ).fetchone()
    if updated is None:
        conn.execute("INSERT INTO projects (name, auto_upscale_to_tier_id) VALUES (%s, %s)", [project, tier_id])


def auto_upscale_request(scene: dict) -> UpscaleRequested | None:
    """The upscale a project's policy asks for when one of its scenes (`scenes.scene_row`) is
    approved: to its `auto_upscale_to` tier when that is above the scene's (progressive upscaling)."""
    if scene["auto_tier"] is None or scene["auto_sort_order"] <= scene["tier_sort_order"]:
        return None
    return UpscaleRequested(source_scene_id=scene["id"], target_tier=scene["auto_tier"], requested_by="auto-upscale")


def progress_events(conn: psycopg.Connection, scene_id: int, change: str) -> list[Event]:
    """For an upscale target whose job reported `change` (lifecycle.PROGRESS, GENERATED or
    FAILED): upscale.progress, then upscale.completed or upscale.failed; none for other scenes."""
    scene = conn.execute(
        f"""SELECT s.upscaled_from_scene_id, t.name AS tier,
                   count(g.id) AS total, count(g.id) FILTER (WHERE g.status = 'generated') AS done,
                   avg(COALESCE(j.progress, 0)) AS progress,
                   (array_agg(j.error ORDER BY j.finished_at DESC) FILTER (WHERE g.status = 'failed'))[1] AS error
            FROM scenes s JOIN resolution_tiers t ON t.id = s.resolution_tier_id JOIN segments g ON g.scene_id = s.id
            {latest_attempt()}
            WHERE s.id = %s GROUP BY s.id, t.name""",
        [scene_id],
    ).fetchone()
    if scene is None or scene["upscaled_from_scene_id"] is None:
        return []
    ids = {"source_scene_id": scene["upscaled_from_scene_id"], "target_scene_id": scene_id,
           "target_tier": scene["tier"]}
    events: list[Event] = [UpscaleProgress(**ids, percent=round(100 * float(scene["progress"]), 1),
                                           segments_done=scene["done"], segments_total=scene["total"])]
    if change == lifecycle.GENERATED:
        events.append(UpscaleCompleted(**ids))
    elif change == lifecycle.FAILED:
        events.append(UpscaleFailed(**ids, reason=f"segment generation failed: {scene['error']}"))
    return events
