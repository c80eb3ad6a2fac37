"""Every status transition of scenes, segments, generation jobs and deliveries: the state machine.

  scene:    pending → generating → generated → approved; generating → failed → (retry) generating
  segment:  pending → generating → generated; pending | generating → failed → (retry) pending
  job:      queued → running → succeeded | failed; a retry is a new attempt row, never an
            overwrite of the failed one
  delivery: requested → completed | rejected

Each transition is one guarded UPDATE (`… WHERE status IN (what it may come from)`), so a late,
repeated or out-of-order event cannot move a row backwards; each answers whether it moved a row
(a `Transition`, read only when asked). This is the only module that writes a status column (the schema's CHECKs are the
backstop). Every function runs in the caller's transaction.
"""

import psycopg
from psycopg.types.json import Jsonb

from events import GenerationCompleted, GenerationFailed, GenerationProgress, GenerationRequested
from shared.domain.recipe import recipe_of

# A fully generated scene may be approved, upscaled and delivered; a settled one changes no more
# by itself (a failed one waits for `scenes retry`).
FULLY_GENERATED = ("generated", "approved")
SETTLED = (*FULLY_GENERATED, "failed")
ACTIVE_JOB = ("queued", "running")

# What a worker's report changed, for the upscale report: nothing (None: a late or repeated
# report), progress, the scene's new terminal status, or a new attempt to request.
PROGRESS, GENERATED, FAILED, RETRY = "progress", "generated", "failed", "retry"


class Transition:
    """Whether one guarded UPDATE moved a row: true or false, read from the server only when asked.
    In a pipeline (the runtime applies a batch in one), a transition whose answer nobody reads
    costs no round trip of its own."""

    __slots__ = ("_cursor", "_moved")

    def __init__(self, cursor: psycopg.Cursor):
        self._cursor, self._moved = cursor, None

    def __bool__(self) -> bool:
        if self._moved is None:
            self._moved = self._cursor.fetchone() is not None
        return self._moved


def _changed(conn: psycopg.Connection, sql: str, params) -> Transition:
    return Transition(conn.execute(sql + " RETURNING 1", params))


# ---------------------------------------------------------------------------------------------
# Scenes


def start_scene(conn: psycopg.Connection, scene_id: int) -> Transition:
    """pending → generating: one of its jobs reported."""
    return _changed(conn, "UPDATE scenes SET status = 'generating' WHERE id = %s AND status = 'pending'", [scene_id])


def finish_scene(conn: psycopg.Connection, scene_id: int) -> Transition:
    """→ generated once every segment is generated (a failed scene whose last segment a late
    report completes included)."""
    return _changed(
        conn,
        """UPDATE scenes SET status = 'generated'
           WHERE id = %s AND status IN ('pending', 'generating', 'failed')
             AND NOT EXISTS (SELECT 1 FROM segments WHERE scene_id = %s AND status <> 'generated')""",
        [scene_id, scene_id],
    )


def fail_scene(conn: psycopg.Connection, scene_id: int) -> Transition:
    """pending | generating → failed: a segment failed for good."""
    return _changed(
        conn, "UPDATE scenes SET status = 'failed' WHERE id = %s AND status IN ('pending', 'generating')", [scene_id])


def approve_scene(conn: psycopg.Connection, scene_id: int) -> Transition:
    """generated → approved, with the time."""
    return _changed(
        conn, "UPDATE scenes SET status = 'approved', approved_at = now() WHERE id = %s AND status = 'generated'",
        [scene_id])


def reopen_scene(conn: psycopg.Connection, scene_id: int) -> Transition:
    """failed → generating: its failed segments are being retried."""
    return _changed(conn, "UPDATE scenes SET status = 'generating' WHERE id = %s AND status = 'failed'", [scene_id])


# ---------------------------------------------------------------------------------------------
# Segments


def start_segment(conn: psycopg.Connection, segment_id: int) -> Transition:
    """pending → generating."""
    return _changed(
        conn, "UPDATE segments SET status = 'generating' WHERE id = %s AND status = 'pending'", [segment_id])


def finish_segment(conn: psycopg.Connection, segment_id: int, *, ssim: float | None, psnr: float | None,
                   comparison_key: str | None, similarity_threshold: float) -> Transition:
    """→ generated, with the similarity to the source segment (upscales only), flagged below
    the threshold."""
    return _changed(
        conn,
        """UPDATE segments SET status = 'generated', ssim = %s, psnr = %s, comparison_key = %s,
                  similarity_flagged = CASE WHEN %s::float8 IS NULL THEN NULL ELSE %s::float8 < %s END
           WHERE id = %s AND status IN ('pending', 'generating', 'failed')""",
        [ssim, psnr, comparison_key, ssim, ssim, similarity_threshold, segment_id],
    )


def fail_segment(conn: psycopg.Connection, segment_id: int) -> Transition:
    """pending | generating → failed: its last attempt failed and no retry is left."""
    return _changed(
        conn, "UPDATE segments SET status = 'failed' WHERE id = %s AND status IN ('pending', 'generating')",
        [segment_id])


def reset_failed_segments(conn: psycopg.Connection, segment_ids: list[int]) -> list[int]:
    """failed → pending, for a manual retry; returns the ids that were failed."""
    rows = conn.execute(
        "UPDATE segments SET status = 'pending' WHERE id = ANY(%s) AND status = 'failed' RETURNING id",
        [segment_ids]).fetchall()
    return [r["id"] for r in rows]


# ---------------------------------------------------------------------------------------------
# Generation jobs


def queue_attempt(conn: psycopg.Connection, segment_id: int) -> GenerationRequested:
    """Queue the segment's next attempt (the first, or a retry: earlier attempts stay as they
    were) and return the generation.requested event that asks for it."""
    # One statement: the insert, and what the request says (the recipe, the scene's size and tier).
    job = conn.execute(
        """WITH job AS (
               INSERT INTO generation_jobs (segment_id, attempt)
               SELECT %s, COALESCE(max(attempt), 0) + 1 FROM generation_jobs WHERE segment_id = %s
               RETURNING id, attempt, segment_id)
           SELECT job.id AS job_id, job.attempt, g.*, s.width, s.height, t.name AS tier
           FROM job JOIN segments g ON g.id = job.segment_id JOIN scenes s ON s.id = g.scene_id
           JOIN resolution_tiers t ON t.id = s.resolution_tier_id""",
        [segment_id, segment_id],
    ).fetchone()
    return GenerationRequested(job_id=job["job_id"], scene_id=job["scene_id"], segment_id=segment_id,
                               attempt=job["attempt"], tier=job["tier"], width=job["width"], height=job["height"],
                               recipe=recipe_of(job))


def record_dispatch(conn: psycopg.Connection, job_id: int, dispatcher: str, external_job_id: str) -> Transition:
    """Note where an unfinished job was handed (its dispatcher and that dispatcher's id for it)."""
    return _changed(
        conn,
        "UPDATE generation_jobs SET dispatcher = %s, external_job_id = %s WHERE id = %s AND status IN ('queued', 'running')",
        [dispatcher, external_job_id, job_id],
    )


def job_progressed(conn: psycopg.Connection, job_id: int, fraction: float) -> Transition:
    """queued | running → running, progress only ever growing."""
    return _changed(
        conn,
        """UPDATE generation_jobs SET status = 'running', started_at = COALESCE(started_at, now()),
                  progress = GREATEST(progress, %s)
           WHERE id = %s AND status IN ('queued', 'running')""",
        [fraction, job_id],
    )


def job_succeeded(conn: psycopg.Connection, event: GenerationCompleted) -> Transition:
    """queued | running → succeeded, with the files and what they cost: the render, the load,
    the time the worker held its device, which worker, how many samples one call rendered."""
    return _changed(
        conn,
        """UPDATE generation_jobs
           SET status = 'succeeded', progress = 1, started_at = COALESCE(started_at, now()), finished_at = now(),
               device = %s, device_seconds = %s, video_key = %s, poster_key = %s, metadata_key = %s,
               sha256 = %s, frames = %s, load_seconds = %s, held_seconds = %s, worker_id = %s, batch_size = %s
           WHERE id = %s AND status IN ('queued', 'running')""",
        [event.device, event.device_seconds, event.video_key, event.poster_key, event.metadata_key, event.sha256,
         event.frames, event.load_seconds, event.held_seconds, event.worker_id, event.batch_size, event.job_id],
    )


def job_failed(conn: psycopg.Connection, event: GenerationFailed) -> int | None:
    """queued | running → failed with its reason (and what it held, when the worker says);
    returns the attempt number (None: it had finished already, and the report changes nothing)."""
    row = conn.execute(
        """UPDATE generation_jobs SET status = 'failed', error = %s, held_seconds = %s, worker_id = %s,
                  finished_at = now()
           WHERE id = %s AND status IN ('queued', 'running') RETURNING attempt""",
        [event.reason, event.held_seconds, event.worker_id, event.job_id],
    ).fetchone()
    return row["attempt"] if row else None


# ---------------------------------------------------------------------------------------------
# The retry policy of generation jobs


def should_retry(attempt: int, max_attempts: int, retryable: bool) -> bool:
    """A failed attempt gets another when the failure may pass and attempts are left."""
    return retryable and attempt < max_attempts


def retry_delay_seconds(attempt: int, base_seconds: float) -> float:
    """How long attempt `attempt` waits before it starts: none for the first, the base pause for
    the second, twice as long for each later one."""
    return base_seconds * 2 ** (attempt - 2) if attempt > 1 else 0.0


# ---------------------------------------------------------------------------------------------
# A worker's report, applied to its job, segment and scene


def apply_progress(conn: psycopg.Connection, event: GenerationProgress) -> str | None:
    if not job_progressed(conn, event.job_id, event.step / event.total_steps):
        return None  # the job finished before: a late report
    start_segment(conn, event.segment_id)
    start_scene(conn, event.scene_id)
    return PROGRESS


def apply_completed(conn: psycopg.Connection, event: GenerationCompleted, similarity_threshold: float) -> str | None:
    if not job_succeeded(conn, event):
        return None  # reported before, or the job was already given up on
    finish_segment(conn, event.segment_id, ssim=event.ssim, psnr=event.psnr, comparison_key=event.comparison_key,
                   similarity_threshold=similarity_threshold)
    if finish_scene(conn, event.scene_id):
        return GENERATED
    start_scene(conn, event.scene_id)
    return PROGRESS


def apply_failed(conn: psycopg.Connection, event: GenerationFailed, max_attempts: int) -> str | None:
    """RETRY when the caller must queue the next attempt (`queue_attempt`)."""
    attempt = job_failed(conn, event)
    if attempt is None:
        return None
    if should_retry(attempt, max_attempts, event.retryable):
        return RETRY
    fail_segment(conn, event.segment_id)
    return FAILED if fail_scene(conn, event.scene_id) else PROGRESS


# ---------------------------------------------------------------------------------------------
# Deliveries


def complete_delivery(conn: psycopg.Connection, delivery_id: int, manifest_key: str) -> Transition:
    """requested → completed, with its manifest."""
    return _changed(
        conn,
        """UPDATE deliveries SET status = 'completed', manifest_key = %s, finished_at = now()
           WHERE id = %s AND status = 'requested'""",
        [manifest_key, delivery_id],
    )


def reject_delivery(conn: psycopg.Connection, delivery_id: int, reasons: list[dict]) -> Transition:
    """requested → rejected, with every reason."""
    return _changed(
        conn,
        "UPDATE deliveries SET status = 'rejected', reasons = %s, finished_at = now() WHERE id = %s AND status = 'requested'",
        [Jsonb(reasons), delivery_id],
    )
