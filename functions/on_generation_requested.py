"""generation.requested: hand the job to the dispatcher (local worker processes or AWS Batch).

Dispatching is the one effect outside the database. The job row is locked and checked first,
so a redelivered event dispatches nothing; if the transaction fails after the dispatcher took
the job, the redelivery dispatches it again — the worker writes the same keys and the result
handler applies only the first result, so a duplicate costs GPU time, never correctness. To keep
that rare, the function is `isolated`: one failing event never makes a batch's others re-dispatch.
"""

from events import GenerationRequested
from functions.lambda_entry import lambda_entrypoint
from shared.consumer import Function
from shared.dispatch import job_document
from shared.errors import NotFound


def handle(event: GenerationRequested, deps) -> None:
    """Dispatch one queued job, once."""
    with deps.uow() as uow:
        job = uow.conn.execute(
            "SELECT status, external_job_id, attempt FROM generation_jobs WHERE id = %s FOR UPDATE", [event.job_id]
        ).fetchone()
        if job is None:
            raise NotFound(f"generation job {event.job_id} does not exist")
        if job["status"] != "queued" or job["external_job_id"] is not None:
            return  # dispatched before
        # Retry backoff: attempt 2 waits the base pause, each later attempt twice as long.
        delay = deps.settings.retry_backoff_seconds * 2 ** (job["attempt"] - 2) if job["attempt"] > 1 else 0.0
        dispatcher = deps.dispatcher
        external_id = dispatcher.submit(job_document(uow.conn, event.job_id), delay)
        uow.conn.execute(
            "UPDATE generation_jobs SET dispatcher = %s, external_job_id = %s WHERE id = %s AND status = 'queued'",
            [dispatcher.name, external_id, event.job_id],
        )


FUNCTION = Function("on_generation_requested", (GenerationRequested.type,), handle, isolated=True)
lambda_handler = lambda_entrypoint(FUNCTION)
