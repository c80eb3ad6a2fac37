"""generation.progress / completed / failed: apply a worker's report to job, segment and scene.

Every transition is a guarded UPDATE, so a late or repeated report cannot move anything
backwards: progress after completion is ignored, a second completion changes nothing, and a
failure of a job that already finished is dropped. A failed attempt is kept as it is (its reason
is never overwritten); a retry is a new job row with the next attempt number.
"""

from events import (
    GenerationCompleted,
    GenerationFailed,
    GenerationProgress,
    GenerationRequested,
    Recipe,
    UpscaleCompleted,
    UpscaleFailed,
    UpscaleProgress,
)
from functions.lambda_entry import lambda_entrypoint
from shared.consumer import Function

ACTIVE = "('queued', 'running')"


def handle(event, deps) -> None:
    """Apply one report."""
    with deps.uow() as uow:
        if isinstance(event, GenerationProgress):
            outcome = _progress(uow, event)
        elif isinstance(event, GenerationCompleted):
            outcome = _completed(uow, event, deps.settings.similarity_threshold)
        else:
            outcome = _failed(uow, event, deps.settings.max_attempts)
        if outcome:
            _report_upscale(uow, event.scene_id, outcome)


def _mark_started(conn, event) -> None:
    conn.execute("UPDATE segments SET status = 'generating' WHERE id = %s AND status = 'pending'", [event.segment_id])
    conn.execute("UPDATE scenes SET status = 'generating' WHERE id = %s AND status = 'pending'", [event.scene_id])


# Each step returns what changed, for the upscale report: None (nothing: a late or repeated
# report), "progress", or the scene's new terminal status, "generated" or "failed".


def _progress(uow, event: GenerationProgress) -> str | None:
    updated = uow.conn.execute(
        f"""UPDATE generation_jobs SET status = 'running', started_at = COALESCE(started_at, now()),
                   progress = GREATEST(progress, %s)
            WHERE id = %s AND status IN {ACTIVE} RETURNING id""",
        [event.step / event.total_steps, event.job_id],
    ).fetchone()
    if updated:
        _mark_started(uow.conn, event)
    return "progress" if updated else None


def _completed(uow, event: GenerationCompleted, similarity_threshold: float) -> str | None:
    updated = uow.conn.execute(
        f"""UPDATE generation_jobs
            SET status = 'succeeded', progress = 1, started_at = COALESCE(started_at, now()), finished_at = now(),
                device = %s, device_seconds = %s, video_key = %s, poster_key = %s, metadata_key = %s,
                sha256 = %s, frames = %s
            WHERE id = %s AND status IN {ACTIVE} RETURNING id""",
        [event.device, event.device_seconds, event.video_key, event.poster_key, event.metadata_key, event.sha256,
         event.frames, event.job_id],
    ).fetchone()
    if not updated:
        return None  # reported before, or the job was already given up on
    conn = uow.conn
    conn.execute(
        """UPDATE segments SET status = 'generated', ssim = %s, psnr = %s, comparison_key = %s,
                  similarity_flagged = CASE WHEN %s::float8 IS NULL THEN NULL ELSE %s::float8 < %s END
           WHERE id = %s AND status <> 'generated'""",
        [event.ssim, event.psnr, event.comparison_key, event.ssim, event.ssim, similarity_threshold, event.segment_id],
    )
    remaining = conn.execute(
        "SELECT count(*) AS n FROM segments WHERE scene_id = %s AND status <> 'generated'", [event.scene_id]
    ).fetchone()["n"]
    if remaining == 0:
        finished = conn.execute(
            """UPDATE scenes SET status = 'generated' WHERE id = %s AND status IN ('pending', 'generating', 'failed')
               RETURNING id""",
            [event.scene_id],
        ).fetchone()
        return "generated" if finished else "progress"
    _mark_started(conn, event)
    return "progress"


def _failed(uow, event: GenerationFailed, max_attempts: int) -> str | None:
    conn = uow.conn
    job = conn.execute(
        f"""UPDATE generation_jobs SET status = 'failed', error = %s, finished_at = now()
            WHERE id = %s AND status IN {ACTIVE} RETURNING attempt""",
        [event.reason, event.job_id],
    ).fetchone()
    if not job:
        return None
    if event.retryable and job["attempt"] < max_attempts:
        retry_job(conn, uow.emit, event.segment_id, job["attempt"] + 1)
        return None
    conn.execute("UPDATE segments SET status = 'failed' WHERE id = %s AND status <> 'generated'", [event.segment_id])
    failed = conn.execute(
        "UPDATE scenes SET status = 'failed' WHERE id = %s AND status IN ('pending', 'generating') RETURNING id",
        [event.scene_id],
    ).fetchone()
    return "failed" if failed else "progress"


def _report_upscale(uow, scene_id: int, outcome: str) -> None:
    """For an upscale target: upscale.progress, then upscale.completed or upscale.failed."""
    scene = uow.conn.execute(
        """SELECT s.status, s.upscaled_from_scene_id, t.name AS tier,
                  count(g.id) AS total, count(g.id) FILTER (WHERE g.status = 'generated') AS done,
                  avg(COALESCE(j.progress, 0)) AS progress,
                  (array_agg(j.error ORDER BY j.finished_at DESC) FILTER (WHERE g.status = 'failed'))[1] AS error
           FROM scenes s JOIN resolution_tiers t ON t.id = s.resolution_tier_id JOIN segments g ON g.scene_id = s.id
           LEFT JOIN LATERAL (SELECT progress, error, finished_at FROM generation_jobs WHERE segment_id = g.id
                              ORDER BY attempt DESC LIMIT 1) j ON true
           WHERE s.id = %s GROUP BY s.id, t.name""",
        [scene_id],
    ).fetchone()
    if scene is None or scene["upscaled_from_scene_id"] is None:
        return
    ids = {"source_scene_id": scene["upscaled_from_scene_id"], "target_scene_id": scene_id,
           "target_tier": scene["tier"]}
    uow.emit(UpscaleProgress(**ids, percent=round(100 * float(scene["progress"]), 1),
                             segments_done=scene["done"], segments_total=scene["total"]))
    if outcome == "generated":
        uow.emit(UpscaleCompleted(**ids))
    elif outcome == "failed":
        uow.emit(UpscaleFailed(**ids, reason=f"segment generation failed: {scene['error']}"))


def retry_job(conn, emit, segment_id: int, attempt: int) -> int:
    """Queue a new attempt of a segment (the failed one stays as it was) and request it."""
    segment = conn.execute(
        """SELECT g.*, s.width, s.height, t.name AS tier FROM segments g JOIN scenes s ON s.id = g.scene_id
           JOIN resolution_tiers t ON t.id = s.resolution_tier_id WHERE g.id = %s""",
        [segment_id],
    ).fetchone()
    job_id = conn.execute(
        "INSERT INTO generation_jobs (segment_id, attempt) VALUES (%s, %s) RETURNING id", [segment_id, attempt]
    ).fetchone()["id"]
    recipe = Recipe(**{k: segment[k] for k in Recipe.model_fields})
    emit(GenerationRequested(job_id=job_id, scene_id=segment["scene_id"], segment_id=segment_id, attempt=attempt,
                             tier=segment["tier"], width=segment["width"], height=segment["height"], recipe=recipe))
    return job_id


FUNCTION = Function(
    "on_generation_result",
    (GenerationProgress.type, GenerationCompleted.type, GenerationFailed.type),
    handle,
)
lambda_handler = lambda_entrypoint(FUNCTION)
