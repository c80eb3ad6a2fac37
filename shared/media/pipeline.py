"""Loading any diffusers pipeline onto a device and rendering one segment with it.

Tiers change only the size: `render` takes everything else from the recipe, and the seeded
initial noise (shared.media.noise) makes the same recipe at the same size give the same frames
bit for bit on one device.
"""

import inspect
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np

from events.models import MAX_SEED
from shared.domain.dimensions import SIZE_STEP
from shared.errors import InvalidInput, TierflowError
from shared.media import noise as noise_schemes
from shared.media.models import (
    HOW_TO_GET_A_MODEL,
    HUB_ID,
    ModelNotFound,
    ModelUnreachable,
    check_pin,
    hub_refused,
    not_a_pipeline,
    pipeline_directory,
)


def pick_device() -> str:
    """"cuda" when a CUDA GPU is usable, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_dtype(device: str) -> str:
    """The precision pipelines run in on `device`: half on CUDA, full on CPU (where half is slow
    or unsupported)."""
    return "float16" if device.startswith("cuda") else "float32"


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


def quiet_progress_bars() -> None:
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


def load_pipeline(source: str, device: str, *, pin: str | None = None, name: str | None = None,
                  threads: int | None = None):
    """Load a model from `source` (a directory or a hub id) onto `device`, as `pin` pins it.

    A directory's files must still hash to `pin` (ModelChanged otherwise); a hub model is loaded
    at its pinned commit. Without a pin (a recipe made before the catalogue, a benchmark) the
    source is loaded as it is. `name` is the catalogue name, for messages. Only safetensors
    weights are loaded, and no code from the model. Half precision on CUDA, full on CPU, where
    torch uses `threads` threads (default: every CPU this process may use; give fewer when
    several workers share the machine). Raises ModelNotFound
    with what to do when there is no pipeline to load, ModelUnreachable when a hub model could
    not be fetched (a retry may).
    """
    import torch
    from diffusers import DiffusionPipeline

    # 1. find it, as pinned
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InvalidInput(f"threads {threads!r} must be a whole number of at least 1")
    name = name or source
    if pin is not None:
        local = check_pin(name, source, pin)
    else:
        local = pipeline_directory(source)
        if local is None and not HUB_ID.fullmatch(source):
            raise not_a_pipeline(source, Path(source).expanduser().absolute(),
                                 "no such directory, and not an org/name hub id")
    revision = {} if local or pin is None else {"revision": pin}

    # 2. load it
    quiet_progress_bars()
    if device == "cpu":
        torch.set_num_threads(threads or _cpu_threads())
    dtype = getattr(torch, device_dtype(device))
    try:
        pipeline = DiffusionPipeline.from_pretrained(
            str(local or source), **revision, use_safetensors=True, trust_remote_code=False,
            **{_dtype_argument(): dtype})
    except OSError as exc:  # huggingface_hub's HTTP and cache errors are OSErrors too
        if local:
            raise not_a_pipeline(source, local, f"it is incomplete or unreadable: {exc}") from exc
        if hub_refused(exc):
            raise ModelNotFound(
                f"model {name!r} ({source}) not found: the Hugging Face Hub has no such model at its pinned "
                f"revision, or not for this account ({exc}); {HOW_TO_GET_A_MODEL}"
            ) from exc
        raise ModelUnreachable(
            f"model {name!r} ({source}) not found locally and could not be fetched: it is not in the local cache and the "
            f"Hugging Face Hub did not answer ({exc}); a later attempt tries again"
        ) from exc
    pipeline = pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _render_problems(prompt, seed, frames, steps, guidance, width, height, noise) -> list[str]:
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
    if noise not in noise_schemes.SCHEMES:
        problems.append(f"noise {noise!r} must be one of {', '.join(noise_schemes.SCHEMES)}")
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


# Pipelines whose `latents` are (batch, channels, frames, height / scale, width / scale), the layout
# consistent-v1 noise is drawn for: diffusers' text-to-video UNet3D, AnimateDiff, Wan, HunyuanVideo
# and Mochi. Others pack or reorder their latents (CogVideoX puts frames first, LTX-Video packs
# patches); giving them this noise would be silently wrong, so they are refused.
CHANNELS_FIRST_VIDEO = frozenset({
    "TextToVideoSDPipeline", "AnimateDiffPipeline", "WanPipeline", "HunyuanVideoPipeline", "MochiPipeline"})


def latent_scale(pipeline) -> int:
    """How many image pixels one latent pixel spans per side (the VAE's spatial factor)."""
    return getattr(pipeline, "vae_scale_factor_spatial", None) or pipeline.vae_scale_factor


def initial_latents(pipeline, *, scheme: str, seed: int, frames: int, height: int, width: int, device: str):
    """The `latents` keyword argument for `pipeline` under noise `scheme`: {} for native (the
    pipeline draws its own from the seeded generator), else the scheme's noise at the pipeline's
    latent size, in its dtype on `device`. Raises InvalidInput for a pipeline whose latent layout
    the scheme does not serve."""
    if scheme == noise_schemes.NATIVE:
        return {}
    name = type(pipeline).__name__
    if name not in CHANNELS_FIRST_VIDEO:
        raise InvalidInput(
            f"{scheme} noise needs latents laid out (batch, channels, frames, height, width), which {name} does not "
            f"promise (it serves {', '.join(sorted(CHANNELS_FIRST_VIDEO))}); submit the scene with noise native")
    denoiser = getattr(pipeline, "unet", None) or pipeline.transformer
    scale = latent_scale(pipeline)
    temporal = getattr(pipeline, "vae_scale_factor_temporal", 1)
    latent_frames = (frames - 1) // temporal + 1 if temporal > 1 else frames
    noise = noise_schemes.initial_noise(seed, channels=denoiser.config.in_channels, frames=latent_frames,
                                        height=height // scale, width=width // scale, scheme=scheme)
    return {"latents": noise[None].to(device=device, dtype=denoiser.dtype)}


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
    noise: str = noise_schemes.NATIVE,
    on_step: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Render one segment: uint8 RGB frames shaped (frames, height, width, 3).

    The same pipeline, recipe and size on the same device give identical frames. `noise` is the
    recipe's noise scheme. `on_step(step, total)` is called after every denoising step, step
    counting 1..total.
    """
    import torch

    # 1. validate, before any work
    problems = _render_problems(prompt, seed, frames, steps, guidance, width, height, noise)
    if problems:
        raise InvalidInput("cannot render: " + "; ".join(problems))

    # 2. sample
    generator = torch.Generator(device).manual_seed(seed)
    extra = _step_callback(pipeline, on_step) if on_step else {}
    extra |= initial_latents(pipeline, scheme=noise, seed=seed, frames=frames, height=height, width=width,
                             device=device)
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
