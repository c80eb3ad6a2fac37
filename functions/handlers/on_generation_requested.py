"""generation.requested: hand the job to the dispatcher (local worker processes or AWS Batch).

Dispatching is the one effect outside the database. The job row is locked and checked first,
so a redelivered event dispatches nothing; if the transaction fails after the dispatcher took
the job, the redelivery dispatches it again — the worker writes the same keys and the result
handler applies only the first result, so a duplicate costs GPU time, never correctness. To keep
that rare, the function is `isolated`: one failing event never makes a batch's others re-dispatch.
"""

from events import GenerationRequested
from shared.domain import lifecycle
from shared.domain.scenes import job_document
from shared.errors import NotFound
from shared.runtime.consumer import Function
from shared.runtime.ports import Ports
from shared.runtime.uow import UnitOfWork


def handle(event: GenerationRequested, uow: UnitOfWork, ports: Ports) -> None:
    """Dispatch one queued job, once."""
    conn = uow.conn
    job = conn.execute(
        "SELECT status, external_job_id, attempt FROM generation_jobs WHERE id = %s FOR UPDATE", [event.job_id]
    ).fetchone()
    if job is None:
        raise NotFound(f"generation job {event.job_id} does not exist")
    if job["status"] != "queued" or job["external_job_id"] is not None:
        return  # dispatched before
    dispatcher = ports.dispatcher
    delay = lifecycle.retry_delay_seconds(job["attempt"], ports.settings.retry_backoff_seconds)
    external_id = dispatcher.submit(job_document(conn, event.job_id), delay)
    lifecycle.record_dispatch(conn, event.job_id, dispatcher.name, external_id)


FUNCTION = Function("on_generation_requested", (GenerationRequested.type,), handle, isolated=True)
