"""The Tierflow events: one frozen model per CloudEvents `type`, the `data` handlers receive.

Rules that hold for every event:
- ids are positive integers (PostgreSQL bigints); tier names are lowercase slugs;
- types are strict (no "12" for 12, no 1 for true), because producers in other languages check
  against the published JSON Schema, and what it rejects the consumer must reject too;
  the one leniency, a whole float like 12.0 for an integer, is JSON Schema's own rule;
- unknown fields are refused, so a misspelt field fails loudly instead of being dropped;
- `schema_version` lets a future incompatible change be told apart; it is 1 everywhere today.
"""

from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

TIER_NAME_PATTERN = r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$"
TIER_NAME_MAX_LENGTH = 40
MAX_ID = 2**63 - 1  # PostgreSQL bigint
MAX_SEED = 2**63 - 1
MAX_SCENES_PER_DELIVERY = 1000
# Keeps a rejection well under Kafka's default 1 MB message limit (a reason is ~300 bytes).
MAX_REJECTION_REASONS = 2000
MAX_DEVICE_SECONDS = 366 * 24 * 3600  # a bound at all keeps the schema and the model in step
MAX_TEXT = 2000  # characters of free text (a reason, a message, a summary) in one event


def _json_integer(value: Any) -> Any:
    # JSON Schema counts 12.0 as the integer 12 and true as no integer at all; pydantic, left
    # alone, disagrees on both (strict int refuses 12.0, Literal[1] accepts true).
    if isinstance(value, bool):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _cut(value: Any) -> Any:
    """Free text longer than MAX_TEXT is cut, ending in "…": an event about a failure must never
    fail to be built because the failure's description is long (the full text stays where it
    was written, in the database or the log)."""
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return value[: MAX_TEXT - 1] + "…"
    return value


def _unique(values: list[int]) -> list[int]:
    seen: set[int] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{value} is listed more than once; list each scene once")
        seen.add(value)
    return values


# Constraints come before the validator so that pydantic puts them in the JSON Schema too.
Integer = Annotated[int, BeforeValidator(_json_integer)]
Id = Annotated[int, Field(gt=0, le=MAX_ID), BeforeValidator(_json_integer)]
TierName = Annotated[
    str, Field(min_length=1, max_length=TIER_NAME_MAX_LENGTH, pattern=TIER_NAME_PATTERN)
]
Size = Annotated[
    int, Field(ge=8, le=8192, multiple_of=8, description="Pixels, a multiple of 8."), BeforeValidator(_json_integer)
]
Person = Annotated[str, Field(min_length=1, max_length=200, description="Who did it (user name or e-mail).")]
Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT), BeforeValidator(_cut)]
ObjectKey = Annotated[str, Field(min_length=1, max_length=1024, description="An S3 object key.")]
BatchSize = Annotated[int, Field(ge=1, le=1024), BeforeValidator(_json_integer)]
WorkerId = Annotated[str, Field(min_length=1, max_length=200, description="The worker that ran it, e.g. host:pid.")]
SceneIds = Annotated[
    list[Id],
    Field(min_length=1, max_length=MAX_SCENES_PER_DELIVERY, json_schema_extra={"uniqueItems": True}),
    AfterValidator(_unique),
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class Event(_Frozen):
    """Base of every event. `type` is the CloudEvents type (and the Kafka topic); `subject` is
    the CloudEvents subject and the Kafka message key, so one scene's events stay in order."""

    type: ClassVar[str]
    subject_field: ClassVar[str]

    schema_version: Annotated[Literal[1], BeforeValidator(_json_integer)] = 1

    @property
    def subject(self) -> str:
        """The id this event is about, as a string (the value of `subject_field`)."""
        return str(getattr(self, self.subject_field))


# ---------------------------------------------------------------------------------------------
# Approval and upscale


class SceneApproved(Event):
    """A person approved a generated scene; an auto-upscale policy may now request an upscale."""

    type: ClassVar[str] = "scene.approved"
    subject_field: ClassVar[str] = "scene_id"

    scene_id: Id
    approved_by: Person | None = None


class UpscaleRequested(Event):
    """Re-generate a scene at a higher tier with the identical recipe (same seeds and settings)."""

    type: ClassVar[str] = "upscale.requested"
    subject_field: ClassVar[str] = "source_scene_id"

    source_scene_id: Id
    target_tier: TierName
    requested_by: Person | None = None


class UpscaleProgress(Event):
    """How far the re-generation of an upscale target scene has come."""

    type: ClassVar[str] = "upscale.progress"
    subject_field: ClassVar[str] = "source_scene_id"

    source_scene_id: Id
    target_scene_id: Id
    target_tier: TierName
    percent: float = Field(ge=0, le=100)
    segments_done: Integer = Field(ge=0)
    segments_total: Integer = Field(ge=1)

    @model_validator(mode="after")
    def _done_within_total(self) -> "UpscaleProgress":
        if self.segments_done > self.segments_total:
            raise ValueError(
                f"segments_done ({self.segments_done}) is more than segments_total ({self.segments_total})"
            )
        return self


class UpscaleCompleted(Event):
    """Every segment of the upscale target scene is generated at the target tier."""

    type: ClassVar[str] = "upscale.completed"
    subject_field: ClassVar[str] = "source_scene_id"

    source_scene_id: Id
    target_scene_id: Id
    target_tier: TierName


class UpscaleFailed(Event):
    """The upscale could not be done. `target_scene_id` is null when no target scene was made."""

    type: ClassVar[str] = "upscale.failed"
    subject_field: ClassVar[str] = "source_scene_id"

    source_scene_id: Id
    target_scene_id: Id | None
    target_tier: TierName
    reason: Text


# ---------------------------------------------------------------------------------------------
# Generation


NOISE_SCHEMES = ("consistent-v1", "native")  # shared.media.noise draws them
NoiseScheme = Literal[NOISE_SCHEMES]


class Recipe(_Frozen):
    """Everything that shapes the frames of a segment except its size: identical at every tier."""

    prompt: str = Field(min_length=1, max_length=4000)
    negative_prompt: str | None = Field(default=None, max_length=4000)
    seed: Integer = Field(ge=0, le=MAX_SEED)
    frames: Integer = Field(ge=1, le=1024)
    fps: Integer = Field(ge=1, le=120)
    steps: Integer = Field(ge=1, le=1000)
    guidance: float = Field(ge=0, le=100)
    model: str = Field(min_length=1, max_length=500, description=(
        "A model catalogue name (in recipes made before the catalogue: a diffusers model directory or hub id)."))
    model_pin: str | None = Field(
        default=None, pattern=r"^(sha256:[0-9a-f]{64}|[0-9a-f]{40})$",
        description="The weights `model` was pinned to: a hub commit, or sha256 over the directory's files; "
                    "absent in recipes made before the catalogue.")
    scheduler: str | None = Field(default=None, min_length=1, max_length=200)
    noise: NoiseScheme = Field(default="native", description=(
        "How the initial noise is drawn from the seed: consistent-v1 (one continuous field integrated over each latent "
        "pixel, so every tier of a scene starts from the same picture) or native (the pipeline's own randn at each "
        "size); absent in recipes made before the choice existed, which are native."))


class GenerationRequested(Event):
    """Generate one segment of a scene at `width`×`height` (the scene's size at `tier`)."""

    type: ClassVar[str] = "generation.requested"
    subject_field: ClassVar[str] = "scene_id"

    job_id: Id
    scene_id: Id
    segment_id: Id
    attempt: Integer = Field(ge=1)
    tier: TierName
    width: Size
    height: Size
    recipe: Recipe


class GenerationProgress(Event):
    """A generation job finished sampling step `step` of `total_steps`."""

    type: ClassVar[str] = "generation.progress"
    subject_field: ClassVar[str] = "scene_id"

    job_id: Id
    scene_id: Id
    segment_id: Id
    step: Integer = Field(ge=0)
    total_steps: Integer = Field(ge=1)

    @model_validator(mode="after")
    def _step_within_total(self) -> "GenerationProgress":
        if self.step > self.total_steps:
            raise ValueError(f"step ({self.step}) is more than total_steps ({self.total_steps})")
        return self


class GenerationCompleted(Event):
    """A segment's video, poster and metadata are in S3; the figures are what the file holds."""

    type: ClassVar[str] = "generation.completed"
    subject_field: ClassVar[str] = "scene_id"

    job_id: Id
    scene_id: Id
    segment_id: Id
    video_key: ObjectKey
    poster_key: ObjectKey
    metadata_key: ObjectKey
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Of the video file, lowercase hex.")
    width: Size
    height: Size
    frames: Integer = Field(ge=1)
    device: str = Field(min_length=1, max_length=200, description="Where it ran, e.g. cuda:0 or cpu.")
    device_seconds: float = Field(ge=0, le=MAX_DEVICE_SECONDS, description="Rendering (denoising and decoding) only.")
    # What the attempt really cost (absent from workers older than these fields).
    load_seconds: float | None = Field(
        default=None, ge=0, le=MAX_DEVICE_SECONDS, description="Loading the pipeline; 0 when it was loaded already.")
    held_seconds: float | None = Field(
        default=None, ge=0, le=MAX_DEVICE_SECONDS,
        description="How long the worker held its device for the job: from taking it to its result, loading, "
                    "rendering, encoding and uploading included.")
    worker_id: WorkerId | None = None
    batch_size: BatchSize | None = Field(default=None, description="Samples rendered in one pipeline call.")
    # Upscales only: the target's frames downscaled to the source size against the source's.
    ssim: float | None = Field(default=None, ge=-1, le=1, description="Mean SSIM against the source segment.")
    psnr: float | None = Field(default=None, ge=0, le=100, description="Mean PSNR (dB) against the source segment.")
    comparison_key: ObjectKey | None = Field(default=None, description="Side-by-side image, source | target.")
    no_similarity_reason: Text | None = Field(
        default=None, description="Upscales only: why there is no similarity score (the source's media is gone).")


class GenerationFailed(Event):
    """A generation job failed; `retryable` says whether trying again may succeed."""

    type: ClassVar[str] = "generation.failed"
    subject_field: ClassVar[str] = "scene_id"

    job_id: Id
    scene_id: Id
    segment_id: Id
    reason: Text
    retryable: bool
    held_seconds: float | None = Field(
        default=None, ge=0, le=MAX_DEVICE_SECONDS, description="How long the worker held its device before it failed.")
    worker_id: WorkerId | None = None


# ---------------------------------------------------------------------------------------------
# Delivery


class DeliveryRequested(Event):
    """Deliver these scenes of a project; only deliverable tiers (Production) are accepted."""

    type: ClassVar[str] = "delivery.requested"
    subject_field: ClassVar[str] = "delivery_id"

    delivery_id: Id
    project: str = Field(min_length=1, max_length=200)
    scene_ids: SceneIds
    requested_by: Person | None = None


class RejectionReason(_Frozen):
    """One machine-readable reason a delivery was refused, with a message for a person."""

    code: Literal[
        "SCENE_NOT_FOUND",
        "SCENE_NOT_IN_PROJECT",
        "TIER_NOT_DELIVERABLE",
        "SCENE_NOT_GENERATED",
        "FILE_MISSING",
        "FILE_MISMATCH",
        "FILE_CHANGED",
    ]
    scene_id: Id
    tier: TierName | None = Field(description="The scene's tier; null when the scene was not found.")
    message: Text


class DeliveryCompleted(Event):
    """Every scene passed the checks; the manifest lists the delivered files."""

    type: ClassVar[str] = "delivery.completed"
    subject_field: ClassVar[str] = "delivery_id"

    delivery_id: Id
    project: str = Field(min_length=1, max_length=200)
    scene_ids: SceneIds
    manifest_key: ObjectKey


class DeliveryRejected(Event):
    """The delivery was refused: every reason found, and one sentence a person understands."""

    type: ClassVar[str] = "delivery.rejected"
    subject_field: ClassVar[str] = "delivery_id"

    delivery_id: Id
    project: str = Field(min_length=1, max_length=200)
    reasons: list[RejectionReason] = Field(min_length=1, max_length=MAX_REJECTION_REASONS)
    summary: Text


EVENT_TYPES: dict[str, type[Event]] = {
    model.type: model
    for model in (
        SceneApproved,
        UpscaleRequested,
        UpscaleProgress,
        UpscaleCompleted,
        UpscaleFailed,
        GenerationRequested,
        GenerationProgress,
        GenerationCompleted,
        GenerationFailed,
        DeliveryRequested,
        DeliveryCompleted,
        DeliveryRejected,
    )
}
