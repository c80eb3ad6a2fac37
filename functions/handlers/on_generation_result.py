"""generation.progress / completed / failed: apply a worker's report to job, segment and scene.

The rules are `shared.domain.lifecycle`'s: every transition is a guarded UPDATE, so a late or
repeated report cannot move anything backwards (progress after completion is ignored, a second
completion changes nothing, a failure of a job that already finished is dropped). A failed
attempt keeps its reason; a retry is a new attempt, queued here with its backoff. An upscale
target also reports its progress and end as upscale.* events. (`shared.domain.reports` holds the
composition; the lease sweeper applies a lost worker's failure with it too.)
"""

from events import GenerationCompleted, GenerationFailed, GenerationProgress
from shared.domain.reports import apply_report
from shared.runtime.consumer import Function
from shared.runtime.ports import Ports
from shared.runtime.uow import UnitOfWork


def handle(event: GenerationProgress | GenerationCompleted | GenerationFailed, uow: UnitOfWork,
           ports: Ports) -> None:
    """Apply one report."""
    settings = ports.settings
    apply_report(uow.conn, uow.emit, event, max_attempts=settings.max_attempts,
                 retry_backoff_seconds=settings.retry_backoff_seconds,
                 similarity_threshold=settings.similarity_threshold)


FUNCTION = Function(
    "on_generation_result",
    (GenerationProgress.type, GenerationCompleted.type, GenerationFailed.type),
    handle,
)
