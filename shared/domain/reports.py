"""A worker's report applied to its job, segment, scene and upscale, and the verdict on a worker
that went silent (its lease expired): the one composition `on_generation_result` and the lease
sweeper share, so a lost worker's job fails and retries exactly as a reported failure does."""

from collections.abc import Callable
from datetime import UTC, datetime

import psycopg

from events import Event, GenerationCompleted, GenerationFailed, GenerationProgress
from shared.domain import lifecycle, upscale


def apply_report(conn: psycopg.Connection, emit: Callable[[Event], object],
                 event: GenerationProgress | GenerationCompleted | GenerationFailed, *, max_attempts: int,
                 retry_backoff_seconds: float, similarity_threshold: float) -> str | None:
    """Apply one report in the caller's transaction, emitting what follows from it (the next
    attempt's request, an upscale's progress or end); returns what changed (lifecycle's answer)."""
    if isinstance(event, GenerationProgress):
        change = lifecycle.apply_progress(conn, event)
    elif isinstance(event, GenerationCompleted):
        change = lifecycle.apply_completed(conn, event, similarity_threshold)
    else:
        change = lifecycle.apply_failed(conn, event, max_attempts)
    if change == lifecycle.RETRY:
        emit(lifecycle.queue_attempt(conn, event.segment_id, retry_backoff_seconds))
    elif change:
        for upscale_event in upscale.progress_events(conn, event.scene_id, change):
            emit(upscale_event)
    return change


def lost_worker_reason(worker_id: str | None, heard_at: datetime | None) -> str:
    """Why an attempt whose lease expired failed, in words an operator can act on."""
    heard = heard_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if heard_at else "never"
    return f"worker lost: lease expired, last heard at {heard} (worker {worker_id or 'unknown'})"


def sweep_expired_leases(conn: psycopg.Connection, emit: Callable[[Event], object], *, max_attempts: int,
                         retry_backoff_seconds: float, similarity_threshold: float, limit: int = 100) -> list[int]:
    """Fail, in the caller's transaction, every attempt whose worker stopped renewing its lease,
    and queue the next attempt under the retry policy; returns the failed job ids. The failure
    is emitted too, for whoever follows the job (applying it again changes nothing)."""
    swept = []
    for job in lifecycle.expired_jobs(conn, limit):
        held = (job["heard_at"] - job["claimed_at"]).total_seconds() if job["claimed_at"] and job["heard_at"] else None
        failure = GenerationFailed(job_id=job["id"], scene_id=job["scene_id"], segment_id=job["segment_id"],
                                   reason=lost_worker_reason(job["worker_id"], job["heard_at"]), retryable=True,
                                   held_seconds=None if held is None else round(max(held, 0.0), 3),
                                   worker_id=job["worker_id"])
        apply_report(conn, emit, failure, max_attempts=max_attempts, retry_backoff_seconds=retry_backoff_seconds,
                     similarity_threshold=similarity_threshold)
        emit(failure)
        swept.append(job["id"])
    return swept
