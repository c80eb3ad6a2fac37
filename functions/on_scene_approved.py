"""scene.approved: record the approval, then apply the project's auto-upscale policy.

Producers anywhere in the studio pipeline approve scenes by publishing this event. The handler
moves the scene from `generated` to `approved` (a guarded update: a late or repeated event
cannot move it anywhere else) and, when the project sets `auto_upscale_to` a higher tier,
requests the upscale (progressive upscaling). An approval of an already approved scene changes
nothing and requests nothing again.
"""

from events import SceneApproved, UpscaleRequested
from functions.lambda_entry import lambda_entrypoint
from shared.consumer import Function
from shared.errors import Conflict, NotFound


def handle(event: SceneApproved, deps) -> None:
    """Apply one approval."""
    with deps.uow() as uow:
        # 1. the scene, its tier and its project's policy, locked against concurrent approvals
        scene = uow.conn.execute(
            """SELECT s.status, t.name AS tier, t.sort_order,
                      auto.name AS auto_tier, auto.sort_order AS auto_sort_order
               FROM scenes s
               JOIN resolution_tiers t ON t.id = s.resolution_tier_id
               JOIN projects p ON p.id = s.project_id
               LEFT JOIN resolution_tiers auto ON auto.id = p.auto_upscale_to_tier_id
               WHERE s.id = %s
               FOR UPDATE OF s""",
            [event.scene_id],
        ).fetchone()
        if scene is None:
            raise NotFound(f"scene {event.scene_id} does not exist")
        if scene["status"] == "approved":
            return  # approved before: nothing happens twice
        if scene["status"] != "generated":
            raise Conflict(
                f"scene {event.scene_id} is {scene['status']}; only a fully generated scene can be approved"
            )
        # 2. the transition, guarded
        uow.conn.execute(
            "UPDATE scenes SET status = 'approved', approved_at = now() WHERE id = %s AND status = 'generated'",
            [event.scene_id],
        )
        # 3. progressive upscaling
        if scene["auto_tier"] and scene["auto_sort_order"] > scene["sort_order"]:
            uow.emit(UpscaleRequested(
                source_scene_id=event.scene_id, target_tier=scene["auto_tier"], requested_by="auto-upscale"))


FUNCTION = Function("on_scene_approved", (SceneApproved.type,), handle)
lambda_handler = lambda_entrypoint(FUNCTION)
