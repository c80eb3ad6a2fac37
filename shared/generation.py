"""Generation core: build the tiny offline model, load any diffusers pipeline, render one segment,
encode it as MP4 and check what a file really holds.

One path for every model. The tiny random-weight text-to-video pipeline built here (for tests,
laptops and CI) is saved with `save_pretrained` and loaded back with
`DiffusionPipeline.from_pretrained`, exactly as a real model directory or hub id is, so the code
the tests exercise is the code a GPU worker runs.

Tiers change only the size: `render` takes everything else from the recipe, and the seeded
generator makes the same recipe at the same size give the same frames bit for bit on one device.
"""

import functools
import inspect
import io
import json
import math
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from shared.errors import InvalidInput, NotFound, TierflowError
from shared.tiers import quality_settings_problems

MODEL_INDEX = "model_index.json"
SIZE_STEP = 8  # latent diffusion works on 8-pixel blocks (the tiny VAE downsamples 8x too)
MAX_SEED = 2**63 - 1  # seeds are stored as PostgreSQL bigint
# "org/name" as the Hugging Face Hub spells repository ids.
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
HOW_TO_GET_A_MODEL = "build the tiny one with `tierflow model tiny DIR` or give a model directory or hub id"

# The tiny model, sized by measuring 1920x1080 renders on a 2-core CPU (bench/tier_cost.py).
# Most of the cost is in layers at the full latent size (UNet3D's temporal transformer_in, the
# VAE decoder's top level): top levels 4 channels wide instead of 8 halved it. Spatial attention
# sits only in the lowest of four levels (30x17 tokens at 1080p); with three levels (60x34
# tokens) the attention blocks took five times as long, and one level higher still is far worse.
TINY_INIT_SEED = 0
TINY_UNET_CHANNELS = (4, 8, 16, 16)
TINY_VAE_CHANNELS = (4, 4, 8, 8)  # four levels: the usual 8x latent downsampling
TINY_NORM_GROUPS = 4
TINY_TEXT_WIDTH = 32
TOKENIZER_MAX_LENGTH = 77  # CLIP's context length; the text encoder's position table matches it
BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"

CODECS = {"h264": "libx264", "h265": "libx265"}
DEFAULT_CRF = 18
DEFAULT_PIXEL_FORMAT = "yuv420p"


class ModelNotFound(NotFound):
    """The model a job names is neither a diffusers pipeline directory nor a fetchable hub id."""


# ---------------------------------------------------------------------------------------------
# The tiny model


def _byte_alphabet() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the 256 byte values.

    Printable Latin-1 bytes stand for themselves; the rest (controls, space, ...) are moved to
    code points from 256 upwards, so every byte of any prompt has a vocabulary entry.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    shifted = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(shifted)) for b in range(256)]


def _write_tokenizer_files(directory: Path) -> None:
    """A CLIP vocabulary of single bytes (alone and word-final) and an empty merges list.

    Enough for any prompt to tokenize (one token per byte); a tiny random model has nothing to
    gain from real word pieces.
    """
    letters = _byte_alphabet()
    tokens = [*letters, *(letter + "</w>" for letter in letters), BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")


def build_tiny_model(directory: Path) -> Path:
    """Build the tiny random-weight text-to-video pipeline offline and save it into `directory`.

    Every component starts from the same fixed seed, so building twice gives byte-identical
    weights. Returns the directory, loadable with `load_pipeline(str(directory), device)`.
    """
    import torch
    from diffusers import (AutoencoderKL, DDIMScheduler, TextToVideoSDPipeline,
                           UNet3DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    _quiet_progress_bars()
    directory = Path(directory)

    # 1. tokenizer, from files written here (nothing is downloaded)
    with tempfile.TemporaryDirectory(prefix="tierflow-tokenizer-") as scratch:
        _write_tokenizer_files(Path(scratch))
        tokenizer = CLIPTokenizer.from_pretrained(scratch, model_max_length=TOKENIZER_MAX_LENGTH)

    # 2. text encoder; its special token ids must be the tokenizer's, or it pools the wrong token
    torch.manual_seed(TINY_INIT_SEED)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TINY_TEXT_WIDTH, intermediate_size=2 * TINY_TEXT_WIDTH,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=TOKENIZER_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))

    # 3. denoiser: cross-attention only in the last (lowest-resolution) level and the mid block
    torch.manual_seed(TINY_INIT_SEED)
    levels = len(TINY_UNET_CHANNELS)
    unet = UNet3DConditionModel(
        sample_size=32,
        block_out_channels=TINY_UNET_CHANNELS,
        layers_per_block=1,
        down_block_types=("DownBlock3D",) * (levels - 1) + ("CrossAttnDownBlock3D",),
        up_block_types=("CrossAttnUpBlock3D",) + ("UpBlock3D",) * (levels - 1),
        norm_num_groups=TINY_NORM_GROUPS,
        cross_attention_dim=TINY_TEXT_WIDTH,
        # UNet3D reads this as the number of heads (a historical misnomer); it also sizes the
        # temporal transformer at the full latent size (8 heads x 2), which dominates the cost.
        attention_head_dim=2,
    )

    # 4. VAE without mid-block attention: that attention runs at the full latent size
    # (240x135 tokens at 1080p), the most expensive place to put it.
    torch.manual_seed(TINY_INIT_SEED)
    vae = AutoencoderKL(
        block_out_channels=TINY_VAE_CHANNELS,
        down_block_types=("DownEncoderBlock2D",) * len(TINY_VAE_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(TINY_VAE_CHANNELS),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=TINY_NORM_GROUPS,
        mid_block_add_attention=False,
    )

    # 5. scheduler: deterministic DDIM with Stable Diffusion's noise schedule
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )

    pipeline = TextToVideoSDPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
    )
    pipeline.save_pretrained(directory)
    return directory


# ---------------------------------------------------------------------------------------------
# Loading


def pick_device() -> str:
    """"cuda" when a CUDA GPU is usable, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _not_a_pipeline(model: str, path: Path, why: str) -> ModelNotFound:
    return ModelNotFound(f"model {model!r} not found: no diffusers pipeline at {path} ({why}); {HOW_TO_GET_A_MODEL}")


def _local_pipeline_dir(model: str) -> Path | None:
    """The directory `model` names, None when it names no existing path (maybe a hub id).

    Raises ModelNotFound when the path exists but holds no pipeline.
    """
    path = Path(model).expanduser()
    if not path.exists():
        return None
    path = path.resolve()
    if not path.is_dir():
        raise _not_a_pipeline(model, path, "it is a file, not a directory")
    if not (path / MODEL_INDEX).is_file():
        raise _not_a_pipeline(model, path, f"{MODEL_INDEX} missing")
    return path


def validate_model(model: str) -> None:
    """Cheap check at job submission: an existing pipeline directory or an "org/name" hub id.

    A hub id is only checked for form here; whether it can be fetched is known when a worker
    loads it.
    """
    if not isinstance(model, str) or not model.strip():
        raise ModelNotFound(f"no model given; {HOW_TO_GET_A_MODEL}")
    if _local_pipeline_dir(model) is None and not HUB_ID.fullmatch(model):
        path = Path(model).expanduser().absolute()
        raise _not_a_pipeline(model, path, "no such directory, and not an org/name hub id")


def _cpu_threads() -> int:
    """CPUs this process may really use: its affinity, capped by a container's CPU quota.

    More torch threads than free cores is far worse than too few: on our 2-core machine, 2
    threads next to one other busy process ran 4x slower than 1 thread.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:  # cgroup v2, e.g. `docker run --cpus 2` or an AWS Batch vCPU count
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def _quiet_progress_bars() -> None:
    # Workers report progress as events; tqdm bars would only fill their logs. diffusers also
    # warns that TextToVideoSDPipeline (the tiny model's class) is deprecated: true, and harmless
    # here, since a real model brings its own pipeline class through from_pretrained.
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def _dtype_argument() -> str:
    # diffusers 0.42 renamed from_pretrained's torch_dtype to dtype (the old name now warns);
    # older releases, which pyproject still allows, know only torch_dtype.
    import diffusers
    from packaging.version import Version

    return "dtype" if Version(diffusers.__version__) >= Version("0.42") else "torch_dtype"


def load_pipeline(model: str, device: str, *, threads: int | None = None):
    """Load a diffusers pipeline from a local directory or a hub id onto `device`.

    Half precision on CUDA, full precision on CPU (where half is slow or unsupported). On CPU
    torch uses `threads` threads, by default every CPU this process may use; give fewer when
    several workers share the machine. Raises ModelNotFound with what to do when there is no
    pipeline to load.
    """
    import torch
    from diffusers import DiffusionPipeline

    # 1. find it
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InvalidInput(f"threads {threads!r} must be a whole number of at least 1")
    validate_model(model)
    local = _local_pipeline_dir(model)
    source = str(local) if local else model

    # 2. load it
    _quiet_progress_bars()
    if device == "cpu":
        torch.set_num_threads(threads or _cpu_threads())
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    try:
        pipeline = DiffusionPipeline.from_pretrained(source, **{_dtype_argument(): dtype})
    except OSError as exc:  # huggingface_hub's HTTP and cache errors are OSErrors too
        if local:
            raise _not_a_pipeline(model, local, f"it is incomplete or unreadable: {exc}") from exc
        raise ModelNotFound(
            f"model {model!r} not found: it is not a local directory and could not be fetched from the "
            f"Hugging Face Hub or its local cache ({exc}); {HOW_TO_GET_A_MODEL}"
        ) from exc
    pipeline = pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


# ---------------------------------------------------------------------------------------------
# Rendering


def _render_problems(prompt, seed, frames, steps, guidance, width, height) -> list[str]:
    def whole(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    problems = []
    if not isinstance(prompt, str) or not prompt.strip():
        problems.append("the prompt must be non-empty text")
    for label, value in (("width", width), ("height", height)):
        if not whole(value) or value < SIZE_STEP or value % SIZE_STEP:
            problems.append(f"{label} {value!r} must be a positive multiple of {SIZE_STEP}")
    if not whole(frames) or frames < 1:
        problems.append(f"frames {frames!r} must be at least 1")
    if not whole(steps) or steps < 1:
        problems.append(f"steps {steps!r} must be at least 1")
    if not whole(seed) or not 0 <= seed <= MAX_SEED:
        problems.append(f"seed {seed!r} must be a whole number from 0 to {MAX_SEED}")
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 0 <= guidance < math.inf:
        problems.append(f"guidance {guidance!r} must be a finite number of at least 0")
    return problems


def _step_callback(pipeline, on_step: Callable[[int, int], None]) -> dict:
    """Keyword arguments that make `pipeline` call `on_step(step, total)` after every step.

    Current pipelines take `callback_on_step_end`; older ones, TextToVideoSDPipeline among them
    (deprecated, but still the diffusers text-to-video pipeline with a UNet3D), only the legacy
    `callback(step, timestep, latents)`.
    """
    parameters = inspect.signature(pipeline.__call__).parameters

    def timesteps() -> int:
        # The scheduler has been set up for this call by the time a step ends.
        return len(pipeline.scheduler.timesteps)

    if "callback_on_step_end" in parameters:
        # Called once per timestep, so the number of timesteps is the total.
        def on_step_end(_pipeline, index, _timestep, callback_kwargs):
            on_step(index + 1, timesteps())
            return callback_kwargs

        return {"callback_on_step_end": on_step_end}
    if "callback" in parameters:
        # Called once per completed step: every `order` timesteps (1 for DDIM).
        def callback(index, _timestep, _latents):
            order = getattr(pipeline.scheduler, "order", 1)
            on_step(index + 1, math.ceil(timesteps() / order))

        return {"callback": callback, "callback_steps": 1}
    raise TierflowError(f"{type(pipeline).__name__} offers no step callback, so progress cannot be reported")


def _as_uint8_frames(video) -> np.ndarray:
    """(frames, H, W, 3) uint8 from what a pipeline returns for output_type="np".

    TextToVideoSDPipeline in diffusers 0.42 returns float32 in [0, 1] shaped
    (batch, frames, H, W, 3); some pipelines drop the batch axis.
    """
    array = np.asarray(video)
    if array.ndim == 5:
        if array.shape[0] != 1:
            raise TierflowError(f"the pipeline returned {array.shape[0]} videos for one prompt")
        array = array[0]
    if array.dtype != np.uint8:
        # The same rounding diffusers uses when it makes PIL images from floats.
        array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    return np.ascontiguousarray(array)


def render(
    pipeline,
    *,
    prompt: str,
    negative_prompt: str | None,
    seed: int,
    frames: int,
    steps: int,
    guidance: float,
    width: int,
    height: int,
    device: str,
    on_step: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Render one segment: uint8 RGB frames shaped (frames, height, width, 3).

    The same pipeline, recipe and size on the same device give identical frames. `on_step(step,
    total)` is called after every denoising step, step counting 1..total.
    """
    import torch

    # 1. validate, before any work
    problems = _render_problems(prompt, seed, frames, steps, guidance, width, height)
    if problems:
        raise InvalidInput("cannot render: " + "; ".join(problems))

    # 2. sample
    generator = torch.Generator(device).manual_seed(seed)
    extra = _step_callback(pipeline, on_step) if on_step else {}
    output = pipeline(
        prompt=prompt, negative_prompt=negative_prompt, num_frames=frames, num_inference_steps=steps,
        guidance_scale=guidance, width=width, height=height, generator=generator, output_type="np", **extra,
    )

    # 3. uint8 frames, checked: a model that ignores the size would break every tier comparison
    video = _as_uint8_frames(output.frames)
    if video.shape != (frames, height, width, 3):
        raise TierflowError(
            f"the model rendered frames shaped {video.shape} but {frames} frames of {width}x{height} RGB were "
            "asked for; this model does not support that size or frame count"
        )
    return video


# ---------------------------------------------------------------------------------------------
# Files


def _check_frames(frames: np.ndarray) -> tuple[int, int, int]:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        got = f"{frames.dtype} {frames.shape}" if isinstance(frames, np.ndarray) else type(frames).__name__
        raise InvalidInput(f"frames must be a uint8 array shaped (frames, height, width, 3), not {got}")
    count, height, width, _ = frames.shape
    if count < 1 or height < 1 or width < 1:
        raise InvalidInput(f"there are no pixels to write (frames shaped {frames.shape})")
    return count, height, width


@functools.cache
def _ffmpeg_encoders() -> frozenset[str]:
    """Encoders the ffmpeg bundled with imageio-ffmpeg was built with."""
    import imageio_ffmpeg

    listing = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-encoders"],
                             capture_output=True, text=True, check=True).stdout
    # Lines look like " V....D libx264   libx264 H.264 / AVC / ..."; V marks a video encoder.
    rows = [line.split() for line in listing.splitlines() if line.startswith(" V")]
    return frozenset(row[1] for row in rows if len(row) > 1)


def encode_mp4(frames: np.ndarray, fps: int, quality_settings: dict | None = None) -> bytes:
    """H.264 (or H.265) MP4 of `frames` at exactly their size, with a tier's quality settings.

    Settings: `codec` h264 (default) or h265, `crf` (default 18), `pixel_format` (default yuv420p)
    and `fps`, which overrides the recipe's.
    """
    import imageio_ffmpeg

    # 1. settings
    _, height, width = _check_frames(frames)
    problems = quality_settings_problems(quality_settings)
    if isinstance(fps, bool) or not isinstance(fps, int) or fps < 1:
        problems.append(f"fps {fps!r} must be a whole number of at least 1")
    if problems:
        raise InvalidInput("cannot encode: " + "; ".join(problems))
    settings = quality_settings or {}
    codec = settings.get("codec", "h264")
    encoder = CODECS[codec]
    if encoder not in _ffmpeg_encoders():
        raise TierflowError(
            f"codec {codec} needs the {encoder} encoder, which the ffmpeg bundled with imageio-ffmpeg "
            f"({imageio_ffmpeg.get_ffmpeg_exe()}) lacks; use codec h264 or install a build that has it"
        )
    pixel_format = settings.get("pixel_format", DEFAULT_PIXEL_FORMAT)
    if pixel_format == "yuv420p" and (width % 2 or height % 2):
        raise InvalidInput(f"{width}x{height} cannot be stored as yuv420p: both sides must be even")
    crf = settings.get("crf", DEFAULT_CRF)
    fps = settings.get("fps", fps)
    output_params = ["-crf", str(crf), "-movflags", "+faststart"]  # faststart: playable while downloading
    if encoder == "libx265":
        # hvc1 is the tag Apple players need; x265 otherwise prints its banner on every run.
        output_params += ["-tag:v", "hvc1", "-x265-params", "log-level=error"]

    # 2. encode; macro_block_size=1 keeps 1080 rows (the default 16 pads to 1088)
    with tempfile.TemporaryDirectory(prefix="tierflow-encode-") as scratch:
        path = Path(scratch) / "segment.mp4"
        writer = imageio_ffmpeg.write_frames(
            str(path), (width, height), fps=fps, codec=encoder, pix_fmt_in="rgb24", pix_fmt_out=pixel_format,
            quality=None, macro_block_size=1, ffmpeg_log_level="error", output_params=output_params,
        )
        writer.send(None)  # start ffmpeg
        try:
            for frame in frames:
                writer.send(np.ascontiguousarray(frame))
        finally:
            writer.close()
        return path.read_bytes()


def poster_png(frames: np.ndarray) -> bytes:
    """The first frame as a PNG, for thumbnails and review."""
    from PIL import Image

    _check_frames(frames)
    buffer = io.BytesIO()
    Image.fromarray(frames[0]).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_video(data: bytes) -> np.ndarray:
    """Every frame of a video as uint8 (frames, height, width, 3)."""
    import imageio_ffmpeg

    with tempfile.TemporaryDirectory(prefix="tierflow-decode-") as scratch:
        path = Path(scratch) / "video"
        path.write_bytes(data)
        try:
            reader = imageio_ffmpeg.read_frames(str(path))
            width, height = next(reader)["size"]
            frames = [np.frombuffer(chunk, dtype=np.uint8).reshape(height, width, 3) for chunk in reader]
        except (OSError, RuntimeError, StopIteration, ValueError) as exc:
            raise InvalidInput(f"not a readable video ({len(data)} bytes): {exc}") from exc
    return np.stack(frames) if frames else np.zeros((0, height, width, 3), dtype=np.uint8)


def probe_video(data: bytes) -> tuple[int, int, int]:
    """(width, height, frame count) of a video, found by decoding every frame.

    Used by delivery checks, so it trusts nothing the file merely claims about its length.
    """
    frames = decode_video(data)
    return frames.shape[2], frames.shape[1], frames.shape[0]
