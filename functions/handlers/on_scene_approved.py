"""scene.approved: record the approval, then apply the project's auto-upscale policy.

Producers anywhere in the studio pipeline approve scenes by publishing this event. The handler
moves the scene from `generated` to `approved` (a guarded update: a late or repeated event
cannot move it anywhere else) and, when the project sets `auto_upscale_to` a higher tier,
requests the upscale (progressive upscaling). The approved scene's Draft media are exempted from
the Draft expiry. An approval of an already approved scene changes nothing and requests nothing
again.
"""

from events import SceneApproved
from shared.domain import lifecycle, upscale
from shared.domain.scenes import scene_media_keys, scene_row
from shared.errors import Conflict
from shared.runtime.consumer import Function
from shared.runtime.ports import Ports
from shared.runtime.uow import UnitOfWork


def handle(event: SceneApproved, uow: UnitOfWork, ports: Ports) -> None:
    """Apply one approval."""
    from shared.adapters.storage import EXPIRING_PREFIX, keep_media  # boto3: only when an approval comes

    scene = scene_row(uow.conn, event.scene_id, for_update=True)  # concurrent approvals of it queue here
    if scene["status"] == "approved":
        return  # approved before: nothing happens twice
    if scene["status"] != "generated":
        raise Conflict(f"scene {event.scene_id} is {scene['status']}; only a fully generated scene can be approved")
    if ports.settings.tags_media:  # (a query per approval only where media are tagged)
        keys = scene_media_keys(uow.conn, event.scene_id)
        if any(key.startswith(EXPIRING_PREFIX) for key in keys):
            # Before the approval commits: when S3 cannot take it, the approval waits and is tried again.
            keep_media(ports.storage.s3, ports.storage.bucket, keys)
    lifecycle.approve_scene(uow.conn, event.scene_id)  # locked and generated: the guard holds
    request = upscale.auto_upscale_request(scene)
    if request:
        uow.emit(request)


FUNCTION = Function("on_scene_approved", (SceneApproved.type,), handle)
