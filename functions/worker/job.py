"""One generation job, start to end: render, encode, upload and report, under the worker's lease.

The job's model comes from the worker's pipeline cache (loaded with `from_pretrained` on a miss);
the segment is rendered at the scene's size with a seeded generator (CUDA in half precision when
present, else CPU), encoded with the tier's quality settings, and written as MP4, poster PNG and
metadata JSON under the attempt's own prefix in S3 (a late finisher of a lost attempt can never
overwrite a newer attempt's files). generation.progress goes out after every denoising step,
generation.completed or generation.failed at the end, each in a transaction that also renews or
ends the lease: a worker that lost its job (the lease expired, or it gave the job back) writes
nothing. A report is retried while the database is unreachable (TIERFLOW_REPORT_RETRY_SECONDS);
one that still cannot be written is never claimed as sent.
"""

import hashlib
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
from pydantic import BaseModel, ConfigDict, Field

from events import (
    GenerationCompleted,
    GenerationFailed,
    GenerationProgress,
    Recipe,
    tracing,
)
from events.errors import InvalidEvent, validated
from shared.adapters import db
from shared.bootstrap import Deps
from shared.domain import lifecycle
from shared.errors import InvalidInput, ServiceUnavailable, TierflowError
from shared.runtime import metrics
from shared.runtime.uow import UnitOfWork


class ReportNotWritten(TierflowError):
    """A report of this job could not be written to the database, even after retrying."""


class LeaseLost(TierflowError):
    """The job is no longer this worker's (its lease expired and it was given up on): nothing of
    it may be reported."""


class Released(TierflowError):
    """The worker is stopping and gives the job back to the queue unfinished."""


class SourceSegment(BaseModel):
    """The source scene's segment an upscale is compared with."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    video_key: str = Field(min_length=1)
    width: int = Field(ge=8, le=8192)
    height: int = Field(ge=8, le=8192)


class JobDocument(BaseModel):
    """What a worker needs to run one job (shared.domain.scenes.job_document)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: int = Field(gt=0)
    scene_id: int = Field(gt=0)
    segment_id: int = Field(gt=0)
    attempt: int = Field(ge=1)
    tier: str
    width: int = Field(ge=8, le=8192, multiple_of=8)
    height: int = Field(ge=8, le=8192, multiple_of=8)
    recipe: Recipe
    # Where the recipe's catalogue model is loaded from, at recipe.model_pin; None when the
    # catalogue no longer has the model at that pin.
    model_source: str | None = None
    traceparent: str | None = None  # the trace the job was queued in; its reports continue it
    quality_settings: dict | None = None
    output_prefix: str = Field(min_length=1)
    compare_with: SourceSegment | None = None


def parse_job(document) -> JobDocument:
    try:
        return validated(JobDocument, document, what="bad job document")
    except InvalidEvent as exc:
        raise InvalidInput(str(exc)) from None


class PipelineCache:
    """Loaded pipelines by (model, pin, device, dtype), the least recently used dropped beyond
    `budget`. One per worker slot: a diffusers pipeline is not safe to call from two threads at once."""

    def __init__(self, budget: int, threads: int | None = None):
        self.budget, self.threads = budget, threads
        self._pipelines: OrderedDict[tuple[str, str | None, str, str], object] = OrderedDict()

    @property
    def models(self) -> list[str]:
        return [model for model, _, _, _ in self._pipelines]

    def get(self, model: str, source: str, pin: str | None, device: str) -> tuple[object, float]:
        """The pipeline of catalogue model `model` as pinned, and the seconds loading it took (0
        when it was loaded already; a load checks the weights against the pin)."""
        from shared.media.pipeline import device_dtype, load_pipeline

        key = (model, pin, device, device_dtype(device))
        if key in self._pipelines:
            self._pipelines.move_to_end(key)
            metrics.record_cache(hit=True)
            return self._pipelines[key], 0.0
        metrics.record_cache(hit=False)
        while len(self._pipelines) >= self.budget:
            self._pipelines.popitem(last=False)
            _free_device_memory(device)
        started = time.monotonic()
        self._pipelines[key] = load_pipeline(source, device, pin=pin, name=model, threads=self.threads)
        return self._pipelines[key], time.monotonic() - started


def _free_device_memory(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()


class Connection:
    """A worker slot's own database connection for its claims and reports (a report a step costs
    no new connection), opened again after it dropped."""

    def __init__(self, deps: Deps):
        self.deps, self._conn = deps, None

    @contextmanager
    def transaction(self) -> Iterator[UnitOfWork]:
        if self._conn is None or self._conn.closed:
            self._conn = self.deps.connect()
        try:
            with self._conn.transaction():
                yield UnitOfWork(self._conn, self.deps.source)
        except psycopg.OperationalError:
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Claim:
    """This worker's hold on one job. Every report is written in a transaction that renews the
    lease (progress) or ends it (the result), and only while the worker still holds the job."""

    def __init__(self, connection: Connection, job_id: int, worker_id: str, *,
                 cancelled: Callable[[], bool] = lambda: False):
        self.connection, self.job_id, self.worker_id, self.cancelled = connection, job_id, worker_id, cancelled
        self.settings = connection.deps.settings
        self.lost = False  # set by the heartbeat when a renewal found the job gone

    def report(self, event, *, final: bool = False) -> None:
        """Write `event` (a progress report, or with `final` the result) to the outbox."""
        if not final and self.cancelled():
            raise Released(f"job {self.job_id} given back: the worker is stopping")
        if self.lost:
            raise LeaseLost(f"job {self.job_id} was given up on (its lease expired)")
        event_id, tries = str(uuid.uuid4()), []

        def write() -> None:
            tries.append(1)
            with self.connection.transaction() as uow:
                conn = uow.conn
                if not final:
                    # A progress report lost in a database crash costs nothing (the next one, or
                    # the heartbeat, says the same), so it does not wait for the disk: 25 steps
                    # would otherwise wait for 25 flushes. The result waits.
                    conn.execute("SET LOCAL synchronous_commit = off")
                held = (lifecycle.hand_in(conn, self.job_id, self.worker_id) if final else
                        lifecycle.renew_leases(conn, self.worker_id, [self.job_id], self.settings.job_lease_seconds))
                if not held:
                    # A retry after a commit whose answer the dropped connection lost finds its own event.
                    if len(tries) > 1 and conn.execute("SELECT 1 FROM outbox WHERE event_id = %s", [event_id]).fetchone():
                        return
                    self.lost = True
                    raise LeaseLost(f"job {self.job_id} is no longer this worker's (its lease expired); "
                                    f"its {event.type} was not written")
                uow.emit(event, event_id)

        try:
            db.with_reconnect(write, for_seconds=self.settings.report_retry_seconds)
        except (psycopg.OperationalError, ServiceUnavailable) as exc:
            raise ReportNotWritten(f"could not write {event.type} of job {self.job_id} to the database: {exc}") from exc


def _failure_reason(exc: BaseException, device: str) -> str:
    """Say what went wrong the way an operator can act on it."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return f"out of memory on {device}: use a lower tier, fewer frames, or a GPU with more memory ({exc})"
    if isinstance(exc, TierflowError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def run_job(deps: Deps, job: JobDocument, claim: Claim, *, device: str, pipelines: PipelineCache,
            held_since: float) -> GenerationCompleted:
    """Render, encode, upload and report one claimed job, in the trace it was queued in (see
    _run_job)."""
    with tracing.scope(job.traceparent, name=f"generate {job.tier}", attributes={
            "tierflow.job_id": job.job_id, "tierflow.scene_id": job.scene_id, "tierflow.segment_id": job.segment_id,
            "tierflow.attempt": job.attempt, "tierflow.tier": job.tier, "tierflow.model": job.recipe.model,
            "tierflow.device": device, "tierflow.width": job.width, "tierflow.height": job.height}):
        return _run_job(deps, job, claim, device=device, pipelines=pipelines, held_since=held_since)


def _run_job(deps: Deps, job: JobDocument, claim: Claim, *, device: str, pipelines: PipelineCache,
             held_since: float) -> GenerationCompleted:
    """Render, encode, upload and report one claimed job; raises after reporting a failure.

    The report says what the job cost: the render, the pipeline load (0 when `pipelines` had it),
    and the time this worker held its device for the job since `held_since` (time.monotonic()
    when it claimed the job), everything it did for the job included.
    LeaseLost, Released and ReportNotWritten pass through unreported: the job is not this
    worker's to report any more, or the database cannot take the report.
    """
    from shared.adapters.storage import put_media
    from shared.domain.tiers import output_format
    from shared.media.models import ModelChanged, ModelNotFound
    from shared.media.pipeline import render
    from shared.media.video import encode_video, poster_png

    ids = {"job_id": job.job_id, "scene_id": job.scene_id, "segment_id": job.segment_id}
    worker = {"worker_id": claim.worker_id}
    try:
        recipe = job.recipe
        if job.model_source is None:
            raise ModelChanged(f"model {recipe.model!r} at {recipe.model_pin} is no longer in the model catalogue "
                               "(removed, or added again with other weights) since this job was submitted")
        pipeline, load_seconds = pipelines.get(recipe.model, job.model_source, recipe.model_pin, device)
        started = time.monotonic()
        frames = render(
            pipeline, prompt=recipe.prompt, negative_prompt=recipe.negative_prompt, seed=recipe.seed,
            frames=recipe.frames, steps=recipe.steps, guidance=recipe.guidance, width=job.width,
            height=job.height, device=device, noise=recipe.noise,
            on_step=lambda step, total: claim.report(GenerationProgress(**ids, step=step, total_steps=total)),
        )
        device_seconds = time.monotonic() - started
        video = encode_video(frames, recipe.fps, job.quality_settings)
        sha256 = hashlib.sha256(video).hexdigest()
        target = output_format(job.quality_settings)  # video.mp4, or video.mov for a ProRes / DNxHR master
        video_name = f"video.{target.extension}"
        keys = {name: job.output_prefix + name for name in (video_name, "poster.png", "metadata.json")}
        metadata = {
            **ids, "attempt": job.attempt, "tier": job.tier, "recipe": recipe.model_dump(mode="json"),
            "width": job.width, "height": job.height, "frames": int(frames.shape[0]), "fps": recipe.fps,
            "sha256": sha256, "device": device, "device_seconds": round(device_seconds, 3),
            "quality_settings": job.quality_settings, "video_key": keys[video_name],
        }
        s3 = deps.s3
        similarity = {}
        if job.compare_with:
            similarity = _compare(s3, deps.bucket, job, frames, tag=deps.settings.tags_media)
            metadata.update({k: v for k, v in similarity.items() if k != "comparison_key"})  # or the reason
        tag = deps.settings.tags_media
        put_media(s3, deps.bucket, keys[video_name], video, target.content_type, tag=tag)
        put_media(s3, deps.bucket, keys["poster.png"], poster_png(frames), "image/png", tag=tag)
        put_media(s3, deps.bucket, keys["metadata.json"], json.dumps(metadata, indent=2).encode(), "application/json",
                  tag=tag)
        completed = GenerationCompleted(
            **ids, video_key=keys[video_name], poster_key=keys["poster.png"], metadata_key=keys["metadata.json"],
            sha256=sha256, width=job.width, height=job.height, frames=int(frames.shape[0]), device=device,
            device_seconds=round(device_seconds, 3), load_seconds=round(load_seconds, 3), batch_size=1,
            held_seconds=round(time.monotonic() - held_since, 3), **worker, **similarity)
        claim.report(completed, final=True)
        return completed
    except (ReportNotWritten, LeaseLost, Released):
        raise
    except Exception as exc:
        # A bad recipe or a model that is not there fails the same way every time.
        claim.report(GenerationFailed(**ids, reason=_failure_reason(exc, device),
                                      retryable=not isinstance(exc, (InvalidInput, ModelNotFound, ModelChanged)),
                                      held_seconds=round(time.monotonic() - held_since, 3), **worker), final=True)
        raise


def _compare(s3, bucket: str, job: JobDocument, frames, *, tag: bool) -> dict:
    """SSIM and PSNR against the source segment, and the side-by-side image, written to S3; or,
    when the source's video is gone, why there is no score."""
    from shared.adapters.storage import put_media
    from shared.domain import similarity
    from shared.media.video import decode_video

    try:
        source_video = s3.get_object(Bucket=bucket, Key=job.compare_with.video_key)["Body"].read()
    except s3.exceptions.NoSuchKey:  # expired or deleted: the upscale itself does not need it
        return {"no_similarity_reason": f"the source segment's video s3://{bucket}/{job.compare_with.video_key} "
                                        "is gone (expired or deleted), so it was not compared"}
    source = decode_video(source_video)
    ssim, psnr = similarity.compare(source, frames)
    key = job.output_prefix + "comparison.png"
    put_media(s3, bucket, key, similarity.side_by_side_png(source, frames), "image/png", tag=tag)
    return {"ssim": round(ssim, 4), "psnr": round(psnr, 2), "comparison_key": key}
