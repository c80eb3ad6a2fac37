"""The GPU worker: renders one generation job and reports back with events.

Entrypoint of the worker container and of `tierflow worker --job JOB.json` (or `--job-json`):
loads the job's model with `DiffusionPipeline.from_pretrained`, renders the segment at the
scene's size with a seeded generator (CUDA in half precision when present, else CPU), encodes
the MP4 with the tier's quality settings, and writes the MP4, a poster PNG and a metadata JSON
under the job's own prefix in S3 (a re-run overwrites the same keys). It reports
generation.progress after every denoising step and generation.completed or generation.failed
with a reason a person understands. A report is retried while the database is unreachable
(TIERFLOW_REPORT_RETRY_SECONDS); one that still cannot be written is never claimed as sent.

Exit status: 0 done, 3 failed and reported, 2 the job document itself is unreadable, 4 a report
could not be written (the dispatcher then reports the job as lost).
"""

import argparse
import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path

import psycopg
from pydantic import BaseModel, ConfigDict, Field

from events import GenerationCompleted, GenerationFailed, GenerationProgress, Recipe
from events.errors import InvalidEvent, validated
from infra.process import age_seconds
from shared.adapters import db
from shared.adapters.dispatch import WORKER_REPORTED_FAILURE
from shared.bootstrap import Deps
from shared.config import load_settings
from shared.errors import InvalidInput, ServiceUnavailable, TierflowError

WORKER_COULD_NOT_REPORT = 4
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


class ReportNotWritten(TierflowError):
    """A report of this job could not be written to the database, even after retrying."""


class SourceSegment(BaseModel):
    """The source scene's segment an upscale is compared with."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    video_key: str = Field(min_length=1)
    width: int = Field(ge=8, le=8192)
    height: int = Field(ge=8, le=8192)


class JobDocument(BaseModel):
    """What a dispatcher hands a worker (see shared.adapters.dispatch.job_document)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: int = Field(gt=0)
    scene_id: int = Field(gt=0)
    segment_id: int = Field(gt=0)
    attempt: int = Field(ge=1)
    tier: str
    width: int = Field(ge=8, le=8192, multiple_of=8)
    height: int = Field(ge=8, le=8192, multiple_of=8)
    recipe: Recipe
    quality_settings: dict | None = None
    output_prefix: str = Field(min_length=1)
    compare_with: SourceSegment | None = None


def _failure_reason(exc: BaseException, device: str) -> str:
    """Say what went wrong the way an operator can act on it."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return f"out of memory on {device}: use a lower tier, fewer frames, or a GPU with more memory ({exc})"
    if isinstance(exc, TierflowError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def run_job(deps: Deps, job: JobDocument, held_since: float | None = None) -> GenerationCompleted:
    """Render, encode, upload and report one job; raises after reporting a failure.

    The report says what the job cost: the render, the pipeline load, and the time this worker
    held its device for the job since `held_since` (time.monotonic() when it took the job; by
    default now), everything it did for the job included.
    """
    held_since = time.monotonic() if held_since is None else held_since
    from shared.media.models import ModelNotFound
    from shared.media.pipeline import load_pipeline, pick_device, render
    from shared.media.video import encode_mp4, poster_png

    def report(event) -> None:
        def write() -> None:
            with deps.uow() as uow:
                uow.emit(event)

        try:
            db.with_reconnect(write, for_seconds=deps.settings.report_retry_seconds)
        except (psycopg.OperationalError, ServiceUnavailable) as exc:
            raise ReportNotWritten(f"could not write {event.type} of job {job.job_id} to the database: {exc}") from exc

    ids = {"job_id": job.job_id, "scene_id": job.scene_id, "segment_id": job.segment_id}
    worker = {"worker_id": WORKER_ID}
    device = pick_device()
    try:
        recipe = job.recipe
        started = time.monotonic()
        pipeline = load_pipeline(recipe.model, device)
        load_seconds = time.monotonic() - started
        started = time.monotonic()
        frames = render(
            pipeline, prompt=recipe.prompt, negative_prompt=recipe.negative_prompt, seed=recipe.seed,
            frames=recipe.frames, steps=recipe.steps, guidance=recipe.guidance, width=job.width,
            height=job.height, device=device,
            on_step=lambda step, total: report(GenerationProgress(**ids, step=step, total_steps=total)),
        )
        device_seconds = time.monotonic() - started
        video = encode_mp4(frames, recipe.fps, job.quality_settings)
        sha256 = hashlib.sha256(video).hexdigest()
        keys = {name: job.output_prefix + name for name in ("video.mp4", "poster.png", "metadata.json")}
        metadata = {
            **ids, "attempt": job.attempt, "tier": job.tier, "recipe": recipe.model_dump(mode="json"),
            "width": job.width, "height": job.height, "frames": int(frames.shape[0]), "fps": recipe.fps,
            "sha256": sha256, "device": device, "device_seconds": round(device_seconds, 3),
            "quality_settings": job.quality_settings, "video_key": keys["video.mp4"],
        }
        s3 = deps.s3
        similarity = {}
        if job.compare_with:
            similarity = _compare(s3, deps.bucket, job, frames)
            metadata.update({k: v for k, v in similarity.items() if k != "comparison_key"})
        s3.put_object(Bucket=deps.bucket, Key=keys["video.mp4"], Body=video, ContentType="video/mp4")
        s3.put_object(Bucket=deps.bucket, Key=keys["poster.png"], Body=poster_png(frames),
                      ContentType="image/png")
        s3.put_object(Bucket=deps.bucket, Key=keys["metadata.json"], Body=json.dumps(metadata, indent=2).encode(),
                      ContentType="application/json")
        completed = GenerationCompleted(
            **ids, video_key=keys["video.mp4"], poster_key=keys["poster.png"], metadata_key=keys["metadata.json"],
            sha256=sha256, width=job.width, height=job.height, frames=int(frames.shape[0]), device=device,
            device_seconds=round(device_seconds, 3), load_seconds=round(load_seconds, 3), batch_size=1,
            held_seconds=round(time.monotonic() - held_since, 3), **worker, **similarity)
        report(completed)
        return completed
    except ReportNotWritten:
        raise  # the database is out of reach: a failure report would not be written either
    except Exception as exc:
        # A bad recipe or a model that is not there fails the same way every time.
        report(GenerationFailed(**ids, reason=_failure_reason(exc, device),
                                retryable=not isinstance(exc, (InvalidInput, ModelNotFound)),
                                held_seconds=round(time.monotonic() - held_since, 3), **worker))
        raise


def _compare(s3, bucket: str, job: JobDocument, frames) -> dict:
    """SSIM and PSNR against the source segment, and the side-by-side image, written to S3."""
    from shared.domain import similarity
    from shared.media.video import decode_video

    source_video = s3.get_object(Bucket=bucket, Key=job.compare_with.video_key)["Body"].read()
    source = decode_video(source_video)
    ssim, psnr = similarity.compare(source, frames)
    key = job.output_prefix + "comparison.png"
    s3.put_object(Bucket=bucket, Key=key, Body=similarity.side_by_side_png(source, frames), ContentType="image/png")
    return {"ssim": round(ssim, 4), "psnr": round(psnr, 2), "comparison_key": key}


def read_job(path: str | None, inline: str | None) -> JobDocument:
    """The job document from a file or from the command line (AWS Batch passes it inline)."""
    try:
        raw = Path(path).read_text() if path else inline
        return validated(JobDocument, json.loads(raw), what="bad job document")
    except (OSError, ValueError, InvalidEvent) as exc:
        raise InvalidInput(f"cannot read the job: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    """`python -m functions.worker --job FILE | --job-json JSON`."""
    # A process per job holds its device from its start: starting Python and the imports count.
    started = time.monotonic() - (age_seconds(os.getpid()) or 0.0)
    parser = argparse.ArgumentParser(prog="tierflow worker", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--job", metavar="JOB.json", help="job document written by the dispatcher")
    source.add_argument("--job-json", metavar="JSON", help="the job document itself")
    args = parser.parse_args(argv)
    try:
        job = read_job(args.job, args.job_json)
    except InvalidInput as exc:
        print(f"tierflow worker: {exc}", file=sys.stderr)
        return 2
    deps = Deps(load_settings(), source="urn:tierflow:worker")
    try:
        completed = run_job(deps, job, held_since=started)
    except ReportNotWritten as exc:
        print(f"tierflow worker: job {job.job_id}: {exc}; nothing was reported", file=sys.stderr)
        return WORKER_COULD_NOT_REPORT
    except Exception as exc:  # noqa: BLE001 - reported as generation.failed already
        print(f"tierflow worker: job {job.job_id} failed (reported): {exc}", file=sys.stderr)
        return WORKER_REPORTED_FAILURE
    print(json.dumps(completed.model_dump(mode="json")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
