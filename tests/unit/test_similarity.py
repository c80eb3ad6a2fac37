"""SSIM and PSNR between a source segment and its upscale."""

import io

import numpy as np
from PIL import Image

from shared.domain import similarity


def _frames(seed: int, count: int = 2, height: int = 72, width: int = 128) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def _smooth(count: int = 2, height: int = 72, width: int = 128) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    frame = np.stack([(x * 2) % 256, (y * 3) % 256, ((x + y) * 2) % 256], axis=-1).astype(np.uint8)
    return np.stack([frame] * count)


def test_identical_frames_are_perfectly_similar():
    frames = _smooth()
    assert similarity.compare(frames, frames) == (1.0, similarity.PSNR_CAP_DB)


def test_a_clean_2x_upscale_compares_close_to_its_source():
    source = _smooth()
    target = np.stack([np.asarray(Image.fromarray(f).resize((256, 144), Image.Resampling.NEAREST)) for f in source])
    ssim, psnr = similarity.compare(source, target)
    assert ssim > 0.99 and psnr > 40


def test_unrelated_noise_is_dissimilar():
    ssim, psnr = similarity.compare(_frames(1), _frames(2))
    assert ssim < 0.1 and psnr < 12


def test_side_by_side_is_source_then_target_at_the_source_size():
    source, target = _smooth(), _frames(3, height=144, width=256)
    image = Image.open(io.BytesIO(similarity.side_by_side_png(source, target)))
    assert image.size == (256, 72)
    pixels = np.asarray(image)
    assert np.array_equal(pixels[:, :128], source[1])
