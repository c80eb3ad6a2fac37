"""The seed contract (shared/media/noise.py): consistent-v1 noise is white N(0, 1) at every size, the
same in every process, and the area aggregate of a larger grid of a scene is its smaller grid."""

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from shared.domain.dimensions import generation_size, parse_aspect
from shared.errors import InvalidInput
from shared.media.noise import (
    CONSISTENT_V1,
    MASTER,
    NATIVE,
    area_weights,
    downscale_noise,
    initial_noise,
)

BUILTIN_BOXES = {"draft": (512, 512), "preview": (768, 768), "production": (1920, 1080)}
ASPECTS = ("16:9", "9:16", "1:1", "2.39:1")
VAE_SCALE = 8


def noise(seed, height, width, *, channels=4, frames=2, scheme=CONSISTENT_V1) -> np.ndarray:
    return initial_noise(seed, channels=channels, frames=frames, height=height, width=width, scheme=scheme).numpy()


def pearson(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def latent_sizes(aspect: str) -> dict[str, tuple[int, int]]:
    """Each built-in tier's latent grid (height, width) at `aspect`, rounded as the tiers round it."""
    sizes = {}
    for tier, box in BUILTIN_BOXES.items():
        width, height = generation_size(parse_aspect(aspect), *box)
        sizes[tier] = (height // VAE_SCALE, width // VAE_SCALE)
    return sizes


def expected_pearson(fine: tuple[int, int], coarse: tuple[int, int]) -> float:
    """What the area downscale of exact integral noise correlates with the coarse grid, from the
    geometry alone: per axis, the mean over coarse cells of the variance the fine cells explain."""
    explained = 1.0
    for f, c in zip(fine, coarse):
        weights = area_weights(f, c)
        explained *= float(np.mean((weights ** 2).sum(axis=1) * c / f))
    return explained ** 0.5


@pytest.mark.parametrize("height, width", [(36, 64), (27, 64), (135, 240), (75, 135), (1, 1), (7, 13)])
def test_every_element_is_standard_normal_and_independent(height, width):
    # 16 seeds of 4 channels x 3 frames: the pooled estimates' standard error is 1/sqrt(n).
    samples = np.stack([noise(seed, height, width, frames=3) for seed in range(16)])  # (seed, c, f, h, w)
    n = samples.size
    tolerance = 5 / n ** 0.5
    assert abs(samples.mean()) < tolerance
    assert abs(samples.var() - 1) < 5 * (2 / n) ** 0.5
    # Fourth moment of a normal is 3: catches a field that is not Gaussian (e.g. uniform sums).
    assert abs((samples ** 4).mean() - 3) < 5 * (96 / n) ** 0.5

    def lag_one(axis: int) -> float:
        a, b = np.moveaxis(samples, axis, -1)[..., 1:], np.moveaxis(samples, axis, -1)[..., :-1]
        return pearson(a, b), a.size

    for axis, what in ((4, "across"), (3, "down"), (2, "in time"), (1, "between channels")):
        if samples.shape[axis] > 1:
            r, pairs = lag_one(axis)
            assert abs(r) < 5 / pairs ** 0.5, f"neighbours {what} correlate: {r:.4f}"


def test_pixels_on_cell_boundaries_have_unit_variance_and_no_neighbour_correlation():
    # 135 rows over the master grid: most row boundaries cut a master cell; each pixel's variance
    # over many seeds is 1 wherever its boundaries fall, and neighbours stay uncorrelated.
    samples = np.stack([noise(seed, 135, 8, channels=1, frames=1)[0, 0] for seed in range(300)])
    per_row_var = samples.var(axis=(0, 2))
    assert np.all(np.abs(per_row_var - 1) < 0.15), per_row_var  # 5 standard errors
    assert abs(per_row_var.mean() - 1) < 0.05
    neighbours = [pearson(samples[:, row], samples[:, row + 1]) for row in range(134)]
    assert abs(np.mean(neighbours)) < 0.02


@pytest.mark.parametrize("fine, coarse", [
    ((72, 128), (36, 64)),     # a custom 1024x576 tier against Draft's 512x288
    ((108, 192), (36, 64)),    # 3x: 1536x864
    ((270, 480), (135, 240)),  # 4K UHD against Production
    ((72, 192), (36, 64)),     # 2x down, 3x across
])
def test_integer_ratios_aggregate_exactly_to_the_smaller_grid(fine, coarse):
    for seed in (0, 1234, 2 ** 31 + 7):
        larger, smaller = noise(seed, *fine, channels=1), noise(seed, *coarse, channels=1)
        assert np.abs(downscale_noise(larger, *coarse) - smaller).max() < 1e-5


@pytest.mark.parametrize("aspect", ASPECTS)
def test_every_builtin_pair_keeps_the_correlation_the_geometry_allows(aspect):
    sizes = latent_sizes(aspect)
    pairs = [("draft", "preview"), ("draft", "production"), ("preview", "production")]
    for seed in (3, 99):
        grids = {tier: noise(seed, *size) for tier, size in sizes.items()}
        for small, large in pairs:
            measured = pearson(downscale_noise(grids[large], *sizes[small]), grids[small])
            expected = expected_pearson(sizes[large], sizes[small])
            # The scheme is the integral of one field, so it reaches the geometry's bound (the area
            # downscale is then the best linear prediction of the smaller grid from the larger).
            assert measured == pytest.approx(expected, abs=0.03), (aspect, small, large)
            if small == "draft":  # what an upscale of an approved Draft starts from
                assert measured >= 0.8, (aspect, small, large, measured)
            # diffusers' own same-seed noise at the two sizes is unrelated
            native = pearson(downscale_noise(noise(seed, *sizes[large], scheme=NATIVE), *sizes[small]),
                             noise(seed, *sizes[small], scheme=NATIVE))
            assert abs(native) < 0.1


def test_draft_against_every_larger_builtin_at_16_9_passes_0_8():
    sizes = latent_sizes("16:9")
    grids = {tier: noise(11, *size) for tier, size in sizes.items()}
    assert pearson(downscale_noise(grids["preview"], *sizes["draft"]), grids["draft"]) >= 0.8
    assert pearson(downscale_noise(grids["production"], *sizes["draft"]), grids["draft"]) >= 0.9
    assert pearson(downscale_noise(grids["production"], *sizes["preview"]), grids["preview"]) >= 0.85


def test_the_same_seed_gives_the_same_noise_and_another_seed_other_noise():
    first, again = noise(42, 36, 64), noise(42, 36, 64)
    assert np.array_equal(first, again)
    assert abs(pearson(first, noise(43, 36, 64))) < 0.05
    # channels and frames are independent slices, not copies
    assert abs(pearson(first[0], first[1])) < 0.05 and abs(pearson(first[:, 0], first[:, 1])) < 0.05


def test_noise_is_bit_identical_in_another_process():
    here = hashlib.sha256(noise(7, 54, 96, frames=3).tobytes()).hexdigest()
    code = ("import hashlib; from shared.media.noise import initial_noise; "
            "print(hashlib.sha256(initial_noise(7, channels=4, frames=3, height=54, width=96).numpy().tobytes())"
            ".hexdigest())")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert there == here


def test_native_is_what_the_pipeline_draws_from_its_seeded_generator():
    expected = torch.randn((1, 4, 3, 36, 64), generator=torch.Generator("cpu").manual_seed(5))[0]
    assert torch.equal(initial_noise(5, channels=4, frames=3, height=36, width=64, scheme=NATIVE), expected)


def test_the_largest_grid_is_served_and_a_larger_is_refused_with_what_to_do():
    assert noise(1, 8, MASTER, channels=1, frames=1).shape == (1, 1, 8, MASTER)
    with pytest.raises(InvalidInput, match=f"up to {MASTER} per side, not width {MASTER + 8}; .*noise native"):
        noise(1, 8, MASTER + 8)
    # the pipeline's own noise has no such limit
    assert noise(1, 1, MASTER + 8, channels=1, frames=1, scheme=NATIVE).shape == (1, 1, 1, MASTER + 8)


@pytest.mark.parametrize("kwargs, message", [
    ({"scheme": "consistent-v2"}, "unknown noise scheme 'consistent-v2' (known: consistent-v1, native)"),
    ({"height": 0}, "height 0 must be a whole number of at least 1"),
    ({"width": 12.5}, "width 12.5 must be a whole number of at least 1"),
    ({"seed": -1}, "seed -1 must be a whole number of at least 0"),
    ({"channels": True}, "channels True must be a whole number of at least 1"),
])
def test_bad_arguments_are_refused_precisely(kwargs, message):
    arguments = {"channels": 1, "frames": 1, "height": 8, "width": 8, "scheme": CONSISTENT_V1} | kwargs
    seed = arguments.pop("seed", 1)
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        initial_noise(seed, **arguments)


def test_area_weights_share_every_fine_cell_out_exactly():
    weights = area_weights(96, 64)
    assert weights.shape == (64, 96)
    assert np.allclose(weights.sum(axis=0), 1)  # each fine cell is shared out whole
    assert np.allclose(weights.sum(axis=1), 1.5)  # each coarse cell holds 1.5 fine cells
    assert np.array_equal(area_weights(4, 2), [[1, 1, 0, 0], [0, 0, 1, 1]])
