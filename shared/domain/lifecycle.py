"""Every status transition of scenes, segments, generation jobs and deliveries: the state machine.

  scene:    pending → generating → generated → approved; generating → failed → (retry) generating
  segment:  pending → generating → generated; pending | generating → failed → (retry) pending
  job:      queued → (claimed by a worker, under a lease) running → succeeded | failed;
            running → queued when a stopping worker gives it back; failed → succeeded when the
            attempt's success report arrives after its failure report (success wins); a retry is
            a new attempt row, never an overwrite of the failed one
  delivery: requested → completed | rejected

Each transition is one guarded UPDATE (`… WHERE status IN (what it may come from)`), so a late,
repeated or out-of-order event cannot move a row backwards; each answers whether it moved a row
(a `Transition`, read only when asked). This is the only module that writes a status column (the schema's CHECKs are the
backstop). Every function runs in the caller's transaction.
"""

import psycopg
from psycopg.types.json import Jsonb

from events import (
    GenerationCompleted,
    GenerationFailed,
    GenerationProgress,
    GenerationRequested,
    tracing,
)
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
                   comparison_key: str | None, similarity_threshold: float,
                   no_similarity_reason: str | None = None) -> Transition:
    """→ generated, with the similarity to the source segment (upscales only), flagged below
    the threshold, or why there is none."""
    return _changed(
        conn,
        """UPDATE segments SET status = 'generated', ssim = %s, psnr = %s, comparison_key = %s,
                  similarity_flagged = CASE WHEN %s::float8 IS NULL THEN NULL ELSE %s::float8 < %s END,
                  no_similarity_reason = %s
           WHERE id = %s AND status IN ('pending', 'generating', 'failed')""",
        [ssim, psnr, comparison_key, ssim, ssim, similarity_threshold, no_similarity_reason, segment_id],
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


def queue_attempt(conn: psycopg.Connection, segment_id: int, retry_backoff_seconds: float = 0.0) -> GenerationRequested:
    """Queue the segment's next attempt (the first, or a retry: earlier attempts stay as they
    were) and return the generation.requested event that asks for it.

    The retry policy's pause: attempt 1 may start at once, attempt 2 after `retry_backoff_seconds`,
    each later one after twice the pause before it. The job waits in the queue (`not_before`),
    never in a worker."""
    # One statement: the insert, and what the request says (the recipe, the scene's size and tier).
    job = conn.execute(
        """WITH next AS (
               SELECT COALESCE(max(attempt), 0) + 1 AS attempt FROM generation_jobs WHERE segment_id = %(segment)s),
           job AS (
               INSERT INTO generation_jobs (segment_id, attempt, not_before, traceparent)
               SELECT %(segment)s, attempt, now() + CASE WHEN attempt = 1 THEN interval '0'
                   ELSE make_interval(secs => %(backoff)s * 2 ^ (attempt - 2)) END,
                   -- a retry the sweeper queues has no trace of its own: it continues the last attempt's
                   COALESCE(%(trace)s, (SELECT traceparent FROM generation_jobs
                                        WHERE segment_id = %(segment)s ORDER BY attempt DESC LIMIT 1))
               FROM next
               RETURNING id, attempt, segment_id)
           SELECT job.id AS job_id, job.attempt, g.*, s.width, s.height, t.name AS tier
           FROM job JOIN segments g ON g.id = job.segment_id JOIN scenes s ON s.id = g.scene_id
           JOIN resolution_tiers t ON t.id = s.resolution_tier_id""",
        {"segment": segment_id, "backoff": float(retry_backoff_seconds), "trace": tracing.current()},
    ).fetchone()
    return GenerationRequested(job_id=job["job_id"], scene_id=job["scene_id"], segment_id=segment_id,
                               attempt=job["attempt"], tier=job["tier"], width=job["width"], height=job["height"],
                               recipe=recipe_of(job))


def claim_job(conn: psycopg.Connection, worker_id: str, *, lease_seconds: float, models: list[str] | None = None,
              loaded_models: list[str] = (), last_size: tuple[int, int] | None = None,
              affinity_max_wait_seconds: float = 30.0, job_id: int | None = None) -> int | None:
    """queued → running for one job whose time has come, under a lease for `worker_id`; returns
    its id (None: nothing to claim). Two workers never claim the same job (SKIP LOCKED).

    Only jobs of `models` when given (all when None), only `job_id` when given. Preferred: a job
    that has waited longer than `affinity_max_wait_seconds` (no job starves), then one whose model
    is loaded, then one of the size rendered last, then the oldest."""
    width, height = last_size or (None, None)
    row = conn.execute(
        """WITH next AS (
               SELECT j.id FROM generation_jobs j
               JOIN segments g ON g.id = j.segment_id JOIN scenes s ON s.id = g.scene_id
               WHERE j.status = 'queued' AND j.not_before <= now()
                 AND (%(models)s::text[] IS NULL OR g.model = ANY(%(models)s::text[]))
                 AND (%(job)s::bigint IS NULL OR j.id = %(job)s::bigint)
               ORDER BY j.not_before <= now() - make_interval(secs => %(max_wait)s) DESC,
                        g.model = ANY(%(loaded)s::text[]) DESC,
                        (s.width = %(width)s::int AND s.height = %(height)s::int) IS TRUE DESC,
                        j.not_before, j.id
               LIMIT 1 FOR UPDATE OF j SKIP LOCKED)
           UPDATE generation_jobs j
           SET status = 'running', worker_id = %(worker)s, claimed_at = now(), heard_at = now(),
               started_at = COALESCE(j.started_at, now()),
               lease_expires_at = now() + make_interval(secs => %(lease)s)
           FROM next WHERE j.id = next.id RETURNING j.id""",
        {"models": models, "job": job_id, "max_wait": float(affinity_max_wait_seconds), "loaded": list(loaded_models),
         "width": width, "height": height, "worker": worker_id, "lease": float(lease_seconds)},
    ).fetchone()
    return row["id"] if row else None


def seconds_until_claimable(conn: psycopg.Connection, models: list[str] | None = None) -> float | None:
    """How long until the next queued job may be claimed (0: one may now; None: none is queued)."""
    row = conn.execute(
        """SELECT GREATEST(EXTRACT(EPOCH FROM min(j.not_before) - now()), 0)::float8 AS wait
           FROM generation_jobs j JOIN segments g ON g.id = j.segment_id
           WHERE j.status = 'queued' AND (%(models)s::text[] IS NULL OR g.model = ANY(%(models)s::text[]))""",
        {"models": models}).fetchone()
    return row["wait"]


def renew_leases(conn: psycopg.Connection, worker_id: str, job_ids: list[int], lease_seconds: float) -> list[int]:
    """Extend the leases `worker_id` holds on these jobs; returns the ids it still holds (a job
    missing from the answer was given up on: its lease had expired)."""
    rows = conn.execute(
        """UPDATE generation_jobs SET heard_at = now(), lease_expires_at = now() + make_interval(secs => %s)
           WHERE id = ANY(%s) AND worker_id = %s AND status = 'running' AND lease_expires_at IS NOT NULL
           RETURNING id""",
        [float(lease_seconds), list(job_ids), worker_id]).fetchall()
    return [r["id"] for r in rows]


def hand_in(conn: psycopg.Connection, job_id: int, worker_id: str) -> Transition:
    """The worker wrote its result (in this transaction): the lease ends, so the job cannot be
    lost any more while the result waits to be applied. False: the worker no longer held the
    job, and its result must not be written."""
    return _changed(
        conn,
        """UPDATE generation_jobs SET heard_at = now(), lease_expires_at = NULL
           WHERE id = %s AND worker_id = %s AND status = 'running' AND lease_expires_at IS NOT NULL""",
        [job_id, worker_id],
    )


def release_job(conn: psycopg.Connection, job_id: int, worker_id: str) -> Transition:
    """running → queued: a stopping worker gives back a job it will not finish, for another
    worker to run from the start (the same attempt: nothing failed)."""
    return _changed(
        conn,
        """UPDATE generation_jobs SET status = 'queued', worker_id = NULL, claimed_at = NULL, heard_at = NULL,
                  lease_expires_at = NULL, progress = 0, not_before = now()
           WHERE id = %s AND worker_id = %s AND status = 'running' AND lease_expires_at IS NOT NULL""",
        [job_id, worker_id],
    )


def end_leases_of(conn: psycopg.Connection, worker_id: str) -> int:
    """Let the leases of a worker known to be dead (its supervisor saw it exit) expire now
    rather than at their time; returns how many."""
    return conn.execute(
        """UPDATE generation_jobs SET lease_expires_at = now()
           WHERE worker_id = %s AND status = 'running' AND lease_expires_at > now()""",
        [worker_id]).rowcount


def expired_jobs(conn: psycopg.Connection, limit: int = 100) -> list[dict]:
    """Running jobs whose lease ran out, locked for the caller's transaction (another sweeper
    skips them): id, segment_id, scene_id, worker_id, claimed_at, heard_at."""
    return conn.execute(
        """SELECT j.id, j.segment_id, g.scene_id, j.worker_id, j.claimed_at, j.heard_at FROM generation_jobs j
           JOIN segments g ON g.id = j.segment_id
           WHERE j.status = 'running' AND j.lease_expires_at < now()
           ORDER BY j.lease_expires_at LIMIT %s FOR UPDATE OF j SKIP LOCKED""",
        [limit]).fetchall()


def job_progressed(conn: psycopg.Connection, job_id: int, fraction: float) -> Transition:
    """A running job's progress, only ever growing. (Only a claim starts a job: a late report of
    a job given back to the queue must not mark it running with no worker.)"""
    return _changed(
        conn,
        """UPDATE generation_jobs SET progress = GREATEST(progress, %s)
           WHERE id = %s AND status = 'running'""",
        [fraction, job_id],
    )


def job_succeeded(conn: psycopg.Connection, event: GenerationCompleted) -> Transition:
    """running → succeeded, with the files and what they cost: the render, the load, the time the
    worker held its device, which worker, how many samples one call rendered.

    Reports travel on separate topics, so the failure report of an attempt can arrive before its
    success: a success always wins over a failure of the same attempt (failed → succeeded), unless
    another attempt of the segment succeeded already (one success per segment)."""
    return _changed(
        conn,
        """UPDATE generation_jobs
           SET status = 'succeeded', progress = 1, finished_at = now(), lease_expires_at = NULL, error = NULL,
               device = %s, device_seconds = %s, video_key = %s, poster_key = %s, metadata_key = %s,
               sha256 = %s, frames = %s, load_seconds = %s, held_seconds = %s, worker_id = %s, batch_size = %s
           WHERE id = %s AND (status = 'running' OR status = 'failed' AND NOT EXISTS (
               SELECT 1 FROM generation_jobs o WHERE o.segment_id = generation_jobs.segment_id AND o.status = 'succeeded'))""",
        [event.device, event.device_seconds, event.video_key, event.poster_key, event.metadata_key, event.sha256,
         event.frames, event.load_seconds, event.held_seconds, event.worker_id, event.batch_size, event.job_id],
    )


def supersede_other_attempts(conn: psycopg.Connection, segment_id: int, job_id: int) -> Transition:
    """queued | running → failed for the segment's other attempts once `job_id` succeeded after
    its failure report (which had queued them): the segment needs no more. A worker running one
    loses it at its next report, as when its lease expires."""
    return _changed(
        conn,
        """UPDATE generation_jobs SET status = 'failed', finished_at = now(), lease_expires_at = NULL,
                  error = 'superseded: job ' || %s || ' of this segment succeeded after its failure report'
           WHERE segment_id = %s AND id <> %s AND status IN ('queued', 'running')""",
        [job_id, segment_id, job_id],
    )


def job_failed(conn: psycopg.Connection, event: GenerationFailed) -> int | None:
    """queued | running → failed with its reason (and what it held, when the worker says);
    returns the attempt number (None: it had finished already, and the report changes nothing)."""
    row = conn.execute(
        """UPDATE generation_jobs SET status = 'failed', error = %s, held_seconds = %s,
                  worker_id = COALESCE(%s, worker_id), finished_at = now(), lease_expires_at = NULL
           WHERE id = %s AND status IN ('queued', 'running') RETURNING attempt""",
        [event.reason, event.held_seconds, event.worker_id, event.job_id],
    ).fetchone()
    return row["attempt"] if row else None


# ---------------------------------------------------------------------------------------------
# The retry policy of generation jobs


def should_retry(attempt: int, max_attempts: int, retryable: bool) -> bool:
    """A failed attempt gets another when the failure may pass and attempts are left."""
    return retryable and attempt < max_attempts


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
        return None  # reported before, or another attempt of the segment succeeded
    supersede_other_attempts(conn, event.segment_id, event.job_id)
    finish_segment(conn, event.segment_id, ssim=event.ssim, psnr=event.psnr, comparison_key=event.comparison_key,
                   similarity_threshold=similarity_threshold, no_similarity_reason=event.no_similarity_reason)
    if finish_scene(conn, event.scene_id):
        return GENERATED
    start_scene(conn, event.scene_id)
    return PROGRESS


def apply_failed(conn: psycopg.Connection, event: GenerationFailed, max_attempts: int) -> str | None:
    """RETRY when the caller must queue the next attempt (`queue_attempt` with the backoff)."""
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
