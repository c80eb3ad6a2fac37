"""The seed contract: a recipe's initial noise at any latent-grid size, from its seed and noise scheme.

`native` is the pipeline's own noise: diffusers draws `randn` from the seeded generator at the
latent size, so seed 1234 at 64×36 and at 240×135 are unrelated fields and a Production
re-generation of an approved Draft starts from another picture. It is kept for scenes made
before this contract and for reproducing a render outside Tierflow.

`consistent-v1` (the default for new scenes) samples one continuous white-noise field per latent
slice (channel × frame) at any grid size: each latent pixel is the integral of the field over its
cell, divided by the square root of the cell's area, so every element is exactly N(0, 1) and
independent, and the coarse grid is the area aggregate of a fine one (integral noise). The field
is realised on a fixed master grid of MASTER × MASTER cells over the frame, whatever its aspect
ratio: a cell's white noise is its value spread evenly plus three more coefficients, `x`, `y` and
`xy`, that split it exactly (as a Brownian sheet) where one cut per axis crosses it, so a pixel
boundary inside a cell takes its exact share. Two sizes that share a boundary take the same share:
for an integer ratio (a 1024×576 tier against Draft's 512×288, latent 128×72 against 64×36) every
boundary of the smaller grid is one of the larger, and the area aggregate of the larger noise equals
the smaller to float precision. Between other sizes (Draft 64×36 against Production 240×135) the
two grids integrate the same field over different cells, except inside the master cells where both
cut, at different offsets: one coefficient serves both cuts there, so the two shares are exact
each but not jointly (a cell is 1/512 of the frame per side). The measured correlations reach
the geometry's bound to within 0.03 (tests/unit/test_noise.py).

Everything is drawn on the CPU from torch generators seeded per slice and stream, so a
seed gives the same noise bit for bit in every process and on every device; the result is cast
to the pipeline's dtype on its device.
"""

import hashlib

import numpy as np

from events.models import NOISE_SCHEMES as SCHEMES  # the recipe's contract names them; here they are drawn
from shared.errors import InvalidInput

CONSISTENT_V1, NATIVE = SCHEMES

# Cells per side of the master grid. A grid may have at most one boundary inside a cell per axis,
# so this is the largest latent side consistent-v1 serves (4096 pixels with an 8× VAE: 4K UHD is
# 480×270). Its cost grows with its square, not with the grid's: at 512 a slice takes 5-10 ms on 2 CPU cores.
MASTER = 512
_STREAMS = ("cell", "x", "y", "xy")


def initial_noise(seed: int, *, channels: int, frames: int, height: int, width: int,
                  scheme: str = CONSISTENT_V1):
    """The initial latent noise, shaped (channels, frames, height, width), float32 on the CPU.

    `height` and `width` are the latent grid's (the image size over the VAE's scale factor).
    `native` gives what the pipeline would draw itself from a generator seeded with `seed` on the
    CPU at this shape; `consistent-v1`, the integral of the seed's continuous field (see above).
    """
    import torch

    problems = _problems(seed, channels, frames, height, width, scheme)
    if problems:
        raise InvalidInput("cannot make initial noise: " + "; ".join(problems))
    if scheme == NATIVE:
        generator = torch.Generator("cpu").manual_seed(seed)
        return torch.randn((1, channels, frames, height, width), generator=generator)[0]
    slices = [_integral_slice(seed, index, height, width) for index in range(channels * frames)]
    return torch.from_numpy(np.stack(slices).reshape(channels, frames, height, width).astype(np.float32))


def _problems(seed, channels, frames, height, width, scheme) -> list[str]:
    def whole(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    problems = []
    if scheme not in SCHEMES:
        problems.append(f"unknown noise scheme {scheme!r} (known: {', '.join(SCHEMES)})")
    if not whole(seed) or seed < 0:
        problems.append(f"seed {seed!r} must be a whole number of at least 0")
    for label, value in (("channels", channels), ("frames", frames), ("height", height), ("width", width)):
        if not whole(value) or value < 1:
            problems.append(f"{label} {value!r} must be a whole number of at least 1")
    if scheme == CONSISTENT_V1:
        too_big = [f"{label} {value}" for label, value in (("height", height), ("width", width))
                   if whole(value) and value > MASTER]
        if too_big:
            problems.append(f"{CONSISTENT_V1} noise serves latent grids up to {MASTER} per side, not "
                            f"{' and '.join(too_big)}; submit the scene with noise {NATIVE}")
    return problems


def _generator(seed: int, index: int, stream: str):
    import torch

    # One independent generator per slice and coefficient stream. A hash, not seed + index, so
    # neighbouring seeds never share a stream.
    digest = hashlib.blake2b(f"{CONSISTENT_V1}/{seed}/{index}/{stream}".encode(), digest_size=8).digest()
    return torch.Generator("cpu").manual_seed(int.from_bytes(digest, "little") >> 1)


def _cuts(n: int):
    """For a grid of n pixels over MASTER cells: each of the n + 1 boundaries' cell and offset in
    it (0 ≤ t < 1), exactly: boundary i is at i·MASTER/n cells."""
    i = np.arange(n + 1, dtype=np.int64)
    cell, rest = np.divmod(i * MASTER, n)
    return np.minimum(cell, MASTER - 1), np.where(cell >= MASTER, 1.0, rest / n)


def _cumulative_at(table: np.ndarray, cell: np.ndarray, offset: np.ndarray, axis: int) -> np.ndarray:
    """The integral from 0 to each boundary, along `axis`, of per-cell values spread evenly."""
    zero = np.zeros_like(np.take(table, [0], axis=axis))
    running = np.concatenate([zero, np.cumsum(table, axis=axis)], axis=axis)
    shape = [1, 1]
    shape[axis] = -1
    return (np.take(running, cell, axis=axis) + offset.reshape(shape) * np.take(table, cell, axis=axis))


def _integral_slice(seed: int, index: int, height: int, width: int) -> np.ndarray:
    """One slice of consistent-v1 noise: each pixel's integral of the slice's field over its cell,
    over the square root of the cell's area (in master cells)."""
    import torch

    # The field of cell (r, c), in its own coordinates 0..1: the Brownian sheet
    #   B(x, y) = x·y·cell + φ(x)·y·x_ + x·φ(y)·y_ + φ(x)·φ(y)·xy,   φ(s) = sqrt(s·(1 - s)),
    # which is exact at x ∈ {0, t, 1}, y ∈ {0, u, 1} for one cut t across and one u down.
    # Drawn in float32 (float64 draws take four times as long), summed in float64.
    coefficient = {stream: torch.randn((MASTER, MASTER), generator=_generator(seed, index, stream)).numpy()
                   .astype(np.float64) for stream in _STREAMS}
    rows, row_offset = _cuts(height)
    cols, col_offset = _cuts(width)
    row_bridge, col_bridge = np.sqrt(row_offset * (1 - row_offset)), np.sqrt(col_offset * (1 - col_offset))

    # The sheet's value at every pixel corner (row boundary j, column boundary i); the pixel's
    # integral is the difference of its four corners.
    cell = _cumulative_at(_cumulative_at(coefficient["cell"], rows, row_offset, 0), cols, col_offset, 1)
    across = _cumulative_at(coefficient["x"][:, cols], rows, row_offset, 0) * col_bridge
    down = _cumulative_at(coefficient["y"][rows, :], cols, col_offset, 1) * row_bridge[:, None]
    both = coefficient["xy"][np.ix_(rows, cols)] * row_bridge[:, None] * col_bridge
    corners = cell + across + down + both
    integral = corners[1:, 1:] - corners[1:, :-1] - corners[:-1, 1:] + corners[:-1, :-1]
    return integral / np.sqrt((MASTER / height) * (MASTER / width))


def area_weights(fine: int, coarse: int) -> np.ndarray:
    """(coarse, fine) weights of the area downscale of `fine` cells to `coarse` along one axis,
    each the share of a fine cell inside a coarse one, exact in integer arithmetic."""
    # In units of 1/(fine·coarse): fine cell j is [j·coarse, (j+1)·coarse), coarse cell i is [i·fine, (i+1)·fine).
    j, i = np.arange(fine), np.arange(coarse)[:, None]
    overlap = np.minimum((j + 1) * coarse, (i + 1) * fine) - np.maximum(j * coarse, i * fine)
    return np.clip(overlap, 0, None) / coarse


def downscale_noise(noise, height: int, width: int) -> np.ndarray:
    """Area downscale of noise shaped (..., H, W) to (..., height, width), rescaled to unit variance:
    the sum of each coarse cell's share of fine cells over the square root of its area in fine cells.
    For white integral noise and an integer ratio this is exactly the coarser grid's noise."""
    noise = np.asarray(noise, dtype=np.float64)
    fine_height, fine_width = noise.shape[-2:]
    rows, cols = area_weights(fine_height, height), area_weights(fine_width, width)
    scale = np.sqrt((fine_height / height) * (fine_width / width))
    return rows @ noise @ cols.T / scale  # one axis at a time
