"""The generation core against the real diffusers pipeline: the tiny random-weight model is built
offline once per session, saved, and loaded back with `from_pretrained` like any real model."""

import hashlib
import io
import re

import numpy as np
import pytest
from PIL import Image

from shared.domain.dimensions import generation_size, parse_aspect
from shared.errors import InvalidInput, NotFound
from shared.media import models, tiny
from shared.media import pipeline as media_pipeline
from shared.media import video as media_video

pytestmark = pytest.mark.integration

WIDE = parse_aspect("16:9")
RECIPE = {"prompt": "a lighthouse at dusk, waves", "negative_prompt": "blurry", "seed": 1234,
          "frames": 4, "steps": 4, "guidance": 7.5}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """Directory of the tiny pipeline, built once for the whole session."""
    return tiny.build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def pipeline(tiny_model):
    return media_pipeline.load_pipeline(str(tiny_model), "cpu")


def render(pipeline, width, height, **changes):
    return media_pipeline.render(pipeline, **{**RECIPE, **changes}, width=width, height=height, device="cpu")


def synthetic_frames(count, width, height):
    """Smooth moving gradients: realistic enough for an encoder to compress."""
    y, x = np.mgrid[0:height, 0:width]
    frames = [np.stack([(x + 8 * i) % 256, (y + 4 * i) % 256, (x + y) // 2 % 256], axis=-1) for i in range(count)]
    return np.array(frames, dtype=np.uint8)


def sha256s(directory):
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*.safetensors"))}


# ---------------------------------------------------------------------------------------------
# Rendering


def test_same_recipe_and_size_gives_identical_frames_even_after_reloading(pipeline, tiny_model):
    first = render(pipeline, 512, 288)
    again = render(pipeline, 512, 288)
    reloaded = render(media_pipeline.load_pipeline(str(tiny_model), "cpu"), 512, 288)

    assert first.dtype == np.uint8 and first.shape == (4, 288, 512, 3)
    assert np.array_equal(first, again)
    assert np.array_equal(first, reloaded)
    assert first.std() > 0  # real pixels, not a blank frame


def test_batched_renders_are_not_bit_identical_to_separate_ones_here_so_workers_do_not_batch(pipeline):
    """Why a worker renders one sample per pipeline call: two samples rendered in one call (one
    generator each) are not the frames the same recipes give rendered alone on this device, and a
    job's frames must not depend on which other jobs shared its call. Should this ever hold, batch
    same-shape jobs (the workers' claim could take them together)."""
    import torch

    recipes = [("a fox", 1), ("a cat", 2)]
    kwargs = {"num_frames": 4, "num_inference_steps": 4, "guidance_scale": 7.5, "width": 512, "height": 288,
              "output_type": "np"}
    batched = np.asarray(pipeline(prompt=[p for p, _ in recipes],
                                  generator=[torch.Generator("cpu").manual_seed(s) for _, s in recipes],
                                  **kwargs).frames)
    alone = [np.asarray(pipeline(prompt=p, generator=torch.Generator("cpu").manual_seed(s), **kwargs).frames)[0]
             for p, s in recipes]
    assert batched.shape == (2, 4, 288, 512, 3)
    as_bytes = [media_pipeline._as_uint8_frames(frames[None]) for frames in (*batched, *alone)]
    assert not all(np.array_equal(as_bytes[i], as_bytes[i + 2]) for i in range(2))


def test_a_different_seed_gives_different_frames(pipeline):
    assert not np.array_equal(render(pipeline, 512, 288, seed=1), render(pipeline, 512, 288, seed=2))


def test_draft_and_preview_sizes_render_at_their_shapes_with_the_same_frame_count(pipeline):
    draft = generation_size(WIDE, 512, 512)
    preview = generation_size(WIDE, 768, 768)
    assert (draft, preview) == ((512, 288), (768, 432))

    for width, height in (draft, preview):
        assert render(pipeline, width, height).shape == (RECIPE["frames"], height, width, 3)


def test_production_size_renders_and_encodes_at_exactly_1920x1080(pipeline):
    width, height = generation_size(WIDE, 1920, 1080)
    assert (width, height) == (1920, 1080)

    # (How long it takes is bench/tier_cost.py's business, not a test's.)
    frames = render(pipeline, width, height)
    video = media_video.encode_mp4(frames, fps=8)

    assert frames.shape == (4, 1080, 1920, 3)
    assert media_video.probe_video(video) == (1920, 1080, 4)


def test_on_step_is_called_after_every_step_up_to_the_total(pipeline):
    calls = []
    media_pipeline.render(pipeline, **{**RECIPE, "steps": 3}, width=64, height=64, device="cpu",
                      on_step=lambda step, total: calls.append((step, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_consistent_noise_is_what_the_pipeline_starts_from_and_native_is_its_own(pipeline):
    import torch

    from shared.media import noise

    consistent = render(pipeline, 512, 288, noise="consistent-v1")
    assert np.array_equal(consistent, render(pipeline, 512, 288, noise="consistent-v1"))
    assert not np.array_equal(consistent, render(pipeline, 512, 288))  # native: the pipeline's own randn
    # The scheme's noise, handed to the pipeline by hand, gives the same frames: it is the start.
    latents = noise.initial_noise(RECIPE["seed"], channels=pipeline.unet.config.in_channels, frames=RECIPE["frames"],
                                  height=288 // 8, width=512 // 8, scheme="consistent-v1")
    by_hand = pipeline(prompt=RECIPE["prompt"], negative_prompt=RECIPE["negative_prompt"],
                       num_frames=RECIPE["frames"], num_inference_steps=RECIPE["steps"],
                       guidance_scale=RECIPE["guidance"], width=512, height=288, latents=latents[None],
                       generator=torch.Generator("cpu").manual_seed(RECIPE["seed"]), output_type="np").frames
    assert np.array_equal(consistent, media_pipeline._as_uint8_frames(by_hand))


def test_consistent_noise_is_refused_for_a_pipeline_whose_latents_are_laid_out_otherwise(pipeline):
    import copy

    class PackedLatentsPipeline(type(pipeline)):  # e.g. LTX-Video packs its latents into patches
        pass

    other = copy.copy(pipeline)
    other.__class__ = PackedLatentsPipeline
    with pytest.raises(InvalidInput, match="PackedLatentsPipeline does not promise .*submit the scene with noise native"):
        render(other, 64, 64, noise="consistent-v1")
    assert render(other, 64, 64).shape == (RECIPE["frames"], 64, 64, 3)  # native serves any pipeline


@pytest.mark.parametrize(("changes", "message"), [
    ({"width": 500}, "width 500 must be a positive multiple of 8"),
    ({"height": 0}, "height 0 must be a positive multiple of 8"),
    ({"frames": 0}, "frames 0 must be at least 1"),
    ({"steps": 0}, "steps 0 must be at least 1"),
    ({"seed": -1}, "seed -1 must be a whole number"),
    ({"prompt": "  "}, "prompt must be non-empty"),
    ({"noise": "perlin"}, "noise 'perlin' must be one of consistent-v1, native"),
])
def test_bad_render_input_is_refused_before_any_work(pipeline, changes, message):
    arguments = {**RECIPE, "width": 512, "height": 288, **changes}
    with pytest.raises(InvalidInput, match=message):
        media_pipeline.render(pipeline, **arguments, device="cpu")


# ---------------------------------------------------------------------------------------------
# Files


@pytest.mark.parametrize(("width", "height"), [(512, 288), (288, 512)])
def test_encoded_video_probes_at_its_exact_size_and_frame_count(width, height):
    video = media_video.encode_mp4(synthetic_frames(5, width, height), fps=8)
    assert video[4:8] == b"ftyp"
    assert media_video.probe_video(video) == (width, height, 5)


def test_crf_changes_the_output_size():
    frames = synthetic_frames(4, 512, 288)
    fine = media_video.encode_mp4(frames, 8, {"crf": 10})
    coarse = media_video.encode_mp4(frames, 8, {"crf": 40})
    assert len(coarse) < len(fine)


def test_h265_and_other_settings_keep_the_exact_size():
    frames = synthetic_frames(3, 512, 288)
    video = media_video.encode_mp4(frames, 8, {"codec": "h265", "crf": 28, "pixel_format": "yuv444p", "fps": 24})
    assert media_video.probe_video(video) == (512, 288, 3)
    for preset in ("ultrafast", "veryslow"):
        assert media_video.probe_video(media_video.encode_mp4(frames, 8, {"preset": preset})) == (512, 288, 3)


@pytest.mark.parametrize(("settings", "message"), [
    ({"codec": "vp9"}, "quality setting 'codec'"),
    ({"preset": "warp"}, "quality setting 'preset' is \"warp\" but must be one of ultrafast, superfast"),
    ({"steps": 30}, "is a sampler setting"),
])
def test_bad_quality_settings_are_refused(settings, message):
    with pytest.raises(InvalidInput, match=message):
        media_video.encode_mp4(synthetic_frames(1, 64, 64), 8, settings)


def test_probe_refuses_bytes_that_are_not_a_video():
    with pytest.raises(InvalidInput, match="not a readable video"):
        media_video.probe_video(b"this is not an mp4")


def test_poster_is_the_first_frame_as_png():
    frames = synthetic_frames(2, 512, 288)
    png = media_video.poster_png(frames)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (512, 288)
    assert np.array_equal(np.asarray(image.convert("RGB")), frames[0])


# ---------------------------------------------------------------------------------------------
# Models


def test_loading_a_missing_directory_says_what_to_do(tmp_path):
    missing = tmp_path / "no-model-here"
    with pytest.raises(models.ModelNotFound) as caught:
        media_pipeline.load_pipeline(str(missing), "cpu")
    message = str(caught.value)
    assert isinstance(caught.value, NotFound)
    assert f"model '{missing}' not found: no diffusers pipeline at {missing}" in message
    assert "`tierflow models tiny DIR`" in message and "hub id" in message


def test_loading_a_directory_without_model_index_says_so(tmp_path):
    with pytest.raises(models.ModelNotFound, match=r"\(model_index.json missing\); build the tiny one"):
        media_pipeline.load_pipeline(str(tmp_path), "cpu")


def test_pinning_takes_pipeline_directories_and_refuses_what_is_none(tiny_model, tmp_path):
    pinned = models.pin_model(str(tiny_model))
    assert pinned == models.PinnedModel(str(tiny_model), None, models.directory_pin(tiny_model))
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", pinned.pin)
    for refused in ("/nope", "no spaces allowed", str(tmp_path)):
        with pytest.raises(models.ModelNotFound):
            models.pin_model(refused)
    with pytest.raises(InvalidInput, match="no model source given"):
        models.pin_model("")


def test_building_twice_gives_identical_weights(tiny_model, tmp_path):
    original = sha256s(tiny_model)
    assert set(original) == {"text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                             "vae/diffusion_pytorch_model.safetensors"}
    assert sha256s(tiny.build_tiny_model(tmp_path / "again")) == original


def test_the_saved_pipeline_reloads_with_from_pretrained(tiny_model):
    from diffusers import DiffusionPipeline, TextToVideoSDPipeline, UNet3DConditionModel

    reloaded = DiffusionPipeline.from_pretrained(str(tiny_model))
    assert isinstance(reloaded, TextToVideoSDPipeline)
    assert isinstance(reloaded.unet, UNet3DConditionModel)
    assert tuple(reloaded.unet.config.block_out_channels) == tiny.TINY_UNET_CHANNELS
    assert reloaded.tokenizer.model_max_length == 77
    assert reloaded.vae_scale_factor == 8
