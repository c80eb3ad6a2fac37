"""upscale.requested: re-generate a scene at a higher tier (see shared.domain.upscale).

A request the rules refuse (tier not higher, source not generated or not approved for a
deliverable tier, unknown scene or tier) is answered with upscale.failed carrying the reason,
so whoever asked learns why; a repeated request finds the existing target and does nothing.
"""

from events import UpscaleFailed, UpscaleRequested
from shared.domain.upscale import upscale_scene
from shared.errors import Conflict, NotFound
from shared.runtime.consumer import Function
from shared.runtime.ports import Ports
from shared.runtime.uow import UnitOfWork


def handle(event: UpscaleRequested, uow: UnitOfWork, ports: Ports) -> None:
    """Create the target scene and its jobs, once."""
    try:
        with uow.conn.transaction():  # a refusal leaves nothing of the attempt behind
            upscale_scene(uow.conn, uow.emit, event.source_scene_id, event.target_tier)
    except (Conflict, NotFound) as refused:
        uow.emit(UpscaleFailed(source_scene_id=event.source_scene_id, target_scene_id=None,
                               target_tier=event.target_tier, reason=str(refused)))


FUNCTION = Function("on_upscale_requested", (UpscaleRequested.type,), handle)
