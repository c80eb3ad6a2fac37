"""generation.progress / completed / failed: apply a worker's report to job, segment and scene.

The rules are `shared.domain.lifecycle`'s: every transition is a guarded UPDATE, so a late or
repeated report cannot move anything backwards (progress after completion is ignored, a second
completion changes nothing, a failure of a job that already finished is dropped). A failed
attempt keeps its reason; a retry is a new attempt, requested here. An upscale target also
reports its progress and end as upscale.* events.
"""

from events import GenerationCompleted, GenerationFailed, GenerationProgress
from shared.domain import lifecycle, upscale
from shared.runtime.consumer import Function
from shared.runtime.ports import Ports
from shared.runtime.uow import UnitOfWork


def handle(event: GenerationProgress | GenerationCompleted | GenerationFailed, uow: UnitOfWork,
           ports: Ports) -> None:
    """Apply one report."""
    conn = uow.conn
    if isinstance(event, GenerationProgress):
        change = lifecycle.apply_progress(conn, event)
    elif isinstance(event, GenerationCompleted):
        change = lifecycle.apply_completed(conn, event, ports.settings.similarity_threshold)
    else:
        change = lifecycle.apply_failed(conn, event, ports.settings.max_attempts)
    if change == lifecycle.RETRY:
        uow.emit(lifecycle.queue_attempt(conn, event.segment_id))
    elif change:
        for upscale_event in upscale.progress_events(conn, event.scene_id, change):
            uow.emit(upscale_event)


FUNCTION = Function(
    "on_generation_result",
    (GenerationProgress.type, GenerationCompleted.type, GenerationFailed.type),
    handle,
)
